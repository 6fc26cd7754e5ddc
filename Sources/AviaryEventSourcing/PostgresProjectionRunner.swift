//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryStorage
public import Foundation
public import Logging
public import PostgresNIO
import Synchronization

/// A read model kept in PostgreSQL by a ``PostgresProjectionRunner``: the counterpart of
/// ``Projection`` for a service whose event store is a ``PostgresEventStore``. The read model
/// lives in the event store's database.
///
/// As with ``Projection``, tables have logical names (``tables``) and each generation has its
/// own physical tables (``PostgresProjectionContext/table(_:)``, e.g. `order_history__g2`);
/// readers query views with the logical names.
///
/// A projection applies a whole batch at once (``apply(_:_:)-([RecordedEvent],_)``), which on
/// PostgreSQL is where the speed is: one statement for many events instead of a round trip per
/// event. The default applies them one by one with ``apply(_:_:)-(RecordedEvent,_)``.
/// Implement at least one of the two (each default calls the other).
///
/// ```swift
/// struct OrderHistory: PostgresProjection {
///     let name = "order_history"
///     let version = 1
///     let tables = ["order_history"]
///     func setUp(_ context: PostgresProjectionContext) async throws {
///         try await context.execute("CREATE TABLE \(context.table("order_history")) (id TEXT PRIMARY KEY, total BIGINT)")
///     }
///     func apply(_ event: RecordedEvent, _ context: PostgresProjectionContext) async throws {
///         guard event.type == "order.placed" else { return }
///         let placed = try event.decode(as: OrderPlaced.self)
///         try await context.connection.query(
///             "INSERT INTO \(unescaped: context.table("order_history")) VALUES (\(event.stream), \(placed.total))",
///             logger: context.logger)
///     }
/// }
/// ```
public protocol PostgresProjection: Sendable {
    /// The projection's name (letters, digits and `_`, starting with a letter); its checkpoint's key.
    var name: String { get }
    /// The read model's version: raise it when ``setUp(_:)`` or `apply` change, and the runner
    /// rebuilds the read model side by side and switches to it when it has caught up.
    var version: Int { get }
    /// The logical names of the read model's tables; readers query views with these names.
    var tables: [String] { get }

    /// Creates the tables (and their indexes) of a new generation, named by ``PostgresProjectionContext/table(_:)``.
    func setUp(_ context: PostgresProjectionContext) async throws

    /// Applies one event, in the transaction that also moves the checkpoint past it.
    func apply(_ event: RecordedEvent, _ context: PostgresProjectionContext) async throws

    /// Applies a batch of events in position order, in the transaction that also moves the
    /// checkpoint past the last. Throwing rolls the whole batch back; the runner then applies
    /// the batch event by event to find the event that fails, keeps the ones before it and
    /// stops there.
    func apply(_ events: [RecordedEvent], _ context: PostgresProjectionContext) async throws
}

extension PostgresProjection {
    /// Applies the events one by one.
    public func apply(_ events: [RecordedEvent], _ context: PostgresProjectionContext) async throws {
        for event in events { try await self.apply(event, context) }
    }

    /// By default a projection that overrides the batch `apply` handles every event there; this
    /// one, used to find the failing event of a batch, applies a batch of one.
    public func apply(_ event: RecordedEvent, _ context: PostgresProjectionContext) async throws {
        try await self.apply([event], context)
    }
}

/// What a ``PostgresProjection`` works with: the connection, inside the runner's transaction,
/// and the physical table names of the generation being built.
public struct PostgresProjectionContext: Sendable {
    /// The connection, inside the transaction that moves the checkpoint.
    public let connection: PostgresConnection
    /// The generation being written (1, 2, ...; a rebuild writes a new one).
    public let generation: Int64
    /// Pass it to the connection's queries.
    public let logger: Logger

    /// The physical name of a logical table in this generation, e.g. `order_history__g2`.
    public func table(_ logical: String) -> String {
        ProjectionTables.physical(logical, generation: self.generation)
    }

    /// Runs SQL without parameters (schema statements in ``PostgresProjection/setUp(_:)``).
    ///
    /// ```swift
    /// try await context.execute("CREATE INDEX ON \(context.table("order_history")) (user_id)")
    /// ```
    public func execute(_ sql: String) async throws {
        _ = try await self.connection.complete(PostgresQuery(unsafeSQL: sql), logger: self.logger)
    }
}

/// A catch-up subscription that keeps a ``PostgresProjection``'s read model up to date with a
/// ``PostgresEventStore``'s global order, its checkpoint in the same database: the PostgreSQL
/// counterpart of ``ProjectionRunner``, with the same guarantees.
///
/// ## Exactly once, in order
/// One batch is one transaction. Its first statement locks the projection generation's row (so
/// two replicas running the same projection take turns instead of applying a batch twice),
/// checks that the checkpoint is still the position the batch's events were read after, and
/// moves it to the last of them; then the projection applies the batch, and the read model and
/// the checkpoint commit together or not at all. The events are read on another pooled
/// connection while the previous batch is applied, so reading, decoding and applying overlap;
/// when another replica moved the checkpoint meanwhile, the runner drops what it read and goes on
/// from there. When the projection throws, the batch rolls back; the runner applies it again
/// event by event and commits the events before the failing one, then ``catchUp()`` throws
/// ``ProjectionError/Kind/handlerFailed``. The checkpoint never moves past an event that was not
/// applied. (The event store's order guarantee — no position becomes visible after a greater
/// one — is what makes "after the checkpoint" complete; see ``PostgresEventStore``.)
///
/// ## Side-by-side rebuilds
/// As ``ProjectionRunner``: generations of tables, views with the logical names, a rebuild lock
/// row in `es_projection_locks` that expires unless renewed (each batch renews it), and one
/// transaction that switches the views, drops the old generation and releases the lock when the
/// rebuild has caught up with the head.
///
/// ```swift
/// var migrations = PostgresMigrations()
/// PostgresEventStore.addMigrations(to: &migrations)
/// PostgresProjections.addMigrations(to: &migrations)
/// // with the store running:
/// let runner = try PostgresProjectionRunner(OrderHistory(), events: PostgresEventStore(store: store))
/// try await runner.catchUp()
/// ```
public final class PostgresProjectionRunner<P: PostgresProjection>: Sendable {
    /// The projection.
    public let projection: P
    /// The event store; the read model lives in its database.
    public let events: PostgresEventStore
    /// Batch size, lock expiry and polling.
    public let options: ProjectionRunnerOptions
    /// This runner's name in the rebuild lock.
    public let owner: String
    let logger: Logger
    let now: @Sendable () -> Date

    /// Creates a runner.
    ///
    /// - Parameters:
    ///   - projection: the projection.
    ///   - events: the event store to follow; the read model lives in its database, which needs
    ///     the migrations of ``PostgresProjections/addMigrations(to:)``.
    ///   - options: batch size, lock expiry, polling (as ``ProjectionRunner``'s). Batches are
    ///     5,000 events by default: each batch's transaction costs a few round trips and a commit
    ///     flush, which larger batches spread over more events.
    ///   - owner: this runner's name in the rebuild lock (host, process id and a random suffix by default).
    ///   - now: wall-clock time for lock expiry (tests pass a manual clock's `now`).
    /// - Throws: ``ProjectionError`` (`invalidName`) for a projection or table name that is not
    ///   letters, digits and single underscores, starting with a letter.
    public init(
        _ projection: P, events: PostgresEventStore,
        options: ProjectionRunnerOptions = .init(batchSize: 5000), owner: String? = nil,
        logger: Logger = Logger(label: "aviary.eventsourcing"), now: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        try ProjectionRunnerSetup.validate(name: projection.name, tables: projection.tables)
        precondition(options.batchSize > 0, "batchSize must be positive")
        self.projection = projection
        self.events = events
        self.options = options
        self.owner = owner ?? ProjectionRunnerSetup.defaultOwner()
        self.logger = logger
        self.now = now
    }

    var store: PostgresStore { self.events.store }

    // MARK: Catching up

    /// Applies every event recorded so far to the live generation, first building a new
    /// generation side by side when the projection's version is newer than the live one or a
    /// rebuild was requested.
    ///
    /// - Throws: ``ProjectionError``: `handlerFailed` (the checkpoint is just before the event),
    ///   `rebuildLocked`, `newerVersionLive`, `superseded`, `lockLost`; the store's errors.
    @discardableResult
    public func catchUp() async throws -> ProjectionRunnerReport {
        try await self.catchUpGenerations()
    }

    /// Catches up every ``ProjectionRunner/Options/pollInterval`` until the task is cancelled;
    /// handler failures and a rebuild held elsewhere are logged and retried.
    public func run(clock: any MonotonicClock = SystemClock()) async throws {
        try await self.runPolling(clock: clock)
    }

    /// The head position minus the live generation's checkpoint.
    public func lag() async throws -> Int64 {
        let name = self.projection.name
        let logger = self.logger
        return try await self.store.withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT (SELECT coalesce(max(position), 0) FROM es_events)
                    - coalesce((SELECT checkpoint FROM es_projections WHERE name = \(name) AND state = 'live'), 0)
                """, logger: logger)
            for try await lag in rows.decode(Int64.self) { return max(0, lag) }
            return 0
        }
    }

    /// This projection's generations with their checkpoints and lag.
    public func status() async throws -> [ProjectionStatus] {
        try await PostgresProjections.status(in: self.store).filter { $0.name == self.projection.name }
    }

    // MARK: Steps

    func plan() async throws -> ProjectionPlan {
        let projection = self.projection
        let now = Microseconds.of(self.now())
        let logger = self.logger
        return try await self.store.withTransaction("projection plan") { connection -> ProjectionPlan in
            // One planner at a time per projection, so two replicas starting together create one generation.
            _ = try await connection.complete(
                "SELECT pg_advisory_xact_lock(\(PostgresProjections.planLockClass), hashtext(\(projection.name)))",
                logger: logger)
            var rows: [(Int64, Int, String, Bool)] = []
            for try await row in try await connection.query(
                "SELECT generation, version, state, rebuild_requested FROM es_projections WHERE name = \(projection.name)",
                logger: logger
            ).decode((Int64, Int, String, Bool).self) {
                rows.append(row)
            }
            guard let live = rows.first(where: { $0.2 == "live" }) else {
                let generation = (rows.map(\.0).max() ?? 0) + 1
                try await projection.setUp(
                    PostgresProjectionContext(connection: connection, generation: generation, logger: logger))
                try await Self.pointViews(
                    projection.tables, at: generation, dropping: [], on: connection, logger: logger)
                _ = try await connection.complete(
                    """
                    INSERT INTO es_projections (name, generation, version, state, tables, updated_at)
                    VALUES (\(projection.name), \(generation), \(projection.version), 'live',
                        \(projection.tables.joined(separator: ",")), \(now))
                    """, logger: logger)
                return .live(generation)
            }
            if live.1 > projection.version {
                throw ProjectionError(
                    .newerVersionLive,
                    "projection \(projection.name): the live read model has version \(live.1), newer than this code's "
                        + "\(projection.version); refusing to write it")
            }
            if live.1 == projection.version && !live.3 { return .live(live.0) }
            return .rebuild
        }
    }

    func prepareRebuild() async throws -> Int64 {
        let projection = self.projection
        let owner = self.owner
        let now = self.now()
        let expiry = Microseconds.of(now.addingTimeInterval(self.options.lockTTL.aviarySeconds))
        let nowMicros = Microseconds.of(now)
        let logger = self.logger
        return try await self.store.withTransaction("projection rebuild lock") { connection -> Int64 in
            let taken = try await connection.complete(
                """
                INSERT INTO es_projection_locks (name, owner, expires_at) VALUES (\(projection.name), \(owner), \(expiry))
                ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
                WHERE es_projection_locks.owner = excluded.owner OR es_projection_locks.expires_at <= \(nowMicros)
                """, logger: logger)
            guard taken.metadata.rows == 1 else {
                var holder: (String, Int64)?
                for try await row in try await connection.query(
                    "SELECT owner, expires_at FROM es_projection_locks WHERE name = \(projection.name)", logger: logger
                ).decode((String, Int64).self) {
                    holder = row
                }
                let until = holder.map { "\(Microseconds.date($0.1))" } ?? "?"
                throw ProjectionError(
                    .rebuildLocked,
                    "projection \(projection.name): \(holder?.0 ?? "?") is rebuilding it (lock held until \(until))")
            }
            var building: [(Int64, Int, String)] = []
            for try await row in try await connection.query(
                """
                SELECT generation, version, tables FROM es_projections WHERE name = \(projection.name) AND state = 'building'
                """, logger: logger
            ).decode((Int64, Int, String).self) {
                building.append(row)
            }
            for (generation, version, tables) in building {
                if version == projection.version { return generation }
                try await Self.drop(
                    generation: generation, tables: tables, of: projection.name, on: connection, logger: logger)
            }
            var highest: Int64 = 0
            for try await value in try await connection.query(
                "SELECT coalesce(max(generation), 0) FROM es_projections WHERE name = \(projection.name)",
                logger: logger
            ).decode(Int64.self) {
                highest = value
            }
            let generation = highest + 1
            try await projection.setUp(
                PostgresProjectionContext(connection: connection, generation: generation, logger: logger))
            _ = try await connection.complete(
                """
                INSERT INTO es_projections (name, generation, version, state, tables, updated_at)
                VALUES (\(projection.name), \(generation), \(projection.version), 'building',
                    \(projection.tables.joined(separator: ",")), \(nowMicros))
                """, logger: logger)
            return generation
        }
    }

    /// The next page is read on another pooled connection while the current one is applied, so
    /// the server reads page n+1 and this process decodes it while page n is applied and committed.
    func readPage(after position: Int64) async throws -> [RecordedEvent] {
        try await self.events.readAll(after: position, limit: self.options.batchSize)
    }

    /// The generation's checkpoint, read outside any transaction (where a drain starts reading).
    func drainStart(_ generation: Int64, rebuilding: Bool) async throws -> Int64 {
        let name = self.projection.name
        let logger = self.logger
        let row = try await self.store.withConnection { connection -> (String, Int64)? in
            for try await row in try await connection.query(
                "SELECT state, checkpoint FROM es_projections WHERE name = \(name) AND generation = \(generation)",
                logger: logger
            ).decode((String, Int64).self) {
                return row
            }
            return nil
        }
        guard let row, row.0 == (rebuilding ? "building" : "live") else {
            throw ProjectionError(
                .superseded, "projection \(name): generation \(generation) was replaced by another process")
        }
        return row.1
    }

    /// The batch's projection failed: the caller re-applies event by event.
    private struct BatchFailed: Error {}

    /// A single event's failure, at `index` of the batch.
    private struct HandlerFailure: Error {
        var index: Int
        var event: RecordedEvent
        var error: any Error
    }

    /// Applies a page read after `after` in one transaction that moves the checkpoint past its
    /// last event; false (and nothing written) when the checkpoint is no longer `after`. When the
    /// projection throws, the page is applied again event by event to find the failing event,
    /// the events before it are kept, and the failure is recorded and thrown.
    func applyPage(
        _ page: [RecordedEvent], after: Int64, generation: Int64, rebuilding: Bool
    ) async throws -> Bool {
        do {
            return try await self.batchTransaction(generation, rebuilding: rebuilding, after: after, page: page)
        } catch is BatchFailed {
            // Find the failing event: apply one by one; the transaction keeps those before it.
            let found = Mutex<HandlerFailure?>(nil)
            let applied = try await self.transaction(generation, rebuilding: rebuilding, after: after, page: page) {
                events, context in
                for (index, event) in events.enumerated() {
                    // A savepoint per event keeps a failed statement from aborting the transaction.
                    _ = try await context.connection.complete("SAVEPOINT aviary_event", logger: context.logger)
                    do {
                        try await self.projection.apply(event, context)
                        _ = try await context.connection.complete(
                            "RELEASE SAVEPOINT aviary_event", logger: context.logger)
                    } catch {
                        _ = try await context.connection.complete(
                            "ROLLBACK TO SAVEPOINT aviary_event", logger: context.logger)
                        let failure = HandlerFailure(index: index, event: event, error: error)
                        found.withLock { $0 = failure }
                        return index
                    }
                }
                return events.count
            }
            guard applied != nil else { return false }
            guard let failure = found.withLock({ $0 }) else { return true }
            let error = ProjectionError(
                .handlerFailed,
                "projection \(self.projection.name) failed on the event at position \(failure.event.position) "
                    + "(\(failure.event.type), \(failure.event.stream)@\(failure.event.streamVersion))",
                position: failure.event.position, cause: failure.error)
            try? await self.recordFailure(error, generation: generation)
            throw error
        }
    }

    /// The whole page in one transaction of four round trips: `BEGIN`; one `UPDATE` that locks
    /// the generation's row (replicas take turns), checks that it is still in the expected state
    /// with its checkpoint at `after`, and moves the checkpoint to the page's last event; the
    /// projection's batch `apply`; `COMMIT`. Moving the checkpoint before applying is safe: both
    /// commit together or not at all. False (nothing written) when the checkpoint had moved;
    /// throws `BatchFailed` when the projection threw.
    private func batchTransaction(
        _ generation: Int64, rebuilding: Bool, after: Int64, page: [RecordedEvent]
    ) async throws -> Bool {
        guard let last = page.last else { return true }
        let name = self.projection.name
        let logger = self.logger
        let state = rebuilding ? "building" : "live"
        let expiry = Microseconds.of(self.now().addingTimeInterval(self.options.lockTTL.aviarySeconds))
        let now = Microseconds.of(self.now())
        let owner = self.owner
        let projection = self.projection
        return try await self.store.withTransaction("projection batch") { connection -> Bool in
            let moved = try await connection.complete(
                """
                UPDATE es_projections SET checkpoint = \(last.position), last_error = NULL, updated_at = \(now)
                WHERE name = \(name) AND generation = \(generation) AND state = \(state) AND checkpoint = \(after)
                """, logger: logger)
            guard moved.metadata.rows == 1 else {
                // Superseded (an error), or another replica applied these events meanwhile.
                var current: String?
                for try await value in try await connection.query(
                    "SELECT state FROM es_projections WHERE name = \(name) AND generation = \(generation)",
                    logger: logger
                ).decode(String.self) {
                    current = value
                }
                guard current == state else {
                    throw ProjectionError(
                        .superseded, "projection \(name): generation \(generation) was replaced by another process")
                }
                return false
            }
            if rebuilding {
                try await Self.renewRebuildLock(
                    name: name, owner: owner, until: expiry, on: connection, logger: logger)
            }
            do {
                try await projection.apply(
                    page,
                    PostgresProjectionContext(
                        connection: connection, generation: generation, logger: logger))
            } catch {
                throw BatchFailed()
            }
            return true
        }
    }

    /// One transaction: locks the generation's row (`FOR UPDATE`: replicas take turns) and checks
    /// that its checkpoint is still `after`, lets `body` apply the first `n` events of `page` (its
    /// result) and moves the checkpoint past the last applied. Returns `n`; nil when the
    /// checkpoint had moved (nothing is written).
    private func transaction(
        _ generation: Int64, rebuilding: Bool, after: Int64, page: [RecordedEvent],
        _ body: @escaping @Sendable ([RecordedEvent], PostgresProjectionContext) async throws -> Int
    ) async throws -> Int? {
        let name = self.projection.name
        let logger = self.logger
        let expiry = Microseconds.of(self.now().addingTimeInterval(self.options.lockTTL.aviarySeconds))
        let now = Microseconds.of(self.now())
        let owner = self.owner
        return try await self.store.withTransaction("projection batch") { connection -> Int? in
            var row: (String, Int64)?
            for try await value in try await connection.query(
                "SELECT state, checkpoint FROM es_projections WHERE name = \(name) AND generation = \(generation) FOR UPDATE",
                logger: logger
            ).decode((String, Int64).self) {
                row = value
            }
            guard let row, row.0 == (rebuilding ? "building" : "live") else {
                throw ProjectionError(
                    .superseded, "projection \(name): generation \(generation) was replaced by another process")
            }
            // Another replica applied these events meanwhile.
            guard row.1 == after else { return nil }
            if rebuilding {
                try await Self.renewRebuildLock(
                    name: name, owner: owner, until: expiry, on: connection, logger: logger)
            }
            guard !page.isEmpty else { return 0 }
            let context = PostgresProjectionContext(connection: connection, generation: generation, logger: logger)
            let applied = try await body(page, context)
            guard applied > 0 else { return 0 }
            _ = try await connection.complete(
                """
                UPDATE es_projections SET checkpoint = \(page[applied - 1].position), last_error = NULL, updated_at = \(now)
                WHERE name = \(name) AND generation = \(generation)
                """, logger: logger)
            return applied
        }
    }

    /// Moves this runner's rebuild lock to `expiry`, inside a batch's transaction.
    ///
    /// - Throws: ``ProjectionError`` (`lockLost`) when another process holds the lock now.
    private static func renewRebuildLock(
        name: String, owner: String, until expiry: Int64, on connection: PostgresConnection, logger: Logger
    ) async throws {
        let renewed = try await connection.complete(
            "UPDATE es_projection_locks SET expires_at = \(expiry) WHERE name = \(name) AND owner = \(owner)",
            logger: logger)
        guard renewed.metadata.rows == 1 else {
            throw ProjectionError(
                .lockLost, "projection \(name): the rebuild lock of \(owner) expired and was taken over")
        }
    }

    private func recordFailure(_ error: ProjectionError, generation: Int64) async throws {
        let name = self.projection.name
        let text = error.description
        let now = Microseconds.of(self.now())
        let logger = self.logger
        try await self.store.withConnection { connection in
            _ = try await connection.complete(
                """
                UPDATE es_projections SET last_error = \(text), updated_at = \(now)
                WHERE name = \(name) AND generation = \(generation)
                """, logger: logger)
        }
    }

    /// Makes a caught-up rebuilt generation live; false when it is not caught up yet.
    func switchOver(_ generation: Int64) async throws -> Bool {
        let projection = self.projection
        let owner = self.owner
        let now = Microseconds.of(self.now())
        let logger = self.logger
        return try await self.store.withTransaction("projection switch") { connection -> Bool in
            var state: (String, Int64, Int64)?
            for try await row in try await connection.query(
                """
                SELECT state, checkpoint, (SELECT coalesce(max(position), 0) FROM es_events)
                FROM es_projections WHERE name = \(projection.name) AND generation = \(generation) FOR UPDATE
                """, logger: logger
            ).decode((String, Int64, Int64).self) {
                state = row
            }
            guard let state, state.0 == "building" else {
                throw ProjectionError(
                    .superseded,
                    "projection \(projection.name): generation \(generation) was replaced by another process")
            }
            guard state.1 >= state.2 else { return false }
            var old: [(Int64, String)] = []
            for try await row in try await connection.query(
                "SELECT generation, tables FROM es_projections WHERE name = \(projection.name) AND state = 'live'",
                logger: logger
            ).decode((Int64, String).self) {
                old.append(row)
            }
            var dropped: [String] = []
            for (oldGeneration, tables) in old {
                dropped += tables.split(separator: ",").map(String.init)
                // Views first: they depend on the old tables.
                for table in Set(tables.split(separator: ",").map(String.init)) {
                    _ = try await connection.complete(
                        PostgresQuery(unsafeSQL: "DROP VIEW IF EXISTS \(table)"), logger: logger)
                }
                try await Self.drop(
                    generation: oldGeneration, tables: tables, of: projection.name, on: connection, logger: logger)
            }
            try await Self.pointViews(
                projection.tables, at: generation, dropping: dropped, on: connection, logger: logger)
            _ = try await connection.complete(
                """
                UPDATE es_projections SET state = 'live', rebuild_requested = FALSE, updated_at = \(now)
                WHERE name = \(projection.name) AND generation = \(generation)
                """, logger: logger)
            _ = try await connection.complete(
                "DELETE FROM es_projection_locks WHERE name = \(projection.name) AND owner = \(owner)", logger: logger)
            return true
        }
    }

    private static func pointViews(
        _ tables: [String], at generation: Int64, dropping old: [String], on connection: PostgresConnection,
        logger: Logger
    ) async throws {
        for table in Set(old).subtracting(tables) {
            _ = try await connection.complete(PostgresQuery(unsafeSQL: "DROP VIEW IF EXISTS \(table)"), logger: logger)
        }
        for table in tables {
            _ = try await connection.complete(PostgresQuery(unsafeSQL: "DROP VIEW IF EXISTS \(table)"), logger: logger)
            _ = try await connection.complete(
                PostgresQuery(
                    unsafeSQL:
                        "CREATE VIEW \(table) AS SELECT * FROM \(ProjectionTables.physical(table, generation: generation))"
                ), logger: logger)
        }
    }

    private static func drop(
        generation: Int64, tables: String, of name: String, on connection: PostgresConnection, logger: Logger
    ) async throws {
        for table in tables.split(separator: ",") {
            _ = try await connection.complete(
                PostgresQuery(
                    unsafeSQL:
                        "DROP TABLE IF EXISTS \(ProjectionTables.physical(String(table), generation: generation))"),
                logger: logger)
        }
        _ = try await connection.complete(
            "DELETE FROM es_projections WHERE name = \(name) AND generation = \(generation)", logger: logger)
    }
}

/// Inspection and control of the projections in a PostgreSQL database (used by `aviary events`),
/// and their bookkeeping tables.
public enum PostgresProjections {
    /// The advisory lock class of a projection's planning step.
    static let planLockClass: Int32 = 0x6176_6570  // "avep"

    /// Adds the projections' bookkeeping tables (`es_projections`, `es_projection_locks`) to a
    /// service's migrations, as `aviary projections v1`.
    ///
    /// ```swift
    /// var migrations = PostgresMigrations()
    /// PostgresEventStore.addMigrations(to: &migrations)
    /// PostgresProjections.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary projections v1") { connection, logger in
            for statement in [
                """
                CREATE TABLE es_projections (
                    name TEXT NOT NULL,
                    generation BIGINT NOT NULL,
                    version INTEGER NOT NULL,
                    state TEXT NOT NULL,
                    checkpoint BIGINT NOT NULL DEFAULT 0,
                    tables TEXT NOT NULL,
                    rebuild_requested BOOLEAN NOT NULL DEFAULT FALSE,
                    last_error TEXT,
                    updated_at BIGINT NOT NULL,
                    PRIMARY KEY (name, generation)
                )
                """,
                """
                CREATE TABLE es_projection_locks (
                    name TEXT PRIMARY KEY,
                    owner TEXT NOT NULL,
                    expires_at BIGINT NOT NULL
                )
                """,
            ] {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
    }

    /// Every projection generation in `store` with its lag behind the event store's head.
    ///
    /// ```swift
    /// for status in try await PostgresProjections.status(in: store) { print(status.name, status.lag) }
    /// ```
    public static func status(in store: PostgresStore) async throws -> [ProjectionStatus] {
        let logger = store.logger
        return try await store.withTransaction(isolation: .repeatableRead) { connection in
            var statuses: [ProjectionStatus] = []
            let rows = try await connection.query(
                """
                SELECT p.name, p.generation, p.version, p.state, p.checkpoint, p.rebuild_requested, p.last_error,
                    p.updated_at, l.owner, l.expires_at, (SELECT coalesce(max(position), 0) FROM es_events)
                FROM es_projections p LEFT JOIN es_projection_locks l ON l.name = p.name
                ORDER BY p.name, p.generation
                """, logger: logger)
            for try await row in rows {
                let cells = row.makeRandomAccess()
                let checkpoint = try cells[4].decode(Int64.self)
                let head = try cells[10].decode(Int64.self)
                statuses.append(
                    ProjectionStatus(
                        name: try cells[0].decode(String.self), generation: try cells[1].decode(Int64.self),
                        version: try cells[2].decode(Int.self), state: try cells[3].decode(String.self),
                        checkpoint: checkpoint, lag: max(0, head - checkpoint),
                        rebuildRequested: try cells[5].decode(Bool.self), lastError: try cells[6].decode(String?.self),
                        lockOwner: try cells[8].decode(String?.self),
                        lockExpiresAt: try cells[9].decode(Int64?.self).map(Microseconds.date),
                        updatedAt: Microseconds.date(try cells[7].decode(Int64.self))))
            }
            return statuses
        }
    }

    /// Asks the projection's runners to rebuild it side by side; the next catch-up does it.
    ///
    /// ```swift
    /// try await PostgresProjections.requestRebuild("order_history", in: store)
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`notFound`) when the projection has no live generation.
    public static func requestRebuild(_ name: String, in store: PostgresStore) async throws {
        let logger = store.logger
        let changed = try await store.withConnection { connection in
            try await connection.complete(
                "UPDATE es_projections SET rebuild_requested = TRUE WHERE name = \(name) AND state = 'live'",
                logger: logger
            ).metadata.rows ?? 0
        }
        guard changed > 0 else {
            throw AviaryError(.notFound, "no live projection named \(name) in \(store.address)")
        }
    }
}

extension PostgresProjectionRunner: GenerationalProjectionRunner {
    var projectionName: String { self.projection.name }
    var pollInterval: Duration { self.options.pollInterval }
}
