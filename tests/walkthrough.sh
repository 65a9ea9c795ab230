#!/usr/bin/env bash
# Runs the README's two-host walkthrough exactly as written: the fenced block
# between <!-- walkthrough:begin --> and <!-- walkthrough:end --> is extracted
# and run with `signet` on PATH. Two network namespaces joined by a veth pair
# play host A (the CA) and host B (agent, proxies, app). Everything it
# creates is removed on exit.
#
# Skips loudly (exit 0) when namespaces cannot be created, unless
# SIGNET_REQUIRE_NETNS=1 (set by .ci/run), where that is a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
SIGNET_BIN=${SIGNET_BIN:-$here/target/debug/signet}

skip() {
  if [[ ${SIGNET_REQUIRE_NETNS:-0} == 1 ]]; then
    echo "walkthrough: FAILED: $1 (SIGNET_REQUIRE_NETNS=1)" >&2
    exit 1
  fi
  echo "!!!!!! walkthrough: SKIPPED: $1 !!!!!!" >&2
  exit 0
}
[[ $(id -u) == 0 ]] || skip "needs root to create network namespaces"
for tool in ip curl setpriv python3; do
  command -v "$tool" >/dev/null || skip "$tool is not installed"
done
ip netns add signet-probe 2>/dev/null || skip "cannot create network namespaces here"
ip netns del signet-probe

W=$(mktemp -d /tmp/signet-walkthrough.XXXXXX)
chmod 755 "$W"
mkdir -p "$W/bin"
cp "$SIGNET_BIN" "$W/bin/signet"
chmod 755 "$W/bin/signet"
export PATH="$W/bin:$PATH" W

cleanup() {
  status=$?
  for ns in signet-a signet-b; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  sleep 0.5
  for ns in signet-a signet-b; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  if [[ $status != 0 ]]; then
    echo "walkthrough: FAILED (exit $status); logs:" >&2
    for f in "$W"/a/*.log "$W"/b/*.log; do [[ -f $f ]] && { echo "== $f" >&2; tail -5 "$f" >&2; }; done
  fi
  rm -rf "$W"
  exit "$status"
}
trap cleanup EXIT
# Leftovers of an interrupted run.
ip netns del signet-a 2>/dev/null || true
ip netns del signet-b 2>/dev/null || true

script=$(awk '/<!-- walkthrough:begin -->/{on=1; next} /<!-- walkthrough:end -->/{on=0} on && !/^```/' "$here/README.md")
[[ -n $script ]] || { echo "walkthrough: no walkthrough block in README.md" >&2; exit 1; }
bash -euo pipefail -c "$script"
echo "walkthrough: passed"
