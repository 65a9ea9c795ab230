# Signet as a contestant of ../shared/bench/mtls-pair.sh (sourced by it).
#   cargo build --release -p signet-cli
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet haproxy nginx stunnel4
# The proxies take the harness's static certificates (svid_file/svid_key_file/
# bundle_file) instead of an agent, so every contestant uses the same keys.
# Both sides check the peer's SPIFFE ID (URI SAN), which the peers cannot.


start_signet() {
  CONF_VERSION="$(signet_version)"
  CONF_THREADS="1 tokio worker thread per side"
  CONF_POOLING="none (L4, 1 upstream TLS conn per downstream conn)"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy"
  # rustls wants PKCS#8 keys.
  for who in client server; do
    openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$who.key" -out "$RUN_DIR/$who.p8.key"
  done
  mkdir -p "$RUN_DIR/policies"
  cat >"$RUN_DIR/policies/bench.toml" <<POLICY
[[allow]]
to = "spiffe://example.org/ns/default/sa/server"
from = ["spiffe://example.org/ns/default/sa/client"]
POLICY
  cat >"$RUN_DIR/signet-client.toml" <<CONF
svid_file = "$CERTS/client.crt"
svid_key_file = "$RUN_DIR/client.p8.key"
bundle_file = "$CERTS/ca.crt"
admin_listen = "127.0.0.1:0"
[[outbound]]
listen = "127.0.0.1:$CLIENT_PORT"
upstream = "127.0.0.1:$SERVER_PORT"
server_id = "spiffe://example.org/ns/default/sa/server"
CONF
  cat >"$RUN_DIR/signet-server.toml" <<CONF
svid_file = "$CERTS/server.crt"
svid_key_file = "$RUN_DIR/server.p8.key"
bundle_file = "$CERTS/ca.crt"
policy_dir = "$RUN_DIR/policies"
admin_listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:$SERVER_PORT"
forward_to = "127.0.0.1:$BACKEND_PORT"
CONF
  signet_spawn client signet-client "$RUN_DIR/signet-client.toml"
  signet_spawn server signet-server "$RUN_DIR/signet-server.toml"
}
stop_signet() { stop_spawned; }
CONTESTANTS+=(signet)
