use mimalloc::MiMalloc;

/// mimalloc, its allocations sampled when self-profiling is on (`self_profiling::alloc`).
#[global_allocator]
static GLOBAL: kiln::self_profiling::alloc::Sampled<MiMalloc> = kiln::self_profiling::alloc::Sampled(MiMalloc);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Pyroscope's `-version` (a Go bool flag, so `--version` and `-version=true` too):
    // print the build's version, branch, revision and date, and exit 0.
    let version_flags = ["-version", "--version", "-version=true", "--version=true"];
    if args.iter().any(|a| version_flags.contains(&a.as_str())) {
        print!("{}", kiln::api::ops::version_text());
        return;
    }
    if args.iter().any(|a| a == "-h" || a == "--help" || a == "-help") {
        println!("kiln: a Pyroscope-compatible continuous profiling database.\n\nFlags use Pyroscope's names, e.g. -server.http-listen-port=4040 -storage.path=./data -shards=N\n-auth.multitenancy-enabled -config.file=kiln.yaml. See README.md for the full list.");
        return;
    }
    let cfg = match kiln::config::Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: {e}");
            std::process::exit(2);
        }
    };
    kiln::log::init(cfg.log_level, cfg.log_format);
    for notice in cfg.notices() {
        tracing::warn!("{notice}");
    }
    kiln::run(cfg);
}
