//! The web UI (`ui/`) in a real browser: the real `kiln` binary is started, real profiles
//! from `testdata/` are pushed at recent times, and `ui/test/browser.mjs` drives Debian's
//! chromium through playwright-core against it — every view opened by URL and by clicking,
//! checked for what a person sees. Screenshots land in `target/ui-screenshots/`.
//!
//! Fails (never skips) without chromium or `ui/node_modules`, naming what to install.
mod common;
use common::*;
use kiln_proto::google::v1::Profile;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Pushes a testdata pprof through /ingest as `name` (`service{label=value}`), stamped `at_ms`.
fn push(port: u16, rel: &str, name: &str, at_ms: i64) {
    let mut p = Profile::decode(&gunzip_maybe(&std::fs::read(testdata(rel)).unwrap())[..]).unwrap();
    p.time_nanos = at_ms * 1_000_000;
    let name = name.replace('{', "%7B").replace('}', "%7D").replace('=', "%3D");
    let r = post(port, &format!("/ingest?name={name}&format=pprof"), &[], p.encode_to_vec());
    assert_eq!(r.status, 200, "push {rel}: {}", r.text());
}

/// The function with the most self time (ties by name), as the UI's top table sorts.
fn hottest(fg: &kiln_proto::querier::v1::FlameGraph) -> String {
    let mut selfs = std::collections::BTreeMap::<&str, i64>::new();
    for l in &fg.levels {
        for c in l.values.chunks(4) {
            *selfs.entry(fg.names[c[3] as usize].as_str()).or_default() += c[2];
        }
    }
    let best = selfs.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).unwrap();
    best.0.to_string()
}

fn tools() -> PathBuf {
    let chromium = std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the UI test needs Debian's chromium at {chromium}: `apt-get install -y chromium` (or set KILN_CHROMIUM); .ci/run installs it"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the UI test needs Node.js 20 and npm: `apt-get install -y nodejs npm`"
    );
    assert!(
        root().join("ui/node_modules/playwright-core").is_dir(),
        "the UI test needs ui/node_modules: run `npm ci` in ui/ (.ci/run does)"
    );
    PathBuf::from(chromium)
}

#[test]
fn the_ui_in_chromium() {
    let chromium = tools();
    let k = Kiln::start(FIXTURE_FLAGS);
    let now = now_ms();
    let min = 60_000;
    // This hour: the labelled Go CPU profile, twice in prod and once in dev.
    let go = "pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof";
    push(k.port, go, "shop{env=prod}", now - 10 * min);
    push(k.port, go, "shop{env=prod}", now - 12 * min);
    push(k.port, go, "shop{env=dev}", now - 20 * min);
    // The hour before: the same once, and another Go CPU profile that is gone since.
    push(k.port, go, "shop{env=prod}", now - 80 * min);
    push(k.port, "pprof/pyroscope/og-convert/cpu.pb.gz", "shop{env=prod}", now - 90 * min);
    // A large profile, for the render time on many nodes.
    push(k.port, "pprof/google-pprof/large.cpu", "big{env=prod}", now - 5 * min);

    let sel = |extra: &str| format!("{{service_name=\"shop\"{extra}}}");
    // What the views show by default: the last hour.
    let last_hour = |s: &str| flamegraph_in(k.port, CPU, s, now - 60 * min, now_ms());
    let expect = serde_json::json!({
        "cpu": CPU,
        "hottest": hottest(&last_hour(&sel(""))),
        "prodTotal": last_hour(&sel(",env=\"prod\"")).total,
        "devTotal": last_hour(&sel(",env=\"dev\"")).total,
    });
    let shots = root().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root().join("ui/test/browser.mjs"))
        .env("KILN_URL", format!("http://127.0.0.1:{}", k.port))
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &shots)
        .env("EXPECT", expect.to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", out.status);
}

/// The bundle stays within its budget (ui/build.mjs, which enforces it when building) and
/// the binary serves what is committed in ui/dist.
#[test]
fn the_bundle_is_embedded_and_within_budget() {
    let dist = root().join("ui/dist");
    let size: u64 =
        ["index.html", "app.js", "app.css"].iter().map(|f| std::fs::metadata(dist.join(f)).unwrap().len()).sum();
    assert!(size <= 80 * 1024, "ui/dist is {size} bytes, over its 80 KiB budget");
    let k = Kiln::start(&[]);
    for path in ["/", "/explore", "/comparison", "/comparison-diff"] {
        let r = get(k.port, path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.body, std::fs::read(dist.join("index.html")).unwrap(), "{path}");
    }
    let page = get(k.port, "/").text();
    let v = page.split("app.js?v=").nth(1).unwrap().split('"').next().unwrap().to_string();
    for (file, ct) in [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8")] {
        let r = get(k.port, &format!("/assets/{file}?v={v}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], ct);
        assert_eq!(r.headers["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(r.body, std::fs::read(dist.join(file)).unwrap());
        assert_eq!(get(k.port, &format!("/assets/{file}")).headers["cache-control"], "no-cache");
    }
}
