#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer coverage on the stable toolchain (no cargo-fuzz or
# nightly needed) and runs each for the given seconds (default 60).
# Usage: fuzz/run.sh [seconds] [target...]
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
shift || true
TARGETS=${*:-pprof wal_record wal_payload text_inputs rpc_frame gzip block_index block_symdb block_meta block_profiles query_wire replica_push cluster_inputs read_path_wire grafana_inputs jfr otlp}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the instrumentation off build scripts.
cargo build --release --target "$TRIPLE" $(for t in $TARGETS; do printf -- '--bin %s ' "$t"; done)
for t in $TARGETS; do
  mkdir -p corpus/$t artifacts/$t
  seeds=()
  [ "$t" = pprof ] && seeds=(../testdata/pprof/pyroscope/og-convert ../testdata/pprof/pyroscope/pkg-pprof)
  [ "$t" = jfr ] && seeds=(../testdata/jfr/jfr-parser)
  [ "$t" = otlp ] && seeds=(../testdata/otlp)
  [ "$t" = text_inputs ] && seeds=(../testdata/speedscope ../testdata/folded)
  # The wire goldens (hex text) are the seeds of the cluster's decoders, as bytes.
  golden=()
  [ "$t" = query_wire ] && golden=(../testdata/golden/wire/query_*.hex)
  [ "$t" = replica_push ] && golden=(../testdata/golden/wire/push_records.hex)
  [ "$t" = read_path_wire ] && golden=(../testdata/golden/wire/read_path_*.hex)
  for f in "${golden[@]}"; do
    printf '%b' "$(tr -d ' \n' < "$f" | sed 's/../\\x&/g')" > "corpus/$t/golden-$(basename "$f" .hex)"
  done
  echo "== $t"
  # -timeout: a generous wall budget per input (the memory and allocation budgets are
  # asserted by the targets themselves, see kiln::budget).
  ./target/"$TRIPLE"/release/$t -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -artifact_prefix=artifacts/$t/ corpus/$t "${seeds[@]}"
done
