# Signet with the tunnel as a contestant of ../shared/bench/mtls-pair.sh:
# the outbound listener carries each app connection as an HTTP/2 CONNECT
# stream over pooled mTLS connections to the inbound proxy's tunnel listener
# (HBONE-style), so a new app connection costs a stream, not a handshake.
# Bytes stay L4 (no HTTP parsing); policy is checked per stream.
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet signet_tunnel haproxy haproxy_http nginx

start_signet_tunnel() {
  CONF_VERSION="$(signet_version) (tunnel = true)"
  CONF_POOLING="L4 over pooled HTTP/2 mTLS: CONNECT stream per downstream conn, 100 streams per tunnel conn"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per stream"
  signet_pair signet-tunnel 'tunnel = true
tunnel_port = 15008' 'tunnel_listen = "127.0.0.1:15008"'
}
stop_signet_tunnel() { stop_spawned; }
CONTESTANTS+=(signet_tunnel)
