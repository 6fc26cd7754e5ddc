#!/usr/bin/env bash
# AviaryMessaging against the raw floor of its engines and against Redis Streams and NATS JetStream,
# all measured in this one run on this machine (issue 5, "Performance"). Prints a Markdown table and
# the ratios the issue sets goals for.
#
#   scripts/bench-broker.sh [seconds per measurement, default 4]
#   scripts/bench-broker.sh --latency [seconds, default 4] [BrokerBench run options, e.g. --rate 500]
#       only publish-to-consume latency at 1,000 messages/s (SQLite and PostgreSQL, consumer in the
#       producer's process and in another one): p50, p99 and max; no Redis, NATS or floors (~30 s)
#   scripts/bench-broker.sh --pg-publish [seconds, default 4] [rounds, default 5]
#       only PostgreSQL publish (one message per transaction, batches of 100 and 1000), each
#       measurement interleaved with its pgbench floor in every round (new, new from the log's
#       executor, floor, old; each round starts one later: executor, floor, old, new; ...), each
#       right after a CHECKPOINT; with
#       OLD_BROKERBENCH=path (a BrokerBench built from another commit, e.g. main) that binary too,
#       default path only, in a database of its own on the same server. Prints every round, the
#       medians and the ratios of medians (new/floor, executor/floor, old/floor, executor/new,
#       new/old); ~65 s a round with 4 s.
#   scripts/bench-broker.sh --sqlite-publish [seconds, default 4] [rounds, default 5]
#       only SQLite publish (one message per transaction, batches of 100 and 1000), interleaved
#       with the C floor in every round as --pg-publish does (new, writer executor for single
#       publishes, floor, old with OLD_BROKERBENCH), each measurement in a new file; medians and
#       ratios of medians. BROKERBENCH_COMMIT_SPIN_US in the environment reaches every
#       BrokerBench (the log's commitSpin, for an A/B of one binary through OLD_BROKERBENCH
#       being a wrapper that sets it).
#   BROKERBENCH=path runs that BrokerBench binary instead of building one (any mode).
#
# - AviaryMessaging (Benchmarks/Sources/BrokerBench, release build): publish one message per
#   durable transaction (on SQLite also from a task on the log's writer executor,
#   `SQLiteMessageLog.writerExecutor`; on PostgreSQL also from a task on the event loop of the
#   log's connections, `PostgresMessageLog.executor`, singly and in batches) and batches of 100 and
#   1000, consume-and-ack through MessageConsumer (one
#   partition at a time, an ack per message), and publish-to-consume latency at 1,000 messages/s
#   with the consumer in the producer's process and in another process; for SQLiteMessageLog
#   (WAL, synchronous=FULL, as it runs) and PostgresMessageLog.
# - SQLite floor: Benchmarks/Broker/sqlite-floor.c, plain inserts of rows of the size the log stores
#   per message, one prepared statement, WAL, synchronous=FULL, BEGIN IMMEDIATE ... COMMIT.
# - PostgreSQL floor: pgbench custom scripts (single-row transactions, batched inserts, a
#   DELETE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING consume loop), one
#   client, against the same throwaway server the log uses (fsync on, synchronous_commit on).
# - Redis Streams: redis-server (appendonly yes, appendfsync everysec), XADD with redis-benchmark,
#   one at a time and pipelined by 100. NATS JetStream: nats-server -js, file storage, acked
#   publishes through nats-py, one at a time and 100 in flight.
#
# Installs what it needs (apt-get, pip), starts every server itself on 127.0.0.1 on free ports in a
# temporary folder, and stops them on exit. Not part of .ci/run. Takes about 4 minutes after the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
latency_only=""
pg_publish=""
sqlite_publish=""
if [ "${1:-}" = --latency ]; then
  latency_only=1
  shift
elif [ "${1:-}" = --pg-publish ]; then
  pg_publish=1
  latency_only=1 # no Redis or NATS either
  shift
elif [ "${1:-}" = --sqlite-publish ]; then
  sqlite_publish=1
  latency_only=1 # no Redis or NATS either
  shift
fi
seconds=${1:-4}
[ $# -gt 0 ] && shift
rounds=5
if [ -n "$pg_publish$sqlite_publish" ]; then
  rounds=${1:-5}
  [ $# -gt 0 ] && shift
fi
extra=("$@") # passed to BrokerBench run (--latency only)

# MARK: Tools
missing=()
if [ -z "$latency_only" ]; then
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-benchmark >/dev/null || missing+=(redis-tools)
  command -v nats-server >/dev/null || missing+=(nats-server)
fi
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ -f /usr/include/sqlite3.h ] || missing+=(libsqlite3-dev)
command -v cc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -n "$latency_only" ] || python3 -c 'import nats' 2>/dev/null || python3 -m pip install -q nats-py >&2
pgbin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")

if [ -n "${BROKERBENCH:-}" ]; then
  bench=$BROKERBENCH # a BrokerBench built beforehand (no build)
else
  echo "building BrokerBench (release)" >&2
  # SwiftPM does not notice a source file added to the root package (a path dependency here)
  # until this manifest changes: a newer manifest makes it plan the build again.
  touch "$root/Benchmarks/Package.swift"
  (cd "$root/Benchmarks" && swift build -c release --product BrokerBench >/dev/null)
  bench="$(cd "$root/Benchmarks" && swift build -c release --show-bin-path)/BrokerBench"
fi

# MARK: Servers, stopped on exit
tmp=$(mktemp -d "${TMPDIR:-/tmp}/aviary-bench-broker.XXXXXX")
chmod 755 "$tmp"
results="$tmp/results.jsonl"
: >"$results"
server_pids=()
pg_started=""
cleanup() {
  if [ -n "$pg_started" ]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$tmp/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${server_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # description command...: polls for up to 30 s
  local what=$1
  shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$what did not start" >&2
  exit 1
}
pgbench_rate() { # script-file -> transactions per second
  pgbench -n -c 1 -T "$seconds" -f "$1" raw 2>&1 | awk '/^tps = / {print $3; exit}'
}
record() { # engine scenario per_second
  printf '{"engine":"%s","scenario":"%s","per_second":%s}\n' "$1" "$2" "$3" >>"$results"
}
# The per-second figure of one BrokerBench scenario.
bench_rate() { # binary url scenario
  "$1" run --url "$2" --seconds "$seconds" --only "$3" \
    | python3 -c 'import json, sys; print(next(json.loads(l)["per_second"] for l in sys.stdin if "per_second" in l))'
}
# --pg-publish and --sqlite-publish: `rounds` rounds of `measure ENGINE SCENARIO BATCH` (defined by
# the mode, appending to `line`) for every engine of `engines` and single publishes, batches of 100
# and of 1000. Each round starts one engine later, so that none always runs right after the same
# other (or always last): a round's measurements are minutes apart on a disk whose speed drifts.
# `writer` (the SQLite writer executor) has single publishes only.
interleaved_rounds() {
  local round shift_by batch scenario engine order
  for round in $(seq 1 "$rounds"); do
    shift_by=$(((round - 1) % ${#engines[@]}))
    order=("${engines[@]:$shift_by}" "${engines[@]:0:$shift_by}")
    echo "round $round (load $(cut -d' ' -f1-3 /proc/loadavg)): ${order[*]}" >&2
    for batch in 1 100 1000; do
      if [ "$batch" = 1 ]; then scenario=publish_single; else scenario=publish_batch_$batch; fi
      line="  $scenario"
      for engine in "${order[@]}"; do
        [ "$engine" = writer ] && [ "$batch" != 1 ] && continue
        measure "$engine" "$scenario" "$batch"
      done
      echo "$line" >&2
    done
  done
}
# Their table: medians of the rounds per engine, each engine's ratio to `floor` and the second
# engine's to `new` (with the range of the rounds' ratios), and new / old.
summary() { # floor-label engine...
  python3 - "$results" "$(cut -d' ' -f1-3 /proc/loadavg)" "$@" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
floor_label, engines = sys.argv[3], [e for e in sys.argv[4:] if e != "floor"]
def values(engine, scenario): return [r["per_second"] for r in rows if r["engine"] == engine and r["scenario"] == scenario]
def ratio(a, b, scenario):
    ma, mb = (values(a, scenario), values(b, scenario))
    if not ma or not mb: return "–"
    pairs = list(zip(ma, mb))
    spread = f"{min(x / y for x, y in pairs):.2f}–{max(x / y for x, y in pairs):.2f}"
    return f"{statistics.median(ma) / statistics.median(mb):.2f}× ({spread})"
columns = [(e, "floor") for e in engines] + [(e, "new") for e in engines[1:2] if e != "old"]
if "old" in engines: columns.append(("new", "old"))
print(f"\nmedians of the rounds, ratios of medians (and the range of the rounds' ratios); load at the end {sys.argv[2]}\n")
print("| publish | " + " | ".join(engines) + f" | {floor_label} | " + " | ".join(f"{a} / {b}" for a, b in columns) + " |")
print("| --- |" + " ---: |" * (len(engines) + 1 + len(columns)))
for scenario in ("publish_single", "publish_batch_100", "publish_batch_1000"):
    cells = [f"{statistics.median(values(e, scenario)):,.0f}/s" if values(e, scenario) else "–" for e in engines + ["floor"]]
    print(f"| {scenario} | " + " | ".join(cells + [ratio(a, b, scenario) for a, b in columns]) + " |")
PY
}

# PostgreSQL, as Tests/AviaryTestSupport's PostgresTestServer runs it: initdb as the postgres user,
# fsync on, synchronous_commit on, 127.0.0.1 on a free port.
mkdir -p "$tmp/pg"
password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf '%s' "$password" >"$tmp/pg/password"
chown -R postgres "$tmp/pg"
runuser -u postgres -- "$pgbin/initdb" -D "$tmp/pg/data" -U postgres --pwfile="$tmp/pg/password" \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >/dev/null
pg_port=$(free_port)
runuser -u postgres -- "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/server.log" -w -o \
  "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp/pg -c fsync=on -c synchronous_commit=on -c max_connections=100 -c shared_buffers=64MB" \
  start >/dev/null
pg_started=1
export PGPASSWORD=$password PGHOST=127.0.0.1 PGPORT=$pg_port PGUSER=postgres
psql -q -d postgres -c 'CREATE DATABASE aviary' -c 'CREATE DATABASE raw' >/dev/null
pg_url="postgres://postgres:$password@127.0.0.1:$pg_port/aviary"
sqlite_url="sqlite://$tmp/broker.db"

if [ -n "$sqlite_publish" ]; then
  old=${OLD_BROKERBENCH:-}
  row_bytes=$("$bench" run --url "sqlite://$tmp/rows.db" --only none | python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("scenario") == "row_bytes": print(r["bytes"]); break')
  cc -O2 -o "$tmp/sqlite-floor" "$root/Benchmarks/Broker/sqlite-floor.c" -lsqlite3
  echo "rows of $row_bytes bytes; $rounds rounds of $seconds s; old: ${old:-none}" >&2
  measure() { # engine scenario batch; each measurement in a new file
    local engine=$1 scenario=$2 batch=$3 rate
    rm -rf "$tmp/s" && mkdir -p "$tmp/s"
    case "$engine" in
    new) rate=$(bench_rate "$bench" "sqlite://$tmp/s/log.db" "$scenario") ;;
    writer) rate=$(bench_rate "$bench" "sqlite://$tmp/s/log.db" "${scenario}_writer") ;;
    floor)
      rate=$("$tmp/sqlite-floor" "$tmp/s/raw.db" "$batch" "$row_bytes" "$seconds" \
        | python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["per_second"])')
      ;;
    old) rate=$(bench_rate "$old" "sqlite://$tmp/s/log.db" "$scenario") ;;
    esac
    record "$engine" "$scenario" "$rate"
    line="$line, $engine $rate/s"
  }
  engines=(new writer floor)
  [ -n "$old" ] && engines+=(old)
  interleaved_rounds
  summary "C floor" "${engines[@]}"
  exit 0
fi

if [ -n "$pg_publish" ]; then
  old=${OLD_BROKERBENCH:-}
  # A database per engine: with one shared by two engines, their tables grew twice as fast as
  # the others' and the rounds were not like for like.
  psql -q -d postgres -c 'CREATE DATABASE aviary_old' -c 'CREATE DATABASE aviary_executor' >/dev/null
  old_url="postgres://postgres:$password@127.0.0.1:$pg_port/aviary_old"
  executor_url="postgres://postgres:$password@127.0.0.1:$pg_port/aviary_executor"
  row_bytes=$("$bench" run --url "$pg_url" --only none | python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("scenario") == "row_bytes": print(r["bytes"]); break')
  psql -q -d raw -c 'CREATE TABLE raw_messages (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, appended_at BIGINT NOT NULL)' >/dev/null
  echo "INSERT INTO raw_messages (payload, appended_at) VALUES (repeat('x', $row_bytes), 0);" >"$tmp/insert-1.sql"
  for batch in 100 1000; do
    echo "INSERT INTO raw_messages (payload, appended_at) SELECT repeat('x', $row_bytes), g FROM generate_series(1, $batch) g;" \
      >"$tmp/insert-$batch.sql"
  done
  # Every measurement starts right after a checkpoint: a batch of 1000 writes about half a GB of WAL
  # in 4 s, which starts a checkpoint that would otherwise run during whichever measurement comes
  # next (its writes and full-page images slowed that one, always the same one of the round).
  checkpoint() { psql -q -d postgres -c CHECKPOINT >/dev/null; }
  echo "rows of $row_bytes bytes; $rounds rounds of $seconds s; old: ${old:-none}" >&2
  # One measurement of `engine` for `scenario` (batch size `batch`), right after a checkpoint;
  # appends its figure to `line`.
  measure() { # engine scenario batch
    local engine=$1 scenario=$2 batch=$3 rate
    checkpoint
    case "$engine" in
    new) rate=$(bench_rate "$bench" "$pg_url" "$scenario") ;;
    # The same publishes from a task on the event loop of the log's connections (PostgresMessageLog.executor).
    executor) rate=$(bench_rate "$bench" "$executor_url" "${scenario}_executor") ;;
    floor)
      local tps
      tps=$(pgbench_rate "$tmp/insert-$batch.sql")
      rate=$(awk -v t="$tps" -v b="$batch" 'BEGIN {print t * b}')
      ;;
    old) rate=$(bench_rate "$old" "$old_url" "$scenario") ;;
    esac
    record "$engine" "$scenario" "$rate"
    line="$line, $engine $rate/s"
  }
  engines=(new executor floor)
  [ -n "$old" ] && engines+=(old)
  interleaved_rounds
  summary "pgbench floor" "${engines[@]}"
  exit 0
fi

if [ -n "$latency_only" ]; then
  echo "publish-to-consume latency at 1,000 messages/s (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  for url in "$sqlite_url" "$pg_url"; do
    "$bench" run --url "$url" --seconds "$seconds" --only latency_in_process,latency_cross_process "${extra[@]}" \
      | grep '"latency_' | tee -a "$results" >&2
  done
  python3 - "$results" "$seconds" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{sys.argv[2]} s at 1,000 messages/s per measurement\n")
print("| backend | consumer | p50 | p99 | max | messages |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for r in rows:
    where = "same process" if r["scenario"] == "latency_in_process" else "another process"
    print(f"| {r['backend']} | {where} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['max_ms']:.1f} ms | {r['messages']} |")
print("\ngoal: SQLite p99 < 5 ms")
PY
  exit 0
fi

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp" --appendonly yes --appendfsync everysec \
  --save "" --daemonize no --logfile "$tmp/redis.log" &
server_pids+=($!)
nats_port=$(free_port)
nats-server -js -sd "$tmp/nats" -a 127.0.0.1 -p "$nats_port" -l "$tmp/nats.log" &
server_pids+=($!)
wait_for redis redis-cli -p "$redis_port" ping
wait_for nats python3 -c "import socket; socket.create_connection(('127.0.0.1', $nats_port), 1)"

# MARK: AviaryMessaging and the floors of its engines, side by side
# Each measurement of the log runs next to the same measurement of its engine's floor, so that
# both see the same minute of this machine (fsync times on a shared disk swing widely).
aviary() { # url scenario
  "$bench" run --url "$1" --seconds "$seconds" --only "$2" | tee -a "$results" >&2
}
aviary "$sqlite_url" row_bytes
row_bytes=$(python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("scenario") == "row_bytes": print(r["bytes"]); break' "$results")
echo "rows of $row_bytes bytes" >&2
cc -O2 -o "$tmp/sqlite-floor" "$root/Benchmarks/Broker/sqlite-floor.c" -lsqlite3
psql -q -d raw -c 'CREATE TABLE raw_messages (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, appended_at BIGINT NOT NULL)' \
  -c 'CREATE TABLE raw_queue (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, appended_at BIGINT NOT NULL)' >/dev/null
echo "INSERT INTO raw_messages (payload, appended_at) SELECT repeat('x', $row_bytes), g FROM generate_series(1, 20000) g;" \
  >"$tmp/warmup.sql"
pgbench -n -c 1 -t 5 -f "$tmp/warmup.sql" raw >/dev/null 2>&1

for batch in 1 100 1000; do
  if [ "$batch" = 1 ]; then scenario=publish_single; else scenario=publish_batch_$batch; fi
  echo "publish, $batch per transaction" >&2
  aviary "$sqlite_url" "$scenario"
  # Single publishes again from a task on the log's writer thread (SQLiteMessageLog.writerExecutor).
  if [ "$batch" = 1 ]; then aviary "$sqlite_url" publish_single_writer; fi
  out=$("$tmp/sqlite-floor" "$tmp/raw.db" "$batch" "$row_bytes" "$seconds")
  echo "sqlite floor: $out" >&2
  record sqlite-raw "insert_$batch" "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["per_second"])' "$out")"
  aviary "$pg_url" "$scenario"
  # The same publishes from a task on the event loop of the log's connections (PostgresMessageLog.executor).
  aviary "$pg_url" "${scenario}_executor"
  if [ "$batch" = 1 ]; then
    echo "INSERT INTO raw_messages (payload, appended_at) VALUES (repeat('x', $row_bytes), 0);" >"$tmp/insert-1.sql"
  else
    echo "INSERT INTO raw_messages (payload, appended_at) SELECT repeat('x', $row_bytes), g FROM generate_series(1, $batch) g;" \
      >"$tmp/insert-$batch.sql"
  fi
  tps=$(pgbench_rate "$tmp/insert-$batch.sql")
  echo "pgbench: $tps transactions/s of $batch rows" >&2
  record postgres-raw "insert_$batch" "$(awk -v t="$tps" -v b="$batch" 'BEGIN {print t * b}')"
done

echo "consume and ack" >&2
aviary "$sqlite_url" consume_ack
aviary "$pg_url" consume_ack
psql -q -d raw -c "INSERT INTO raw_queue (payload, appended_at) SELECT repeat('x', $row_bytes), g FROM generate_series(1, 300000) g" \
  -c 'VACUUM ANALYZE raw_queue' >/dev/null
cat >"$tmp/consume.sql" <<'SQL'
DELETE FROM raw_queue WHERE id = (SELECT id FROM raw_queue ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, payload;
SQL
tps=$(pgbench_rate "$tmp/consume.sql")
echo "pgbench: SKIP LOCKED delete $tps/s" >&2
record postgres-raw skip_locked_delete "$tps"

echo "publish-to-consume latency at 1,000 messages/s" >&2
for url in "$sqlite_url" "$pg_url"; do
  aviary "$url" latency_in_process
  aviary "$url" latency_cross_process
done

# MARK: Redis Streams
echo "Redis Streams (XADD, appendfsync everysec)" >&2
payload=$(head -c "$row_bytes" /dev/zero | tr '\0' x)
for pipeline in 1 100; do
  requests=$((pipeline == 1 ? 20000 : 400000))
  rps=$(redis-benchmark -h 127.0.0.1 -p "$redis_port" -c 1 -P "$pipeline" -n "$requests" -q \
    XADD bench '*' payload "$payload" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | awk '{print $1}')
  echo "XADD pipelined by $pipeline: $rps/s" >&2
  record redis "xadd_pipeline_$pipeline" "$rps"
done

# MARK: NATS JetStream
echo "NATS JetStream (acked publish)" >&2
python3 "$root/Benchmarks/Broker/nats_publish.py" "nats://127.0.0.1:$nats_port" "$row_bytes" "$seconds" \
  | tee -a "$results" >&2

# MARK: Table
python3 - "$results" "$seconds" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def get(engine, scenario, field="per_second"):
    for r in rows:
        if (r.get("engine") or r.get("backend")) == engine and r["scenario"] == scenario:
            return r.get(field)
    return None
def rate(v): return "–" if v is None else f"{v:,.0f}/s"
def ms(v): return "–" if v is None else f"{v:.2f} ms"
def ratio(a, b): return None if a is None or not b else a / b

print(f"\nrow: {get('sqlite', 'row_bytes', 'bytes')} bytes per message; {sys.argv[2]} s per measurement; one producer or consumer\n")
print("| measurement | AviaryMessaging SQLite | SQLite raw | AviaryMessaging PostgreSQL | PostgreSQL raw (pgbench) | Redis Streams | NATS JetStream |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| publish, 1 message per durable transaction | {rate(get('sqlite', 'publish_single'))} | {rate(get('sqlite-raw', 'insert_1'))} | {rate(get('postgres', 'publish_single'))} | {rate(get('postgres-raw', 'insert_1'))} | {rate(get('redis', 'xadd_pipeline_1'))} (XADD, no pipeline) | {rate(get('nats', 'nats_acked_single'))} (acked, one at a time) |")
print(f"| publish, 1 message per durable transaction, producer on the log's writer executor | {rate(get('sqlite', 'publish_single_writer'))} | {rate(get('sqlite-raw', 'insert_1'))} | | | | |")
print(f"| publish, 1 message per durable transaction, producer on the executor of the PostgreSQL log's connections | | | {rate(get('postgres', 'publish_single_executor'))} | {rate(get('postgres-raw', 'insert_1'))} | | |")
print(f"| publish, batches of 100 | {rate(get('sqlite', 'publish_batch_100'))} | {rate(get('sqlite-raw', 'insert_100'))} | {rate(get('postgres', 'publish_batch_100'))} | {rate(get('postgres-raw', 'insert_100'))} | {rate(get('redis', 'xadd_pipeline_100'))} (XADD pipelined by 100) | {rate(get('nats', 'nats_acked_window_100'))} (100 acks in flight) |")
print(f"| publish, batches of 1000 | {rate(get('sqlite', 'publish_batch_1000'))} | {rate(get('sqlite-raw', 'insert_1000'))} | {rate(get('postgres', 'publish_batch_1000'))} | {rate(get('postgres-raw', 'insert_1000'))} | | |")
print(f"| publish, batches of 100 and of 1000, producer on the executor of the PostgreSQL log's connections | | | {rate(get('postgres', 'publish_batch_100_executor'))}; {rate(get('postgres', 'publish_batch_1000_executor'))} | {rate(get('postgres-raw', 'insert_100'))}; {rate(get('postgres-raw', 'insert_1000'))} | | |")
print(f"| consume and ack (MessageConsumer, ack per message) / raw SKIP LOCKED delete | {rate(get('sqlite', 'consume_ack'))} | | {rate(get('postgres', 'consume_ack'))} | {rate(get('postgres-raw', 'skip_locked_delete'))} | | |")
for scenario, label in (("latency_in_process", "consumer in the producer's process"), ("latency_cross_process", "consumer in another process")):
    print(f"| publish-to-consume at 1,000 msg/s, {label}: p50 / p99 | {ms(get('sqlite', scenario, 'p50_ms'))} / {ms(get('sqlite', scenario, 'p99_ms'))} | | {ms(get('postgres', scenario, 'p50_ms'))} / {ms(get('postgres', scenario, 'p99_ms'))} | | | |")

goals = [
    ("SQLite batched publish (100) / raw batched insert (100)", ratio(get('sqlite', 'publish_batch_100'), get('sqlite-raw', 'insert_100')), ">= 0.5"),
    ("SQLite batched publish (1000) / raw batched insert (1000)", ratio(get('sqlite', 'publish_batch_1000'), get('sqlite-raw', 'insert_1000')), ">= 0.5"),
    ("PostgreSQL batched publish (100) / raw batched insert (100)", ratio(get('postgres', 'publish_batch_100'), get('postgres-raw', 'insert_100')), ">= 0.5"),
    ("PostgreSQL batched publish (1000) / raw batched insert (1000)", ratio(get('postgres', 'publish_batch_1000'), get('postgres-raw', 'insert_1000')), ">= 0.5"),
    ("PostgreSQL batched publish (100), producer on the log's executor / raw batched insert (100)", ratio(get('postgres', 'publish_batch_100_executor'), get('postgres-raw', 'insert_100')), ">= 0.5"),
    ("PostgreSQL batched publish (1000), producer on the log's executor / raw batched insert (1000)", ratio(get('postgres', 'publish_batch_1000_executor'), get('postgres-raw', 'insert_1000')), ">= 0.5"),
    ("SQLite batched publish (100) / Redis XADD pipelined by 100", ratio(get('sqlite', 'publish_batch_100'), get('redis', 'xadd_pipeline_100')), ">= 0.5"),
    ("PostgreSQL batched publish (100) / Redis XADD pipelined by 100", ratio(get('postgres', 'publish_batch_100'), get('redis', 'xadd_pipeline_100')), ">= 0.5"),
    ("SQLite single-message publish / raw single-row transaction", ratio(get('sqlite', 'publish_single'), get('sqlite-raw', 'insert_1')), ">= 0.8"),
    ("SQLite single-message publish, producer on the writer executor / raw single-row transaction", ratio(get('sqlite', 'publish_single_writer'), get('sqlite-raw', 'insert_1')), ">= 0.8"),
    ("PostgreSQL single-message publish / raw single-row transaction", ratio(get('postgres', 'publish_single'), get('postgres-raw', 'insert_1')), ">= 0.8"),
    ("PostgreSQL single-message publish, producer on the log's executor / raw single-row transaction", ratio(get('postgres', 'publish_single_executor'), get('postgres-raw', 'insert_1')), ">= 0.8"),
    ("PostgreSQL consume-and-ack / raw SKIP LOCKED delete", ratio(get('postgres', 'consume_ack'), get('postgres-raw', 'skip_locked_delete')), ">= 0.5"),
]
print("\n| ratio | measured | goal |")
print("| --- | ---: | --- |")
for label, value, goal in goals:
    print(f"| {label} | {'–' if value is None else f'{value:.2f}×'} | {goal} |")
p99 = get('sqlite', 'latency_in_process', 'p99_ms')
p99x = get('sqlite', 'latency_cross_process', 'p99_ms')
print(f"| SQLite p99 publish-to-consume at 1,000 msg/s, same process | {ms(p99)} | < 5 ms |")
print(f"| SQLite p99 publish-to-consume at 1,000 msg/s, another process | {ms(p99x)} | < 5 ms |")
PY
