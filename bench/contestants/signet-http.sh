# Signet in HTTP mode as a contestant of ../shared/bench/mtls-pair.sh: the
# outbound listener balances each request (peak-EWMA, one endpoint here)
# over a pooled HTTP/2 mTLS connection; the inbound listener authorizes each
# request and forwards it over pooled HTTP/1.1. Compare with `signet` (TCP
# mode) for the cost of per-request balancing:
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet signet_http

start_signet_http() {
  CONF_VERSION="$(signet_version) (protocol = http both sides)"
  CONF_POOLING="L7: one pooled HTTP/2 mTLS connection to the endpoint; pooled HTTP/1.1 to the backend"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy per request"
  signet_pair signet-http 'protocol = "http"
max_pending_requests = 100000' 'protocol = "http"'
}
stop_signet_http() { stop_spawned; }
CONTESTANTS+=(signet_http)
