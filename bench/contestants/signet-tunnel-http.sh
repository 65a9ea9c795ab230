# Signet with the tunnel, HTTP inside, as a contestant of
# ../shared/bench/mtls-pair.sh: the caller's proxy stays L4 (each app
# connection a CONNECT stream over pooled mTLS, no parsing), the inbound
# proxy reads HTTP/1.1 in each stream (policy per request) and forwards over
# pooled HTTP/1.1 connections to the app, so no hop opens a connection per
# request but the app's own.
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet_tunnel signet_tunnel_http haproxy_http

start_signet_tunnel_http() {
  CONF_VERSION="$(signet_version) (tunnel = true; inbound protocol = http)"
  CONF_POOLING="client L4 over pooled HTTP/2 mTLS (CONNECT stream per downstream conn); server parses HTTP/1.1 in the stream, pooled HTTP/1.1 to the backend"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per request"
  signet_pair signet-tunnel-http 'tunnel = true
tunnel_port = 15008' 'tunnel_listen = "127.0.0.1:15008"
protocol = "http"'
}
stop_signet_tunnel_http() { stop_spawned; }
CONTESTANTS+=(signet_tunnel_http)
