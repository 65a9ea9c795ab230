# Signet in HTTP mode as a contestant of ../shared/bench/mtls-pair.sh: the
# outbound listener balances each request (peak-EWMA, one endpoint here)
# over a pooled HTTP/2 mTLS connection; the inbound listener authorizes each
# request and forwards it over pooled HTTP/1.1. Compare with `signet` (TCP
# mode) for the cost of per-request balancing:
#   cargo build --release -p signet-cli
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet signet_http
# (reuses the static certificates, as signet.sh does).


start_signet_http() {
  CONF_VERSION="$(signet_version) (protocol = http both sides)"
  CONF_THREADS="1 tokio worker thread per side"
  CONF_POOLING="L7: one pooled HTTP/2 mTLS connection to the endpoint; pooled HTTP/1.1 to the backend"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per request"
  for who in client server; do
    openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$who.key" -out "$RUN_DIR/$who.p8.key"
  done
  mkdir -p "$RUN_DIR/policies-http"
  cat >"$RUN_DIR/policies-http/bench.toml" <<POLICY
[[allow]]
to = "spiffe://example.org/ns/default/sa/server"
from = ["spiffe://example.org/ns/default/sa/client"]
POLICY
  cat >"$RUN_DIR/signet-http-client.toml" <<CONF
svid_file = "$CERTS/client.crt"
svid_key_file = "$RUN_DIR/client.p8.key"
bundle_file = "$CERTS/ca.crt"
admin_listen = "127.0.0.1:0"
[[outbound]]
listen = "127.0.0.1:$CLIENT_PORT"
upstream = "127.0.0.1:$SERVER_PORT"
server_id = "spiffe://example.org/ns/default/sa/server"
protocol = "http"
max_pending_requests = 100000
CONF
  cat >"$RUN_DIR/signet-http-server.toml" <<CONF
svid_file = "$CERTS/server.crt"
svid_key_file = "$RUN_DIR/server.p8.key"
bundle_file = "$CERTS/ca.crt"
policy_dir = "$RUN_DIR/policies-http"
admin_listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:$SERVER_PORT"
forward_to = "127.0.0.1:$BACKEND_PORT"
protocol = "http"
CONF
  signet_spawn client signet-http-client "$RUN_DIR/signet-http-client.toml"
  signet_spawn server signet-http-server "$RUN_DIR/signet-http-server.toml"
}
stop_signet_http() { stop_spawned; }
CONTESTANTS+=(signet_http)
