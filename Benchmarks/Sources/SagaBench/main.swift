//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// Saga completions per second (a 3-step saga with local steps: every step durable) on SQLite and
// PostgreSQL, next to the raw floor of the same engine in the same run: plain single-row
// transactions of the same size, on the same store with the same sync settings.
//
//   SagaBench [--sqlite PATH] [--postgres URL] [--sagas N] [--raw N] [--concurrency C]
//
// scripts/bench-sagas.sh builds it in release mode, starts a throwaway PostgreSQL server and
// prints the table.

import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import Logging
import PostgresNIO

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("SagaBench: \(message)\n".utf8))
    exit(2)
}

var options: [String: String] = [:]
var arguments = Array(CommandLine.arguments.dropFirst())
while arguments.count >= 2 {
    options[arguments[0]] = arguments[1]
    arguments.removeFirst(2)
}
guard arguments.isEmpty else {
    fail("usage: SagaBench [--sqlite PATH] [--postgres URL] [--sagas N] [--raw N] [--concurrency C]")
}
let sagaCount = Int(options["--sagas"] ?? "20000") ?? 20000
let rawCount = Int(options["--raw"] ?? "20000") ?? 20000
let concurrency = Int(options["--concurrency"] ?? "128") ?? 128

/// What a saga carries; a raw row has a payload of the same encoded size.
struct Order: Codable, Sendable {
    var id: Int
    var sku = "sku-0000000042"
    var quantity = 3
    var steps: Int = 0
}

let rowSize = try JSONEncoder().encode(Order(id: 1_000_000)).count
let payload = Data(repeating: 0x61, count: rowSize)

let saga = Saga<Order>(
    "bench",
    steps: ["reserve", "charge", "confirm"].map { name in
        SagaStep(name) { order, _ in
            var order = order
            order.steps += 1
            return order
        }
    })

/// Runs `count` jobs on `workers` tasks and returns jobs per second.
@Sendable func measure(
    _ count: Int, workers: Int, _ job: @escaping @Sendable (Int) async throws -> Void
) async throws -> Double {
    let start = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<workers {
            group.addTask {
                for n in stride(from: worker, to: count, by: workers) { try await job(n) }
            }
        }
        try await group.waitForAll()
    }
    let elapsed = ContinuousClock.now - start
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return Double(count) / seconds
}

struct Row: Sendable {
    var engine: String
    var rawSequential: Double
    var rawConcurrent: Double
    var sagas: Double
    var settings: String
}

func sqlite(_ path: String) async throws -> Row {
    for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    var migrations = Migrations()
    SQLiteSagaStore.addMigrations(to: &migrations)
    migrations.add("raw") { db in
        try db.execute(sql: "CREATE TABLE raw (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    }
    let store = try SQLiteStore(url: StoreURL(.sqlite(path: path)), migrations: migrations)
    let settings = try await store.read { db in
        "journal_mode=\(try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "?"), synchronous=\(try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1)"
    }
    let insert: @Sendable (Int) async throws -> Void = { n in
        try await store.write { db in
            try db.execute(sql: "INSERT INTO raw VALUES (?, ?)", arguments: [n, payload])
        }
    }
    _ = try await measure(1000, workers: 1) { try await insert(-1 - $0) }  // warm-up
    let sequential = try await measure(rawCount, workers: 1) { try await insert($0) }
    let concurrent = try await measure(rawCount, workers: concurrency) { try await insert(rawCount + $0) }
    let runner = SagaRunner(store: SQLiteSagaStore(store: store), logger: Logger(label: "bench"))
    _ = try await measure(500, workers: concurrency) { n in
        try await runner.start(saga, id: "warm-\(n)", state: Order(id: n))
    }
    let sagas = try await measure(sagaCount, workers: concurrency) { n in
        try await runner.start(saga, id: "order-\(n)", state: Order(id: n))
    }
    return Row(
        engine: "sqlite", rawSequential: sequential, rawConcurrent: concurrent, sagas: sagas, settings: settings)
}

func postgres(_ url: StoreURL) async throws -> Row {
    var migrations = PostgresMigrations()
    PostgresSagaStore.addMigrations(to: &migrations)
    migrations.add("raw") { connection, logger in
        try await connection.query("CREATE TABLE raw (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL)", logger: logger)
    }
    let logger = {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        return logger
    }()
    let options = PostgresStore.Options(maximumConnections: max(20, concurrency), applicationName: "saga-bench")
    return try await PostgresStore.withStore(url: url, migrations: migrations, options: options, logger: logger) {
        store in
        let settings = try await store.withConnection { connection in
            var values: [String] = []
            for name in ["fsync", "synchronous_commit", "wal_sync_method"] {
                for try await value in try await connection.query(
                    PostgresQuery(unsafeSQL: "SHOW \(name)"), logger: logger
                )
                .decode(String.self) {
                    values.append("\(name)=\(value)")
                }
            }
            return values.joined(separator: ", ")
        }
        // One statement, autocommitted: one round trip and one commit, as a saga write is.
        let insert: @Sendable (Int) async throws -> Void = { n in
            _ = try await store.withConnection { connection in
                try await connection.query("INSERT INTO raw VALUES (\(n), \(payload))", logger: logger)
            }
        }
        _ = try await measure(500, workers: 1) { try await insert(-1 - $0) }  // warm-up
        let sequential = try await measure(rawCount, workers: 1) { try await insert($0) }
        let concurrent = try await measure(rawCount, workers: concurrency) { try await insert(rawCount + $0) }
        let runner = SagaRunner(store: PostgresSagaStore(store: store), logger: logger)
        _ = try await measure(500, workers: concurrency) { n in
            try await runner.start(saga, id: "warm-\(n)", state: Order(id: n))
        }
        let sagas = try await measure(sagaCount, workers: concurrency) { n in
            try await runner.start(saga, id: "order-\(n)", state: Order(id: n))
        }
        return Row(
            engine: "postgres", rawSequential: sequential, rawConcurrent: concurrent, sagas: sagas, settings: settings)
    }
}

do {
    var rows: [Row] = []
    if let path = options["--sqlite"] { rows.append(try await sqlite(path)) }
    if let url = options["--postgres"] { rows.append(try await postgres(try StoreURL(parsing: url))) }
    guard !rows.isEmpty else { fail("give --sqlite PATH and/or --postgres URL") }
    func format(_ value: Double) -> String { String(format: "%10.0f", value) }
    func ratio(_ value: Double) -> String { String(format: "%8.3f×", value) }
    print(
        "3-step local saga, \(sagaCount) sagas from \(concurrency) tasks; raw floor: \(rawCount) single-row "
            + "transactions of \(rowSize) bytes (1 writer, then \(concurrency) writers)")
    print("engine    raw tx/s (1)  raw tx/s (\(concurrency))   sagas/s  sagas/raw(1)  sagas/raw(\(concurrency))")
    for row in rows {
        print(
            row.engine.padding(toLength: 8, withPad: " ", startingAt: 0) + "  " + format(row.rawSequential) + "    "
                + format(row.rawConcurrent) + "  " + format(row.sagas) + "    " + ratio(row.sagas / row.rawSequential)
                + "    " + ratio(row.sagas / row.rawConcurrent))
    }
    for row in rows { print("\(row.engine): \(row.settings)") }
    exit(0)
} catch {
    fail("\(error)")
}
