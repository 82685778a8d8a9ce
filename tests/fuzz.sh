#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz: libFuzzer, on nightly): runs every
# target in sidecar/fuzz for SECONDS (default 30) from its committed corpus
# in sidecar/fuzz/corpus/<target>; new inputs go to target/fuzz/new, so the
# tree stays clean. A crash stops the script with the input that caused
# it in sidecar/fuzz/artifacts/<target>. Installs nightly and cargo-fuzz
# when missing. `tests/fuzz.sh 3600 session` runs one target for an hour.
# FUZZ_SEED fixes libFuzzer's seed (the test suite's short run uses one, so
# that it tries the same inputs on every machine); unset, each run differs.
# Targets named in FUZZ_REPLAY_ONLY only run their corpus, without mutating.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
only="${2:-}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The built-in plugins and the dashboard are wasm, built by the stable
# toolchain (nightly has no wasm targets here); the fuzz build reuses them.
cargo build --locked -p shardcar --lib
export SHARDCAR_WASM_PREBUILT=1
cd sidecar
# No sanitizer: the code is safe Rust (and pg_query's C), and libFuzzer's
# coverage guidance is what finds the inputs.
fuzz=(cargo +nightly fuzz run --sanitizer none --target-dir ../target/fuzz)
for target in $(cargo +nightly fuzz list); do
  if [[ -n "$only" && "$target" != "$only" ]]; then continue; fi
  new="../target/fuzz/new/$target"
  mkdir -p "$new" "fuzz/corpus/$target"
  how=(-max_total_time="$seconds")
  if [[ " ${FUZZ_REPLAY_ONLY:-} " == *" $target "* ]]; then
    how=(-runs=0)
    echo "replaying the corpus of $target"
  else
    echo "fuzzing $target for ${seconds}s"
  fi
  log="../target/fuzz/$target.log"
  status=0
  "${fuzz[@]}" "$target" "$new" "fuzz/corpus/$target" -- \
    "${how[@]}" -seed="${FUZZ_SEED:-0}" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|thread .* panicked|Test unit written)' "$log" || true
  if [[ "$status" != 0 ]]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); its input is under sidecar/fuzz/artifacts/$target" >&2
    exit 1
  fi
done
