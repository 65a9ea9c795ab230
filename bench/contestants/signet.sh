# Signet as a contestant of ../shared/bench/mtls-pair.sh (sourced by it).
#   cargo build --profile sidecar -p signet-proxy --bin signet-proxy
#   CONTESTANTS_DIR=bench/contestants ../shared/bench/mtls-pair.sh direct signet haproxy nginx stunnel4
# The proxies take the harness's static certificates (svid_file/svid_key_file/
# bundle_file) instead of an agent, so every contestant uses the same keys.
# Both sides check the peer's SPIFFE ID (URI SAN), which the peers cannot.

start_signet() {
  CONF_VERSION="$(signet_version)"
  CONF_POOLING="none (L4, 1 upstream TLS conn per downstream conn)"
  CONF_PEERCHECK="chain + SPIFFE ID: server spiffe://example.org/ns/default/sa/server, client allowed by policy"
  signet_pair signet '' ''
}
stop_signet() { stop_spawned; }
CONTESTANTS+=(signet)
