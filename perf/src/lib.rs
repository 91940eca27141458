//! kiln-load: a load generator for Pyroscope-compatible profiling servers (see `main.rs` for
//! the command line). The library holds everything so that tests can drive a whole run.

pub mod client;
pub mod engine;
pub mod flags;
pub mod gz;
pub mod push;
pub mod query;
pub mod schedule;
pub mod source;
pub mod stats;
pub mod synth;

use std::sync::Arc;

use flags::{Api, Config, Encoding, Load, Mode, Source};
use stats::Report;

/// Runs the load described by `config`. `progress` gets the per-second lines, `note` the
/// one-off messages (files loaded and skipped, discovery results).
pub fn run(config: &Config, progress: impl FnMut(&str), mut note: impl FnMut(&str)) -> Result<Report, String> {
    let target = client::parse_target(&config.url)?;
    let (factory, api): (engine::GeneratorFactory, String) = match config.mode {
        Mode::Push => (push_factory(config, &target, &mut note)?, api_name(config.api)),
        Mode::Query => {
            let tenant = config.tenants().nth(0);
            let plan = query::discover(&target, config.range, tenant, config.timeout)?;
            let shown: Vec<&str> = plan.profile_types.iter().take(4).map(String::as_str).collect();
            let more = if plan.profile_types.len() > shown.len() { ", ..." } else { "" };
            note(&format!(
                "query plan: {} profile types ({}{more}), {} services",
                plan.profile_types.len(),
                shown.join(", "),
                plan.services.len()
            ));
            let plan = Arc::new(plan);
            let (target, range, encoding) = (target.clone(), config.range, config.encoding);
            let (tenants, seed) = (config.tenants(), config.seed);
            let factory: engine::GeneratorFactory = Arc::new(move |thread| {
                let seed = seed ^ (thread as u64).wrapping_mul(0x9E37_79B9);
                let g = query::QueryGenerator::new(plan.clone(), target.clone(), range, encoding, tenants, seed);
                Box::new(g) as Box<dyn engine::Generator>
            });
            let codec = match config.encoding {
                Encoding::Proto => "connect-proto",
                Encoding::Json => "connect-json",
            };
            (factory, codec.to_string())
        }
    };
    let engine_config = engine::EngineConfig {
        target,
        h2: config.mode == Mode::Push && config.api == Api::Grpc,
        load: config.load,
        threads: config.threads,
        duration: config.duration,
        timeout: config.timeout,
        max_in_flight: config.max_in_flight,
    };
    let (stats, elapsed) = engine::run(&engine_config, factory, progress)?;
    if let Some(hint) = rate_limit_hint(&stats) {
        note(&hint);
    }
    Ok(Report {
        mode: match config.mode {
            Mode::Push => "push".into(),
            Mode::Query => "query".into(),
        },
        api,
        url: config.url.clone(),
        load: match config.load {
            Load::Rate(r) => format!("rate={r}/s"),
            Load::Connections(c) => format!("connections={c}"),
        },
        threads: config.threads,
        elapsed,
        stats,
    })
}

/// When most answers were 429, what limits them and the flag that lifts it.
fn rate_limit_hint(stats: &stats::Stats) -> Option<String> {
    let limited = stats.errors.get("429").copied().unwrap_or(0);
    (stats.requests > 0 && limited * 2 > stats.requests).then(|| {
        format!(
            "{limited} of {} answers were 429: the server's per-tenant ingestion rate limit refused them. \
             On kiln and Pyroscope, -distributor.ingestion-rate-limit-mb=0 (and \
             -distributor.ingestion-burst-size-mb) lift it; --tenants N spreads the load over N tenants",
            stats.requests
        )
    })
}

fn api_name(api: Api) -> String {
    match api {
        Api::Push => "push".into(),
        Api::Grpc => "grpc".into(),
        Api::Ingest => "ingest".into(),
    }
}

fn push_factory(
    config: &Config,
    target: &client::Target,
    note: &mut impl FnMut(&str),
) -> Result<engine::GeneratorFactory, String> {
    let workload = match &config.source {
        Source::Synthetic => source::Workload::synthetic(&config.shape, config.seed),
        Source::Dir(dir) => {
            note(&format!("reading profiles from {}", dir.display()));
            let (workload, skipped) = source::Workload::from_dir(dir, &config.shape)?;
            // One line per reason: "not a pprof" covers the fixtures' text and JSON files.
            let mut by_reason: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (path, why) in &skipped.files {
                let reason = why.split(':').next().unwrap_or(why).to_string();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                by_reason.entry(reason).or_default().push(name);
            }
            for (reason, names) in by_reason {
                note(&format!("skipped {} files ({reason}): {}", names.len(), names.join(", ")));
            }
            workload
        }
    };
    let bytes: usize = workload.profiles.iter().map(|p| p.base.len()).sum();
    note(&format!(
        "{} profiles ({:.2} MB uncompressed) over {} series",
        workload.profiles.len(),
        bytes as f64 / 1e6,
        workload.streams.len()
    ));
    if config.shape.labels_per_series == 0 && config.shape.series_per_service > 1 {
        note("--labels-per-series 0: a service's series share one label set");
    }
    let templates = config.gzip.then(|| {
        let level = flate2::Compression::fast();
        Arc::new(workload.profiles.iter().map(|p| gz::GzTemplate::new(&p.base, level)).collect::<Vec<_>>())
    });
    let workload = Arc::new(workload);
    let (api, tenants, base_path) = (config.api, config.tenants(), target.base_path.clone());
    Ok(Arc::new(move |_thread| {
        let g = push::PushGenerator::new(workload.clone(), templates.clone(), api, tenants, base_path.clone());
        Box::new(g) as Box<dyn engine::Generator>
    }))
}

#[cfg(test)]
mod hint_tests {
    #[test]
    fn most_answers_429_name_the_flag_that_lifts_the_limit() {
        let mut s = crate::stats::Stats::new();
        s.requests = 10;
        s.errors.insert("429".into(), 4);
        assert!(super::rate_limit_hint(&s).is_none());
        s.errors.insert("429".into(), 6);
        let hint = super::rate_limit_hint(&s).unwrap();
        assert!(hint.contains("6 of 10") && hint.contains("-distributor.ingestion-rate-limit-mb=0"), "{hint}");
    }

    #[test]
    fn the_default_source_is_found_from_a_subfolder_of_the_repository() {
        // Tests run in the crate folder (`perf/`): the repo root's testdata is found above it.
        let dir = crate::flags::default_source_dir();
        assert!(dir.is_dir() && dir.ends_with("testdata/pprof"), "{}", dir.display());
    }
}
