#!/usr/bin/env bash
# Runs every cargo-fuzz target of the worker, one after another, for SECONDS each
# (default 60), on the nightly toolchain, niced so the machine stays usable.
#
#   e2e/fuzz.sh [seconds] [target...]      targets: dsdata json rules (default: all)
#   FUZZ_JOBS=1 FUZZ_CMIN=1 e2e/fuzz.sh 600  also minimizes each corpus afterwards
#
# The corpus lives in worker/fuzz/corpus/<target>/ and grows as the fuzzer finds new
# coverage; crashes land in worker/fuzz/artifacts/<target>/ and fail the script. Each
# crash becomes a regression unit test next to the code it broke. Needs cargo-fuzz
# (`cargo install cargo-fuzz`) and a nightly toolchain.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../worker"
seconds="${1:-60}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(dsdata json rules)

command -v cargo-fuzz >/dev/null || {
  echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 1
}

status=0
for target in "${targets[@]}"; do
  dict=()
  [[ -f "fuzz/$target.dict" ]] && dict=("-dict=fuzz/$target.dict")
  log="fuzz/target/$target.log"
  mkdir -p fuzz/target
  echo "==> fuzz $target for ${seconds}s (log $log)" >&2
  start=$(date +%s)
  if nice -n 10 cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  echo "    $target: $result in $(($(date +%s) - start))s, $runs executions" >&2
  if [[ $result == FAILED ]]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
  elif [[ "${FUZZ_CMIN:-0}" == 1 ]]; then
    nice -n 10 cargo +nightly fuzz cmin "$target" "fuzz/corpus/$target" >>"$log" 2>&1
  fi
done
exit "$status"
