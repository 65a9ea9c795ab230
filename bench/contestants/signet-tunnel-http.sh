# Signet with the tunnel, HTTP inside, as a contestant of
# ../shared/bench/mtls-pair.sh: the caller's proxy stays L4 (each app
# connection a CONNECT stream over pooled mTLS, no parsing), the inbound
# proxy reads HTTP/1.1 in each stream (policy per request) and forwards over
# pooled HTTP/1.1 connections to the app, so no hop opens a connection per
# request but the app's own.
#   cargo build --release -p signet-cli
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet_tunnel signet_tunnel_http haproxy_http

TUNNEL_PORT=${TUNNEL_PORT:-15008}

start_signet_tunnel_http() {
  CONF_VERSION="$(signet_version) (tunnel = true; inbound protocol = http)"
  CONF_THREADS="1 tokio worker thread per side"
  CONF_POOLING="client L4 over pooled HTTP/2 mTLS (CONNECT stream per downstream conn); server parses HTTP/1.1 in the stream, pooled HTTP/1.1 to the backend"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per request"
  for who in client server; do
    openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$who.key" -out "$RUN_DIR/$who.p8.key"
  done
  mkdir -p "$RUN_DIR/policies-tunnel-http"
  cat >"$RUN_DIR/policies-tunnel-http/bench.toml" <<POLICY
[[allow]]
to = "spiffe://example.org/ns/default/sa/server"
from = ["spiffe://example.org/ns/default/sa/client"]
POLICY
  cat >"$RUN_DIR/signet-tunnel-http-client.toml" <<CONF
svid_file = "$CERTS/client.crt"
svid_key_file = "$RUN_DIR/client.p8.key"
bundle_file = "$CERTS/ca.crt"
admin_listen = "127.0.0.1:0"
[[outbound]]
listen = "127.0.0.1:$CLIENT_PORT"
upstream = "127.0.0.1:$SERVER_PORT"
server_id = "spiffe://example.org/ns/default/sa/server"
tunnel = true
tunnel_port = $TUNNEL_PORT
CONF
  cat >"$RUN_DIR/signet-tunnel-http-server.toml" <<CONF
svid_file = "$CERTS/server.crt"
svid_key_file = "$RUN_DIR/server.p8.key"
bundle_file = "$CERTS/ca.crt"
policy_dir = "$RUN_DIR/policies-tunnel-http"
admin_listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:$SERVER_PORT"
forward_to = "127.0.0.1:$BACKEND_PORT"
protocol = "http"
tunnel_listen = "127.0.0.1:$TUNNEL_PORT"
CONF
  signet_spawn client signet-tunnel-http-client "$RUN_DIR/signet-tunnel-http-client.toml"
  signet_spawn server signet-tunnel-http-server "$RUN_DIR/signet-tunnel-http-server.toml"
}
stop_signet_tunnel_http() { stop_spawned; }
CONTESTANTS+=(signet_tunnel_http)
