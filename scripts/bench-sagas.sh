#!/usr/bin/env bash
# Saga completions per second for a 3-step saga with local steps (every step durable) on SQLite
# and on PostgreSQL, next to the raw floor of the same engine measured in the same run: plain
# single-row transactions of the same size on the same store (same sync settings), from one
# writer and from as many writers as there are sagas in flight. Prints the table with ratios
# (issue 6 goal: sagas/s at least 0.1x the raw single-row transaction rate).
#
# PostgreSQL: a throwaway server (fsync=on, synchronous_commit=on, as the tests run it) in a
# temporary folder on a free port, or the server of AVIARY_BENCH_POSTGRES_URL (a database its
# user may create tables in).
#   scripts/bench-sagas.sh [sagas, default 20000] [concurrency, default 128]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sagas=${1:-20000}
concurrency=${2:-128}

cd "$root/Benchmarks"
# SwiftPM does not notice a source file added to the root package (a path dependency here)
# until this manifest changes: a newer manifest makes it plan the build again.
touch "$root/Benchmarks/Package.swift"
swift build -c release --product SagaBench >/dev/null
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d /tmp/aviary-bench-sagas.XXXXXX)
chmod 755 "$work"
server_pid=""
pgbin=""
as_postgres=()
cleanup() {
  if [ -n "$server_pid" ]; then
    "${as_postgres[@]}" "$pgbin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

url=${AVIARY_BENCH_POSTGRES_URL:-}
if [ -z "$url" ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pgbin/initdb" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  if [ "$(id -u)" = 0 ]; then as_postgres=(runuser -u postgres --); chown postgres "$work"; fi
  echo secret >"$work/password"
  "${as_postgres[@]}" "$pgbin/initdb" -D "$work/data" -U postgres --pwfile="$work/password" -A scram-sha-256 \
    --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as_postgres[@]}" "$pgbin/postgres" -D "$work/data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$work" -c fsync=on -c synchronous_commit=on -c max_connections=300 \
    -c shared_buffers=128MB >"$work/postgres.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    PGPASSWORD=secret "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -c 'CREATE DATABASE bench' >/dev/null 2>&1 && break
    sleep 0.2
  done
  url="postgres://postgres:secret@127.0.0.1:$port/bench"
fi

"$bin/SagaBench" --sqlite "$work/sagas.db" --postgres "$url" --sagas "$sagas" --raw "$sagas" --concurrency "$concurrency"
