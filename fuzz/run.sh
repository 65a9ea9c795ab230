#!/usr/bin/env bash
# Runs Signet's cargo-fuzz targets, each for a bounded time, and prints one
# line per target: executions, coverage (edges), corpus size, result.
#
#   fuzz/run.sh                 # every target, 60 s each
#   fuzz/run.sh 600             # every target, 10 min each (nightly use)
#   fuzz/run.sh 30 csr policy_file
#
# Seeds: fuzz/seeds/<target>/, inputs that once crashed a target
# (fuzz/regressions/<target>/, each with a unit test), plus the third-party SPIFFE vectors in
# ../shared/conformance when present. The working corpus (fuzz/corpus/) and
# crash artifacts (fuzz/artifacts/) are not committed. Builds without a
# sanitizer (-s none): libFuzzer still finds panics, overflows in debug
# assertions, timeouts and leaks of memory limits; pass SANITIZER=address for
# ASan. Uses a nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
sanitizer=${SANITIZER:-none}

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz >/dev/null 2>&1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("${fuzz[@]}" list)
fi

"${fuzz[@]}" build -O -s "$sanitizer" >/dev/null 2>build.log || { cat build.log; exit 1; }
rm -f build.log

conformance=../../shared/conformance
status=0
printf '%-24s %12s %8s %8s %s\n' target executions edges corpus result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  # Inputs that once crashed a target stay in its corpus for good.
  cp -n regressions/"$t"/* "corpus/$t/" 2>/dev/null || true
  if [ "$t" = x509_svid_chain ] && [ -d "$conformance" ]; then
    find "$conformance" -type f ! -name '*.md' | while read -r f; do
      cp -n "$f" "corpus/$t/conformance-$(echo "$f" | tr / _)"
    done
  fi
  log="artifacts/$t/last-run.log"
  if "${fuzz[@]}" run -O -s "$sanitizer" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log and artifacts/$t/)"
    status=1
  fi
  stats=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo "${stats%% *}" | tr -d '#')
  cov=$(echo "$stats" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  corp=$(echo "$stats" | grep -oE 'corp: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  printf '%-24s %12s %8s %8s %s\n' "$t" "${runs:-?}" "$cov" "$corp" "$result"
done
exit $status
