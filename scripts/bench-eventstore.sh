#!/usr/bin/env bash
# The SQLite and PostgreSQL event stores next to the raw floor of the same engine, in the same
# run (issue 6): appends per second with 1, 10 and 100 events per append, reads of a 1,000-event
# stream, and projection catch-up. The raw floor is plain inserts of rows of the same size through
# the same store and transaction call (SQLiteStore.write / PostgresStore.withTransaction), and a
# plain select of 1,000 such rows; the ratio is event store / raw floor. Catch-up builds a read
# model counting events per stream from the first event, three times (AVIARY_BENCH_CATCHUP_RUNS),
# and shows the median, next to a paged read of the same events that applies nothing; each run's
# rate and the benchmark process's CPU time per event are printed under the table.
#
# SQLite: a file in a temporary folder, the SQLiteStore defaults (WAL). PostgreSQL: a throwaway
# server started here (initdb as the postgres user, fsync and synchronous_commit on, port 55432 or
# $AVIARY_BENCH_PG_PORT), or the server of $AVIARY_BENCH_POSTGRES_URL; stopped at the end.
#   scripts/bench-eventstore.sh            (AVIARY_BENCH_SCALE=0.2 for a quick run)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/Benchmarks"
# SwiftPM does not notice a source file added to the root package (a path dependency here)
# until this manifest changes: a newer manifest makes it plan the build again.
touch "$root/Benchmarks/Package.swift"
swift build -c release --product EventStoreBench >/dev/null
bin="$(swift build -c release --show-bin-path)/EventStoreBench"

work=$(mktemp -d /tmp/aviary-bench-es.XXXXXX)
chmod 755 "$work"
pg_url=${AVIARY_BENCH_POSTGRES_URL:-}
pg_data=""
cleanup() {
  if [ -n "$pg_data" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$pg_url" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pg_bin/initdb" ] || { echo "PostgreSQL server binaries are missing (apt-get install postgresql)" >&2; exit 1; }
  port=${AVIARY_BENCH_PG_PORT:-55432}
  pg_data="$work/pg"
  mkdir -p "$pg_data" && chown postgres "$pg_data"
  runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 --locale=C \
    --no-instructions >/dev/null
  runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_data -c fsync=on -c synchronous_commit=on -c shared_buffers=128MB" \
    start >/dev/null
  runuser -u postgres -- "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres bench
  pg_url="postgres://postgres@127.0.0.1:$port/bench"
fi

mkdir -p "$work/sqlite"
"$bin" "$work/sqlite" "$pg_url"
