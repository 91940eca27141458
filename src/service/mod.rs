//! The contract between the edge (`api`) and the components: what a request and its answer
//! are, the status of a failure, the codec of an RPC message, the tenant of a request, and
//! the route tables by which each component registers what it serves. The edge and every
//! component import this module; it imports neither.
pub mod body;
pub mod call;
pub mod codec;
pub mod readiness;
pub mod request;
pub mod routes;
pub mod services;
pub mod status;
pub mod tenant;

pub use body::{RespBody, Response};
pub use call::{Call, Reply};
pub use request::Req;
pub use status::{Code, RpcError};

/// A Prometheus label value: `\`, `"` and newlines escaped (every component's `/metrics`
/// text that names a tenant).
pub fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// For tests that look at the process in the middle of a step, deterministically: when the
/// environment variable `KILN_PAUSE_AT` names `step`, the calling thread waits there for as
/// long as the file `KILN_PAUSE_FILE` exists (the test removes it to let the step go on).
pub fn pause_point(step: &str) {
    static AT: std::sync::OnceLock<Option<(String, std::path::PathBuf)>> = std::sync::OnceLock::new();
    let at =
        AT.get_or_init(|| Some((std::env::var("KILN_PAUSE_AT").ok()?, std::env::var("KILN_PAUSE_FILE").ok()?.into())));
    if let Some((s, file)) = at {
        if s == step {
            while file.exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// For tests that kill kiln at a chosen step, deterministically: when the environment
/// variable `KILN_CRASH_AT` names `step`, the process sends itself SIGKILL on the spot — a
/// `kill -9` there: no destructor runs, nothing is synced or closed. Steps are named
/// `<component>:<step>` where they are called.
pub fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("KILN_CRASH_AT").ok()).as_deref() == Some(step) {
        eprintln!("KILN_CRASH_AT={step}: killing the process here");
        // SAFETY: kill(2) on this process's own id; SIGKILL cannot be caught.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
