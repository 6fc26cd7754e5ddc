//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import AviaryTestSupport
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A projection in a real child process (this test bundle, re-executed with a filter that selects
/// ``ProjectionCrashChild``), killed with SIGKILL at random moments while it catches up: after
/// every kill the read model holds exactly the events up to its checkpoint, and in the end every
/// event is applied exactly once, in order.
@Suite("Projection crashes", .timeLimit(.minutes(5)))
struct ProjectionCrashTests {
    static let directoryVariable = "AVIARY_EVENTS_CRASH_CHILD"
    static let layoutVariable = "AVIARY_EVENTS_CRASH_LAYOUT"

    /// A projection with a little work per event, so that most of the child's time is spent
    /// inside batch transactions.
    struct Ledger: Projection {
        let name = "ledger"
        let version = 1
        let tables = ["ledger"]

        func setUp(_ context: ProjectionContext) throws {
            try context.db.execute(
                sql: "CREATE TABLE \(context.table("ledger")) (position INTEGER NOT NULL, stream TEXT NOT NULL)")
        }

        func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
            try context.db.execute(
                sql: "INSERT INTO \(context.table("ledger")) VALUES (?, ?)", arguments: [event.position, event.stream])
            _ = try Int.fetchOne(
                context.db, sql: "SELECT count(*) FROM \(context.table("ledger")) WHERE stream = ?",
                arguments: [event.stream])
        }
    }

    /// Opens the event store and the read model for a directory and layout.
    static func open(_ directory: String, sameDatabase: Bool) throws -> (SQLiteEventStore, SQLiteStore) {
        var migrations = Migrations()
        migrations.addEventStore()
        let store = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/events.db")), migrations: migrations)
        let readModel = sameDatabase ? store : try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/read.db")))
        return (try SQLiteEventStore(store: store), readModel)
    }

    @Test("SIGKILL at random moments: every event applied exactly once, in order", arguments: [true, false])
    func killed(sameDatabase: Bool) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (events, readModel) = try Self.open(directory.url.path, sameDatabase: sameDatabase)
        let total = 3000
        for batch in 0..<(total / 50) {
            try await events.append(
                (0..<50).map { _ in NewEvent(type: "tick", data: Data("{}".utf8)) }, to: "s-\(batch % 7)",
                expectedVersion: .any)
        }
        let positions = try await events.readAll(after: 0, limit: 10_000).map(\.position)

        var kills = 0
        var appliedAtKills: [Int] = []
        let clock = ContinuousClock()
        while kills < 6 {
            let before = try await Self.applied(readModel).count
            if before == total { break }
            var environment = ProcessInfo.processInfo.environment
            environment[Self.directoryVariable] = directory.url.path
            environment[Self.layoutVariable] = sameDatabase ? "same" : "separate"
            let child = try Spawn.start(
                CommandLine.arguments[0], ["--testing-library", "swift-testing", "--filter", "ProjectionCrashChild"],
                environment: environment)
            defer { child.kill(SIGKILL) }
            // Kill it once it has applied a random number of further events (or at once, now and then).
            let target = before + Int.random(in: 0...600)
            let deadline = clock.now.advanced(by: .seconds(60))
            while child.isRunning, clock.now < deadline, try await Self.applied(readModel).count < target {
                try await Task.sleep(for: .milliseconds(2))
            }
            let exit = try await child.stop(SIGKILL)
            #expect(exit.signal != nil, "the child ran until it was killed (it \(exit))")
            kills += 1
            appliedAtKills.append(try await Self.applied(readModel).count)
            try await Self.expectConsistent(readModel, positions)
        }
        // The kills landed while the child was part way through (not only before or after it).
        #expect(appliedAtKills.contains { $0 > 0 && $0 < total }, "applied when killed: \(appliedAtKills)")
        // Whatever the kills left, a catch-up here finishes the job exactly once.
        let runner = try ProjectionRunner(Ledger(), events: events, store: readModel)
        try await runner.catchUp()
        #expect(try await Self.applied(readModel) == positions)
        #expect(try await runner.lag() == 0)
    }

    static func applied(_ store: SQLiteStore) async throws -> [Int64] {
        try await store.read { db in
            guard try db.viewExists("ledger") else { return [] }
            return try Int64.fetchAll(db, sql: "SELECT position FROM ledger ORDER BY rowid")
        }
    }

    /// The read model holds exactly the events up to the checkpoint, in order, each once.
    static func expectConsistent(_ store: SQLiteStore, _ positions: [Int64]) async throws {
        let (checkpoint, applied) = try await store.read { db -> (Int64, [Int64]) in
            guard try db.viewExists("ledger") else { return (0, []) }
            let checkpoint =
                try Int64.fetchOne(
                    db, sql: "SELECT checkpoint FROM es_projections WHERE name = 'ledger' AND state = 'live'")
                ?? 0
            return (checkpoint, try Int64.fetchAll(db, sql: "SELECT position FROM ledger ORDER BY rowid"))
        }
        #expect(applied == positions.filter { $0 <= checkpoint }, "checkpoint \(checkpoint)")
    }
}

/// The child of ``ProjectionCrashTests``: runs the projection until it is killed. Enabled only in
/// the child process.
@Suite(
    "ProjectionCrashChild",
    .enabled(if: ProcessInfo.processInfo.environment[ProjectionCrashTests.directoryVariable] != nil))
struct ProjectionCrashChild {
    @Test("runs the ledger projection until killed")
    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let directory = try #require(environment[ProjectionCrashTests.directoryVariable])
        let (events, readModel) = try ProjectionCrashTests.open(
            directory, sameDatabase: environment[ProjectionCrashTests.layoutVariable] == "same")
        let runner = try ProjectionRunner(
            ProjectionCrashTests.Ledger(), events: events, store: readModel,
            options: .init(batchSize: Int.random(in: 5...60)))
        try await runner.run()
    }
}
