// The client's floor of one PostgreSQL statement per call through postgres-nio: one connection, a
// prepared single-row INSERT ... RETURNING (seven parameters, a message-sized row) sent again and
// again from the connection's own event loop, printing calls a second and the process's CPU time
// per call. Read it next to BrokerBench's `publish_single_executor` (the log's single publish from
// the same loop) and pgbench running the same INSERT (libpq): the differences are what our call
// path and postgres-nio's each add. Not part of scripts/bench-broker.sh.
//
//   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGPASSWORD=... PGDATABASE=raw \
//     PostgresFloor <async|future> [seconds, default 4]
//
// async: `PostgresConnection.execute(_:)` of a `PostgresPreparedStatement`, its rows read from
// the row sequence, in a task that prefers the loop (`EventLoopTaskExecutor`), as the log's publish.
// future: the same statement through `PostgresDatabase.prepare(query:)` and the prepared query's
// `execute`, each call started in the previous one's callback on the loop: no task, no sequence.
import AviaryStorage
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

let arguments = CommandLine.arguments
let modes = ["async", "future", "wire", "wire2", "wirefn", "wirecte", "wirelock"]
guard arguments.count >= 2, modes.contains(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: PostgresFloor <\(modes.joined(separator: "|"))> [seconds]\n".utf8))
    exit(2)
}
let mode = arguments[1]
let seconds = arguments.count > 2 ? Double(arguments[2]) ?? 4 : 4
let environment = ProcessInfo.processInfo.environment
let logger = Logger(label: "floor")
let payload = String(repeating: "x", count: 300)

/// The process's user and system CPU time, in microseconds.
func cpuMicroseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

struct InsertStatement: PostgresPreparedStatement {
    static let name = "floor_insert"
    static let sql = """
        INSERT INTO floor_rows (topic, part, msg_key, event, headers, bytes, at)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
        """
    typealias Row = Int64
    var key: String
    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 7)
        bindings.append("publish")
        bindings.append(Int32(3))
        bindings.append(self.key)
        bindings.append(payload)
        bindings.append("{}")
        bindings.append(Int32(336))
        bindings.append(Int64(1_700_000_000_000))
        return bindings
    }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
}

let loop = MultiThreadedEventLoopGroup.singleton.next()
let configuration = PostgresConnection.Configuration(
    host: environment["PGHOST"] ?? "127.0.0.1", port: Int(environment["PGPORT"] ?? "5432") ?? 5432,
    username: environment["PGUSER"] ?? "postgres", password: environment["PGPASSWORD"],
    database: environment["PGDATABASE"] ?? "postgres", tls: .disable)
let connection: PostgresConnection = try await PostgresConnection.connect(
    on: loop, configuration: configuration, id: 1, logger: logger
).get()
// The table exists before the first call (the EventLoopFuture overload: awaited to its end).
_ = try await connection.query(
    """
    CREATE TABLE IF NOT EXISTS floor_rows (id BIGSERIAL PRIMARY KEY, topic TEXT, part INTEGER,
        msg_key TEXT, event TEXT, headers TEXT, bytes INTEGER, at BIGINT)
    """, logger: logger
).get()

/// Runs calls until `deadline`; returns how many ran.
func runAsync(until deadline: ContinuousClock.Instant) async throws -> Int {
    var calls = 0
    while ContinuousClock.now < deadline {
        for try await _ in try await connection.execute(InsertStatement(key: "k\(calls & 7)"), logger: logger) {}
        calls += 1
    }
    return calls
}

/// Runs calls one after another on the loop until `deadline`; returns how many ran.
func runFuture(_ prepared: PreparedQuery, until deadline: NIODeadline) async throws -> Int {
    let promise = loop.makePromise(of: Int.self)
    let bindings: [PostgresData] = [
        PostgresData(string: "publish"), PostgresData(int32: 3), PostgresData(string: "k0"),
        PostgresData(string: payload), PostgresData(string: "{}"), PostgresData(int32: 336),
        PostgresData(int64: 1_700_000_000_000),
    ]
    let count = NIOLoopBoundBox.makeBoxSendingValue(0, eventLoop: loop)
    @Sendable func next() {
        if NIODeadline.now() >= deadline { return promise.succeed(count.value) }
        prepared.execute(bindings).whenComplete { result in
            switch result {
            case .success: count.value += 1; next()
            case .failure(let error): promise.fail(error)
            }
        }
    }
    loop.execute { next() }
    return try await promise.futureResult.get()
}

/// Runs wire calls one after another on the loop until `deadline`; returns how many ran.
func runWire(_ wire: WireConnection, until deadline: NIODeadline) async throws -> Int {
    let promise = loop.makePromise(of: Int.self)
    let count = NIOLoopBoundBox.makeBoxSendingValue(0, eventLoop: loop)
    let statements: [(name: String, sql: String, parameters: [String?])]
    switch mode {
    case "wire":
        statements = [("w_insert", InsertStatement.sql, ["publish", "3", "k0", payload, "{}", "336", "1700000000000"])]
    case "wirefn":
        // `aviary_publish_one`, or a variant with its arguments that FLOOR_FUNCTION names (see
        // postgres-publish-variants.sql), to price each part of the publish on the server.
        let function = environment["FLOOR_FUNCTION"] ?? "aviary_publish_one"
        statements = [
            (
                "w_fn", "SELECT \(function)($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                ["publish", "8", "3", "k3", payload, "{}", "336", "1700000000000", "aviary_x"]
            )
        ]
    case "wirelock":
        // An experiment: offsets from the message index under an advisory lock, no partition row.
        statements = [
            ("w_lock", "SELECT pg_advisory_xact_lock(97, $1::int)", ["3"]),
            (
                "w_insert_max",
                """
                INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
                SELECT 97, $1, coalesce(max(m.msg_offset), 0) + 1, $2, $3, $4, $5, $6
                FROM aviary_messages m WHERE m.topic_id = 97 AND m.partition = $1
                RETURNING msg_offset
                """, ["3", "1700000000000", "336", "k3", payload, "{}"]
            ),
        ]
    case "wirecte":
        statements = [
            (
                "w_cte",
                """
                WITH taken AS (
                  UPDATE aviary_partitions p SET last_offset = p.last_offset + 1 FROM aviary_topics t
                  WHERE p.topic = $1 AND p.partition = $3 AND t.name = $1 AND t.partitions = $2
                    AND NOT EXISTS (SELECT 1 FROM aviary_schedule s WHERE s.topic = $1 AND s.deliver_at <= $8)
                  RETURNING t.id, p.last_offset
                )
                INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
                SELECT id, $3, last_offset, $8, $7, $4, $5, $6 FROM taken
                RETURNING msg_offset
                """, ["publish", "8", "3", "k3", payload, "{}", "336", "1700000000000"]
            ),
            (
                "w_notify",
                """
                SELECT pg_notify($2, $1) WHERE pg_current_xact_id_if_assigned() IS NOT NULL
                    AND (current_setting('transaction_isolation') <> 'read committed'
                        OR EXISTS (SELECT 1 FROM aviary_listeners l WHERE l.topic = $1))
                """, ["publish", "aviary_x"]
            ),
        ]
    default:
        statements = [
            (
                "w_update",
                "UPDATE aviary_partitions SET last_offset = last_offset + 1 WHERE topic = $1 AND partition = $2 RETURNING last_offset",
                ["exp2", "3"]
            ),
            (
                "w_insert2",
                """
                INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
                SELECT 95, $2, p.last_offset, $3, $4, $5, $6, $7 FROM aviary_partitions p WHERE p.topic = $1 AND p.partition = $2
                RETURNING msg_offset
                """, ["exp2", "3", "1700000000000", "336", "k3", payload, "{}"]
            ),
        ]
    }
    @Sendable func next() {
        if NIODeadline.now() >= deadline { return promise.succeed(count.value) }
        wire.call(statements).whenComplete { result in
            switch result {
            case .success: count.value += 1; next()
            case .failure(let error): promise.fail(error)
            }
        }
    }
    loop.execute { next() }
    return try await promise.futureResult.get()
}

var wire: WireConnection?
if mode.hasPrefix("wire") {
    wire = try await WireConnection.connect(
        on: loop, host: environment["PGHOST"] ?? "127.0.0.1", port: Int(environment["PGPORT"] ?? "5432") ?? 5432,
        user: "trusty",
        database: environment["PGDATABASE"] ?? "postgres",
        settings: environment["FLOOR_SYNC"].map { [("synchronous_commit", $0)] } ?? [])
}
let executor = EventLoopTaskExecutor(loop)
var prepared: PreparedQuery?
if mode == "future" {
    prepared = try await connection.prepare(query: InsertStatement.sql).get()
}
// A second's warm-up, then the measured window.
for (window, measured) in [(1.0, false), (seconds, true)] {
    let cpu0 = cpuMicroseconds()
    let start = ContinuousClock.now
    let calls: Int
    if let wire {
        calls = try await runWire(wire, until: .now() + .milliseconds(Int64(window * 1000)))
    } else if let prepared {
        calls = try await runFuture(prepared, until: .now() + .milliseconds(Int64(window * 1000)))
    } else {
        calls = try await withTaskExecutorPreference(executor) {
            try await runAsync(until: start + .milliseconds(Int64(window * 1000)))
        }
    }
    let elapsed = ContinuousClock.now - start
    let cpu = cpuMicroseconds() - cpu0
    if measured {
        let wall = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print(
            String(
                format: "{\"mode\": \"%@\", \"calls\": %d, \"per_second\": %.0f, \"cpu_us_per_call\": %.1f}",
                mode, calls, Double(calls) / wall, cpu / Double(calls)))
    }
}
try await connection.close().get()
