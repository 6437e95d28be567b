#!/usr/bin/env bash
# The official openai Python client against the example gateway.
#
# Builds the gateway, starts it on a free loopback port with the primary model alone (so an
# outage reaches the client as a 503), installs the pinned openai package into a virtualenv
# and runs tests/python/openai_client.py. Then stops the gateway with Ctrl-C (SIGINT) and
# checks that it shut down cleanly.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${OPENAI_VENV:-target/openai-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --quiet --example gateway --features mock,http,openai
gateway="$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples/gateway"

log="$(mktemp)"
"$gateway" --port 0 --no-fallback --load-time-ms 1500 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

url=""
for _ in $(seq 1 300); do
  url="$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -n1 || true)"
  [ -n "$url" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log"
    echo "the gateway exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  cat "$log"
  echo "the gateway did not start listening" >&2
  exit 1
fi

if ! GATEWAY_URL="$url" "$venv/bin/python" tests/python/openai_client.py; then
  echo "--- gateway log ---" >&2
  cat "$log" >&2
  exit 1
fi

kill -INT "$pid"
if ! wait "$pid"; then
  cat "$log"
  echo "the gateway did not shut down cleanly on SIGINT" >&2
  exit 1
fi
grep -q "shutting down" "$log"
echo "gateway shut down cleanly"
