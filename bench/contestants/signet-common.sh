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

# Starts one side: signet_spawn client|server NAME CONFIG
signet_spawn() {
  local cmd
  mapfile -t cmd < <(signet_proxy_cmd)
  SIGNET_LOG=warn spawn "$1" "$2" "${cmd[@]}" --config "$3" --worker-threads 1
}
