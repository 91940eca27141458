//! Command-line flags, parsed by hand: `--name value`, `--name=value`, and bare `--flag` for
//! booleans (`--json`, `--gzip`), which also take an explicit `true`/`false`. A single leading
//! dash (`-url`, Go style like kiln's own flags) is accepted too.

use std::path::PathBuf;
use std::time::Duration;

/// What the run does: push profiles, or fire queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Push,
    Query,
}

/// How profiles are pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Connect unary over HTTP/1.1 to `/push.v1.PusherService/Push`.
    Push,
    /// gRPC over cleartext HTTP/2 (prior knowledge) to the same path.
    Grpc,
    /// Pyroscope's legacy `POST /ingest?format=pprof`.
    Ingest,
}

/// Which Connect codec query requests use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Proto,
    Json,
}

/// A synthetic profile type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileKind {
    /// `process_cpu`: samples:count and cpu:nanoseconds, period cpu:nanoseconds.
    Cpu,
    /// `memory`: alloc/inuse objects and space, period space:bytes.
    Memory,
}

impl ProfileKind {
    /// The `__name__` label a pushed series of this kind carries.
    pub fn metric_name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "process_cpu",
            ProfileKind::Memory => "memory",
        }
    }
}

/// Where the pushed profiles come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Every file under the directory that decodes as a (gzip or raw) pprof.
    Dir(PathBuf),
    /// Generated from the `--services ... --profile-types` knobs.
    Synthetic,
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Open loop: this many requests per second on a fixed schedule.
    Rate(f64),
    /// Closed loop: this many connections, each sending back to back.
    Connections(usize),
}

/// The shape of the pushed workload: series layout (applies to every source) and the
/// synthetic generator's knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub services: usize,
    pub series_per_service: usize,
    pub labels_per_series: usize,
    pub stack_depth: usize,
    pub unique_stacks: usize,
    pub functions: usize,
    pub samples_per_profile: usize,
    pub profile_types: Vec<ProfileKind>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            services: 10,
            series_per_service: 10,
            labels_per_series: 3,
            stack_depth: 24,
            unique_stacks: 2000,
            functions: 1000,
            samples_per_profile: 500,
            profile_types: vec![ProfileKind::Cpu],
        }
    }
}

/// Everything a run needs, after parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub url: String,
    pub mode: Mode,
    pub api: Api,
    pub source: Source,
    pub shape: Shape,
    pub gzip: bool,
    pub tenants: usize,
    /// The first tenant's number: tenants are `tenant-<offset>..`.
    pub tenant_offset: usize,
    pub load: Load,
    pub max_in_flight: usize,
    pub duration: Duration,
    pub timeout: Duration,
    pub threads: usize,
    pub json: bool,
    pub quiet: bool,
    pub range: Duration,
    pub encoding: Encoding,
    pub seed: u64,
}

/// Which tenants a run sends as (`--tenants`, `--tenant-offset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tenants {
    pub count: usize,
    pub offset: usize,
}

impl Tenants {
    /// The tenant of request `k`: `tenant-<offset + k mod count>`, none when `count` is 0.
    pub fn nth(self, k: u64) -> Option<String> {
        (self.count > 0).then(|| format!("tenant-{}", self.offset as u64 + k % self.count as u64))
    }
}

impl Config {
    pub fn tenants(&self) -> Tenants {
        Tenants { count: self.tenants, offset: self.tenant_offset }
    }
}

impl Default for Config {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Config {
            url: "http://127.0.0.1:4040".to_string(),
            mode: Mode::Push,
            api: Api::Push,
            source: Source::Dir(default_source_dir()),
            shape: Shape::default(),
            gzip: true,
            tenants: 0,
            tenant_offset: 0,
            load: Load::Connections(threads * 4),
            max_in_flight: 1024,
            duration: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            threads,
            json: false,
            quiet: false,
            range: Duration::from_secs(3600),
            encoding: Encoding::Proto,
            seed: 1,
        }
    }
}

/// The vendored `testdata/pprof` of the repository the working directory is in: looked for
/// in the working directory and its parents (`perf/` runs find the repo root's), never at
/// a path compiled in. The relative path when nothing is found (the run then says so).
pub fn default_source_dir() -> PathBuf {
    let relative = PathBuf::from("testdata/pprof");
    let found =
        std::env::current_dir().ok().and_then(|cwd| cwd.ancestors().map(|d| d.join(&relative)).find(|d| d.is_dir()));
    found.unwrap_or(relative)
}

/// The result of parsing: run, or print the help.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Help,
    Run(Box<Config>),
}

pub const HELP: &str = "\
kiln-load: load generator for Pyroscope-compatible profiling servers

USAGE: kiln-load [FLAGS]    (flags as --name value or --name=value)

Target
  --url URL                 server base URL, http only [http://127.0.0.1:4040]
  --tenants N               send X-Scope-OrgID tenant-0..tenant-N-1, rotating; 0 = none [0]
  --tenant-offset K         number the tenants from K: tenant-K..tenant-(K+N-1) [0]
  --timeout DUR             per-request timeout [10s]

What to send
  --mode push|query         push profiles, or fire a query mix [push]
  --api push|grpc|ingest    push: Connect over HTTP/1.1; grpc: gRPC over h2c; ingest: legacy
                            POST /ingest?format=pprof [push]
  --gzip true|false         gzip the raw pprof bodies [true]
  --source DIR|synthetic    pprof files (gzip or raw, sniffed) under DIR, or generated profiles
                            [testdata/pprof]
  --services N              services (service_name values) [10]
  --series-per-service N    series per service [10]
  --labels-per-series N     extra labels per series (label_0 makes series distinct) [3]
  --stack-depth N           synthetic: frames per stack [24]
  --unique-stacks N         synthetic: distinct stacks [2000]
  --functions N             synthetic: distinct functions [1000]
  --samples-per-profile N   synthetic: samples per profile [500]
  --profile-types LIST      synthetic: cpu, memory or cpu,memory [cpu]
  --seed N                  seed of the synthetic generator and the query mix [1]

Query mode (--mode query)
  --range DUR               time range of every query, ending now [1h]
  --encoding proto|json     Connect codec of querier.v1 requests [proto]
                            mix: 78% SelectMergeProfile, 15% /pyroscope/render,
                            3% SelectMergeStacktraces, 2% LabelNames, 2% Series

Load
  --rate N                  open loop: N requests (profiles) per second on a fixed schedule;
                            latency counts from the scheduled start (no coordinated omission)
  --max-in-flight N         open loop: cap on concurrent requests [1024]
  --connections N           closed loop: N connections sending back to back [4 x threads]
  --duration DUR            how long to send (e.g. 500ms, 30s, 5m, 1h) [60s]
  --threads N               executor threads, one monoio runtime each [all cores]

Output
  --json                    print the final report as one JSON object, the last line of stdout
  --quiet                   no progress line on stderr
  -h, --help                this text
";

const BOOL_FLAGS: &[&str] = &["json", "gzip", "quiet"];
const VALUE_FLAGS: &[&str] = &[
    "url",
    "mode",
    "api",
    "encoding",
    "source",
    "profile-types",
    "services",
    "series-per-service",
    "labels-per-series",
    "stack-depth",
    "unique-stacks",
    "functions",
    "samples-per-profile",
    "tenants",
    "tenant-offset",
    "rate",
    "connections",
    "max-in-flight",
    "threads",
    "duration",
    "timeout",
    "range",
    "seed",
];

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut config = Config::default();
    let mut load = LoadFlags::default();
    let mut it = args.into_iter().peekable();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" || arg == "-help" {
            return Ok(Parsed::Help);
        }
        let (name, inline) = split_flag(&arg)?;
        if BOOL_FLAGS.contains(&name) {
            let value = match inline {
                Some(v) => parse_bool(name, &v)?,
                None => match it.next_if(|v| v == "true" || v == "false") {
                    Some(v) => parse_bool(name, &v)?,
                    None => true,
                },
            };
            match name {
                "json" => config.json = value,
                "gzip" => config.gzip = value,
                _ => config.quiet = value,
            }
            continue;
        }
        if !VALUE_FLAGS.contains(&name) {
            return Err(format!("unknown flag --{name} (see --help)"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("flag --{name} needs a value"))?,
        };
        set_value(&mut config, &mut load, name, value)?;
    }
    finish(config, load).map(|c| Parsed::Run(Box::new(c)))
}

/// The flags that choose the load model, decided once all flags are read.
#[derive(Default)]
struct LoadFlags {
    rate: Option<f64>,
    connections: Option<usize>,
}

/// A flag's name (after `--` or `-`) and its value if given inline (`--name=value`).
fn split_flag(arg: &str) -> Result<(&str, Option<String>), String> {
    let body = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .ok_or_else(|| format!("unexpected argument {arg:?} (flags start with --)"))?;
    Ok(match body.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (body, None),
    })
}

/// Applies one flag of `VALUE_FLAGS`.
fn set_value(config: &mut Config, load: &mut LoadFlags, name: &str, value: String) -> Result<(), String> {
    match name {
        "url" => config.url = value,
        "mode" | "api" | "encoding" => set_choice(config, name, &value)?,
        "source" => {
            config.source = if value == "synthetic" { Source::Synthetic } else { Source::Dir(PathBuf::from(value)) }
        }
        "profile-types" => config.shape.profile_types = parse_profile_types(&value)?,
        "services" => config.shape.services = parse_count(name, &value, 1)?,
        "series-per-service" => config.shape.series_per_service = parse_count(name, &value, 1)?,
        "labels-per-series" => config.shape.labels_per_series = parse_count(name, &value, 0)?,
        "stack-depth" => config.shape.stack_depth = parse_count(name, &value, 1)?,
        "unique-stacks" => config.shape.unique_stacks = parse_count(name, &value, 1)?,
        "functions" => config.shape.functions = parse_count(name, &value, 1)?,
        "samples-per-profile" => config.shape.samples_per_profile = parse_count(name, &value, 1)?,
        "tenants" => config.tenants = parse_count(name, &value, 0)?,
        "tenant-offset" => config.tenant_offset = parse_count(name, &value, 0)?,
        "rate" => {
            let r: f64 = value.parse().map_err(|_| format!("--rate needs a number, not {value:?}"))?;
            if !(r > 0.0 && r.is_finite()) {
                return Err(format!("--rate must be > 0, not {value:?}"));
            }
            load.rate = Some(r);
        }
        "connections" => load.connections = Some(parse_count(name, &value, 1)?),
        "max-in-flight" => config.max_in_flight = parse_count(name, &value, 1)?,
        "threads" => config.threads = parse_count(name, &value, 1)?,
        "duration" => config.duration = parse_duration(&value)?,
        "timeout" => config.timeout = parse_duration(&value)?,
        "range" => config.range = parse_duration(&value)?,
        "seed" => config.seed = value.parse().map_err(|_| format!("--seed needs an integer, not {value:?}"))?,
        _ => return Err(format!("unknown flag --{name} (see --help)")),
    }
    Ok(())
}

/// The flags that pick one of a few words: --mode, --api, --encoding.
fn set_choice(config: &mut Config, name: &str, value: &str) -> Result<(), String> {
    match (name, value) {
        ("mode", "push") => config.mode = Mode::Push,
        ("mode", "query") => config.mode = Mode::Query,
        ("mode", _) => return Err(format!("--mode must be push or query, not {value:?}")),
        ("api", "push" | "connect") => config.api = Api::Push,
        ("api", "grpc") => config.api = Api::Grpc,
        ("api", "ingest") => config.api = Api::Ingest,
        ("api", _) => return Err(format!("--api must be push, grpc or ingest, not {value:?}")),
        ("encoding", "proto") => config.encoding = Encoding::Proto,
        ("encoding", "json") => config.encoding = Encoding::Json,
        _ => return Err(format!("--encoding must be proto or json, not {value:?}")),
    }
    Ok(())
}

/// The load model and the checks that need every flag.
fn finish(mut config: Config, load: LoadFlags) -> Result<Config, String> {
    config.load = match (load.rate, load.connections) {
        (Some(_), Some(_)) => return Err("use either --rate (open loop) or --connections (closed loop)".into()),
        (Some(r), None) => Load::Rate(r),
        (None, Some(c)) => Load::Connections(c),
        (None, None) => Load::Connections(config.threads * 4),
    };
    if let Load::Connections(c) = config.load {
        // More threads than connections would leave executors idle.
        config.threads = config.threads.min(c);
    }
    if config.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    if config.range.as_millis() < 1 {
        return Err("--range must be at least 1ms".into());
    }
    Ok(config)
}

fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("--{name} takes true or false, not {value:?}")),
    }
}

fn parse_count(name: &str, value: &str, min: usize) -> Result<usize, String> {
    let n: usize = value.parse().map_err(|_| format!("--{name} needs a whole number, not {value:?}"))?;
    if n < min {
        return Err(format!("--{name} must be at least {min}"));
    }
    Ok(n)
}

fn parse_profile_types(value: &str) -> Result<Vec<ProfileKind>, String> {
    let mut kinds = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = match part {
            "cpu" | "process_cpu" => ProfileKind::Cpu,
            "memory" | "mem" | "heap" => ProfileKind::Memory,
            _ => return Err(format!("unknown profile type {part:?} (cpu, memory)")),
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err("--profile-types needs at least one of cpu, memory".into());
    }
    Ok(kinds)
}

/// Parses `90`, `1.5s`, `500ms`, `2m`, `1h`, `1m30s` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {value:?} (e.g. 500ms, 30s, 5m, 1h)");
    let text = value.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs).ok_or_else(bad);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds(total).ok_or_else(bad)
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn test_flags_both_spellings() {
        let c = run(&["--url", "http://h:1", "--duration=5s", "--rate=200", "--threads", "3"]).unwrap();
        assert_eq!(c.url, "http://h:1");
        assert_eq!(c.duration, Duration::from_secs(5));
        assert_eq!(c.load, Load::Rate(200.0));
        assert_eq!(c.threads, 3);
    }

    #[test]
    fn test_flags_bools_and_values() {
        let c = run(&["--json", "--gzip", "false", "--api", "grpc", "--tenants=4"]).unwrap();
        assert!(c.json);
        assert!(!c.gzip);
        assert_eq!(c.api, Api::Grpc);
        assert_eq!(c.tenants, 4);
        assert_eq!(run(&["--tenants=2", "--tenant-offset=3"]).unwrap().tenant_offset, 3);
        let c = run(&["--gzip=true", "--json", "--mode", "query"]).unwrap();
        assert!(c.gzip);
        assert!(c.json);
        assert_eq!(c.mode, Mode::Query);
        // A bool flag does not swallow the next flag.
        let c = run(&["--json", "--connections", "7", "--threads", "2"]).unwrap();
        assert!(c.json);
        assert_eq!(c.load, Load::Connections(7));
        assert_eq!(c.threads, 2);
    }

    #[test]
    fn test_flags_synthetic_shape() {
        let c = run(&[
            "--source",
            "synthetic",
            "--services=3",
            "--series-per-service",
            "4",
            "--labels-per-series",
            "0",
            "--stack-depth",
            "9",
            "--unique-stacks",
            "50",
            "--functions",
            "40",
            "--samples-per-profile",
            "20",
            "--profile-types",
            "cpu,memory",
        ])
        .unwrap();
        assert_eq!(c.source, Source::Synthetic);
        assert_eq!(c.shape.services, 3);
        assert_eq!(c.shape.series_per_service, 4);
        assert_eq!(c.shape.labels_per_series, 0);
        assert_eq!(c.shape.stack_depth, 9);
        assert_eq!(c.shape.unique_stacks, 50);
        assert_eq!(c.shape.functions, 40);
        assert_eq!(c.shape.samples_per_profile, 20);
        assert_eq!(c.shape.profile_types, vec![ProfileKind::Cpu, ProfileKind::Memory]);
        let c = run(&["--source", "/tmp/x"]).unwrap();
        assert_eq!(c.source, Source::Dir(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn test_flags_errors_and_help() {
        assert_eq!(parse(["--help".to_string()]).unwrap(), Parsed::Help);
        assert!(run(&["--nope", "1"]).unwrap_err().contains("unknown flag"));
        assert!(run(&["--nope"]).unwrap_err().contains("unknown flag"));
        assert!(run(&["--rate"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--rate", "0"]).is_err());
        assert!(run(&["--rate", "5", "--connections", "2"]).is_err());
        assert!(run(&["--api", "soap"]).is_err());
        assert!(run(&["--profile-types", "gpu"]).is_err());
        assert!(run(&["--gzip=maybe"]).is_err());
        assert!(run(&["stray"]).is_err());
        assert!(run(&["--duration", "0s"]).is_err());
    }

    #[test]
    fn test_flags_connections_caps_threads() {
        let c = run(&["--connections", "1", "--threads", "8"]).unwrap();
        assert_eq!(c.threads, 1);
    }

    #[test]
    fn test_parse_duration_units() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
