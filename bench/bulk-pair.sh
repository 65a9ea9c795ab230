#!/usr/bin/env bash
# Bulk throughput of one long download through a Signet pair, beside the
# same download direct: what the tunnel's windows and frame sizes allow a
# single stream. Runs in a network namespace of its own (run as root);
# reuses the configuration ../shared/bench/mtls-pair.sh left in
# $BENCH_DIR/run, with nginx serving a 256 MiB file on 127.0.0.1:18080.
#
#   bench/bulk-pair.sh [direct] [signet] [signet-tunnel] ...
# DELAY=1ms adds that delay to loopback (needs the kernel's sch_netem).
set -euo pipefail
if [[ -z ${BULK_IN_NETNS:-} ]]; then
  exec env BULK_IN_NETNS=1 unshare -n "$0" "$@"
fi
BENCH_DIR=${BENCH_DIR:-/tmp/mtls-bench}
R=$BENCH_DIR/run
W=$(mktemp -d)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SIGNET_BIN:-$ROOT/target/release/signet}
ip link set lo up
[[ -n ${DELAY:-} ]] && tc qdisc add dev lo root netem delay "$DELAY"
mkdir -p "$W/www" "$W/tmp"
# nginx workers run as nobody.
chmod 755 "$W" "$W/www"
head -c $((256 << 20)) /dev/urandom >"$W/www/big"
chmod 644 "$W/www/big"
cat >"$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/err.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/tmp/b; proxy_temp_path $W/tmp/p; fastcgi_temp_path $W/tmp/f; uwsgi_temp_path $W/tmp/u; scgi_temp_path $W/tmp/s;
  sendfile on;
  server { listen 127.0.0.1:18080; root $W/www; }
}
CONF
/usr/sbin/nginx -c "$W/nginx.conf" >/dev/null 2>&1 &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; rm -rf "$W"' EXIT
sleep 0.5
(($#)) || set -- direct signet signet-tunnel
for mode in "$@"; do
  url=http://127.0.0.1:15001/big
  pids=()
  if [[ $mode == direct ]]; then
    url=http://127.0.0.1:18080/big
  else
    for side in server client; do
      SIGNET_LOG=warn "$BIN" proxy run --config "$R/$mode-$side.toml" --worker-threads 1 >"$W/$side.log" 2>&1 &
      pids+=($!)
    done
    sleep 1
  fi
  speeds=()
  for _ in 1 2 3 4; do
    speeds+=("$(curl -s -o /dev/null -w '%{speed_download}' "$url" | awk '{printf "%.0f", $1/1e6}')")
  done
  echo "$mode: ${speeds[*]} MB/s"
  # (no pids for direct: a bare `wait` would wait for nginx)
  if ((${#pids[@]})); then
    kill -INT "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
  fi
done
