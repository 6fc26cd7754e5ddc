//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryMessaging
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import PropertyBased
import Testing

/// Projections, snapshots of aggregates and the outbox on a real PostgreSQL server
/// (`PostgresTestServer`): the read model and the checkpoint in one transaction, the checkpoint
/// property, rebuilds side by side with the one-rebuilder lock.
@Suite("Projections on PostgreSQL", .timeLimit(.minutes(5)))
struct PostgresProjectionTests {
    /// Records each applied position, in the order applied (a serial column; no unique
    /// constraint, so that a duplicate would show); fails on the positions in `failOn`, before or
    /// after writing its row.
    struct Recorder: PostgresProjection {
        let name = "recorder"
        var version = 1
        let tables = ["applied"]
        let failOn: Locked<Set<Int64>>
        var failBeforeWriting = true
        /// True: apply a batch with one statement (the fast path); false: event by event.
        var batched = false

        func setUp(_ context: PostgresProjectionContext) async throws {
            try await context.execute(
                "CREATE TABLE \(context.table("applied")) (seq BIGSERIAL PRIMARY KEY, position BIGINT NOT NULL)")
        }

        func apply(_ event: RecordedEvent, _ context: PostgresProjectionContext) async throws {
            let fails = self.failOn.value.contains(event.position)
            if fails && self.failBeforeWriting { throw AviaryError(.internal, "injected failure at \(event.position)") }
            try await context.connection.query(
                "INSERT INTO \(unescaped: context.table("applied")) (position) VALUES (\(event.position))",
                logger: context.logger)
            if fails { throw AviaryError(.internal, "injected failure at \(event.position)") }
        }

        func apply(_ events: [RecordedEvent], _ context: PostgresProjectionContext) async throws {
            guard self.batched else {
                for event in events { try await self.apply(event, context) }
                return
            }
            try await context.connection.query(
                """
                INSERT INTO \(unescaped: context.table("applied")) (position)
                SELECT p FROM unnest(\(events.map(\.position))::BIGINT[]) WITH ORDINALITY AS t(p, n) ORDER BY n
                """, logger: context.logger)
            if let bad = events.first(where: { self.failOn.value.contains($0.position) }) {
                throw AviaryError(.internal, "injected failure at \(bad.position)")
            }
        }
    }

    static func migrations() -> PostgresMigrations {
        var migrations = PostgresMigrations()
        PostgresEventStore.addMigrations(to: &migrations)
        PostgresProjections.addMigrations(to: &migrations)
        Outbox.addMigrations(to: &migrations)
        return migrations
    }

    /// A store on a fresh database with the event store, projections and outbox tables.
    static func withStore<T: Sendable>(
        url: StoreURL? = nil, _ body: @Sendable (PostgresStore) async throws -> T
    ) async throws -> T {
        let database: StoreURL
        if let url { database = url } else { database = try await PostgresTestServer.shared().makeDatabase() }
        return try await PostgresStore.withStore(
            url: database, migrations: Self.migrations(), logger: quietLogger, body)
    }

    static func append(_ count: Int, to events: PostgresEventStore) async throws {
        for index in 0..<count {
            try await events.append(
                [NewEvent(type: "tick", data: Data("{}".utf8))], to: "s-\(index % 3)", expectedVersion: .any)
        }
    }

    /// The positions in the live read model (the view), in the order applied.
    static func applied(_ store: PostgresStore) async throws -> [Int64] {
        try await store.withConnection { connection in
            var exists = false
            for try await name in try await connection.query(
                "SELECT to_regclass('applied')::TEXT", logger: quietLogger
            ).decode(String?.self) {
                exists = name != nil
            }
            guard exists else { return [] }
            var positions: [Int64] = []
            for try await position in try await connection.query(
                "SELECT position FROM applied ORDER BY seq", logger: quietLogger
            ).decode(Int64.self) {
                positions.append(position)
            }
            return positions
        }
    }

    static func positions(_ events: PostgresEventStore) async throws -> [Int64] {
        try await events.readAll(after: 0, limit: 100_000).map(\.position)
    }

    // MARK: The checkpoint property

    /// One round: events appended (and `rolledBack` appends of two events rolled back among
    /// them, which leave gaps in the positions: the runner reads ranges of positions at once when
    /// it is behind, and a gap must not stop or skip anything), then a catch-up with a poison
    /// event (the `failAt`-th event after the checkpoint, failing before or after writing its row)
    /// and maybe a "crash" (the store's pool thrown away and a new one opened) after it.
    struct Round: Sendable, CustomStringConvertible {
        var appends: Int
        var rolledBack: Int
        var failAt: Int?
        var failBeforeWriting: Bool
        var crash: Bool

        var description: String {
            let failure = self.failAt.map { " fail@\($0)\(self.failBeforeWriting ? " before" : " after") writing" }
            let gaps = self.rolledBack > 0 ? " -\(self.rolledBack)x2" : ""
            return "+\(self.appends)\(gaps)\(failure ?? "")\(self.crash ? " crash" : "")"
        }
    }

    static let rounds = zip(Gen.int(in: 0...25), Gen.int(in: -3...3), Gen.int(in: -10...30), Gen.bool, Gen.bool).map {
        values in
        Round(
            appends: values.0, rolledBack: max(0, values.1), failAt: values.2 < 0 ? nil : values.2,
            failBeforeWriting: values.3, crash: values.4)
    }.array(of: 1...8)

    /// Appends two events in a transaction that rolls back: their positions are taken and never used.
    static func rolledBackAppend(to events: PostgresEventStore) async throws {
        struct Rollback: Error {}
        do {
            try await events.store.withTransaction { connection in
                try await events.append(
                    [NewEvent(type: "tick", data: Data("{}".utf8)), NewEvent(type: "tick", data: Data("{}".utf8))],
                    to: "rolled-back", expectedVersion: .any, in: connection)
                throw Rollback()
            }
        } catch is Rollback {}
    }

    @Test("failures and crashes at random points: every event applied exactly once, in order")
    func exactlyOnceInOrder() async throws {
        await propertyCheck(count: 25, input: Gen.bool, Gen.int(in: 1...12), Self.rounds) { batched, batch, rounds in
            do {
                try await Self.check(batched: batched, batchSize: batch, rounds: rounds)
            } catch {
                Issue.record("\(batched ? "batched" : "one by one"), batch \(batch), \(rounds): \(error)")
            }
        }
    }

    static func check(batched: Bool, batchSize: Int, rounds: [Round]) async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let failOn = Locked<Set<Int64>>([])
        // The first pool creates the tables; each "crash" opens another one on the same database.
        try await Self.withStore(url: url) { _ in }
        var appended = 0
        var round = 0
        while round < rounds.count {
            // One pool per stretch of rounds up to a crash.
            let (start, appendedBefore) = (round, appended)
            (round, appended) = try await Self.withStore(url: url) { store in
                let events = PostgresEventStore(store: store)
                var appended = appendedBefore
                var index = start
                while index < rounds.count {
                    let current = rounds[index]
                    index += 1
                    for index in 0..<max(current.appends, current.rolledBack) {
                        if index < current.rolledBack { try await Self.rolledBackAppend(to: events) }
                        guard index < current.appends else { continue }
                        appended += 1
                        try await events.append(
                            [NewEvent(type: "tick", data: Data("{}".utf8))], to: "s-\(appended % 3)",
                            expectedVersion: .any)
                    }
                    var recorder = Recorder(failOn: failOn, failBeforeWriting: current.failBeforeWriting)
                    recorder.batched = batched
                    let runner = try PostgresProjectionRunner(
                        recorder, events: events, options: .init(batchSize: batchSize), logger: quietLogger)
                    let checkpoint = try await runner.status().first?.checkpoint ?? 0
                    let pending = try await events.readAll(after: checkpoint, limit: 100_000)
                    let poison = current.failAt.flatMap { $0 < pending.count ? pending[$0].position : nil }
                    failOn.withLock { $0 = poison.map { [$0] } ?? [] }
                    var failed: ProjectionError?
                    do {
                        try await runner.catchUp()
                    } catch let error as ProjectionError where error.kind == .handlerFailed {
                        failed = error
                    }
                    #expect((failed != nil) == (poison != nil), "a catch-up fails exactly on a poison event")
                    #expect(failed?.position == poison)
                    failOn.withLock { $0 = [] }
                    // The read model holds exactly the events up to the checkpoint, each once, in order.
                    let after = try await runner.status().first?.checkpoint ?? 0
                    let all = try await Self.positions(events)
                    #expect(try await Self.applied(store) == all.filter { $0 <= after }, "checkpoint \(after)")
                    if let poison { #expect(after < poison) } else { #expect(try await runner.lag() == 0) }
                    if current.crash { break }
                }
                return (index, appended)
            }
        }
        let total = appended
        try await Self.withStore(url: url) { store in
            let events = PostgresEventStore(store: store)
            let runner = try PostgresProjectionRunner(
                Recorder(failOn: failOn), events: events, options: .init(batchSize: batchSize), logger: quietLogger)
            try await runner.catchUp()
            let all = try await Self.positions(events)
            #expect(all.count == total)
            #expect(try await Self.applied(store) == all)
            #expect(try await runner.lag() == 0)
        }
    }

    @Test("two replicas of a projection catching up at once apply every event exactly once")
    func replicas() async throws {
        try await Self.withStore { store in
            let events = PostgresEventStore(store: store)
            try await Self.append(200, to: events)
            let failOn = Locked<Set<Int64>>([])
            let runners = try (0..<3).map { index in
                try PostgresProjectionRunner(
                    Recorder(failOn: failOn, batched: index % 2 == 0), events: events, options: .init(batchSize: 7),
                    logger: quietLogger)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for runner in runners { group.addTask { try await runner.catchUp() } }
                try await group.waitForAll()
            }
            #expect(try await Self.applied(store) == (try await Self.positions(events)))
        }
    }

    // MARK: Rebuilds

    @Test("a new version is rebuilt side by side; readers keep the old one until it switches")
    func rebuildSideBySide() async throws {
        try await Self.withStore { store in
            let events = PostgresEventStore(store: store)
            try await Self.append(30, to: events)
            let failOn = Locked<Set<Int64>>([])
            let v1 = try PostgresProjectionRunner(
                Recorder(failOn: failOn), events: events, owner: "v1", logger: quietLogger)
            try await v1.catchUp()
            let all = try await Self.positions(events)

            // Version 2 fails half way: the view still shows version 1, the rebuild keeps its lock.
            var projection = Recorder(failOn: failOn, batched: true)
            projection.version = 2
            failOn.withLock { $0 = [all[17]] }
            let v2 = try PostgresProjectionRunner(
                projection, events: events, options: .init(batchSize: 4), owner: "v2", logger: quietLogger)
            let failure = await #expect(throws: ProjectionError.self) { try await v2.catchUp() }
            #expect(failure?.kind == .handlerFailed && failure?.position == all[17])
            #expect(try await Self.applied(store) == all)
            let building = try await v2.status()
            #expect(building.map(\.state) == ["live", "building"])
            #expect(building[1].checkpoint == all[16] && building[1].lockOwner == "v2")
            #expect(building[1].lastError?.contains("position \(all[17])") == true)

            // Fixed, it resumes from its checkpoint, catches up and switches; version 1's tables go.
            failOn.withLock { $0 = [] }
            try await Self.append(3, to: events)
            let report = try await v2.catchUp()
            #expect(report.switched && report.generation == 2)
            #expect(report.applied == 30 - 17 + 3)
            #expect(try await Self.applied(store) == (try await Self.positions(events)))
            let tables = try await store.withConnection { connection in
                var names: [String] = []
                for try await name in try await connection.query(
                    "SELECT tablename FROM pg_tables WHERE tablename LIKE 'applied%' ORDER BY tablename",
                    logger: quietLogger
                ).decode(String.self) {
                    names.append(name)
                }
                return names
            }
            #expect(tables == ["applied__g2"])
            let after = try await v2.status()
            #expect(after.count == 1 && after[0].generation == 2 && after[0].lockOwner == nil && after[0].lag == 0)

            let old = await #expect(throws: ProjectionError.self) { try await v1.catchUp() }
            #expect(old?.kind == .newerVersionLive)
        }
    }

    @Test("one rebuild at a time: the lock blocks others until it expires, then the rebuild resumes")
    func rebuildLock() async throws {
        try await Self.withStore { store in
            let events = PostgresEventStore(store: store)
            let clock = TestWallClock()
            try await Self.append(20, to: events)
            let failOn = Locked<Set<Int64>>([])
            try await PostgresProjectionRunner(Recorder(failOn: failOn), events: events, logger: quietLogger).catchUp()
            let all = try await Self.positions(events)

            var crashing = Recorder(failOn: failOn)
            crashing.version = 2
            failOn.withLock { $0 = [all[9]] }
            let first = try PostgresProjectionRunner(
                crashing, events: events, options: .init(batchSize: 3, lockTTL: .seconds(30)), owner: "first",
                logger: quietLogger, now: clock.function)
            await #expect(throws: ProjectionError.self) { try await first.catchUp() }  // "crashed" holding the lock
            failOn.withLock { $0 = [] }

            var healthy = Recorder(failOn: failOn)
            healthy.version = 2
            let second = try PostgresProjectionRunner(
                healthy, events: events, options: .init(lockTTL: .seconds(30)), owner: "second", logger: quietLogger,
                now: clock.function)
            let locked = await #expect(throws: ProjectionError.self) { try await second.catchUp() }
            #expect(locked?.kind == .rebuildLocked)
            #expect(locked?.message.contains("first is rebuilding") == true)
            clock.advance(seconds: 29)
            await #expect(throws: ProjectionError.self) { try await second.catchUp() }

            clock.advance(seconds: 2)
            let report = try await second.catchUp()
            #expect(report.switched && report.applied == 20 - 9)  // resumed after the first's checkpoint
            #expect(try await Self.applied(store) == all)

            // The first rebuilder finds the rebuilt generation live: it lost its lock, nothing is applied twice.
            #expect(try await first.catchUp().applied == 0)
            #expect(try await Self.applied(store) == all)
        }
    }

    @Test("a requested rebuild builds a fresh generation of the same version and switches")
    func requestedRebuild() async throws {
        try await Self.withStore { store in
            let events = PostgresEventStore(store: store)
            try await Self.append(12, to: events)
            let runner = try PostgresProjectionRunner(
                Recorder(failOn: Locked([])), events: events, logger: quietLogger)
            try await runner.catchUp()
            _ = try await store.withConnection { connection in
                try await connection.query("DELETE FROM applied__g1 WHERE position > 5", logger: quietLogger)
            }
            try await PostgresProjections.requestRebuild("recorder", in: store)
            #expect(try #require(try await runner.status().first).rebuildRequested)
            let report = try await runner.catchUp()
            #expect(report.switched && report.generation == 2 && report.applied == 12)
            #expect(try await Self.applied(store) == (try await Self.positions(events)))
            let missing = await #expect(throws: AviaryError.self) {
                try await PostgresProjections.requestRebuild("nothing", in: store)
            }
            #expect(missing?.code == .notFound)
        }
    }

    // MARK: Appends with an outbox row; aggregates

    @Test("append(in:) commits the events with an outbox row, and a rollback leaves neither")
    func appendWithOutbox() async throws {
        struct Rollback: Error {}
        try await Self.withStore { store in
            let events = PostgresEventStore(store: store)
            let message: @Sendable (String) throws -> OutgoingMessage = { id in
                OutgoingMessage(
                    topic: "orders", key: "order-1",
                    event: try CloudEvent(id: id, source: "/orders", type: "order.placed", json: ["total": 1]))
            }
            await #expect(throws: Rollback.self) {
                try await store.withTransaction { connection in
                    try await events.append(
                        [NewEvent(type: "order.placed", data: Data("{}".utf8))], to: "order-1",
                        expectedVersion: .noStream, in: connection)
                    try await Outbox.enqueue(try message("m-0"), in: connection)
                    throw Rollback()
                }
            }
            #expect(try await events.streamVersion("order-1") == nil)
            #expect(try await store.withConnection { try await Outbox.pendingCount(in: $0) } == 0)
            let result = try await store.withTransaction { connection in
                let result = try await events.append(
                    [NewEvent(type: "order.placed", data: Data("{}".utf8))], to: "order-1",
                    expectedVersion: .noStream, in: connection)
                try await Outbox.enqueue(try message("m-1"), in: connection)
                return result
            }
            #expect(result.streamVersion == 1)
            #expect(try await events.streamVersion("order-1") == 1)
            #expect(try await store.withConnection { try await Outbox.pendingCount(in: $0) } == 1)
        }
    }

    @Test("bad projection names are refused")
    func badNames() throws {
        struct Bad: PostgresProjection {
            let name = "order history"
            let version = 1
            let tables = ["ok"]
            func setUp(_ context: PostgresProjectionContext) async throws {}
            func apply(_ event: RecordedEvent, _ context: PostgresProjectionContext) async throws {}
        }
        // Nothing connects until the store runs: the name is checked first.
        let store = try PostgresStore(url: StoreURL(parsing: "postgres://nobody@127.0.0.1:1/none"))
        let error = #expect(throws: ProjectionError.self) {
            try PostgresProjectionRunner(Bad(), events: PostgresEventStore(store: store))
        }
        #expect(error?.kind == .invalidName)
        #expect(error?.message.contains("\"order history\" is not a valid name") == true)
    }
}
