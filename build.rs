//! Captures what `-version` and `/api/v1/status/buildinfo` report: the git revision and
//! branch the binary was built from, the build date and the compiler, as Pyroscope's
//! build stamps its version/branch/revision/build date at link time.
//!
//! 1. Ask git for `HEAD`'s revision and branch; without git, or outside a checkout (a
//!    source tarball), each is `unknown`: the build never fails for want of git.
//! 2. The build date is `SOURCE_DATE_EPOCH` when set (reproducible builds), else now, in
//!    UTC as RFC 3339.
//! 3. Rerun only when `HEAD` or the ref it names moves (so editing a source file does not
//!    restamp and rebuild the crate); the date is the date of the build that stamped it.
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KILN_REVISION={revision}");
    println!("cargo:rustc-env=KILN_BRANCH={branch}");
    println!("cargo:rustc-env=KILN_BUILD_DATE={}", build_date());
    println!("cargo:rustc-env=KILN_RUSTC_VERSION={}", rustc_version());
    println!("cargo:rerun-if-changed=build.rs");
    // Self-profiling walks frame pointers only in a build that keeps them everywhere
    // (`-C force-frame-pointers=yes`); elsewhere a sample names the running function alone.
    println!("cargo::rustc-check-cfg=cfg(kiln_frame_pointers)");
    if frame_pointers(&std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default()) {
        println!("cargo:rustc-cfg=kiln_frame_pointers");
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A worktree's HEAD lives in its own git dir, its refs in the common one: ask git for
    // each path rather than assume `.git/HEAD`. Only files that exist are named: cargo
    // counts a missing one as changed on every build, which would rebuild the crate each time.
    // A branch only in `packed-refs` gets a loose file on its next commit: then its folder is
    // named, whose new file cargo sees.
    let reference = git(&["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD", "packed-refs"].into_iter().chain(reference.as_deref()) {
        let Some(p) = git(&["rev-parse", "--git-path", path]) else { continue };
        let p = std::path::PathBuf::from(p);
        let watched = if p.is_file() { Some(p.as_path()) } else { p.parent().filter(|_| path != "packed-refs") };
        if let Some(w) = watched.filter(|w| w.exists()) {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
}

/// Whether the rustflags (separated by 0x1f) force frame pointers: the last
/// `-C force-frame-pointers[=v]` (or `-Cforce-frame-pointers…`) with no value or yes/y/on/true.
fn frame_pointers(encoded: &str) -> bool {
    let flags: Vec<&str> = encoded.split('\x1f').collect();
    let mut on = false;
    for (i, f) in flags.iter().enumerate() {
        let option = match f.strip_prefix("-C") {
            Some("") => flags.get(i + 1).copied().unwrap_or(""),
            Some(rest) => rest,
            None => continue,
        };
        if let Some(v) = option.strip_prefix("force-frame-pointers") {
            on = matches!(v, "" | "=yes" | "=y" | "=on" | "=true");
        }
    }
    on
}

/// One line of git's output, or None when git is missing, fails, or says nothing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
