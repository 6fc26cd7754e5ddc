//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import Foundation
import GRDB
import Testing

/// A read model of every event: one row per event with its position and stream; version 2 adds
/// the event type. The handler throws on positions listed in `failOn`.
struct EventLog: Projection {
    let name = "event_log"
    var version = 1
    let tables = ["event_log"]
    var failOn: Locked<Set<Int64>> = Locked([])

    func setUp(_ context: ProjectionContext) throws {
        let extra = self.version >= 2 ? ", type TEXT NOT NULL" : ""
        try context.db.execute(
            sql: "CREATE TABLE \(context.table("event_log")) (position INTEGER NOT NULL, stream TEXT NOT NULL\(extra))")
    }

    func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
        if self.version >= 2 {
            try context.db.execute(
                sql: "INSERT INTO \(context.table("event_log")) VALUES (?, ?, ?)",
                arguments: [event.position, event.stream, event.type])
        } else {
            try context.db.execute(
                sql: "INSERT INTO \(context.table("event_log")) VALUES (?, ?)",
                arguments: [event.position, event.stream])
        }
        if self.failOn.value.contains(event.position) {
            throw AviaryError(.internal, "handler failure at \(event.position)")
        }
    }
}

@Suite("Projections", .timeLimit(.minutes(3)))
struct ProjectionTests {
    /// Events and read model in one database, or in two.
    enum Layout: String, CaseIterable, Sendable {
        case sameDatabase, separateDatabases
    }

    struct Setup {
        let directory: TemporaryDirectory
        let events: SQLiteEventStore
        let readModel: SQLiteStore
    }

    static func setUp(_ layout: Layout) throws -> Setup {
        let directory = try TemporaryDirectory()
        var migrations = Migrations()
        migrations.addEventStore()
        let eventsStore = try SQLiteStore(
            url: StoreURL(.sqlite(path: directory.path("service.db"))), migrations: migrations)
        let events = try SQLiteEventStore(store: eventsStore)
        let readModel =
            layout == .sameDatabase
            ? eventsStore : try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("read-model.db"))))
        return Setup(directory: directory, events: events, readModel: readModel)
    }

    static func append(_ count: Int, to events: SQLiteEventStore, streams: [String] = ["a", "b", "c"]) async throws {
        for index in 0..<count {
            try await events.append(
                [NewEvent(type: "t\(index % 4)", data: Data("{}".utf8))], to: streams[index % streams.count],
                expectedVersion: .any)
        }
    }

    static func rows(
        _ store: SQLiteStore, _ sql: String = "SELECT position FROM event_log ORDER BY rowid"
    ) async throws
        -> [Int64]
    {
        try await store.read { db in try Int64.fetchAll(db, sql: sql) }
    }

    @Test("catch-up applies every event once, in order; the checkpoint and lag follow", arguments: Layout.allCases)
    func catchUp(layout: Layout) async throws {
        let setup = try Self.setUp(layout)
        defer { setup.directory.remove() }
        try await Self.append(25, to: setup.events)
        let runner = try ProjectionRunner(
            EventLog(), events: setup.events, store: setup.readModel, options: .init(batchSize: 7))
        #expect(try await runner.lag() == 25)
        let report = try await runner.catchUp()
        #expect(report.applied == 25 && report.generation == 1 && !report.switched)
        let positions = try await setup.events.readAll(after: 0, limit: 100).map(\.position)
        #expect(try await Self.rows(setup.readModel) == positions)
        #expect(try await runner.lag() == 0)

        try await Self.append(4, to: setup.events)
        #expect(try await runner.lag() == 4)
        let status = try #require(try await runner.status().first)
        #expect(status.lag == 4 && status.state == "live" && status.checkpoint == positions.last)
        #expect(try await runner.catchUp().applied == 4)
        #expect(try await runner.catchUp().applied == 0)
        #expect(try await Self.rows(setup.readModel).count == 29)
        #expect(try await runner.lag() == 0)
    }

    @Test(
        "a failing handler stops the checkpoint just before its event; a retry applies it once",
        arguments: Layout.allCases)
    func handlerFailure(layout: Layout) async throws {
        let setup = try Self.setUp(layout)
        defer { setup.directory.remove() }
        try await Self.append(20, to: setup.events)
        let all = try await setup.events.readAll(after: 0, limit: 100).map(\.position)
        let projection = EventLog()
        projection.failOn.withLock { $0 = [all[12]] }
        let runner = try ProjectionRunner(
            projection, events: setup.events, store: setup.readModel, options: .init(batchSize: 5))
        let error = await #expect(throws: ProjectionError.self) { try await runner.catchUp() }
        #expect(error?.kind == .handlerFailed)
        #expect(error?.position == all[12])
        #expect(error?.message.contains("position \(all[12])") == true)
        // Events before the failed one are applied and checkpointed; nothing of it or after.
        #expect(try await Self.rows(setup.readModel) == Array(all[0..<12]))
        let status = try #require(try await runner.status().first)
        #expect(status.checkpoint == all[11])
        #expect(status.lastError?.contains("handler failure at \(all[12])") == true)
        #expect(try await runner.lag() == all.last! - all[11])

        projection.failOn.withLock { $0 = [] }
        try await runner.catchUp()
        #expect(try await Self.rows(setup.readModel) == all)
        #expect(try #require(try await runner.status().first).lastError == nil)
    }

    @Test("two replicas of a projection catching up at once apply every event exactly once")
    func replicas() async throws {
        let setup = try Self.setUp(.separateDatabases)
        defer { setup.directory.remove() }
        try await Self.append(300, to: setup.events)
        let runners = try (0..<3).map { index in
            try ProjectionRunner(
                EventLog(), events: setup.events,
                store: try SQLiteStore(url: StoreURL(.sqlite(path: setup.directory.path("read-model.db")))),
                options: .init(batchSize: 10), owner: "replica-\(index)")
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for runner in runners { group.addTask { try await runner.catchUp() } }
            try await group.waitForAll()
        }
        let positions = try await setup.events.readAll(after: 0, limit: 1000).map(\.position)
        #expect(try await Self.rows(setup.readModel) == positions)
    }

    @Test(
        "a new version is rebuilt side by side; readers keep the old one until it switches", arguments: Layout.allCases)
    func rebuildSideBySide(layout: Layout) async throws {
        let setup = try Self.setUp(layout)
        defer { setup.directory.remove() }
        try await Self.append(30, to: setup.events)
        let v1 = try ProjectionRunner(EventLog(), events: setup.events, store: setup.readModel, owner: "v1")
        try await v1.catchUp()
        let all = try await setup.events.readAll(after: 0, limit: 100).map(\.position)

        // Version 2 fails half way: the view still shows version 1, the rebuild keeps its lock.
        var projection = EventLog()
        projection.version = 2
        projection.failOn.withLock { $0 = [all[17]] }
        let v2 = try ProjectionRunner(
            projection, events: setup.events, store: setup.readModel, options: .init(batchSize: 4), owner: "v2")
        await #expect(throws: ProjectionError.self) { try await v2.catchUp() }
        #expect(try await Self.rows(setup.readModel) == all)
        let columns = try await setup.readModel.read { db in try db.columns(in: "event_log").map(\.name) }
        #expect(columns == ["position", "stream"])
        let building = try await v2.status()
        #expect(building.map(\.state) == ["live", "building"])
        #expect(building[1].checkpoint == all[16] && building[1].lockOwner == "v2")

        // Fixed, it resumes from its checkpoint, catches up and switches; version 1's tables go.
        projection.failOn.withLock { $0 = [] }
        try await Self.append(3, to: setup.events)
        let report = try await v2.catchUp()
        #expect(report.switched && report.generation == 2)
        #expect(report.applied == 30 - 17 + 3)
        let positions = try await setup.events.readAll(after: 0, limit: 100).map(\.position)
        #expect(try await Self.rows(setup.readModel) == positions)
        let types = try await setup.readModel.read { db in try String.fetchAll(db, sql: "SELECT type FROM event_log") }
        #expect(types.count == 33)
        let tables = try await setup.readModel.read { db in
            try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE name LIKE 'event_log%' ORDER BY name")
        }
        #expect(tables == ["event_log", "event_log__g2"])
        let after = try await v2.status()
        #expect(after.count == 1 && after[0].generation == 2 && after[0].lockOwner == nil && after[0].lag == 0)

        // The old code refuses to write the newer read model.
        let old = await #expect(throws: ProjectionError.self) { try await v1.catchUp() }
        #expect(old?.kind == .newerVersionLive)
    }

    @Test("one rebuild at a time: the lock blocks others until it expires, then the rebuild resumes")
    func rebuildLock() async throws {
        let setup = try Self.setUp(.sameDatabase)
        defer { setup.directory.remove() }
        let clock = TestWallClock()
        try await Self.append(20, to: setup.events)
        try await ProjectionRunner(EventLog(), events: setup.events, store: setup.readModel).catchUp()
        let all = try await setup.events.readAll(after: 0, limit: 100).map(\.position)

        var crashing = EventLog()
        crashing.version = 2
        crashing.failOn.withLock { $0 = [all[9]] }
        let first = try ProjectionRunner(
            crashing, events: setup.events, store: setup.readModel,
            options: .init(batchSize: 3, lockTTL: .seconds(30)), owner: "first", now: clock.function)
        await #expect(throws: ProjectionError.self) { try await first.catchUp() }  // "crashed" holding the lock

        var healthy = EventLog()
        healthy.version = 2
        let second = try ProjectionRunner(
            healthy, events: setup.events, store: setup.readModel, options: .init(lockTTL: .seconds(30)),
            owner: "second", now: clock.function)
        let locked = await #expect(throws: ProjectionError.self) { try await second.catchUp() }
        #expect(locked?.kind == .rebuildLocked)
        #expect(locked?.message.contains("first is rebuilding") == true)
        clock.advance(seconds: 29)
        await #expect(throws: ProjectionError.self) { try await second.catchUp() }

        clock.advance(seconds: 2)
        let report = try await second.catchUp()
        #expect(report.switched && report.applied == 20 - 9)  // resumed after the first's checkpoint
        #expect(try await Self.rows(setup.readModel) == all)

        // The first rebuilder finds the rebuilt generation live and caught up: nothing is applied twice.
        #expect(try await first.catchUp().applied == 0)
        #expect(try await Self.rows(setup.readModel) == all)
    }

    @Test("a requested rebuild builds a fresh generation of the same version and switches")
    func requestedRebuild() async throws {
        let setup = try Self.setUp(.separateDatabases)
        defer { setup.directory.remove() }
        try await Self.append(12, to: setup.events)
        let runner = try ProjectionRunner(EventLog(), events: setup.events, store: setup.readModel)
        try await runner.catchUp()
        // Damage the live read model; a rebuild recomputes it from the events.
        try await setup.readModel.write { db in try db.execute(sql: "DELETE FROM event_log__g1 WHERE position > 5") }
        try await Projections.requestRebuild("event_log", in: setup.readModel)
        #expect(try #require(try await runner.status().first).rebuildRequested)
        let report = try await runner.catchUp()
        #expect(report.switched && report.generation == 2 && report.applied == 12)
        #expect(
            try await Self.rows(setup.readModel)
                == (try await setup.events.readAll(after: 0, limit: 100).map(\.position)))
        let missing = await #expect(throws: AviaryError.self) {
            try await Projections.requestRebuild("nothing", in: setup.readModel)
        }
        #expect(missing?.code == .notFound)
    }

    @Test("run() follows new events after each poll interval and keeps going after a handler failure")
    func runFollows() async throws {
        let setup = try Self.setUp(.sameDatabase)
        defer { setup.directory.remove() }
        let clock = ManualClock()
        let projection = EventLog()
        let runner = try ProjectionRunner(
            projection, events: setup.events, store: setup.readModel,
            options: .init(pollInterval: .milliseconds(100)))
        try await Self.append(3, to: setup.events)
        let task = Task { try await runner.run(clock: clock) }
        defer { task.cancel() }
        await clock.waitForSleepers()
        #expect(try await Self.rows(setup.readModel).count == 3)

        // New events arrive; nothing happens until the interval passes.
        try await Self.append(2, to: setup.events)
        let all = try await setup.events.readAll(after: 0, limit: 100).map(\.position)
        projection.failOn.withLock { $0 = [all[4]] }
        #expect(try await Self.rows(setup.readModel).count == 3)
        clock.advance(by: .milliseconds(100))
        await clock.waitForSleepers()
        #expect(try await Self.rows(setup.readModel) == Array(all[0..<4]))  // paused before the failing event

        projection.failOn.withLock { $0 = [] }
        clock.advance(by: .milliseconds(100))
        await clock.waitForSleepers()
        #expect(try await Self.rows(setup.readModel) == all)
        #expect(try await runner.lag() == 0)
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
    }

    @Test("bad projection names are refused")
    func badNames() async throws {
        struct Bad: Projection {
            let name = "drop table"
            let version = 1
            let tables = ["x"]
            func setUp(_ context: ProjectionContext) throws {}
            func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {}
        }
        let setup = try Self.setUp(.sameDatabase)
        defer { setup.directory.remove() }
        let error = #expect(throws: ProjectionError.self) {
            try ProjectionRunner(Bad(), events: setup.events, store: setup.readModel)
        }
        #expect(error?.kind == .invalidName)
    }
}
