//! Operational endpoints: readiness, metrics, config, build info, version, health, the ring
//! and a small web page.
use crate::server::body::{RespBody, Response};
use crate::server::{metrics, Core, Req};
use kiln_proto::grpc::health::v1::{health_check_response::ServingStatus, HealthCheckResponse};
use kiln_proto::version::v1::VersionResponse;
use kiln_shards::shard::Msg;
use std::fmt::Write;
use std::rc::Rc;

fn text(status: u16, ct: &str, body: impl Into<bytes::Bytes>) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(RespBody::full(body))
        .expect("valid response")
}

pub fn ready(core: &Core) -> Response {
    if core.shared.ready() {
        text(200, "text/plain; charset=utf-8", "ready")
    } else {
        text(503, "text/plain; charset=utf-8", "not ready: cores are still starting")
    }
}

pub async fn metrics(core: &Rc<Core>) -> Response {
    let mut out = String::new();
    metrics::render(&core.shared.metrics, &mut out);
    core.shared.conns.render(&mut out);
    core.shared.bodies.render(&mut out);
    match core.mesh.broadcast(|reply| Msg::Stats { reply }).await {
        Ok(stats) => {
            type Gauge = (&'static str, &'static str, &'static str, fn(&kiln_shards::shard::ShardStats) -> f64);
            let rows: [Gauge; 14] = [
                ("kiln_head_series", "gauge", "Series in the head.", |s| s.series as f64),
                ("kiln_head_profiles", "gauge", "Profiles in the head.", |s| s.profiles as f64),
                ("kiln_head_samples", "gauge", "Samples in the head.", |s| s.samples as f64),
                ("kiln_head_stacktraces", "gauge", "Distinct stack trace nodes in the head.", |s| s.stacks as f64),
                ("kiln_head_bytes", "gauge", "Approximate heap bytes held by the head.", |s| s.head_bytes as f64),
                ("kiln_head_frozen", "gauge", "Heads cut and waiting for their block upload.", |s| {
                    s.frozen_heads as f64
                }),
                ("kiln_blocks_owned", "gauge", "Blocks this core serves queries from.", |s| s.blocks as f64),
                ("kiln_block_cache_bytes", "gauge", "Bytes of opened block parts cached.", |s| {
                    s.block_cache_bytes as f64
                }),
                ("kiln_blocks_written_total", "counter", "Blocks written by this core.", |s| s.blocks_written as f64),
                ("kiln_block_bytes_uploaded_total", "counter", "Block bytes uploaded by this core.", |s| {
                    s.bytes_uploaded as f64
                }),
                ("kiln_pushes_pending", "gauge", "Pushes appended on this core whose outcome is not known yet.", |s| {
                    s.pending_pushes as f64
                }),
                (
                    "kiln_pushes_rolled_back_total",
                    "counter",
                    "Pushes taken out of this core's head again because they were refused (another core, the WAL).",
                    |s| s.rolled_back as f64,
                ),
                (
                    "kiln_block_cuts_suspended",
                    "gauge",
                    "1 while this core's last block cut failed and waits for its retry.",
                    |s| u8::from(s.cuts_suspended) as f64,
                ),
                ("kiln_block_cut_retries_total", "counter", "Retries of failed block cuts by this core.", |s| {
                    s.cut_retries as f64
                }),
            ];
            for (name, kind, help, f) in rows {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for s in &stats {
                    let _ = writeln!(out, "{name}{{core=\"{}\"}} {}", s.core, f(s));
                }
            }
        }
        Err(e) => {
            return text(503, "text/plain", e.to_string());
        }
    }
    let _ = writeln!(out, "# HELP kiln_build_info Build information.\n# TYPE kiln_build_info gauge");
    let _ = writeln!(out, "kiln_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    text(200, "text/plain; version=0.0.4; charset=utf-8", out)
}

/// How long `/ingester/flush` waits for the blocks unless `?timeout=` says otherwise.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Pyroscope's `/ingester/flush`: cuts every core's head into blocks now and answers 204 once
/// they are uploaded and in the bucket index. Within a deadline (`?timeout=`, a Go
/// duration, 30 s by default): past it, or when a cut failed, 503 says what is still
/// pending, and the uploads and cut retries go on in the background.
pub async fn flush(core: &Rc<Core>, r: &Req) -> Response {
    if !core.shared.ready() {
        return text(503, "text/plain; charset=utf-8", "not ready: cores are still starting");
    }
    let timeout = match r.param("timeout").map(|v| crate::config::parse_duration(&v)) {
        None => FLUSH_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => return text(400, "text/plain; charset=utf-8", "timeout must be positive"),
        Some(Err(e)) => return text(400, "text/plain; charset=utf-8", format!("invalid timeout: {e}")),
    };
    match monoio::time::timeout(timeout, cut_all(core)).await {
        Ok(Ok(())) => text(204, "text/plain; charset=utf-8", ""),
        Ok(Err(e)) => text(503, "text/plain; charset=utf-8", e),
        Err(_) => match pending(core).await {
            Some(p) => text(
                503,
                "text/plain; charset=utf-8",
                format!(
                    "flush not finished within {timeout:?}; still pending: {p}; uploads and retries go on in the background"
                ),
            ),
            None => text(204, "text/plain; charset=utf-8", ""),
        },
    }
}

/// Asks every core to cut until each answers that its blocks are in the bucket index.
async fn cut_all(core: &Rc<Core>) -> Result<(), String> {
    loop {
        let done = core.mesh.broadcast(|reply| Msg::Cut { reply }).await.map_err(|e| e.to_string())?;
        if let Some(Err(e)) = done.iter().find(|d| d.is_err()) {
            return Err(e.clone());
        }
        if done.iter().all(|d| matches!(d, Ok(true))) {
            return Ok(());
        }
        // A core was finishing an earlier cut: ask again once it had time to.
        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What the cores have not written as blocks yet, or `None` when nothing is pending.
async fn pending(core: &Rc<Core>) -> Option<String> {
    let stats = match core.mesh.broadcast(|reply| Msg::Stats { reply }).await {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    let parts: Vec<String> = stats
        .iter()
        .filter(|s| s.frozen_heads > 0 || s.cuts_suspended)
        .map(|s| {
            let mut p = format!("core {}: {} head(s) waiting to be written as blocks", s.core, s.frozen_heads);
            if s.cuts_suspended {
                p.push_str(", its cut failed and waits for a retry");
            }
            if let Some(e) = &s.cut_error {
                let _ = write!(p, " (last error: {e})");
            }
            p
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub fn config(core: &Core) -> Response {
    text(200, "text/plain; charset=utf-8", core.cfg().to_yaml())
}

pub fn buildinfo() -> Response {
    let body = serde_json::json!({
        "status": "success",
        "data": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": option_env!("KILN_REVISION").unwrap_or(""),
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
        }
    });
    text(200, "application/json", serde_json::to_vec(&body).expect("json"))
}

pub fn version() -> VersionResponse {
    VersionResponse { querier_api: 1 }
}

pub fn health(core: &Core) -> HealthCheckResponse {
    let status = if core.shared.ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
    HealthCheckResponse { status: status as i32 }
}

pub fn ring(core: &Core) -> Response {
    let n = core.mesh.cores();
    let mut out = String::from("<!doctype html><title>kiln ring</title><h1>Ingester ring</h1><table border=1><tr><th>instance</th><th>core</th><th>state</th></tr>");
    for c in 0..n {
        let _ = write!(out, "<tr><td>local</td><td>{c}</td><td>ACTIVE</td></tr>");
    }
    out.push_str("</table>");
    text(200, "text/html; charset=utf-8", out)
}

pub fn ui() -> Response {
    text(200, "text/html; charset=utf-8", include_str!("ui.html"))
}
