# Signet with the tunnel as a contestant of ../shared/bench/mtls-pair.sh:
# the outbound listener carries each app connection as an HTTP/2 CONNECT
# stream over pooled mTLS connections to the inbound proxy's tunnel listener
# (HBONE-style), so a new app connection costs a stream, not a handshake.
# Bytes stay L4 (no HTTP parsing); policy is checked per stream.
#   cargo build --release -p signet-cli
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet signet_tunnel haproxy haproxy_http nginx
# (reuses the static certificates, as signet.sh does).

TUNNEL_PORT=${TUNNEL_PORT:-15008}

start_signet_tunnel() {
  CONF_VERSION="$(signet_version) (tunnel = true)"
  CONF_THREADS="1 tokio worker thread per side"
  CONF_POOLING="L4 over pooled HTTP/2 mTLS: CONNECT stream per downstream conn, 100 streams per tunnel conn"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per stream"
  for who in client server; do
    openssl pkcs8 -topk8 -nocrypt -in "$CERTS/$who.key" -out "$RUN_DIR/$who.p8.key"
  done
  mkdir -p "$RUN_DIR/policies-tunnel"
  cat >"$RUN_DIR/policies-tunnel/bench.toml" <<POLICY
[[allow]]
to = "spiffe://example.org/ns/default/sa/server"
from = ["spiffe://example.org/ns/default/sa/client"]
POLICY
  cat >"$RUN_DIR/signet-tunnel-client.toml" <<CONF
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
  cat >"$RUN_DIR/signet-tunnel-server.toml" <<CONF
svid_file = "$CERTS/server.crt"
svid_key_file = "$RUN_DIR/server.p8.key"
bundle_file = "$CERTS/ca.crt"
policy_dir = "$RUN_DIR/policies-tunnel"
admin_listen = "127.0.0.1:0"
[inbound]
listen = "127.0.0.1:$SERVER_PORT"
forward_to = "127.0.0.1:$BACKEND_PORT"
tunnel_listen = "127.0.0.1:$TUNNEL_PORT"
CONF
  signet_spawn client signet-tunnel-client "$RUN_DIR/signet-tunnel-client.toml"
  signet_spawn server signet-tunnel-server "$RUN_DIR/signet-tunnel-server.toml"
}
stop_signet_tunnel() { stop_spawned; }
CONTESTANTS+=(signet_tunnel)
