//! `kiln-load`: a load generator for any Pyroscope-compatible profiling server (kiln,
//! Grafana Pyroscope, ...). It pushes real or synthetic pprof profiles, or fires a query mix,
//! and reports throughput and hdrhistogram latency percentiles.
//!
//! # Usage
//!
//! ```text
//! kiln-load [--url http://127.0.0.1:4040] [--mode push|query] [--api push|grpc|ingest]
//!           [--source DIR|synthetic] [--gzip true|false] [--tenants N]
//!           [--rate N | --connections N] [--duration 60s] [--threads N] [--json]
//! ```
//!
//! * Sources: every file under `--source DIR` (default `testdata/pprof`) that
//!   decodes as a pprof (gzip or raw, sniffed by `1f 8b`) and would pass a server's
//!   validation; or `--source synthetic`, shaped by `--services`, `--series-per-service`,
//!   `--labels-per-series`, `--stack-depth`, `--unique-stacks`, `--functions`,
//!   `--samples-per-profile` and `--profile-types cpu|cpu,memory`. Every request carries one
//!   profile whose `time_nanos` is set to the moment it is built, so ingestion windows accept
//!   it.
//! * APIs: `push` = Connect unary `POST /push.v1.PusherService/Push` over HTTP/1.1
//!   (`application/proto`); `grpc` = the same over h2c with gRPC framing and `grpc-status`
//!   trailers; `ingest` = `POST /ingest?name=<svc>{labels}&spyName=kiln-load&format=pprof`.
//!   Series labels: `__name__` (`process_cpu`, `memory`, ...), `service_name=kiln-load-<i>`,
//!   and `label_0..` per series. `--tenants N` rotates `X-Scope-OrgID: tenant-0..N-1`.
//! * Load: `--rate N` is an open loop (N profiles/s on a fixed schedule; latency counts from
//!   each request's scheduled time, so a slow server shows as latency, not as a lower rate);
//!   `--connections N` is a closed loop (N connections sending back to back). Both stop
//!   issuing after `--duration`.
//! * `--mode query`: after asking ProfileTypes (and the service names), fires 78%
//!   SelectMergeProfile, 15% `/pyroscope/render`, 3% SelectMergeStacktraces, 2% LabelNames and
//!   2% Series over `--range` (default 1h) ending now.
//! * Output: a progress line per second on stderr (req/s, MB/s on the wire, errors, p50/p99),
//!   then a report (p50, p90, p99, p99.9, max; bytes wire and uncompressed; profiles/s; errors
//!   by status). With `--json` the last line of stdout is the report as one JSON object
//!   (`throughput`, `mb_per_s`, `bytes_wire`, `bytes_uncompressed`, `requests`, `errors`,
//!   `p50`, `p90`, `p99`, `p999`, `max` in ms, ...); the human report then goes to stderr.
//!
//! Runtime: `--threads N` threads (default: all cores), each with its own monoio executor and
//! hyper client connections; per-thread histograms are merged at the end.
//!
//! Example, against a local kiln:
//!
//! ```text
//! cargo run -p kiln-load -- --url http://127.0.0.1:4040 --duration 5s --connections 4
//! cargo run -p kiln-load -- --source synthetic --rate 500 --duration 30s --json
//! cargo run -p kiln-load -- --mode query --connections 2 --duration 10s
//! ```

use std::io::Write;
use std::process::ExitCode;

use kiln_load::flags::{self, Parsed};

fn main() -> ExitCode {
    let config = match flags::parse(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            print!("{}", flags::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(config)) => config,
        Err(e) => {
            eprintln!("kiln-load: {e}");
            return ExitCode::from(2);
        }
    };
    let quiet = config.quiet;
    let result = kiln_load::run(
        &config,
        |line| {
            if !quiet {
                eprintln!("{line}");
            }
        },
        |note| eprintln!("kiln-load: {note}"),
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.json {
        eprint!("{}", report.human());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", report.to_json());
    } else {
        print!("{}", report.human());
    }
    ExitCode::SUCCESS
}
