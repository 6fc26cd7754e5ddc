//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryStorage
public import Foundation
import GRDB
public import Logging

/// A catch-up subscription that keeps a ``Projection``'s read model up to date with the global
/// event order, with its checkpoint stored next to the read model.
///
/// ## Exactly once, in order
/// Events are applied in batches. One batch is one transaction on the read model's database: it
/// applies the events in position order and moves the checkpoint to the last of them, so the
/// read model and the checkpoint commit together or not at all. A crash anywhere rolls both
/// back. When a handler throws on an event, the batch is rolled back and the events before it
/// are applied again in a transaction of their own (so the checkpoint ends just before the failed
/// event), then ``catchUp()`` throws ``ProjectionError/Kind/handlerFailed`` naming the position.
/// The checkpoint never moves past an event that was not applied. A batch's events are read
/// before its transaction (in a read transaction of their own, while the previous batch is being
/// applied, so that reading and applying overlap), and the transaction checks that the checkpoint
/// is still the position they were read after; when another replica running the same projection
/// moved it, the runner drops what it read and goes on from there, so no event is applied twice.
/// (That no event is skipped rests on the event store's order guarantee: see ``EventStore``.)
///
/// ## Generations and side-by-side rebuilds
/// The read model's tables are per generation (`order_history__g1`) and readers query views
/// with the logical names. When the projection's ``Projection/version`` is newer than the live
/// generation's, or a rebuild was requested (``Projections/requestRebuild(_:in:)``,
/// `aviary events rebuild`), the runner takes the projection's rebuild lock (a row in
/// `es_projection_locks` that expires after ``Options/lockTTL`` unless renewed, so a crashed
/// rebuilder does not block forever), builds a new generation from position 0 next to the live
/// one, and when it has caught up with the head switches the views, drops the old generation and
/// releases the lock in one transaction. Until then readers keep the old generation. A rebuild
/// that crashed resumes from its own checkpoint.
///
/// ```swift
/// let runner = try ProjectionRunner(OrderHistory(), events: eventStore, store: readModelStore)
/// try await runner.catchUp()               // apply everything recorded so far
/// print(try await runner.lag())            // 0
/// try await runner.run()                   // keep following until the task is cancelled
/// ```
public final class ProjectionRunner<P: Projection>: Sendable {
    /// How a runner works (shared with ``PostgresProjectionRunner``).
    public typealias Options = ProjectionRunnerOptions

    /// What one ``catchUp()`` did.
    public typealias Report = ProjectionRunnerReport

    /// The projection.
    public let projection: P
    /// Where events come from.
    public let events: any EventStore
    /// The read model's database (holds the checkpoint, the generations and the lock).
    public let store: SQLiteStore
    /// Options.
    public let options: Options
    /// This runner's name in the rebuild lock.
    public let owner: String
    let logger: Logger
    let now: @Sendable () -> Date
    /// The event store when it lives in the read model's database: then the switch to a rebuilt
    /// generation reads the head in its own transaction.
    let local: SQLiteEventStore?

    /// Creates a runner and the bookkeeping tables (`es_projections`, `es_projection_locks`) in
    /// the read model's database if they are missing.
    ///
    /// - Parameters:
    ///   - projection: the projection.
    ///   - events: the event store to follow.
    ///   - store: the read model's database.
    ///   - options: batch size, lock expiry, polling.
    ///   - owner: this runner's name in the rebuild lock (host, process id and a random suffix by default).
    ///   - now: wall-clock time for lock expiry (tests pass a manual clock's `now`).
    /// - Throws: ``ProjectionError`` (`invalidName`) for a bad projection or table name; the
    ///   database's error when the bookkeeping tables cannot be created.
    public init(
        _ projection: P, events: any EventStore, store: SQLiteStore, options: Options = Options(),
        owner: String? = nil, logger: Logger = Logger(label: "aviary.eventsourcing"),
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        try ProjectionRunnerSetup.validate(name: projection.name, tables: projection.tables)
        precondition(options.batchSize > 0, "batchSize must be positive")
        self.projection = projection
        self.events = events
        self.store = store
        self.options = options
        self.owner = owner ?? ProjectionRunnerSetup.defaultOwner()
        self.logger = logger
        self.now = now
        if let sqlite = events as? SQLiteEventStore, sqlite.store === store {
            self.local = sqlite
        } else {
            self.local = nil
        }
        try store.database.write { db in try db.execute(sql: ProjectionTables.schema) }
    }

    // MARK: Catching up

    /// Applies every event recorded so far (and those recorded meanwhile) to the live generation,
    /// first building a new generation side by side when the projection's version is newer than
    /// the live one or a rebuild was requested.
    ///
    /// - Throws: ``ProjectionError``: `handlerFailed` (the checkpoint is just before the event),
    ///   `rebuildLocked` (another process rebuilds; the live generation stays as it is),
    ///   `newerVersionLive`, `superseded`, `lockLost`; the stores' errors.
    @discardableResult
    public func catchUp() async throws -> Report {
        try await self.catchUpGenerations()
    }

    /// Catches up, then waits ``Options/pollInterval`` and catches up again, until the task is
    /// cancelled. Handler failures and a rebuild held by another process are logged and retried
    /// after the interval.
    ///
    /// - Throws: ``ProjectionError`` (`newerVersionLive`): this code must not write the read model;
    ///   `CancellationError` when cancelled.
    public func run(clock: any MonotonicClock = SystemClock()) async throws {
        try await self.runPolling(clock: clock)
    }

    /// The head position minus the live generation's checkpoint: how many positions the read
    /// model is behind (0 when caught up; the whole head before the first build).
    public func lag() async throws -> Int64 {
        let head = try await self.events.headPosition()
        let checkpoint = try await self.store.read { [name = self.projection.name] db in
            try Int64.fetchOne(
                db, sql: "SELECT checkpoint FROM es_projections WHERE name = ? AND state = 'live'", arguments: [name])
        }
        return max(0, head - (checkpoint ?? 0))
    }

    /// This projection's generations with their checkpoints and lag.
    public func status() async throws -> [ProjectionStatus] {
        let head = try await self.events.headPosition()
        return try await Projections.status(in: self.store, headPosition: head).filter {
            $0.name == self.projection.name
        }
    }

    // MARK: Steps

    /// Finds the live generation (creating the first one), or decides to rebuild.
    func plan() async throws -> ProjectionPlan {
        let projection = self.projection
        let now = Microseconds.of(self.now())
        return try await self.store.write("projection plan") { db -> ProjectionPlan in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT generation, version, state, rebuild_requested FROM es_projections WHERE name = ?",
                arguments: [projection.name])
            guard let live = rows.first(where: { ($0[2] as String) == "live" }) else {
                let generation = (rows.map { $0[0] as Int64 }.max() ?? 0) + 1
                try projection.setUp(ProjectionContext(db: db, generation: generation))
                try Self.pointViews(projection.tables, at: generation, dropping: [], in: db)
                try db.execute(
                    sql: """
                        INSERT INTO es_projections (name, generation, version, state, tables, updated_at)
                        VALUES (?, ?, ?, 'live', ?, ?)
                        """,
                    arguments: [
                        projection.name, generation, projection.version, projection.tables.joined(separator: ","), now,
                    ])
                return .live(generation)
            }
            let version: Int = live[1]
            if version > projection.version {
                throw ProjectionError(
                    .newerVersionLive,
                    "projection \(projection.name): the live read model has version \(version), newer than this code's "
                        + "\(projection.version); refusing to write it")
            }
            if version == projection.version && (live[3] as Int) == 0 {
                return .live(live[0])
            }
            return .rebuild
        }
    }

    /// Takes the rebuild lock and returns the generation to build: a rebuild of this version
    /// that stopped earlier resumes; any other unfinished one is dropped.
    func prepareRebuild() async throws -> Int64 {
        let projection = self.projection
        let owner = self.owner
        let now = self.now()
        let expiry = Microseconds.of(now.addingTimeInterval(self.options.lockTTL.aviarySeconds))
        return try await self.store.write("projection rebuild lock") { db -> Int64 in
            try db.execute(
                sql: """
                    INSERT INTO es_projection_locks (name, owner, expires_at) VALUES (?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                    WHERE es_projection_locks.owner = excluded.owner OR es_projection_locks.expires_at <= ?
                    """,
                arguments: [projection.name, owner, expiry, Microseconds.of(now)])
            guard db.changesCount == 1 else {
                let holder = try Row.fetchOne(
                    db, sql: "SELECT owner, expires_at FROM es_projection_locks WHERE name = ?",
                    arguments: [projection.name])
                let who = holder.map { $0[0] as String } ?? "?"
                let until = holder.map { Microseconds.date($0[1]) }.map { "\($0)" } ?? "?"
                throw ProjectionError(
                    .rebuildLocked, "projection \(projection.name): \(who) is rebuilding it (lock held until \(until))")
            }
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT generation, version, tables FROM es_projections WHERE name = ? AND state = 'building'",
                arguments: [projection.name])
            for row in rows {
                if (row[1] as Int) == projection.version { return row[0] }
                try Self.drop(generation: row[0], tables: row[2], of: projection.name, in: db)
            }
            let generation =
                try Int64.fetchOne(
                    db, sql: "SELECT max(generation) FROM es_projections WHERE name = ?", arguments: [projection.name])
                ?? 0
            try projection.setUp(ProjectionContext(db: db, generation: generation + 1))
            try db.execute(
                sql: """
                    INSERT INTO es_projections (name, generation, version, state, tables, updated_at)
                    VALUES (?, ?, ?, 'building', ?, ?)
                    """,
                arguments: [
                    projection.name, generation + 1, projection.version, projection.tables.joined(separator: ","),
                    Microseconds.of(now),
                ])
            return generation + 1
        }
    }

    /// The generation's checkpoint, where a drain starts reading.
    func drainStart(_ generation: Int64, rebuilding: Bool) async throws -> Int64 {
        try await self.store.read { db in
            try self.checkpoint(generation, rebuilding: rebuilding, renewingLock: false, in: db)
        }
    }

    /// The next page is read on a reader connection, in a read transaction of its own, while the
    /// current one is applied in the write transaction.
    func readPage(after position: Int64) async throws -> [RecordedEvent] {
        try await self.events.readAll(after: position, limit: self.options.batchSize)
    }

    /// A handler's failure inside a batch's transaction (which it rolls back).
    private struct HandlerFailure: Error {
        var index: Int
        var event: RecordedEvent
        var error: any Error
    }

    /// Applies a page read after `after` in one write transaction that moves the checkpoint past
    /// its last event; false (and nothing written) when the checkpoint is no longer `after`
    /// (another replica applied these events). When a handler throws, the transaction rolls back,
    /// the events before the failed one are applied in a transaction of their own, and the
    /// failure is recorded and thrown.
    func applyPage(
        _ page: [RecordedEvent], after: Int64, generation: Int64, rebuilding: Bool
    ) async throws -> Bool {
        var events = page[...]
        var failure: ProjectionError?
        while true {
            do {
                let batch = events
                let applied = try await self.store.write("projection batch") { db -> Bool in
                    guard try self.checkpoint(generation, rebuilding: rebuilding, in: db) == after else { return false }
                    try self.apply(batch, to: generation, in: db)
                    return true
                }
                if let failure, applied {
                    try? await self.recordFailure(failure, generation: generation)
                    throw failure
                }
                return applied
            } catch let handler as HandlerFailure {
                let error = ProjectionError(
                    .handlerFailed,
                    "projection \(self.projection.name) failed on the event at position \(handler.event.position) "
                        + "(\(handler.event.type), \(handler.event.stream)@\(handler.event.streamVersion))",
                    position: handler.event.position, cause: handler.error)
                if handler.index == 0 {
                    try? await self.recordFailure(error, generation: generation)
                    throw error
                }
                // Apply the events before the failed one on their own, then report the failure.
                failure = error
                events = events.prefix(handler.index)
            }
        }
    }

    /// Checks that this runner may write `generation` (renewing the lock of a rebuild) and
    /// returns its checkpoint.
    private func checkpoint(
        _ generation: Int64, rebuilding: Bool, renewingLock: Bool = true, in db: Database
    ) throws
        -> Int64
    {
        let name = self.projection.name
        let row = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT state, checkpoint FROM es_projections WHERE name = ? AND generation = ?"),
            arguments: [name, generation])
        guard let row, (row[0] as String) == (rebuilding ? "building" : "live") else {
            throw ProjectionError(
                .superseded, "projection \(name): generation \(generation) was replaced by another process")
        }
        if rebuilding && renewingLock {
            let expiry = Microseconds.of(self.now().addingTimeInterval(self.options.lockTTL.aviarySeconds))
            try db.cachedStatement(sql: "UPDATE es_projection_locks SET expires_at = ? WHERE name = ? AND owner = ?")
                .execute(arguments: [expiry, name, self.owner])
            guard db.changesCount == 1 else {
                throw ProjectionError(
                    .lockLost, "projection \(name): the rebuild lock of \(self.owner) expired and was taken over")
            }
        }
        return row[1]
    }

    /// Applies events and moves the checkpoint past the last, in the caller's transaction.
    private func apply(_ events: ArraySlice<RecordedEvent>, to generation: Int64, in db: Database) throws {
        guard let last = events.last else { return }
        let context = ProjectionContext(db: db, generation: generation)
        for (index, event) in events.enumerated() {
            do {
                try self.projection.apply(event, context)
            } catch {
                throw HandlerFailure(index: index, event: event, error: error)
            }
        }
        try db.cachedStatement(
            sql: """
                UPDATE es_projections SET checkpoint = ?, last_error = NULL, updated_at = ?
                WHERE name = ? AND generation = ?
                """
        ).execute(arguments: [last.position, Microseconds.of(self.now()), self.projection.name, generation])
    }

    private func recordFailure(_ error: ProjectionError, generation: Int64) async throws {
        let name = self.projection.name
        let text = error.description
        let now = Microseconds.of(self.now())
        try await self.store.write { db in
            try db.execute(
                sql: "UPDATE es_projections SET last_error = ?, updated_at = ? WHERE name = ? AND generation = ?",
                arguments: [text, now, name, generation])
        }
    }

    /// Makes a caught-up rebuilt generation live: views, old generation dropped, lock released,
    /// in one transaction. False when it is not caught up with the head yet.
    func switchOver(_ generation: Int64) async throws -> Bool {
        var head: Int64?
        if self.local == nil { head = try await self.events.headPosition() }
        let knownHead = head
        let projection = self.projection
        let owner = self.owner
        return try await self.store.write("projection switch") { db -> Bool in
            let checkpoint = try self.checkpoint(generation, rebuilding: true, in: db)
            let head = try knownHead ?? SQLiteEventStore.headPosition(in: db)
            guard checkpoint >= head else { return false }
            var dropped: [String] = []
            let old = try Row.fetchAll(
                db, sql: "SELECT generation, tables FROM es_projections WHERE name = ? AND state = 'live'",
                arguments: [projection.name])
            for row in old {
                let tables: String = row[1]
                dropped += tables.split(separator: ",").map(String.init)
                try Self.drop(generation: row[0], tables: tables, of: projection.name, in: db)
            }
            try Self.pointViews(projection.tables, at: generation, dropping: dropped, in: db)
            try db.execute(
                sql: """
                    UPDATE es_projections SET state = 'live', rebuild_requested = 0, updated_at = ?
                    WHERE name = ? AND generation = ?
                    """,
                arguments: [Microseconds.of(self.now()), projection.name, generation])
            try db.execute(
                sql: "DELETE FROM es_projection_locks WHERE name = ? AND owner = ?",
                arguments: [projection.name, owner])
            return true
        }
    }

    /// Points the views of `tables` at `generation`; drops views of old tables no longer used.
    private static func pointViews(
        _ tables: [String], at generation: Int64, dropping old: [String], in db: Database
    )
        throws
    {
        for table in Set(old).subtracting(tables) {
            try db.execute(sql: "DROP VIEW IF EXISTS \(table)")
        }
        for table in tables {
            try db.execute(sql: "DROP VIEW IF EXISTS \(table)")
            try db.execute(
                sql: "CREATE VIEW \(table) AS SELECT * FROM \(ProjectionTables.physical(table, generation: generation))"
            )
        }
    }

    /// Drops a generation's tables and its bookkeeping row.
    private static func drop(generation: Int64, tables: String, of name: String, in db: Database) throws {
        for table in tables.split(separator: ",") {
            try db.execute(
                sql: "DROP TABLE IF EXISTS \(ProjectionTables.physical(String(table), generation: generation))")
        }
        try db.execute(
            sql: "DELETE FROM es_projections WHERE name = ? AND generation = ?", arguments: [name, generation])
    }
}

/// How a projection runner works (``ProjectionRunner/Options``, ``PostgresProjectionRunner``).
///
/// ```swift
/// let options = ProjectionRunnerOptions(batchSize: 2000, pollInterval: .milliseconds(100))
/// ```
public struct ProjectionRunnerOptions: Sendable {
    /// Events per transaction (at most). Larger batches spread each transaction's fixed cost over
    /// more events; smaller ones hold the read model's write lock for less time (on SQLite, the
    /// database's only writer, appends wait for it).
    public var batchSize: Int
    /// How long a rebuild lock lasts without renewal (each batch renews it).
    public var lockTTL: Duration
    /// How long `run(clock:)` waits when caught up, or after a failure.
    public var pollInterval: Duration

    /// Creates options.
    public init(batchSize: Int = 1000, lockTTL: Duration = .seconds(60), pollInterval: Duration = .milliseconds(200)) {
        self.batchSize = batchSize
        self.lockTTL = lockTTL
        self.pollInterval = pollInterval
    }
}

/// What one catch-up of a projection runner did.
public struct ProjectionRunnerReport: Sendable, Hashable {
    /// Events applied (to the live generation, and to a rebuilt one).
    public var applied: Int
    /// The live generation afterwards.
    public var generation: Int64
    /// Whether a rebuilt generation went live.
    public var switched: Bool
}

/// A projection generation as ``Projections/status(in:headPosition:)`` reports it.
public struct ProjectionStatus: Sendable, Hashable, Codable {
    /// The projection.
    public var name: String
    /// The generation (its tables are `<table>__g<generation>`).
    public var generation: Int64
    /// The projection version that builds it.
    public var version: Int
    /// `live` (readers see it) or `building` (a side-by-side rebuild).
    public var state: String
    /// The last global position applied.
    public var checkpoint: Int64
    /// The head position minus the checkpoint.
    public var lag: Int64
    /// Whether a rebuild was requested and not yet started.
    public var rebuildRequested: Bool
    /// The last handler failure since the last successful batch.
    public var lastError: String?
    /// The rebuild lock's holder, if any.
    public var lockOwner: String?
    /// When the rebuild lock expires unless renewed.
    public var lockExpiresAt: Date?
    /// When the checkpoint last moved (or the generation was created).
    public var updatedAt: Date
}

/// Inspection and control of the projections in a read model's database (used by `aviary events`).
public enum Projections {
    /// Every projection generation in `store` with its lag behind `headPosition`; empty when no
    /// runner ever used the database.
    ///
    /// ```swift
    /// for status in try await Projections.status(in: store, headPosition: try await events.headPosition()) {
    ///     print(status.name, status.state, status.lag)
    /// }
    /// ```
    public static func status(in store: SQLiteStore, headPosition: Int64) async throws -> [ProjectionStatus] {
        try await store.read { db in
            guard try db.tableExists("es_projections") else { return [] }
            return try Row.fetchAll(
                db,
                sql: """
                    SELECT p.name, p.generation, p.version, p.state, p.checkpoint, p.rebuild_requested, p.last_error,
                        p.updated_at, l.owner, l.expires_at
                    FROM es_projections p LEFT JOIN es_projection_locks l ON l.name = p.name
                    ORDER BY p.name, p.generation
                    """
            ).map { row in
                let checkpoint: Int64 = row[4]
                let expires: Int64? = row[9]
                return ProjectionStatus(
                    name: row[0], generation: row[1], version: row[2], state: row[3], checkpoint: checkpoint,
                    lag: max(0, headPosition - checkpoint), rebuildRequested: (row[5] as Int) != 0, lastError: row[6],
                    lockOwner: row[8], lockExpiresAt: expires.map(Microseconds.date),
                    updatedAt: Microseconds.date(row[7]))
            }
        }
    }

    /// Asks the projection's runners to rebuild its read model side by side from the first
    /// event; the next ``ProjectionRunner/catchUp()`` does it (with the same projection version).
    ///
    /// ```swift
    /// try await Projections.requestRebuild("order_history", in: store)
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`notFound`) when the projection has no live generation.
    public static func requestRebuild(_ name: String, in store: SQLiteStore) async throws {
        let changed = try await store.write { db -> Int in
            guard try db.tableExists("es_projections") else { return 0 }
            try db.execute(
                sql: "UPDATE es_projections SET rebuild_requested = 1 WHERE name = ? AND state = 'live'",
                arguments: [name])
            return db.changesCount
        }
        guard changed > 0 else {
            throw AviaryError(.notFound, "no live projection named \(name) in \(store.url)")
        }
    }
}

/// Pages of the global order for a projection runner, read one page ahead of the one being
/// applied: a producer child task with a buffer of one page, so that the store reads and decodes
/// page n+1 while the runner applies page n (on another connection, another core).
enum ProjectionPages {
    /// Reads pages with `read` (the events after a position, in order) starting after
    /// `checkpoint`, and calls `body` with each non-empty page and the position it was read
    /// after, in order, until a page is empty or `body` returns false. While `body` runs, the
    /// page after it is being read; a page read ahead is dropped when `body` returns false or
    /// throws.
    static func forEach(
        after checkpoint: Int64,
        read: @escaping @Sendable (_ after: Int64) async throws -> [RecordedEvent],
        _ body: (_ page: [RecordedEvent], _ after: Int64) async throws -> Bool
    ) async throws {
        try await withThrowingTaskGroup(of: [RecordedEvent].self) { group in
            group.addTask { try await read(checkpoint) }
            var after = checkpoint
            while let page = try await group.next() {
                guard let last = page.last else { return }
                group.addTask { [position = last.position] in try await read(position) }
                guard try await body(page, after) else {
                    group.cancelAll()
                    return
                }
                after = last.position
            }
        }
    }
}

extension ProjectionRunner: GenerationalProjectionRunner {
    var projectionName: String { self.projection.name }
    var pollInterval: Duration { self.options.pollInterval }
}
