#!/usr/bin/env bash
# Compares an AviaryApplication with its default middleware (RED metrics, access log, problem
# details; JSON logs sent to /dev/null; tracing on but every new trace sampled out, so the
# tracing middleware runs and nothing is exported) against a bare Hummingbird 2 application serving the same
# route, with wrk on 127.0.0.1. Runs each server in turn, three rounds, and prints requests/s and
# p99 latency of each round and the ratios of the medians (issue 3 targets: ≥ 0.8× requests/s,
# ≤ 1.25× p99).
#   scripts/bench-service.sh [seconds per run, default 10] [connections, default 32]
set -euo pipefail
cd "$(dirname "$0")/../Benchmarks"
duration=${1:-10}
connections=${2:-32}
# Installs what it lacks from Debian's packages.
source ../scripts/install-missing.sh
install_missing wrk:wrk

swift build -c release --product HelloHummingbird >/dev/null
swift build -c release --product HelloAviary >/dev/null
bin=$(swift build -c release --show-bin-path)

run() { # name port -> "requests_per_second p99_ms"
  local name=$1 port=$2 pid out
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_TRACES_SAMPLER=always_off \
    "$bin/$name" "$port" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/hello" >/dev/null 2>&1 && break
    sleep 0.1
  done
  wrk -t1 -c"$connections" -d2s "http://127.0.0.1:$port/hello" >/dev/null  # warm-up
  out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency "http://127.0.0.1:$port/hello")
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/, "", v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}

declare -a hb_rps hb_p99 av_rps av_p99
for round in 1 2 3; do
  read -r r p < <(run HelloHummingbird 8201); hb_rps+=("$r"); hb_p99+=("$p")
  read -r r p < <(run HelloAviary 8202); av_rps+=("$r"); av_p99+=("$p")
  printf 'round %d: hummingbird %8.0f req/s p99 %6.2f ms | aviary %8.0f req/s p99 %6.2f ms\n' \
    "$round" "${hb_rps[-1]}" "${hb_p99[-1]}" "${av_rps[-1]}" "${av_p99[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
hr=$(median "${hb_rps[@]}"); hp=$(median "${hb_p99[@]}")
ar=$(median "${av_rps[@]}"); ap=$(median "${av_p99[@]}")
awk -v hr="$hr" -v ar="$ar" -v hp="$hp" -v ap="$ap" 'BEGIN {
  printf "median: hummingbird %.0f req/s p99 %.2f ms; aviary %.0f req/s p99 %.2f ms\n", hr, hp, ar, ap
  printf "aviary / hummingbird: requests/s %.2fx (target >= 0.80), p99 %.2fx (target <= 1.25)\n", ar / hr, ap / hp
}'
