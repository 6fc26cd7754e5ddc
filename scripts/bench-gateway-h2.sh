#!/usr/bin/env bash
# Compares `aviary gateway` with HAProxy as HTTP/2 (h2c, prior knowledge) front ends of one
# HTTP/1.1 origin (an nginx serving 128 bytes), each proxy with one thread, with h2load on
# 127.0.0.1: interleaved rounds, medians (issue 4, HTTP/2 milestone: requests/s >= 0.5x HAProxy).
#   scripts/bench-gateway-h2.sh [requests per run, default 200000] [connections, default 20]
#                               [streams per connection, default 10] [rounds, default 3]
#   AVIARY_BIN=path/to/aviary scripts/bench-gateway-h2.sh   # skip the release build
#   AVIARY_OLD_BIN=path/to/older/aviary ...   # A/B: that binary runs as a third proxy in the same
#                                             # interleaved rounds (new/old from one run)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
connections=${2:-20}
streams=${3:-10}
rounds=${4:-3}
# Installs what it lacks from Debian's packages.
source scripts/install-missing.sh
install_missing h2load:nghttp2-client nginx:nginx haproxy:haproxy curl:curl

if [ -n "${AVIARY_BIN:-}" ]; then
  aviary=$AVIARY_BIN
else
  swift build -c release --product aviary >/dev/null
  aviary="$(swift build -c release --show-bin-path)/aviary"
fi

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tmp"
small=$(printf '%0128d' 0)

cat >"$work/origin.conf" <<CONF
user root; worker_processes 1; daemon off; error_log $work/nginx.err warn; pid $work/origin.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/tmp; proxy_temp_path $work/tmp;
  fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:8311;
    location = /small { default_type text/plain; return 200 "$small"; } } }
CONF
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend proxy
  bind 127.0.0.1:8313 proto h2
  default_backend origin
backend origin
  http-reuse always
  server origin 127.0.0.1:8311
CONF
for port in 8314 8315; do
  cat >"$work/gateway-$port.yaml" <<CONF
listen: {address: 127.0.0.1:$port, http2: true, max_concurrent_streams: 100}
clusters: {origin: {endpoints: [127.0.0.1:8311]}}
routes: [{match: {path_prefix: /}, cluster: origin}]
CONF
done

nginx -c "$work/origin.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
"$aviary" gateway --config "$work/gateway-8314.yaml" --threads 1 2>/dev/null & pids+=($!)
names=(haproxy aviary)
ports=(8313 8314)
if [ -n "${AVIARY_OLD_BIN:-}" ]; then
  "$AVIARY_OLD_BIN" gateway --config "$work/gateway-8315.yaml" --threads 1 2>/dev/null & pids+=($!)
  names+=(old)
  ports+=(8315)
fi
for port in 8311 "${ports[@]}"; do
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/small" >/dev/null 2>&1 && break; sleep 0.1; done
done
for port in "${ports[@]}"; do
  curl -fsS --http2-prior-knowledge "http://127.0.0.1:$port/small" >/dev/null
done

run() { # port -> requests_per_second
  h2load -n"$requests" -c"$connections" -m"$streams" -t1 "http://127.0.0.1:$1/small" \
    | awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) print $i}'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

for port in "${ports[@]}"; do h2load -n20000 -c"$connections" -m"$streams" -t1 "http://127.0.0.1:$port/small" >/dev/null; done
declare -A rps=()
for round in $(seq 1 "$rounds"); do
  for i in "${!names[@]}"; do
    rps[$i]+="$(run "${ports[$i]}") "
  done
done
echo "== h2c /small: $connections connections x $streams streams, $rounds x $requests requests, medians" \
  "(load average: $(cut -d' ' -f1-3 /proc/loadavg))"
for i in "${!names[@]}"; do
  printf '%-8s %12.0f requests/s\n' "${names[$i]}" "$(median ${rps[$i]})"
done
for i in "${!names[@]}"; do echo "${names[$i]} rounds: ${rps[$i]}"; done
awk -v a="$(median ${rps[1]})" -v h="$(median ${rps[0]})" 'BEGIN {printf "aviary / haproxy: %.2fx\n", a / h}'
if [ -n "${AVIARY_OLD_BIN:-}" ]; then
  awk -v a="$(median ${rps[1]})" -v o="$(median ${rps[2]})" -v h="$(median ${rps[0]})" \
    'BEGIN {printf "old / haproxy: %.2fx\naviary / old: %.2fx\n", o / h, a / o}'
fi
