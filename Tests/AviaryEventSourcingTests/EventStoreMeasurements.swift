//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import AviaryStorage
import Foundation
import GRDB
import Testing

/// Rates of the SQLite event store next to the raw floor of the same database in the same run
/// (plain inserts of rows of the same size through the same `SQLiteStore.write`). Printed, not
/// asserted: wall-clock numbers on a shared machine are for people. Run with
/// `AVIARY_MEASURE=1 swift test --filter EventStoreMeasurements`.
@Suite(
    "EventStore measurements", .enabled(if: ProcessInfo.processInfo.environment["AVIARY_MEASURE"] == "1"),
    .timeLimit(.minutes(10)))
struct EventStoreMeasurements {
    struct Counter: Projection {
        let name = "counter"
        let version = 1
        let tables = ["counted"]
        func setUp(_ context: ProjectionContext) throws {
            try context.db.execute(sql: "CREATE TABLE \(context.table("counted")) (type TEXT PRIMARY KEY, n INTEGER)")
        }
        func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
            try context.db.cachedStatement(
                sql: "INSERT INTO \(context.table("counted")) VALUES (?, 1) ON CONFLICT (type) DO UPDATE SET n = n + 1"
            ).execute(arguments: [event.type])
        }
    }

    static func rate(_ count: Int, _ body: () async throws -> Void) async rethrows -> Double {
        let clock = ContinuousClock()
        let start = clock.now
        try await body()
        return Double(count) / (clock.now - start).aviarySecondsValue
    }

    @Test("appends, reads and catch-up next to the raw floor")
    func measure() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var migrations = Migrations()
        migrations.addEventStore()
        migrations.add("raw") { db in
            try db.execute(
                sql:
                    "CREATE TABLE raw (id INTEGER PRIMARY KEY, stream TEXT, version INTEGER, type TEXT, data BLOB, at INTEGER)"
            )
        }
        let store = try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("m.db"))), migrations: migrations)
        let events = try SQLiteEventStore(store: store)
        let data = Data(#"{"orderID":"order-000017","total":4200,"currency":"EUR"}"#.utf8)
        let singles = 3000

        let rawSingle = try await Self.rate(singles) {
            for index in 0..<singles {
                try await store.write { db in
                    try db.cachedStatement(
                        sql: "INSERT INTO raw (stream, version, type, data, at) VALUES (?, ?, ?, ?, ?)"
                    )
                    .execute(arguments: ["order-\(index % 100)", index, "order.placed", data, index])
                }
            }
        }
        var versions = [Int64](repeating: 0, count: 100)
        let esSingle = try await Self.rate(singles) {
            for index in 0..<singles {
                let stream = index % 100
                try await events.append(
                    [NewEvent(type: "order.placed", data: data)], to: "order-\(stream)",
                    expectedVersion: versions[stream] == 0 ? .noStream : .exact(versions[stream]))
                versions[stream] += 1
            }
        }
        var results = [
            "single: raw \(Int(rawSingle))/s, event store \(Int(esSingle))/s (\(Self.ratio(esSingle, rawSingle)))"
        ]
        // The same rows into a copy of the event table's schema (indexes, AUTOINCREMENT), by hand:
        // what the schema costs, apart from the store's code.
        try await store.write { db in
            try db.execute(sql: "CREATE TABLE es_copy AS SELECT * FROM es_events WHERE 0")
            try db.execute(sql: "CREATE UNIQUE INDEX es_copy_stream ON es_copy (stream_id, stream_version)")
            try db.execute(sql: "CREATE UNIQUE INDEX es_copy_id ON es_copy (event_id)")
        }
        let schemaSingle = try await Self.rate(singles) {
            for index in 0..<singles {
                try await store.write { db in
                    _ = try Int64.fetchOne(
                        db.cachedStatement(sql: "SELECT max(stream_version) FROM es_copy WHERE stream_id = ?"),
                        arguments: ["order-\(index % 100)"])
                    try db.cachedStatement(
                        sql:
                            "INSERT INTO es_copy (stream_id, stream_version, event_id, type, schema_version, data, occurred_at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    ).execute(arguments: ["order-\(index % 100)", index, UUID(), "order.placed", 1, data, index, index])
                }
            }
        }
        results.append("single, same schema by hand: \(Int(schemaSingle))/s")
        for batch in [10, 100] {
            let rounds = 20_000 / batch
            let raw = try await Self.rate(rounds * batch) {
                for round in 0..<rounds {
                    try await store.write { db in
                        let insert = try db.cachedStatement(
                            sql: "INSERT INTO raw (stream, version, type, data, at) VALUES (?, ?, ?, ?, ?)")
                        for index in 0..<batch {
                            try insert.execute(arguments: ["batch-\(round)", index, "order.placed", data, index])
                        }
                    }
                }
            }
            let es = try await Self.rate(rounds * batch) {
                for round in 0..<rounds {
                    try await events.append(
                        (0..<batch).map { _ in NewEvent(type: "order.placed", data: data) },
                        to: "batch\(batch)-\(round)",
                        expectedVersion: .noStream)
                }
            }
            results.append("batch \(batch): raw \(Int(raw))/s, event store \(Int(es))/s (\(Self.ratio(es, raw)))")
        }
        for _ in 0..<5 { try await events.append([NewEvent(type: "x", data: data)], to: "long", expectedVersion: .any) }
        try await events.append(
            (0..<995).map { _ in NewEvent(type: "order.placed", data: data) }, to: "long", expectedVersion: .exact(5))
        let reads = try await Self.rate(200) {
            for _ in 0..<200 { _ = try await events.readStream("long", from: 1, direction: .forwards, limit: 1000) }
        }
        results.append("read a 1,000-event stream: \(Int(reads))/s (\(Int(reads * 1000)) events/s)")
        let head = try await events.headPosition()
        let runner = try ProjectionRunner(Counter(), events: events, store: store, options: .init(batchSize: 1000))
        let catchUp = try await Self.rate(Int(head)) { try await runner.catchUp() }
        results.append("projection catch-up (same database, one upsert per event): \(Int(catchUp)) events/s")
        print(results.map { "[measure] \($0)" }.joined(separator: "\n"))
    }

    static func ratio(_ value: Double, _ floor: Double) -> String {
        String(format: "%.2f× the raw floor", value / floor)
    }
}

extension Duration {
    fileprivate var aviarySecondsValue: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}
