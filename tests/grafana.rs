//! What Grafana's Pyroscope data source and the Profiles Drilldown app call, replayed as
//! they send it (grafana/explore-profiles `src/shared/infrastructure/settings/`,
//! `src/pages/AdHocView/infrastructure/`, `ProfileApiClient.ts`; grafana/grafana
//! `pkg/tsdb/grafana-pyroscope-datasource`), against the real binary, with the answers
//! checked: tenant settings across a restart and across two processes sharing a bucket,
//! Connect GET, the names of what kiln does not serve.
mod common;

use common::*;
use kiln_proto::settings::v1 as s;
use serde_json::json;

/// The headers Drilldown's `ApiClient` sends (Grafana's proxy adds the tenant).
fn drilldown(tenant: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![("content-type", "application/json"), ("x-grafana-org-id", "1"), ("x-scope-orgid", tenant)]
}

/// Drilldown's `SettingsApiClient.get`: POST `{}`, then the `pluginSettings` setting's value.
fn drilldown_get(port: u16, tenant: &'static str) -> Vec<(String, String, i64)> {
    let r = post(port, "/settings.v1.SettingsService/Get", &drilldown(tenant), b"{}".to_vec());
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    j["settings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let at = s["modifiedAt"].as_str().expect("int64 as a JSON string").parse().unwrap();
                    (s["name"].as_str().unwrap().to_string(), s["value"].as_str().unwrap().to_string(), at)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Drilldown's `SettingsApiClient.set`.
fn drilldown_set(port: u16, tenant: &'static str, value: &serde_json::Value) -> serde_json::Value {
    let body = json!({"setting": {"name": "pluginSettings", "value": value.to_string()}});
    let r = post(port, "/settings.v1.SettingsService/Set", &drilldown(tenant), serde_json::to_vec(&body).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn settings_round_trip_across_a_restart() {
    let k = Kiln::start(&["-auth.multitenancy-enabled=true"]);
    // Nothing stored yet: an empty answer, not an error (Drilldown then uses its defaults).
    assert!(drilldown_get(k.port, "t1").is_empty());
    let v = json!({"collapsedFlamegraphs": true, "maxNodes": 16384, "enableFlameGraphDotComExport": false});
    let set = drilldown_set(k.port, "t1", &v);
    assert_eq!(set["setting"]["name"], "pluginSettings");
    let at: i64 = set["setting"]["modifiedAt"].as_str().unwrap().parse().unwrap();
    assert!((now_ms() - at).abs() < 60_000, "a missing modifiedAt is now: {at}");
    let got = drilldown_get(k.port, "t1");
    assert_eq!(got, vec![("pluginSettings".to_string(), v.to_string(), at)]);
    // Per tenant.
    assert!(drilldown_get(k.port, "t2").is_empty());
    // An older modifiedAt than the stored one loses, as in Pyroscope (already_exists, 409).
    let old = s::SetSettingsRequest {
        setting: Some(s::Setting { name: "pluginSettings".into(), value: "{}".into(), modified_at: at - 1 }),
    };
    let e = connect::<_, s::SetSettingsResponse>(
        k.port,
        "/settings.v1.SettingsService/Set",
        &[("x-scope-orgid", "t1")],
        &old,
    )
    .unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (409, "already_exists"), "{e:?}");
    // Another setting, by gRPC, and a Delete.
    let other =
        s::SetSettingsRequest { setting: Some(s::Setting { name: "other".into(), value: "x".into(), modified_at: 5 }) };
    grpc::<_, s::SetSettingsResponse>(k.port, "/settings.v1.SettingsService/Set", &[("x-scope-orgid", "t1")], &other)
        .unwrap();
    assert_eq!(drilldown_get(k.port, "t1").len(), 2);
    let del = s::DeleteSettingsRequest { name: "other".into() };
    connect::<_, s::DeleteSettingsResponse>(
        k.port,
        "/settings.v1.SettingsService/Delete",
        &[("x-scope-orgid", "t1")],
        &del,
    )
    .unwrap();

    // kill -9 and a restart: the settings are in the bucket, not in memory.
    let data = k.kill();
    let k = Kiln::start_in(data, &["-auth.multitenancy-enabled=true"]);
    assert_eq!(drilldown_get(k.port, "t1"), vec![("pluginSettings".to_string(), v.to_string(), at)]);
    let v2 = json!({"collapsedFlamegraphs": false});
    drilldown_set(k.port, "t1", &v2);
    assert_eq!(drilldown_get(k.port, "t1")[0].1, v2.to_string());
}

#[test]
fn settings_are_bounded() {
    let k = Kiln::start(&[]);
    let big = "x".repeat(64 * 1024 + 1);
    let r =
        connect_json(k.port, "/settings.v1.SettingsService/Set", &[], json!({"setting": {"name": "a", "value": big}}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "invalid_argument");
    assert!(r.json()["message"].as_str().unwrap().contains("65536"), "{}", r.text());
    for i in 0..64 {
        let r = connect_json(
            k.port,
            "/settings.v1.SettingsService/Set",
            &[],
            json!({"setting": {"name": format!("s{i}"), "value": "v"}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = connect_json(
        k.port,
        "/settings.v1.SettingsService/Set",
        &[],
        json!({"setting": {"name": "s64", "value": "v"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("at most 64 settings"), "{}", r.text());
    let r = connect_json(k.port, "/settings.v1.SettingsService/Set", &[], json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    // Single-tenant: everything is the tenant `anonymous`, whatever the header says.
    assert_eq!(drilldown_get(k.port, "whoever").len(), 64);
}

/// Two processes sharing one bucket directory (as the members of a cluster share a bucket):
/// what one sets, the other reads, and updates written by both at once are all kept.
#[test]
fn settings_are_shared_by_processes_on_one_bucket() {
    let bucket = std::env::temp_dir().join(format!("kiln-test-settings-bucket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bucket);
    let flag = format!("-storage.filesystem.dir={}", bucket.display());
    let a = Kiln::start(&[&flag]);
    let b = Kiln::start(&[&flag]);
    drilldown_set(a.port, "anonymous", &json!({"from": "a"}));
    assert_eq!(drilldown_get(b.port, "anonymous")[0].1, json!({"from": "a"}).to_string());
    let writers: Vec<_> = [(a.port, "a"), (b.port, "b")]
        .into_iter()
        .map(|(port, who)| {
            std::thread::spawn(move || {
                for i in 0..10 {
                    let r = connect_json(
                        port,
                        "/settings.v1.SettingsService/Set",
                        &[],
                        json!({"setting": {"name": format!("{who}{i}"), "value": "v"}}),
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(drilldown_get(a.port, "anonymous").len(), 21, "no write lost to the other process");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&bucket);
}

/// Connect GET (`?encoding=…&message=…`), as connect-web sends for side-effect-free calls:
/// the same answer as the POST; calls that change state are POST only.
#[test]
fn connect_get_answers_as_post() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let body = b"main;work;hot 30\nmain;work;cold 10\nmain;idle 5\n".to_vec();
    let r = post(k.port, "/ingest?name=getapp.cpu&format=folded&sampleRate=0", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let msg = json!({"name": "service_name"}).to_string();
    let enc: String = msg.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = get(k.port, &format!("/querier.v1.QuerierService/LabelValues?connect=v1&encoding=json&message={enc}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["names"], json!(["getapp"]));
    // The proto codec, base64 (URL-safe, unpadded) as connect-web sends it.
    let req = kiln_proto::types::v1::LabelValuesRequest { name: "service_name".into(), ..Default::default() };
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(prost::Message::encode_to_vec(&req))
    };
    let r = get(
        k.port,
        &format!("/querier.v1.QuerierService/LabelValues?connect=v1&encoding=proto&base64=1&message={b64}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/proto");
    let got: kiln_proto::types::v1::LabelValuesResponse = prost::Message::decode(r.body).unwrap();
    assert_eq!(got.names, vec!["getapp".to_string()]);
    // Settings' Get is side-effect free; its Set is not.
    let r = get(k.port, "/settings.v1.SettingsService/Get?encoding=json&message=%7B%7D");
    assert_eq!((r.status, r.json()), (200, json!({})), "{}", r.text());
    let r = get(k.port, "/settings.v1.SettingsService/Set?encoding=json&message=%7B%7D");
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.headers["allow"], "POST");
    let r = get(k.port, "/push.v1.PusherService/Push?encoding=json&message=%7B%7D");
    assert_eq!(r.status, 405, "{}", r.text());
    // A bad GET says what is wrong.
    let r = get(k.port, "/querier.v1.QuerierService/LabelValues?message=%7B%7D");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("encoding"), "{}", r.text());
}

/// What kiln does not serve answers `unimplemented`, naming the method and what is missing.
#[test]
fn unserved_methods_name_what_is_missing() {
    let k = Kiln::start(&[]);
    for (path, missing) in [
        ("/settings.v1.RecordingRulesService/ListRecordingRules", "recording rules"),
        ("/debuginfo.v1alpha1.DebuginfoService/ShouldInitiateUpload", "debug info"),
        ("/vcs.v1.VCSService/GetFile", "source code"),
        ("/nope.v1.Nope/Nothing", "not implement"),
    ] {
        let r = connect_json(k.port, path, &[], json!({}));
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json()["code"], "unimplemented", "{path}");
        let m = r.json()["message"].as_str().unwrap().to_string();
        assert!(m.contains(path) && m.contains(missing), "{path}: {m}");
    }
}

/// A DOT graph as Graphviz reads it, enough to check one: `N<i>` nodes with their labels,
/// edges between declared nodes, one `digraph { … }`.
struct Dot {
    /// (id, label) in the order declared.
    nodes: Vec<(String, String)>,
    /// (from, to, label)
    edges: Vec<(String, String, String)>,
}

fn parse_dot(text: &str) -> Dot {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("digraph \"unnamed\" {"), "{text}");
    assert_eq!(text.lines().last(), Some("}"), "{text}");
    let attr = |rest: &str, key: &str| -> String {
        let at = rest.find(&format!("{key}=\"")).unwrap_or_else(|| panic!("no {key} in {rest}"));
        let v = &rest[at + key.len() + 2..];
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            match c {
                // DOT's label escapes: \n, \l and \r end a line; anything else stands for itself.
                '\\' => match chars.next().unwrap() {
                    'n' | 'l' | 'r' => out.push('\n'),
                    c => out.push(c),
                },
                '"' => return out,
                c => out.push(c),
            }
        }
        panic!("unterminated {key} in {rest}")
    };
    let (mut nodes, mut edges) = (Vec::new(), Vec::new());
    for line in lines {
        if line == "}" || line.starts_with("node [") || line.starts_with("subgraph cluster_L") {
            continue;
        }
        let (head, rest) = line.split_once(" [").unwrap_or_else(|| panic!("not a statement: {line}"));
        assert!(rest.ends_with(']'), "{line}");
        match head.split_once(" -> ") {
            Some((from, to)) => edges.push((from.to_string(), to.to_string(), attr(rest, "label"))),
            None => {
                assert!(head.starts_with('N') && head[1..].parse::<u32>().is_ok(), "{line}");
                nodes.push((head.to_string(), attr(rest, "label")));
            }
        }
    }
    for (from, to, _) in &edges {
        for end in [from, to] {
            assert!(nodes.iter().any(|(id, _)| id == end), "edge to undeclared node {end}");
        }
    }
    Dot { nodes, edges }
}

/// Drilldown's `ProfileApiClient.get({format: 'dot', maxNodes: 100})` (the AI panel): the
/// render API's DOT, a graph whose first node is the hottest function, with its edges.
#[test]
fn render_dot_draws_the_call_graph() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let body = b"main;work;hot 60\nmain;work;cold 25\nmain;idle 15\n".to_vec();
    let r = post(k.port, "/ingest?name=dotapp.cpu&format=folded&sampleRate=100", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let (from, until) = ((now_ms() / 1000 - 3600) * 1000, (now_ms() / 1000 + 60) * 1000);
    let query = "process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22dotapp%22%7D";
    let r = get(k.port, &format!("/pyroscope/render?query={query}&from={from}&until={until}&format=dot&max-nodes=100"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text();
    let dot = parse_dot(&text);
    // 100 samples at 100 Hz, 10ms each: hot is 600ms of 1s.
    assert_eq!(dot.nodes[0], ("N1".to_string(), "hot\n600ms (60.00%)".to_string()), "{text}");
    let id = |name: &str| dot.nodes.iter().find(|(_, l)| l.starts_with(&format!("{name}\n"))).unwrap().0.clone();
    assert!(dot.nodes.iter().any(|(_, l)| l == "main\n0 of 1s (100%)"), "{text}");
    let edge = |a: &str, b: &str| dot.edges.iter().find(|(f, t, _)| *f == id(a) && *t == id(b)).map(|e| e.2.clone());
    assert_eq!(edge("main", "work").as_deref(), Some(" 850ms"), "{text}");
    assert_eq!(edge("work", "hot").as_deref(), Some(" 600ms"), "{text}");
    assert_eq!(dot.nodes.len(), 5);
    // max-nodes keeps the hottest.
    let r = get(k.port, &format!("/pyroscope/render?query={query}&from={from}&until={until}&format=dot&max-nodes=1"));
    let one = parse_dot(&r.text());
    assert_eq!(one.nodes.len(), 1);
    assert!(one.nodes[0].1.starts_with("hot\n"));
    // The same graph through SelectMergeStacktraces' DOT format.
    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        json!({"profileTypeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds", "labelSelector": "{service_name=\"dotapp\"}",
               "start": from.to_string(), "end": until.to_string(), "format": "PROFILE_FORMAT_DOT"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["dot"].as_str().unwrap(), text);
    // Nothing matched: an empty body, as Pyroscope.
    let none = "process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22nope%22%7D";
    let r = get(k.port, &format!("/pyroscope/render?query={none}&from={from}&until={until}&format=dot"));
    assert_eq!((r.status, r.text().as_str()), (200, ""));
}

/// Drilldown's ad hoc view (`adHocProfileClient.ts`): upload a file (its name and the
/// file as base64), then Get another of its sample types by `profile_type`, then List.
#[test]
fn ad_hoc_upload_get_list() {
    use base64::Engine;
    let mut flags = vec!["-auth.multitenancy-enabled=true"];
    flags.extend_from_slice(FIXTURE_FLAGS);
    let k = Kiln::start(&flags);
    let file = std::fs::read(testdata("pprof/pyroscope/og-convert/heap.pb.gz")).unwrap();
    let p: kiln_proto::google::v1::Profile = prost::Message::decode(&gunzip_maybe(&file)[..]).unwrap();
    let types: Vec<String> = p.sample_type.iter().map(|t| p.string_table[t.r#type as usize].clone()).collect();
    let total = |i: usize| p.sample.iter().map(|s| s.value[i]).sum::<i64>();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
    let r = post(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Upload",
        &drilldown("t1"),
        serde_json::to_vec(&json!({"name": "heap.pb.gz", "profile": b64})).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = r.json();
    let id = up["id"].as_str().unwrap().to_string();
    assert!(id.ends_with("-heap.pb.gz") && id.len() == 26 + 1 + "heap.pb.gz".len(), "{id}");
    assert_eq!(up["profileTypes"], json!(types));
    let fb: serde_json::Value = serde_json::from_str(up["flamebearerProfile"].as_str().unwrap()).unwrap();
    assert_eq!(fb["version"], 1);
    assert_eq!(fb["metadata"]["name"], types[0].as_str());
    assert_eq!(fb["flamebearer"]["numTicks"], total(0));
    assert_eq!(fb["flamebearer"]["names"][0], "total");

    // Get, as Drilldown sends it: snake-case `profile_type`.
    let r = post(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Get",
        &drilldown("t1"),
        serde_json::to_vec(&json!({"id": id, "profile_type": types[3], "max_nodes": 1_000_000})).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!((got["name"].as_str(), got["profileType"].as_str()), (Some("heap.pb.gz"), Some(types[3].as_str())));
    let fb: serde_json::Value = serde_json::from_str(got["flamebearerProfile"].as_str().unwrap()).unwrap();
    assert_eq!(fb["flamebearer"]["numTicks"], total(3));
    // The flame graph's stacks are the pprof's, value for value.
    let names: Vec<String> = serde_json::from_value(fb["flamebearer"]["names"].clone()).unwrap();
    let levels: Vec<Vec<i64>> = serde_json::from_value(fb["flamebearer"]["levels"].clone()).unwrap();
    // The file is read as a push of it is (validated, normalised, Go's truncated stacks
    // repaired): the same flame graph as the same file pushed and queried.
    let r = post(k.port, "/ingest?name=heapapp&format=pprof", &[("x-scope-orgid", "t1")], file.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[("x-scope-orgid", "t1")],
        json!({"profileTypeID": format!("memory:{}:bytes:space:bytes", types[3]), "labelSelector": "{service_name=\"heapapp\"}",
               "start": "1", "end": now_ms().to_string(), "maxNodes": "1000000"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let q = r.json()["flamegraph"].clone();
    let qnames: Vec<String> = serde_json::from_value(q["names"].clone()).unwrap();
    let qlevels: Vec<Vec<i64>> = q["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect())
        .collect();
    let got = flamegraph_stacks(&names, &levels);
    assert_eq!(got, flamegraph_stacks(&qnames, &qlevels));
    assert_eq!(got.values().sum::<i64>(), total(3));

    // A folded file too; List shows both, newest first, per tenant.
    let folded = base64::engine::general_purpose::STANDARD.encode(b"main;a 3\nmain;b 1\n");
    let r = connect_json(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Upload",
        &[("x-scope-orgid", "t1")],
        json!({"name": "my stacks.txt", "profile": folded}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["profileTypes"], json!(["my_stacks.txt"]));
    let r = connect_json(k.port, "/adhocprofiles.v1.AdHocProfileService/List", &[("x-scope-orgid", "t1")], json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json()["profiles"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["name"], "my_stacks.txt");
    assert_eq!(list[1]["id"], id.as_str());
    assert!(list[0]["uploadedAt"].as_str().unwrap().parse::<i64>().unwrap() >= now_ms() - 60_000);
    let r = connect_json(k.port, "/adhocprofiles.v1.AdHocProfileService/List", &[("x-scope-orgid", "t2")], json!({}));
    assert_eq!(r.json(), json!({}), "another tenant has none");
    // And it is in the bucket: after a restart Get still answers.
    let data = k.kill();
    let k = Kiln::start_in(data, &flags);
    let r = connect_json(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Get",
        &[("x-scope-orgid", "t1")],
        json!({"id": id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["profileType"], types[0].as_str());
    // Diff of the pprof with itself: both sides the same total.
    let r = connect_json(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Diff",
        &[("x-scope-orgid", "t1")],
        json!({"leftId": id, "rightId": id, "profileType": types[1]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d: serde_json::Value = serde_json::from_str(r.json()["flamebearerProfile"].as_str().unwrap()).unwrap();
    assert_eq!((d["leftTicks"].as_i64(), d["rightTicks"].as_i64()), (Some(total(1)), Some(total(1))));
    assert_eq!(d["metadata"]["format"], "double");
}

#[test]
fn ad_hoc_bad_input_is_refused_clearly() {
    use base64::Engine;
    let k = Kiln::start(&["-validation.max-profile-size-bytes=1000"]);
    let up = |name: &str, b: &[u8]| {
        let body = json!({"name": name, "profile": base64::engine::general_purpose::STANDARD.encode(b)});
        connect_json(k.port, "/adhocprofiles.v1.AdHocProfileService/Upload", &[], body)
    };
    let r = up("big.txt", &b"a;b 1\n".repeat(200));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("exceeds limit of 1000 bytes"), "{}", r.text());
    let r = up("x.pprof", b"\x0a\x02garbage");
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("invalid_argument")), "{}", r.text());
    let r = up("x.jfr", b"FLR\0\0\0");
    assert!(r.json()["message"].as_str().unwrap().contains("JFR"), "{}", r.text());
    let r = connect_json(k.port, "/adhocprofiles.v1.AdHocProfileService/Get", &[], json!({"id": "../x"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = connect_json(
        k.port,
        "/adhocprofiles.v1.AdHocProfileService/Get",
        &[],
        json!({"id": "01JAAAAAAAAAAAAAAAAAAAAAAA-nope"}),
    );
    assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not_found")), "{}", r.text());
    // Nothing refused was stored.
    let r = connect_json(k.port, "/adhocprofiles.v1.AdHocProfileService/List", &[], json!({}));
    assert_eq!(r.json(), json!({}));
}

/// A CPU pprof whose samples carry span ids as the SDKs send them: a `span_id` label (Go's
/// otel-profiling), a `profile_id` label (the Java agent), a malformed one (no span), none.
fn span_pprof(time_nanos: i64) -> Vec<u8> {
    use kiln_proto::google::v1 as pb;
    use prost::Message;
    let strings = [
        "",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        "serve",
        "idle",
        "span_id",
        "profile_id",
        "0102030405060708",
        "a1a2a3a4a5a6a7a8",
        "239",
        "handler",
        "web",
    ];
    let s = |x: &str| strings.iter().position(|y| *y == x).unwrap() as i64;
    let function = |id: u64, name: &str| pb::Function { id, name: s(name), ..Default::default() };
    let location =
        |id: u64| pb::Location { id, line: vec![pb::Line { function_id: id, line: 1 }], ..Default::default() };
    let label = |k: &str, v: &str| pb::Label { key: s(k), str: s(v), ..Default::default() };
    // Stacks leaf first: main;work, main;serve, main;idle, main;work again.
    let sample = |leaf: u64, v: i64, labels: Vec<pb::Label>| pb::Sample {
        location_id: vec![leaf, 1],
        value: vec![v],
        label: labels,
    };
    pb::Profile {
        sample_type: vec![pb::ValueType { r#type: s("cpu"), unit: s("nanoseconds") }],
        sample: vec![
            sample(2, 10, vec![label("span_id", "0102030405060708"), label("handler", "web")]),
            sample(3, 20, vec![label("profile_id", "a1a2a3a4a5a6a7a8"), label("handler", "web")]),
            sample(4, 40, vec![label("span_id", "239"), label("handler", "web")]),
            sample(2, 80, vec![label("handler", "web")]),
        ],
        location: (1..=4).map(location).collect(),
        function: vec![function(1, "main"), function(2, "work"), function(3, "serve"), function(4, "idle")],
        string_table: strings.iter().map(|x| x.to_string()).collect(),
        time_nanos,
        period_type: Some(pb::ValueType { r#type: s("cpu"), unit: s("nanoseconds") }),
        period: 10_000_000,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Grafana's traces to profiles: `SelectMergeSpanProfile` (and `SelectMergeStacktraces`
/// with a `span_selector`) answer the samples taken in the given spans, from the head,
/// after a `kill -9` (the WAL keeps the span ids), and from blocks; span ids never become
/// series labels.
#[test]
fn span_profiles_answer_from_the_head_the_wal_and_blocks() {
    use common::snapshot::{flush, push_fixture};
    use kiln_proto::querier::v1 as q;
    let mut flags = FIXTURE_FLAGS.to_vec();
    flags.push("-shards=2");
    let k = Kiln::start(&flags);
    push_fixture(k.port, "traced", span_pprof(now_ms() * 1_000_000));
    let pt = "fixture:cpu:nanoseconds:cpu:nanoseconds";
    let span_graph = |port: u16, spans: &[&str]| -> Result<std::collections::BTreeMap<String, i64>, (u16, String)> {
        let r = connect_json(
            port,
            "/querier.v1.QuerierService/SelectMergeSpanProfile",
            &[],
            json!({"profileTypeID": pt, "labelSelector": "{service_name=\"traced\"}", "spanSelector": spans,
                   "start": now_ms() - 3_600_000, "end": now_ms() + 60_000}),
        );
        if r.status != 200 {
            return Err((r.status, r.text()));
        }
        let fg: q::FlameGraph = serde_json::from_value(r.json()["flamegraph"].clone()).unwrap();
        Ok(flamegraph_stacks(&fg.names, &fg.levels.iter().map(|l| l.values.clone()).collect::<Vec<_>>()))
    };
    let stacks = |v: &[(&str, i64)]| v.iter().map(|(s, n)| (s.to_string(), *n)).collect();
    let check = |port: u16, what: &str| {
        let one = span_graph(port, &["0102030405060708"]).unwrap();
        assert_eq!(one, stacks(&[("main;work", 10)]), "{what}");
        let both = span_graph(port, &["0102030405060708", "a1a2a3a4a5a6a7a8"]).unwrap();
        assert_eq!(both, stacks(&[("main;serve", 20), ("main;work", 10)]), "{what}");
        assert!(span_graph(port, &["ffffffffffffffff"]).unwrap().is_empty(), "{what}");
        // The same filter through SelectMergeStacktraces; without it, every sample.
        let merged = |spans: &[&str]| {
            let r: q::SelectMergeStacktracesResponse = connect(
                port,
                "/querier.v1.QuerierService/SelectMergeStacktraces",
                &[],
                &q::SelectMergeStacktracesRequest {
                    profile_type_id: pt.into(),
                    label_selector: "{}".into(),
                    start: now_ms() - 3_600_000,
                    end: now_ms() + 60_000,
                    span_selector: spans.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )
            .unwrap();
            let fg = r.flamegraph.unwrap();
            flamegraph_stacks(&fg.names, &fg.levels.iter().map(|l| l.values.clone()).collect::<Vec<_>>())
        };
        assert_eq!(merged(&["a1a2a3a4a5a6a7a8"]), stacks(&[("main;serve", 20)]), "{what}");
        assert_eq!(
            merged(&[]),
            stacks(&[("main;idle", 40), ("main;serve", 20), ("main;work", 90)]),
            "{what}: without a span selector"
        );
        // Span ids are not labels: one series, labelled by `handler` alone.
        let names = connect_json(port, "/querier.v1.QuerierService/LabelNames", &[], json!({}));
        let names = names.json()["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        assert!(names.contains(&"handler".to_string()), "{what}: {names:?}");
        assert!(!names.iter().any(|n| n == "span_id" || n == "profile_id"), "{what}: {names:?}");
    };
    check(k.port, "from the head");
    // A malformed span id in a selector is refused, naming it.
    let e = span_graph(k.port, &["0102"]).unwrap_err();
    assert_eq!(e.0, 400, "{}", e.1);
    assert!(e.1.contains("0102") && e.1.contains("16 hex digits"), "{}", e.1);
    let data = k.kill();
    let k = Kiln::start_in(data, &flags);
    check(k.port, "after kill -9, from the WAL");
    flush(k.port);
    assert_eq!(metric_sum(k.port, "kiln_head_profiles"), 0.0);
    check(k.port, "from blocks");
}

fn select_heatmap(
    port: u16,
    r: kiln_proto::querier::v1::SelectHeatmapRequest,
) -> kiln_proto::querier::v1::SelectHeatmapResponse {
    connect(port, "/querier.v1.QuerierService/SelectHeatmap", &[], &r).unwrap()
}

/// `SelectHeatmap` as Grafana's data source asks it: each profile's total bucketed by time
/// and value per `group_by` label set, its slots on the same step grid as `SelectSeries`,
/// every profile counted once; with exemplars, each cell's largest profile.
#[test]
fn heatmaps_count_every_profile_in_its_step_and_value_bucket() {
    use kiln_proto::querier::v1 as q;
    let k = Kiln::start(FIXTURE_FLAGS);
    let step_s = 60;
    let base = (now_ms() / 1000 - 3600) / step_s * step_s;
    // Pod a: totals 1..=6, two per step; pod b: one large profile. sampleRate=0 keeps the
    // folded counts as the values.
    let ingest = |pod: &str, t: i64, body: String| {
        let path = format!("/ingest?name=heat.cpu{{pod={pod}}}&from={t}&until={t}&format=folded&sampleRate=0");
        let r = post(k.port, &path, &[], body.into_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    };
    for (i, v) in (1..=6).enumerate() {
        ingest("a", base + 10 + (i as i64 / 2) * step_s + i as i64, format!("main;work {v}\n"));
    }
    ingest("b", base + 20, "main;idle 1000\n".into());
    let pt = "process_cpu:samples:count::";
    let req = q::SelectHeatmapRequest {
        profile_type_id: pt.into(),
        label_selector: "{service_name=\"heat\"}".into(),
        start: base * 1000,
        end: (base + 4 * step_s) * 1000,
        step: step_s as f64,
        group_by: vec!["pod".into()],
        query_type: q::HeatmapQueryType::Individual as i32,
        exemplar_type: 2,
        limit: None,
    };
    let h = select_heatmap(k.port, req.clone());
    let pods: Vec<&str> = h.series.iter().map(|s| s.labels[0].value.as_str()).collect();
    assert_eq!(pods, ["a", "b"], "{h:?}");
    // Every profile counted once, in the slot SelectSeries puts it in.
    let series_req = q::SelectSeriesRequest {
        profile_type_id: pt.into(),
        label_selector: "{pod=\"a\"}".into(),
        start: req.start,
        end: req.end,
        step: step_s as f64,
        ..Default::default()
    };
    let series: q::SelectSeriesResponse =
        connect(k.port, "/querier.v1.QuerierService/SelectSeries", &[], &series_req).unwrap();
    let series_slots: Vec<i64> = series.series[0].points.iter().map(|p| p.timestamp).collect();
    assert!(series.series[0].points.iter().all(|p| p.exemplars.is_empty()), "exemplars nobody asked for");
    // Asked for, each point names its largest profile: 2, 4 and 6 of pod a's 1..=6.
    let with: q::SelectSeriesResponse = connect(
        k.port,
        "/querier.v1.QuerierService/SelectSeries",
        &[],
        &q::SelectSeriesRequest { exemplar_type: 2, label_selector: "{pod=\"a\"}".into(), ..series_req.clone() },
    )
    .unwrap();
    let best: Vec<Vec<i64>> =
        with.series[0].points.iter().map(|p| p.exemplars.iter().map(|e| e.value).collect()).collect();
    assert_eq!(best, [[2], [4], [6]]);
    let a = &h.series[0];
    assert_eq!(a.slots.iter().map(|s| s.timestamp).collect::<Vec<_>>(), series_slots);
    assert!(a.slots.iter().all(|s| s.counts.iter().sum::<i32>() == 2), "{a:?}");
    assert!(a.slots.iter().all(|s| s.y_min.len() == 20 && s.y_min[0] == 1.0), "{a:?}");
    // Values 1..=1000 share the buckets: 1000 alone in the last, pod a's in the first.
    assert_eq!(h.series[1].slots[0].counts[19], 1);
    assert_eq!(a.slots.iter().map(|s| s.counts[0]).sum::<i32>(), 6);
    // The exemplar of a cell is its largest profile, labelled by what group_by leaves.
    let e = &a.slots[2].exemplars;
    assert_eq!(e.iter().map(|e| e.value).collect::<Vec<_>>(), [6], "{e:?}");
    assert!(e[0].labels.iter().any(|l| l.name == "service_name" && l.value == "heat"), "{e:?}");
    let none = select_heatmap(k.port, q::SelectHeatmapRequest { exemplar_type: 1, ..req.clone() });
    assert!(none.series[0].slots.iter().all(|s| s.exemplars.is_empty()));
    // With a limit, the group with the largest total.
    let top = select_heatmap(k.port, q::SelectHeatmapRequest { limit: Some(1), ..req });
    assert_eq!(top.series.len(), 1);
    assert_eq!(top.series[0].labels[0].value, "b");
}

/// The span heatmap counts each span's total in a profile, its exemplars naming the spans.
#[test]
fn span_heatmaps_count_each_span_and_name_it() {
    use kiln_proto::querier::v1 as q;
    let k = Kiln::start(FIXTURE_FLAGS);
    common::snapshot::push_fixture(k.port, "traced", span_pprof(now_ms() * 1_000_000));
    let spans = select_heatmap(
        k.port,
        q::SelectHeatmapRequest {
            profile_type_id: "fixture:cpu:nanoseconds:cpu:nanoseconds".into(),
            label_selector: "{service_name=\"traced\"}".into(),
            start: now_ms() - 600_000,
            end: now_ms() + 60_000,
            step: 60.0,
            query_type: q::HeatmapQueryType::Span as i32,
            exemplar_type: 3,
            ..Default::default()
        },
    );
    let ex: Vec<(String, i64)> =
        spans.series[0].slots.iter().flat_map(|s| s.exemplars.iter().map(|e| (e.span_id.clone(), e.value))).collect();
    assert_eq!(ex.len(), 2, "{spans:?}");
    assert!(ex.contains(&("0102030405060708".into(), 10)) && ex.contains(&("a1a2a3a4a5a6a7a8".into(), 20)), "{ex:?}");
    assert_eq!(spans.series[0].slots.iter().flat_map(|s| &s.counts).sum::<i32>(), 2);
}
