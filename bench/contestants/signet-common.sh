# Shared by the Signet contestants (sourced with them by mtls-pair.sh).
# The proxy binary: the slim sidecar build when present
#   cargo build --profile sidecar -p signet-proxy --bin signet-proxy
# (what a deployment runs beside each workload), else `signet proxy run`
# from the release build.
SIGNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SIGNET_BIN=${SIGNET_BIN:-$SIGNET_ROOT/target/release/signet}
SIGNET_PROXY_BIN=${SIGNET_PROXY_BIN:-$SIGNET_ROOT/target/sidecar/signet-proxy}

# Prints the command that runs a proxy, one word per line.
signet_proxy_cmd() {
  if [[ -x $SIGNET_PROXY_BIN ]]; then
    echo "$SIGNET_PROXY_BIN"
  else
    printf '%s\n' "$SIGNET_BIN" proxy run
  fi
}

# The version line for CONF_VERSION.
signet_version() {
  local cmd
  mapfile -t cmd < <(signet_proxy_cmd)
  echo "$("${cmd[0]}" --version 2>/dev/null | head -1) ($(basename "${cmd[0]}"))"
}

# Starts a Signet pair on the harness's static certificates:
#   signet_pair NAME CLIENT_OUTBOUND_KEYS SERVER_INBOUND_KEYS
# NAME names the config files; the extra keys (TOML lines) go into the
# client's [[outbound]] and the server's [inbound] tables.
signet_pair() {
  local name=$1 client_extra=$2 server_extra=$3 side cmd
  CONF_THREADS="1 tokio worker thread per side"
  # rustls wants PKCS#8 keys.
  for side in client server; do
    openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$side.key" -out "$RUN_DIR/$side.p8.key"
  done
  mkdir -p "$RUN_DIR/policies-$name"
  cat >"$RUN_DIR/policies-$name/bench.toml" <<POLICY
[[allow]]
to = "spiffe://example.org/ns/default/sa/server"
from = ["spiffe://example.org/ns/default/sa/client"]
POLICY
  cat >"$RUN_DIR/$name-client.toml" <<CONF
svid_file = "$CERTS/client.crt"
svid_key_file = "$RUN_DIR/client.p8.key"
bundle_file = "$CERTS/ca.crt"
admin_listen = "127.0.0.1:0"
[[outbound]]
listen = "127.0.0.1:$CLIENT_PORT"
upstream = "127.0.0.1:$SERVER_PORT"
server_id = "spiffe://example.org/ns/default/sa/server"
$client_extra
CONF
  cat >"$RUN_DIR/$name-server.toml" <<CONF
svid_file = "$CERTS/server.crt"
svid_key_file = "$RUN_DIR/server.p8.key"
bundle_file = "$CERTS/ca.crt"
policy_dir = "$RUN_DIR/policies-$name"
admin_listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:$SERVER_PORT"
forward_to = "127.0.0.1:$BACKEND_PORT"
$server_extra
CONF
  for side in client server; do
    mapfile -t cmd < <(signet_proxy_cmd)
    SIGNET_LOG=warn spawn "$side" "$name-$side" "${cmd[@]}" --config "$RUN_DIR/$name-$side.toml" --worker-threads 1
  done
}
