//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// scripts/bench-eventstore.sh: the event stores next to the raw floor of the same engine, in the
// same run, on the same database: plain inserts of rows of the same size (stream, version, id,
// type, schema version, 57-byte JSON data, two timestamps) through the same store and the same
// transaction call, and a plain select of 1,000 such rows. Catch-up: a read model counting events
// per stream built from the first event (three times, the median shown), next to reading the
// same events page by page with every column decoded and nothing applied.
//   EventStoreBench SQLITE_DIRECTORY [POSTGRES_URL]      (SQLITE_DIRECTORY "-": PostgreSQL only)

import AviaryEventSourcing
import AviaryStorage
import Foundation
import GRDB
import Logging
import PostgresNIO

let data = Data(#"{"orderID":"order-000017","total":4200,"currency":"EUR"}"#.utf8)
let quiet = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
let scale = Double(ProcessInfo.processInfo.environment["AVIARY_BENCH_SCALE"] ?? "1") ?? 1

func count(_ base: Int) -> Int { max(1, Int(Double(base) * scale)) }

/// CPU time of this process so far (every thread, user and system), in microseconds.
func cpuMicroseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

/// Operations per second of `body`, which does `operations` operations, and this process's CPU
/// time per operation in microseconds (every thread; on a shared machine the rate moves with the
/// other load more than the CPU time does).
func rateAndCPU(_ operations: Int, _ body: () async throws -> Void) async rethrows -> (rate: Double, cpu: Double) {
    let before = cpuMicroseconds()
    let rate = try await rate(operations, body)
    return (rate, (cpuMicroseconds() - before) / Double(operations))
}

/// Operations per second of `body`, which does `operations` operations.
func rate(_ operations: Int, _ body: () async throws -> Void) async rethrows -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    try await body()
    let elapsed = clock.now - start
    return Double(operations) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
}

struct Row: Sendable {
    var name: String
    var raw: Double?
    var store: Double
    var unit: String
    /// Printed under the table.
    var note: String? = nil
}

/// Counts events per stream, as a small read model does: one upsert per event into a table with
/// a row per stream (tens of thousands of rows here). Each catch-up builds a projection of its
/// own (`run` tells them apart) from the first event.
struct StreamCounter: Projection {
    let run: Int
    var name: String { "counter\(self.run)" }
    let version = 1
    var tables: [String] { ["counted\(self.run)"] }
    func setUp(_ context: ProjectionContext) throws {
        try context.db.execute(
            sql: "CREATE TABLE \(context.table(self.tables[0])) (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    }
    func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
        try context.db.cachedStatement(
            sql:
                "INSERT INTO \(context.table(self.tables[0])) VALUES (?, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1"
        ).execute(arguments: [event.stream])
    }
}

/// The same read model on PostgreSQL, batched: the counts of a batch summed per stream in Swift,
/// then one upsert statement for the batch.
struct PostgresStreamCounter: PostgresProjection {
    let run: Int
    /// Tells apart the projections of catch-up-only runs against the same database.
    var prefix = ""
    var name: String { "\(self.prefix)counter\(self.run)" }
    let version = 1
    var tables: [String] { ["\(self.prefix)counted\(self.run)"] }
    func setUp(_ context: PostgresProjectionContext) async throws {
        try await context.execute(
            "CREATE TABLE \(context.table(self.tables[0])) (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)")
    }
    func apply(_ events: [RecordedEvent], _ context: PostgresProjectionContext) async throws {
        var counts: [String: Int64] = [:]
        for event in events { counts[event.stream, default: 0] += 1 }
        let table = context.table(self.tables[0])
        try await context.connection.query(
            """
            INSERT INTO \(unescaped: table) SELECT * FROM unnest(\(Array(counts.keys)), \(Array(counts.values)))
            ON CONFLICT (stream) DO UPDATE SET n = \(unescaped: table).n + excluded.n
            """, logger: context.logger)
    }
}

/// Catch-ups run per backend (`AVIARY_BENCH_CATCHUP_RUNS`, 3 by default); the table shows the
/// median, and every run is printed under it.
let catchUpRuns = max(1, Int(ProcessInfo.processInfo.environment["AVIARY_BENCH_CATCHUP_RUNS"] ?? "3") ?? 3)

/// `AVIARY_BENCH_CATCHUP_ONLY=1`: on PostgreSQL, when the database already holds events, measure
/// only the catch-up (projections named apart by a prefix per process).
let catchUpOnly = ProcessInfo.processInfo.environment["AVIARY_BENCH_CATCHUP_ONLY"] == "1"
let catchUpPrefix = catchUpOnly ? "p\(ProcessInfo.processInfo.processIdentifier)x" : ""

/// The median rate of `runs`, with every run's rate and CPU time noted.
func catchUpRow(raw: Double, _ runs: [(rate: Double, cpu: Double)]) -> Row {
    let sorted = runs.map(\.rate).sorted()
    let rates = runs.map { String(Int($0.rate)) }.joined(separator: ", ")
    let cpu = runs.map { String(format: "%.2f", $0.cpu) }.joined(separator: ", ")
    return Row(
        name: "projection catch-up", raw: raw, store: sorted[sorted.count / 2], unit: "events/s",
        note: "runs \(rates) events/s (median above); this process's CPU time \(cpu) µs/event")
}

/// The event store's side of the append and read rows: the same calls on both engines.
enum StoreWorkload {
    /// Appends `count` single events round-robin over 100 streams, each with its exact expected
    /// version; returns events/s.
    static func appendSingles(_ events: any EventStore, count: Int, data: Data) async throws -> Double {
        var versions = [Int64](repeating: 0, count: 100)
        return try await rate(count) {
            for index in 0..<count {
                let stream = index % 100
                try await events.append(
                    [NewEvent(type: "order.placed", data: data)], to: "order-\(stream)",
                    expectedVersion: versions[stream] == 0 ? .noStream : .exact(versions[stream]))
                versions[stream] += 1
            }
        }
    }

    /// Appends `rounds` batches of `batch` events, each to a new stream; returns events/s.
    static func appendBatches(_ events: any EventStore, rounds: Int, batch: Int, data: Data) async throws -> Double {
        try await rate(rounds * batch) {
            for round in 0..<rounds {
                try await events.append(
                    (0..<batch).map { _ in NewEvent(type: "order.placed", data: data) },
                    to: "batch\(batch)-\(round)", expectedVersion: .noStream)
            }
        }
    }

    /// The 1,000-event stream that ``readLongStream(_:reads:)`` reads.
    static func appendLongStream(_ events: any EventStore, data: Data) async throws {
        try await events.append(
            (0..<1000).map { _ in NewEvent(type: "order.placed", data: data) }, to: "long", expectedVersion: .noStream)
    }

    /// Reads the 1,000-event stream `reads` times; returns events/s.
    static func readLongStream(_ events: any EventStore, reads: Int) async throws -> Double {
        try await rate(reads * 1000) {
            for _ in 0..<reads { _ = try await events.readStream("long", from: 1, direction: .forwards, limit: 1000) }
        }
    }
}

func sqliteRows(directory: String) async throws -> [Row] {
    var migrations = Migrations()
    migrations.addEventStore()
    migrations.add("raw") { db in
        try db.execute(
            sql: """
                CREATE TABLE raw (id INTEGER PRIMARY KEY, stream TEXT, version INTEGER, event_id BLOB, type TEXT,
                    schema_version INTEGER, data BLOB, occurred_at INTEGER, recorded_at INTEGER)
                """)
    }
    let store = try SQLiteStore(url: StoreURL(.sqlite(path: directory + "/bench.db")), migrations: migrations)
    let events = try SQLiteEventStore(store: store)
    let insertSQL = """
        INSERT INTO raw (stream, version, event_id, type, schema_version, data, occurred_at, recorded_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        """
    var rows: [Row] = []
    let singles = count(20_000)
    let rawSingle = try await rate(singles) {
        for index in 0..<singles {
            try await store.write { db in
                try db.cachedStatement(sql: insertSQL).execute(arguments: [
                    "order-\(index % 100)", index, UUID(), "order.placed", 1, data, index, index,
                ])
            }
        }
    }
    let esSingle = try await StoreWorkload.appendSingles(events, count: singles, data: data)
    rows.append(Row(name: "append, 1 event", raw: rawSingle, store: esSingle, unit: "events/s"))
    for batch in [10, 100] {
        let rounds = count(200_000) / batch
        let raw = try await rate(rounds * batch) {
            for round in 0..<rounds {
                try await store.write { db in
                    let insert = try db.cachedStatement(sql: insertSQL)
                    for index in 0..<batch {
                        try insert.execute(arguments: [
                            "batch-\(round)", index, UUID(), "order.placed", 1, data, index, index,
                        ])
                    }
                }
            }
        }
        let es = try await StoreWorkload.appendBatches(events, rounds: rounds, batch: batch, data: data)
        rows.append(Row(name: "append, \(batch) events", raw: raw, store: es, unit: "events/s"))
    }
    try await StoreWorkload.appendLongStream(events, data: data)
    let reads = count(2000)
    let rawRead = try await rate(reads * 1000) {
        for _ in 0..<reads {
            _ = try await store.read { db in
                var decoded = 0
                let cursor = try GRDB.Row.fetchCursor(
                    db.cachedStatement(
                        sql:
                            "SELECT stream, version, id, event_id, type, schema_version, data, occurred_at, recorded_at FROM raw WHERE stream = 'batch100-0' OR id <= 1000 ORDER BY id LIMIT 1000"
                    ))
                // Every column decoded, as the event store decodes every column of its rows.
                while let row = try cursor.next() {
                    let stream: String = row[0]
                    let version: Int64 = row[1]
                    let id: UUID = row[3]
                    let type: String = row[4]
                    let schemaVersion: Int = row[5]
                    let bytes: Data = row[6]
                    let occurred: Int64 = row[7]
                    let recorded: Int64 = row[8]
                    decoded +=
                        stream.utf8.count + type.utf8.count + bytes.count + (id.uuid.0 == 0 ? 1 : 0)
                        + Int(version + occurred + recorded) % 2 + schemaVersion
                }
                return decoded
            }
        }
    }
    let esRead = try await StoreWorkload.readLongStream(events, reads: reads)
    rows.append(Row(name: "read a 1,000-event stream", raw: rawRead, store: esRead, unit: "events/s"))
    // Catch-up: every event so far, from the first, into a fresh read model. The raw floor reads
    // the same rows page by page (the runner's batch size) with every column decoded, and applies
    // nothing.
    let head = try await events.headPosition()
    let batch = ProjectionRunnerOptions().batchSize
    let rawCatchUp = try await rate(Int(head)) {
        var after: Int64 = 0
        while true {
            let last = try await store.read { [after] db -> Int64? in
                var last: Int64?
                let cursor = try GRDB.Row.fetchCursor(
                    db.cachedStatement(
                        sql: """
                            SELECT stream_id, stream_version, position, event_id, type, schema_version, data, causation_id,
                                correlation_id, trace_parent, trace_state, headers, occurred_at, recorded_at
                            FROM es_events WHERE position > ? ORDER BY position LIMIT ?
                            """), arguments: [after, batch])
                var decoded = 0
                while let row = try cursor.next() {
                    let stream: String = row[0]
                    let version: Int64 = row[1]
                    let position: Int64 = row[2]
                    let id: UUID = row[3]
                    let type: String = row[4]
                    let schemaVersion: Int = row[5]
                    let bytes: Data = row[6]
                    var metadata = 0
                    for index in 7...11 { metadata += (row[index] as String?)?.utf8.count ?? 0 }
                    let occurred: Int64 = row[12]
                    let recorded: Int64 = row[13]
                    decoded +=
                        stream.utf8.count + type.utf8.count + bytes.count + (id.uuid.0 == 0 ? 1 : 0)
                        + Int(version + occurred + recorded) % 2 + schemaVersion + metadata
                    last = position
                }
                return decoded >= 0 ? last : nil
            }
            guard let last else { break }
            after = last
        }
    }
    var catchUps: [(rate: Double, cpu: Double)] = []
    for run in 1...catchUpRuns {
        let runner = try ProjectionRunner(StreamCounter(run: run), events: events, store: store)
        catchUps.append(try await rateAndCPU(Int(head)) { try await runner.catchUp() })
    }
    rows.append(catchUpRow(raw: rawCatchUp, catchUps))
    return rows
}

func postgresRows(url: StoreURL) async throws -> [Row] {
    var migrations = PostgresMigrations()
    PostgresEventStore.addMigrations(to: &migrations)
    PostgresProjections.addMigrations(to: &migrations)
    migrations.add("raw") { connection, logger in
        try await connection.query(
            """
            CREATE TABLE raw (id BIGSERIAL PRIMARY KEY, stream TEXT, version BIGINT, event_id UUID, type TEXT,
                schema_version INTEGER, data BYTEA, occurred_at TIMESTAMPTZ, recorded_at TIMESTAMPTZ)
            """, logger: logger)
    }
    return try await PostgresStore.withStore(url: url, migrations: migrations, logger: quiet) { store in
        let events = PostgresEventStore(store: store)
        var rows: [Row] = []
        // AVIARY_BENCH_CATCHUP_ONLY=1 against a database that holds the events of an earlier run:
        // only the catch-up rows (quick same-run comparisons of runner changes).
        if catchUpOnly, try await events.headPosition() > 0 {
            return try await postgresCatchUpRows(store: store, events: events)
        }
        let singles = count(5000)
        let now = Date()
        let rawSingle = try await rate(singles) {
            for index in 0..<singles {
                try await store.withTransaction { connection in
                    try await connection.query(
                        """
                        INSERT INTO raw (stream, version, event_id, type, schema_version, data, occurred_at, recorded_at)
                        VALUES (\("order-\(index % 100)"), \(Int64(index)), \(UUID()), 'order.placed', 1, \(data), \(now), \(now))
                        """, logger: quiet)
                }
            }
        }
        let esSingle = try await StoreWorkload.appendSingles(events, count: singles, data: data)
        rows.append(Row(name: "append, 1 event", raw: rawSingle, store: esSingle, unit: "events/s"))
        for batch in [10, 100] {
            let rounds = count(50_000) / batch
            let raw = try await rate(rounds * batch) {
                for round in 0..<rounds {
                    try await store.withTransaction { connection in
                        try await connection.query(
                            """
                            INSERT INTO raw (stream, version, event_id, type, schema_version, data, occurred_at, recorded_at)
                            SELECT \("batch-\(round)"), v, gen_random_uuid(), 'order.placed', 1, \(data), \(now), \(now)
                            FROM generate_series(1, \(Int64(batch))) AS v
                            """, logger: quiet)
                    }
                }
            }
            let es = try await StoreWorkload.appendBatches(events, rounds: rounds, batch: batch, data: data)
            rows.append(Row(name: "append, \(batch) events", raw: raw, store: es, unit: "events/s"))
        }
        try await StoreWorkload.appendLongStream(events, data: data)
        let reads = count(500)
        let rawRead = try await rate(reads * 1000) {
            for _ in 0..<reads {
                _ = try await store.withConnection { connection in
                    var decoded = 0
                    let result = try await connection.query(
                        """
                        SELECT stream, version, event_id, type, schema_version, data, occurred_at, recorded_at
                        FROM raw ORDER BY id LIMIT 1000
                        """, logger: quiet)
                    for try await (stream, _, id, _, _, bytes, _, _) in result.decode(
                        (String, Int64, UUID, String, Int, Data, Date, Date).self)
                    {
                        decoded += stream.utf8.count + bytes.count + (id.uuid.0 == 0 ? 1 : 0)
                    }
                    return decoded
                }
            }
        }
        let esRead = try await StoreWorkload.readLongStream(events, reads: reads)
        rows.append(Row(name: "read a 1,000-event stream", raw: rawRead, store: esRead, unit: "events/s"))
        rows += try await postgresCatchUpRows(store: store, events: events)
        return rows
    }
}

func postgresCatchUpRows(store: PostgresStore, events: PostgresEventStore) async throws -> [Row] {
    // Catch-up, as on SQLite: the raw floor reads the same rows page by page, every column
    // decoded, and applies nothing.
    let head = try await events.headPosition()
    let batch: Int64 = 5000  // PostgresProjectionRunner's default batch size
    let rawCatchUp = try await rate(Int(head)) {
        var after: Int64 = 0
        while true {
            let last = try await store.withConnection { [after] connection -> Int64? in
                let result = try await connection.query(
                    """
                    SELECT stream_id, stream_version, position, event_id, type, schema_version, data, causation_id,
                        correlation_id, trace_parent, trace_state, headers, occurred_at, recorded_at
                    FROM es_events WHERE position > \(after) ORDER BY position LIMIT \(batch)
                    """, logger: quiet)
                var last: Int64?
                var decoded = 0
                for try await row in result {
                    // Cell by cell (specialised decoders; the variadic tuple decode is not).
                    let cells = row.makeRandomAccess()
                    let stream = try cells[0].decode(String.self)
                    let version = try cells[1].decode(Int64.self)
                    let position = try cells[2].decode(Int64.self)
                    let id = try cells[3].decode(UUID.self)
                    let type = try cells[4].decode(String.self)
                    let schemaVersion = try cells[5].decode(Int.self)
                    let bytes = try cells[6].decode(Data.self)
                    var metadata = 0
                    for index in 7...11 { metadata += try cells[index].decode(String?.self)?.utf8.count ?? 0 }
                    let occurred = try cells[12].decode(Date.self)
                    let recorded = try cells[13].decode(Date.self)
                    decoded +=
                        stream.utf8.count + type.utf8.count + bytes.count + (id.uuid.0 == 0 ? 1 : 0) + metadata
                        + Int(version) % 2 + schemaVersion + (occurred < recorded ? 1 : 0)
                    last = position
                }
                return decoded >= 0 ? last : nil
            }
            guard let last else { break }
            after = last
        }
    }
    var catchUps: [(rate: Double, cpu: Double)] = []
    for run in 1...catchUpRuns {
        let runner = try PostgresProjectionRunner(
            PostgresStreamCounter(run: run, prefix: catchUpPrefix), events: events, logger: quiet)
        catchUps.append(try await rateAndCPU(Int(head)) { try await runner.catchUp() })
    }
    return [catchUpRow(raw: rawCatchUp, catchUps)]
}

func printTable(_ title: String, _ rows: [Row]) {
    print("\n\(title)")
    let header =
        "  " + "measure".padding(toLength: 28, withPad: " ", startingAt: 0) + "raw floor/s".leftPad(14)
        + "event store/s".leftPad(16) + "ratio".leftPad(8)
    print(header)
    for row in rows {
        let raw = row.raw.map { String(Int($0)) } ?? "-"
        let ratio = row.raw.map { String(format: "%.2f", row.store / $0) } ?? "-"
        print(
            "  " + row.name.padding(toLength: 28, withPad: " ", startingAt: 0) + raw.leftPad(14)
                + String(Int(row.store)).leftPad(16) + ratio.leftPad(8))
    }
    for row in rows { if let note = row.note { print("  \(row.name): \(note)") } }
}

extension String {
    func leftPad(_ width: Int) -> String { String(repeating: " ", count: max(0, width - self.count)) + self }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    FileHandle.standardError.write(Data("usage: EventStoreBench SQLITE_DIRECTORY [POSTGRES_URL]\n".utf8))
    exit(64)
}
if arguments[1] != "-" {
    printTable("SQLite (WAL, one file)", try await sqliteRows(directory: arguments[1]))
}
if arguments.count >= 3 {
    printTable(
        "PostgreSQL (\(arguments[2].split(separator: "@").last ?? ""))",
        try await postgresRows(url: StoreURL(parsing: arguments[2])))
}
