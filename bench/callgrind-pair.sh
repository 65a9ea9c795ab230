#!/usr/bin/env bash
# Instructions per request of a Signet sidecar pair, counted by valgrind's
# callgrind (repeatable on a noisy machine, unlike timings). Reuses the
# configuration and certificates ../shared/bench/mtls-pair.sh left in
# $BENCH_DIR/run (run it once with the contestant first), starts the backend
# nginx and the two proxies under callgrind, zeroes the counters after a
# warm-up, drives PHASE with wrk, and prints instructions per request of
# each side.
#
#   bench/callgrind-pair.sh signet|signet-tunnel keepalive|close [SECONDS]
set -euo pipefail
CONTESTANT=${1:?signet or signet-tunnel}
PHASE=${2:?keepalive or close}
SECONDS_RUN=${3:-10}
BENCH_DIR=${BENCH_DIR:-/tmp/mtls-bench}
R=$BENCH_DIR/run
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The slim sidecar build when present (as the harness contestants do);
# SIGNET_RELEASE=1: `signet proxy run` of the release build (to compare
# commits built alike).
if [[ -x $ROOT/target/sidecar/signet-proxy && -z ${SIGNET_RELEASE:-} ]]; then
  BIN=$ROOT/target/sidecar/signet-proxy; RUN=()
else
  BIN=$ROOT/target/release/signet; RUN=(proxy run)
fi
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; sleep 2; pkill -f "nginx -p $R/backend" || true; }
trap cleanup EXIT
[[ -f $R/$CONTESTANT-client.toml ]] || { echo "no $R/$CONTESTANT-client.toml: run mtls-pair.sh with ${CONTESTANT//-/_} first" >&2; exit 1; }
/usr/sbin/nginx -p "$R/backend" -c "$R/backend/nginx.conf" >/dev/null 2>&1 &
pids+=($!)
for side in server client; do
  SIGNET_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/$side.%p" \
    "$BIN" "${RUN[@]}" --config "$R/$CONTESTANT-$side.toml" --worker-threads 1 >"$OUT/$side.log" 2>&1 &
  pids+=($!)
done
url=http://127.0.0.1:15001/
for _ in $(seq 60); do curl -s -o /dev/null --max-time 2 "$url" && break; sleep 1; done
header=()
[[ $PHASE == close ]] && header=(-H 'Connection: close')
wrk -t1 -c8 -d3s "${header[@]}" "$url" >/dev/null
callgrind_control -z "$BIN" >/dev/null
requests=$(wrk -t1 -c8 -d"${SECONDS_RUN}s" "${header[@]}" "$url" | awk '/requests in/ {print $1}')
callgrind_control -d "$BIN" >/dev/null
sleep 1
echo "callgrind files: $OUT" >&2
for side in server client; do
  ir=0
  for f in "$OUT"/$side.*; do
    [[ $f == *.log ]] && continue
    n=$(awk '/^summary:/ {print $2}' "$f" | tail -1)
    # The dump made by -d (the last one with a summary) holds the counts
    # since -z.
    [[ -n $n ]] && ir=$n
  done
  echo "$CONTESTANT $PHASE $side: $((ir / requests)) instructions/request ($requests requests)"
done
