#!/usr/bin/env bash
# Compares `aviary gateway` with nginx and HAProxy as reverse proxies in front of one origin (an
# nginx serving a 128-byte and a 1 MiB response), each proxy with one worker/thread, with wrk on
# 127.0.0.1: keep-alive connections, interleaved rounds, medians. Prints requests/s, p99 and the
# p99 each proxy adds over the origin alone (issue 4 first milestone: requests/s >= 0.75x nginx,
# added p99 <= nginx's + 1 ms; 1 MiB throughput >= 0.8x nginx). Two more rows: `relay`, a bare
# SwiftNIO byte relay (Benchmarks/Sources/RelayFloor: each connection gets its own upstream
# connection, bytes pass unchanged), the floor of any NIO proxy; and, with AVIARY_BASE_BIN, a
# second gateway binary (an earlier build) for an A/B in the same run. Each row also gives the
# CPU time (user + system, from /proc) that the proxy's processes spent per request during its
# runs, and the user-space part of it: the cost of the proxy itself, which moves less between runs
# than requests/s on a shared machine. The system part (the sockets' kernel work) is about the same
# for every proxy, so the user part is where proxies differ.
#   scripts/bench-gateway.sh [seconds per run, default 10] [connections, default 50] [rounds, default 3]
#   AVIARY_BIN=path/to/aviary scripts/bench-gateway.sh   # skip the release build
#   AVIARY_BASE_BIN=path/to/old/aviary scripts/bench-gateway.sh   # add a row for another build
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
connections=${2:-50}
rounds=${3:-3}
# Installs what it lacks from Debian's packages.
source scripts/install-missing.sh
install_missing wrk:wrk nginx:nginx haproxy:haproxy curl:curl

if [ -n "${AVIARY_BIN:-}" ]; then
  aviary=$AVIARY_BIN  # a release build made elsewhere, e.g. with --scratch-path
else
  swift build -c release --product aviary >/dev/null
  aviary="$(swift build -c release --show-bin-path)/aviary"
fi

(cd Benchmarks && swift build -c release --product RelayFloor >/dev/null)
relay="$(cd Benchmarks && swift build -c release --show-bin-path)/RelayFloor"

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tmp"
head -c $((1 << 20)) /dev/urandom >"$work/large.bin"
small=$(printf '%0128d' 0)

nginx_common="user root; worker_processes 1; daemon off; error_log $work/nginx.err warn;"
temp_paths="client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;"

cat >"$work/origin.conf" <<CONF
$nginx_common pid $work/origin.pid;
events { worker_connections 4096; }
http { access_log off; $temp_paths keepalive_requests 1000000;
  server { listen 127.0.0.1:8301;
    location = /small { default_type text/plain; return 200 "$small"; }
    location = /large { alias $work/large.bin; } } }
CONF
cat >"$work/nginx.conf" <<CONF
$nginx_common pid $work/nginx.pid;
events { worker_connections 4096; }
http { access_log off; $temp_paths keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:8301; keepalive 64; }
  server { listen 127.0.0.1:8302;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
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
  bind 127.0.0.1:8303
  default_backend origin
backend origin
  http-reuse always
  server origin 127.0.0.1:8301
CONF
cat >"$work/gateway.yaml" <<CONF
listen: {address: 127.0.0.1:8304}
clusters: {origin: {endpoints: [127.0.0.1:8301]}}
routes: [{match: {path_prefix: /}, cluster: origin}]
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
"$aviary" gateway --config "$work/gateway.yaml" --threads 1 2>/dev/null & pids+=($!)
"$relay" 8305 8301 1 & pids+=($!)
names=(origin nginx haproxy aviary relay)
ports=(8301 8302 8303 8304 8305)
if [ -n "${AVIARY_BASE_BIN:-}" ]; then
  sed 's/8304/8306/' "$work/gateway.yaml" >"$work/gateway-base.yaml"
  "$AVIARY_BASE_BIN" gateway --config "$work/gateway-base.yaml" --threads 1 2>/dev/null & pids+=($!)
  names+=(base); ports+=(8306)
fi
for port in "${ports[@]}"; do
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/small" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/small" >/dev/null
  [ "$(curl -fsS "http://127.0.0.1:$port/large" | wc -c)" = $((1 << 20)) ] || { echo "port $port: bad /large" >&2; exit 1; }
done

clock_ticks=$(getconf CLK_TCK)
cpu_ticks() { # pid -> "user system" clock ticks of it and its children (nginx's worker)
  local user=0 system=0 pid u s
  for pid in "$1" $(pgrep -P "$1"); do
    read -r u s < <(awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$pid/stat")
    user=$((user + u)); system=$((system + s))
  done
  echo "$user $system"
}
run() { # port path pid -> "requests_per_second p99_ms transfer_MB_per_s cpu_us_per_request user_us_per_request"
  local out user0 system0 user1 system1
  read -r user0 system0 < <(cpu_ticks "$3")
  out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$1$2")
  read -r user1 system1 < <(cpu_ticks "$3")
  awk -v ticks=$((user1 + system1 - user0 - system0)) -v uticks=$((user1 - user0)) -v hz="$clock_ticks" '
    / requests in / {requests = $1}
    /^Requests\/sec:/ {rps = $2}
    /^Transfer\/sec:/ {t = $2; if (t ~ /GB$/) {sub(/GB$/, "", t); t = t * 1024} else if (t ~ /MB$/) {sub(/MB$/, "", t)} else if (t ~ /KB$/) {sub(/KB$/, "", t); t = t / 1024}}
    $1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v = v / 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v = v * 1000}; p99 = v}
    END {printf "%s %s %s %.2f %.2f\n", rps, p99, t, (requests > 0 ? ticks * 1e6 / hz / requests : 0),
      (requests > 0 ? uticks * 1e6 / hz / requests : 0)}' <<<"$out"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

for path in /small /large; do
  for port in "${ports[@]}"; do wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$port$path" >/dev/null; done  # warm-up
  declare -A rps=() p99=() mbs=() cpu=() usr=()
  for round in $(seq 1 "$rounds"); do
    # Each round starts one row later (the origin first in round 1, nginx first in round 2, ...),
    # so that no proxy always runs last, after the others have warmed or loaded the machine.
    for step in "${!names[@]}"; do
      i=$(((step + round - 1) % ${#names[@]}))
      read -r r p m c u < <(run "${ports[$i]}" "$path" "${pids[$i]}")
      rps[$i]+="$r "; p99[$i]+="$p "; mbs[$i]+="$m "; cpu[$i]+="$c "; usr[$i]+="$u "
    done
  done
  echo "== $path: $connections connections, $rounds x ${duration}s, medians"
  printf '%-8s %12s %10s %12s %14s %12s %12s\n' proxy requests/s p99_ms MB/s added_p99_ms cpu_us/req user_us/req
  origin_p99=$(median ${p99[0]})
  declare -A med_rps=() med_p99=() med_mbs=() med_cpu=() med_usr=()
  for i in "${!names[@]}"; do
    med_rps[$i]=$(median ${rps[$i]}); med_p99[$i]=$(median ${p99[$i]}); med_mbs[$i]=$(median ${mbs[$i]})
    med_cpu[$i]=$(median ${cpu[$i]}); med_usr[$i]=$(median ${usr[$i]})
    awk -v n="${names[$i]}" -v r="${med_rps[$i]}" -v p="${med_p99[$i]}" -v m="${med_mbs[$i]}" -v o="$origin_p99" \
      -v c="${med_cpu[$i]}" -v u="${med_usr[$i]}" 'BEGIN {printf "%-8s %12.0f %10.2f %12.1f %14.2f %12.2f %12.2f\n", n, r, p, m, p - o, c, u}'
  done
  awk -v a="${med_rps[3]}" -v n="${med_rps[1]}" -v h="${med_rps[2]}" -v am="${med_mbs[3]}" -v nm="${med_mbs[1]}" \
    -v ap="${med_p99[3]}" -v np="${med_p99[1]}" -v o="$origin_p99" 'BEGIN {
    printf "aviary / nginx: requests/s %.2fx, MB/s %.2fx; aviary / haproxy requests/s %.2fx; added p99 aviary %.2f ms vs nginx %.2f ms\n",
      a / n, am / nm, a / h, ap - o, np - o }'
  awk -v a="${med_rps[3]}" -v r="${med_rps[4]}" -v n="${med_rps[1]}" -v b="${med_rps[5]:-0}" 'BEGIN {
    printf "relay / nginx requests/s %.2fx; aviary / relay %.2fx", r / n, a / r
    if (b > 0) printf "; aviary / base %.2fx", a / b
    printf "\n" }'
  awk -v a="${med_cpu[3]}" -v r="${med_cpu[4]}" -v n="${med_cpu[1]}" -v h="${med_cpu[2]}" -v b="${med_cpu[5]:-0}" 'BEGIN {
    printf "CPU per request: aviary / nginx %.2fx, aviary / haproxy %.2fx, relay / nginx %.2fx, aviary / relay %.2fx", a / n, a / h, r / n, a / r
    if (b > 0) printf ", aviary / base %.2fx", a / b
    printf "\n" }'
done
