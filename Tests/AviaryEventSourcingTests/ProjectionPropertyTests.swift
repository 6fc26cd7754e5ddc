//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import Foundation
import GRDB
import PropertyBased
import Testing

/// The checkpoint never moves past an event that was not applied, and never stays behind one that
/// was: whatever the failures, every event ends up applied exactly once, in order.
@Suite("Projection checkpoint properties", .timeLimit(.minutes(5)))
struct ProjectionPropertyTests {
    /// One round: events appended, then a catch-up whose handler fails on its `failAfter`-th call
    /// (before or after writing its row), and maybe a crash (runner and database connections
    /// thrown away and reopened from the files) after it.
    struct Round: Sendable, CustomStringConvertible {
        var appends: Int
        var failAfter: Int?
        var failBeforeWriting: Bool
        var crash: Bool

        var description: String {
            let failure = self.failAfter.map { " fail@\($0)\(self.failBeforeWriting ? " before" : " after") writing" }
            return "+\(self.appends)\(failure ?? "")\(self.crash ? " crash" : "")"
        }
    }

    /// The injected failure: calls left before it, and whether it comes before the write.
    struct Injection: Sendable {
        var countdown: Int
        var beforeWriting: Bool
    }

    /// A projection that records each applied position in a table with no unique constraint, so
    /// that a duplicate would show, and fails when its countdown reaches zero.
    struct Recorder: Projection {
        let name = "recorder"
        let version = 1
        let tables = ["applied"]
        /// The next failure; nil: none.
        let injection: Locked<Injection?>

        func setUp(_ context: ProjectionContext) throws {
            try context.db.execute(sql: "CREATE TABLE \(context.table("applied")) (position INTEGER NOT NULL)")
        }

        func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
            let failure = self.injection.withLock { (injection: inout Injection?) -> Injection? in
                guard let current = injection else { return nil }
                if current.countdown == 0 {
                    injection = nil
                    return current
                }
                injection?.countdown -= 1
                return nil
            }
            if let failure, failure.beforeWriting {
                throw AviaryError(.internal, "injected failure at \(event.position)")
            }
            try context.db.execute(
                sql: "INSERT INTO \(context.table("applied")) (position) VALUES (?)", arguments: [event.position])
            if failure != nil { throw AviaryError(.internal, "injected failure at \(event.position)") }
        }
    }

    static let rounds = zip(
        Gen.int(in: 0...25),
        Gen.int(in: -10...30),
        Gen.bool,
        Gen.bool
    ).map { values in
        Round(appends: values.0, failAfter: values.1 < 0 ? nil : values.1, failBeforeWriting: values.2, crash: values.3)
    }.array(of: 1...10)

    @Test("failures and crashes at random points: every event applied exactly once, in order")
    func exactlyOnceInOrder() async throws {
        await propertyCheck(count: 60, input: Gen.bool, Gen.int(in: 1...12), Self.rounds) {
            sameDatabase, batch, rounds in
            do {
                try await Self.check(sameDatabase: sameDatabase, batchSize: batch, rounds: rounds)
            } catch {
                Issue.record("\(sameDatabase ? "same" : "separate") database, batch \(batch), \(rounds): \(error)")
            }
        }
    }

    static func check(sameDatabase: Bool, batchSize: Int, rounds: [Round]) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let injection = Locked<Injection?>(nil)
        let eventsPath = directory.path("events.db")
        let readModelPath = sameDatabase ? eventsPath : directory.path("read-model.db")

        func open() throws -> (SQLiteEventStore, ProjectionRunner<Recorder>) {
            var migrations = Migrations()
            migrations.addEventStore()
            let eventStore = try SQLiteStore(url: StoreURL(.sqlite(path: eventsPath)), migrations: migrations)
            let events = try SQLiteEventStore(store: eventStore)
            let readModel = sameDatabase ? eventStore : try SQLiteStore(url: StoreURL(.sqlite(path: readModelPath)))
            let runner = try ProjectionRunner(
                Recorder(injection: injection), events: events, store: readModel,
                options: .init(batchSize: batchSize))
            return (events, runner)
        }

        var (events, runner) = try open()
        var appended = 0
        for round in rounds {
            for _ in 0..<round.appends {
                appended += 1
                try await events.append(
                    [NewEvent(type: "tick", data: Data("{}".utf8))], to: "s-\(appended % 3)", expectedVersion: .any)
            }
            injection.withLock {
                $0 = round.failAfter.map { Injection(countdown: $0, beforeWriting: round.failBeforeWriting) }
            }
            var failed = false
            do {
                try await runner.catchUp()
            } catch let error as ProjectionError where error.kind == .handlerFailed {
                failed = true
            }
            let injected = injection.value == nil && round.failAfter != nil
            #expect(failed == injected, "a catch-up fails exactly when a failure was injected")
            injection.withLock { $0 = nil }
            try await Self.expectConsistent(runner, events)
            if !failed { #expect(try await runner.lag() == 0) }
            if round.crash { (events, runner) = try open() }
        }
        try await runner.catchUp()
        try await Self.expectConsistent(runner, events)
        let all = try await events.readAll(after: 0, limit: 10_000).map(\.position)
        #expect(all.count == appended)
        #expect(try await Self.applied(runner) == all)
        #expect(try await runner.lag() == 0)
    }

    /// The read model holds exactly the events up to the checkpoint, each once, in order.
    static func expectConsistent(_ runner: ProjectionRunner<Recorder>, _ events: SQLiteEventStore) async throws {
        let checkpoint = try await runner.status().first?.checkpoint ?? 0
        let all = try await events.readAll(after: 0, limit: 10_000).map(\.position)
        let applied = try await Self.applied(runner)
        #expect(applied == all.filter { $0 <= checkpoint }, "checkpoint \(checkpoint)")
    }

    static func applied(_ runner: ProjectionRunner<Recorder>) async throws -> [Int64] {
        try await runner.store.read { db in
            guard try db.viewExists("applied") else { return [] }
            return try Int64.fetchAll(db, sql: "SELECT position FROM applied ORDER BY rowid")
        }
    }
}
