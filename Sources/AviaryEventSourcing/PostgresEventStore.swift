//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
public import Logging
import NIOCore
public import PostgresNIO
import Synchronization

/// The ``EventStore`` on PostgreSQL: tables `es_events` and `es_snapshots` in a service's own
/// ``AviaryStorage/PostgresStore`` (next to its other tables), created by the migrations that
/// ``addMigrations(to:)`` adds.
///
/// ## Global order
/// Positions come from the sequence `es_events_position`. A sequence alone is not enough:
/// its values are taken when a row is inserted but become visible when the transaction commits,
/// so transaction A may take position 11, transaction B position 12, B commit first, and a
/// projection that read 12 and stored checkpoint 12 would never see 11.
///
/// Every append therefore takes a transaction-scoped advisory lock of the event store
/// (`pg_advisory_xact_lock`) *before* it takes positions, and holds it until its transaction
/// ends. PostgreSQL releases transaction locks only after the commit is durable and visible to
/// new snapshots, so the next append takes its positions after the previous one is visible (or
/// rolled back). Position order is then commit order: a reader whose snapshot shows position `p`
/// also shows every smaller position that will ever exist, and `readAll(after:limit:)` is a
/// plain `WHERE position > $1 ORDER BY position` without waiting for anything. Rolled back
/// appends leave gaps in the positions (allowed by the contract); later appends never fill them.
///
/// The price is that appends, from all processes, commit one at a time: the store's append rate
/// is bounded by one transaction's latency (its commit flush included), however many clients
/// append. The alternative — recording `pg_current_xact_id()` with each event and reading only
/// below `pg_snapshot_xmin(pg_current_snapshot())` — lets appends commit concurrently but is not
/// sound on its own (a transaction can take a smaller position and a *larger* xid than another,
/// so position order and xid order differ), delays every reader by the database's longest
/// running transaction, and stores an xid per event; a single append lock is simpler and
/// obviously right. An ``append(_:to:expectedVersion:in:)`` inside the caller's transaction holds
/// the lock until that transaction ends, so keep such transactions short.
///
/// ## Idempotence and conflicts
/// An append inserts with `ON CONFLICT DO NOTHING`, so a repeated event id does not abort the
/// transaction; when fewer rows than events were inserted, the append finds the earlier ones and
/// either reports the original append (a retry, ``AppendResult/isReplay``) or throws a
/// `conflict` (and the transaction rolls back).
///
/// ## Speed
/// An append of up to 1,000 events is one statement and one round trip: a call of the PL/pgSQL
/// function `es_append` (created by the migration) that runs as its own transaction, takes the
/// lock, checks the expected version and inserts every event from arrays. Inside a caller's
/// transaction (``append(_:to:expectedVersion:in:)``) an append is two statements (the lock, then
/// the check and the insert). Reads are one statement.
///
/// ```swift
/// var migrations = PostgresMigrations()
/// PostgresEventStore.addMigrations(to: &migrations)      // es_events, es_snapshots
/// let store = try PostgresStore(url: StoreURL(parsing: "postgres://shop@db/orders"), migrations: migrations)
/// let events = PostgresEventStore(store: store)           // run `store` in the service group
/// try await events.append([placed], to: "order-17", expectedVersion: .noStream)
/// ```
public final class PostgresEventStore: EventStore {
    /// The database the tables live in.
    public let store: PostgresStore
    let now: @Sendable () -> Date
    let logger: Logger
    /// The store's `run()` when this event store opened the store itself.
    private let running: Task<Void, Never>?

    /// The advisory lock key that serialises appends' position assignment ("aviary_e" in ASCII).
    static let appendLockKey: Int64 = 0x6176_6961_7279_5f65

    /// Uses the event tables in `store` (created by the migrations of ``addMigrations(to:)``); the
    /// caller runs the store (in its service group).
    ///
    /// - Parameters:
    ///   - store: the service's database.
    ///   - now: wall-clock time for `recordedAt` (tests pass a manual clock's `now`).
    public init(store: PostgresStore, now: @escaping @Sendable () -> Date = { Date() }) {
        self.store = store
        self.now = now
        self.logger = store.logger
        self.running = nil
    }

    /// Opens an event store in the database at `url`: starts a store of its own (a connection
    /// pool) and applies the event store's migrations. Call ``close()`` when done.
    ///
    /// ```swift
    /// let events = try await PostgresEventStore(url: StoreURL(parsing: "postgres://aviary@127.0.0.1/events"))
    /// defer { Task { await events.close() } }
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError``: `invalidArgument` for a URL that is not a PostgreSQL
    ///   URL, `unavailable` when the server cannot be reached or migrated (naming the address and
    ///   the cause).
    public init(
        url: StoreURL, options: PostgresStore.Options = PostgresStore.Options(applicationName: "aviary-events"),
        logger: Logger = Logger(label: "aviary.eventsourcing"), now: @escaping @Sendable () -> Date = { Date() }
    ) async throws {
        var migrations = PostgresMigrations()
        Self.addMigrations(to: &migrations)
        let store = try PostgresStore(url: url, migrations: migrations, options: options, logger: logger)
        self.store = store
        self.now = now
        self.logger = store.logger
        let running = Task {
            do {
                try await store.run()
            } catch {
                logger.error("event store stopped", metadata: ["error.message": "\(PostgresStore.describe(error))"])
            }
        }
        self.running = running
        do {
            try await store.ready()
        } catch {
            running.cancel()
            await running.value
            throw AviaryError(
                .unavailable, "cannot open the event store at \(store.address): \(PostgresStore.describe(error))",
                cause: error)
        }
    }

    /// Stops the store this event store opened (``init(url:options:logger:now:)``); does nothing
    /// for a store the caller runs.
    public func close() async {
        guard let running = self.running else { return }
        running.cancel()
        await running.value
    }

    /// Adds the event store's tables (`es_events`, `es_snapshots`, the sequence
    /// `es_events_position`) to a PostgreSQL service's migrations, as `aviary event store v1`.
    ///
    /// ```swift
    /// var migrations = PostgresMigrations()
    /// PostgresEventStore.addMigrations(to: &migrations)
    /// Outbox.addMigrations(to: &migrations)
    /// ```
    ///
    /// - Precondition: not added twice to the same migrations.
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary event store v1") { connection, logger in
            for statement in [
                "CREATE SEQUENCE es_events_position",
                """
                CREATE TABLE es_events (
                    position BIGINT PRIMARY KEY DEFAULT nextval('es_events_position'),
                    stream_id TEXT NOT NULL,
                    stream_version BIGINT NOT NULL,
                    event_id UUID NOT NULL,
                    type TEXT NOT NULL,
                    schema_version INTEGER NOT NULL,
                    data BYTEA NOT NULL,
                    causation_id TEXT,
                    correlation_id TEXT,
                    trace_parent TEXT,
                    trace_state TEXT,
                    headers TEXT,
                    occurred_at TIMESTAMPTZ NOT NULL,
                    recorded_at TIMESTAMPTZ NOT NULL,
                    CONSTRAINT es_events_stream UNIQUE (stream_id, stream_version),
                    CONSTRAINT es_events_id UNIQUE (event_id)
                )
                """,
                "ALTER SEQUENCE es_events_position OWNED BY es_events.position",
                """
                CREATE TABLE es_snapshots (
                    stream_id TEXT PRIMARY KEY,
                    stream_version BIGINT NOT NULL,
                    schema_version INTEGER NOT NULL,
                    data BYTEA NOT NULL,
                    taken_at TIMESTAMPTZ NOT NULL
                )
                """,
                Self.appendFunction,
            ] {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
    }

    /// Whether the event tables exist in the database (tools check before reading, so that a
    /// mistyped database name is reported as such).
    ///
    /// ```swift
    /// guard try await events.tablesExist() else { print("no event store here") }
    /// ```
    public func tablesExist() async throws -> Bool {
        let logger = self.logger
        return try await self.store.withConnection { connection in
            let rows = try await connection.query("SELECT to_regclass('es_events')::TEXT", logger: logger)
            for try await name in rows.decode(String?.self) { return name != nil }
            return false
        }
    }

    // MARK: Appending

    /// The SQLSTATE `es_append` raises when some, not all, of an append's event ids were taken:
    /// the statement's transaction rolls back, so nothing of the append is recorded.
    static let partialConflictState = "AV001"

    /// `es_append(...)`: the whole append in one statement, so that a standalone append is one
    /// round trip (its own transaction): take the append lock, check the expected version (each
    /// statement of a volatile PL/pgSQL function sees what committed before it, so the check
    /// after the lock sees every earlier append), insert with `ON CONFLICT DO NOTHING`. Returns
    /// the version before and the inserted count and positions; raises ``partialConflictState``
    /// when only some events were inserted.
    static let appendFunction = """
        CREATE FUNCTION es_append(p_stream TEXT, p_kind TEXT, p_expected BIGINT, p_recorded BIGINT, p_ids UUID[],
            p_types TEXT[], p_schema_versions INTEGER[], p_data BYTEA[], p_occurred BIGINT[], p_metadata JSONB,
            OUT version BIGINT, OUT inserted BIGINT, OUT first_position BIGINT, OUT last_position BIGINT)
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(\(PostgresEventStore.appendLockKey));
            SELECT max(e.stream_version) INTO version FROM es_events e WHERE e.stream_id = p_stream;
            inserted := 0;
            first_position := 0;
            last_position := 0;
            IF NOT (CASE p_kind
                WHEN 'any' THEN TRUE
                WHEN 'none' THEN version IS NULL
                WHEN 'exists' THEN version IS NOT NULL
                ELSE coalesce(version, 0) = p_expected END) THEN
                RETURN;
            END IF;
            WITH rows AS (
                INSERT INTO es_events (stream_id, stream_version, event_id, type, schema_version, data,
                    causation_id, correlation_id, trace_parent, trace_state, headers, occurred_at, recorded_at)
                SELECT p_stream, coalesce(version, 0) + e.n, e.id, e.type, e.schema_version, e.data,
                    p_metadata -> (e.n::INTEGER - 1) ->> 0, p_metadata -> (e.n::INTEGER - 1) ->> 1,
                    p_metadata -> (e.n::INTEGER - 1) ->> 2, p_metadata -> (e.n::INTEGER - 1) ->> 3,
                    p_metadata -> (e.n::INTEGER - 1) ->> 4,
                    TIMESTAMPTZ 'epoch' + e.occurred * INTERVAL '1 microsecond',
                    TIMESTAMPTZ 'epoch' + p_recorded * INTERVAL '1 microsecond'
                FROM unnest(p_ids, p_types, p_schema_versions, p_data, p_occurred)
                    WITH ORDINALITY AS e (id, type, schema_version, data, occurred, n)
                ORDER BY e.n
                ON CONFLICT DO NOTHING
                RETURNING position)
            SELECT count(*), coalesce(min(position), 0), coalesce(max(position), 0)
            INTO inserted, first_position, last_position FROM rows;
            IF inserted > 0 AND inserted < cardinality(p_ids) THEN
                RAISE EXCEPTION 'an event id of the append is already recorded'
                    USING ERRCODE = '\(PostgresEventStore.partialConflictState)';
            END IF;
        END
        $$
        """

    /// A standalone append: one call of `es_append`, its own transaction (one round trip). A
    /// repeated or conflicting append is then analysed with reads (nothing was recorded).
    private static func appendStatement(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion, recordedAt: Date,
        on connection: PostgresConnection, logger: Logger
    ) async throws -> AppendResult {
        let recorded = Microseconds.of(recordedAt)
        let (kind, value) = Self.expectation(expectedVersion)
        var metadata: [[String?]] = []
        metadata.reserveCapacity(events.count)
        for event in events {
            let headers: String? =
                event.metadata.headers.isEmpty
                ? nil : String(decoding: try EventJSON.encode(event.metadata.headers), as: UTF8.self)
            metadata.append([
                event.metadata.causationID, event.metadata.correlationID, event.metadata.traceParent,
                event.metadata.traceState, headers,
            ])
        }
        let metadataJSON = String(decoding: try JSONEncoder().encode(metadata), as: UTF8.self)
        let query: PostgresQuery = """
            SELECT version, inserted, first_position, last_position FROM es_append(\(stream), \(kind), \(value),
                \(recorded), \(events.map(\.id)), \(events.map(\.type)),
                \(events.map { Int32(clamping: $0.schemaVersion) }), \(events.map { ByteBuffer(bytes: $0.data) }),
                \(events.map { $0.occurredAt.map(Microseconds.of) ?? recorded }), \(metadataJSON)::JSONB)
            """
        var outcome: (version: Int64?, inserted: Int64, first: Int64, last: Int64)?
        do {
            let rows = try await connection.query(query, logger: logger)
            for try await row in rows.decode((Int64?, Int64, Int64, Int64).self) { outcome = row }
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == Self.partialConflictState {
            throw try await Self.conflict(events, stream: stream, on: connection, logger: logger)
        }
        guard let outcome else { throw AviaryError(.internal, "event store append: es_append returned no row") }
        guard expectedVersion.isSatisfied(by: outcome.version) else {
            if let replay = try await Self.replay(
                events, stream: stream, expected: expectedVersion, on: connection, logger: logger)
            {
                return replay
            }
            throw WrongExpectedVersion(stream: stream, expected: expectedVersion, actual: outcome.version)
        }
        guard outcome.inserted == Int64(events.count) else {
            if let replay = try await Self.replay(
                events, stream: stream, expected: expectedVersion, on: connection, logger: logger)
            {
                return replay
            }
            throw try await Self.conflict(events, stream: stream, on: connection, logger: logger)
        }
        return AppendResult(
            stream: stream, streamVersion: (outcome.version ?? 0) + Int64(events.count), firstPosition: outcome.first,
            lastPosition: outcome.last, isReplay: false)
    }

    static func expectation(_ expected: ExpectedVersion) -> (String, Int64) {
        switch expected {
        case .any: ("any", 0)
        case .noStream: ("none", 0)
        case .streamExists: ("exists", 0)
        case .exact(let version): ("exact", version)
        }
    }

    @discardableResult
    public func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion
    ) async throws
        -> AppendResult
    {
        try EventStoreChecks.stream(stream)
        try EventStoreChecks.events(events)
        let recordedAt = self.now()
        let logger = self.logger
        guard !events.isEmpty, events.count <= Self.rowsPerStatement else {
            return try await self.store.withTransaction("event store append") { connection in
                try await Self.append(
                    events, to: stream, expectedVersion: expectedVersion, recordedAt: recordedAt, on: connection,
                    logger: logger)
            }
        }
        return try await self.store.withConnection { connection in
            try await Self.appendStatement(
                events, to: stream, expectedVersion: expectedVersion, recordedAt: recordedAt, on: connection,
                logger: logger)
        }
    }

    /// Appends inside a transaction the caller holds (``AviaryStorage/PostgresStore/withTransaction(_:isolation:_:)``,
    /// at the default `READ COMMITTED` level), so that the events commit together with the
    /// caller's other writes — an outbox row, a read model — or not at all. The append lock is
    /// held until that transaction ends.
    ///
    /// ```swift
    /// try await store.withTransaction { connection in
    ///     try await events.append([placed], to: "order-17", expectedVersion: .noStream, in: connection)
    ///     try await Outbox.enqueue(message, in: connection)
    /// }
    /// ```
    ///
    /// - Throws: as ``append(_:to:expectedVersion:)``; the caller's transaction must then roll back
    ///   (throwing out of the `withTransaction` closure does that).
    @discardableResult
    public func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion, in connection: PostgresConnection
    ) async throws -> AppendResult {
        try EventStoreChecks.stream(stream)
        try EventStoreChecks.events(events)
        return try await Self.append(
            events, to: stream, expectedVersion: expectedVersion, recordedAt: self.now(), on: connection,
            logger: self.logger)
    }

    /// Rows per `INSERT` statement (13 parameters a row, PostgreSQL allows 65,535 per statement).
    static let rowsPerStatement = 1000

    static func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion, recordedAt: Date,
        on connection: PostgresConnection, logger: Logger
    ) async throws -> AppendResult {
        guard !events.isEmpty else {
            let actual = try await Self.version(of: stream, on: connection, logger: logger)
            guard expectedVersion.isSatisfied(by: actual) else {
                throw WrongExpectedVersion(stream: stream, expected: expectedVersion, actual: actual)
            }
            return AppendResult(
                stream: stream, streamVersion: actual ?? 0, firstPosition: 0, lastPosition: 0, isReplay: false)
        }
        _ = try await connection.complete("SELECT pg_advisory_xact_lock(\(Self.appendLockKey))", logger: logger)
        let recorded = Microseconds.of(recordedAt)
        var actual: Int64?
        var inserted = 0
        var firstPosition: Int64 = 0
        var lastPosition: Int64 = 0
        for start in stride(from: 0, to: events.count, by: Self.rowsPerStatement) {
            let chunk = events[start..<min(start + Self.rowsPerStatement, events.count)]
            let result = try await Self.insert(
                chunk, to: stream, expectedVersion: start == 0 ? expectedVersion : .any,
                recorded: recorded, on: connection, logger: logger)
            if start == 0 {
                actual = result.version
                guard expectedVersion.isSatisfied(by: actual) else {
                    if let replay = try await Self.replay(
                        events, stream: stream, expected: expectedVersion, on: connection, logger: logger)
                    {
                        return replay
                    }
                    throw WrongExpectedVersion(stream: stream, expected: expectedVersion, actual: actual)
                }
                firstPosition = result.first
            }
            inserted += result.count
            lastPosition = result.last
            guard inserted == start + chunk.count else { break }
        }
        guard inserted == events.count else {
            // An event id (or, in a caller's snapshot older than the lock, a version) was taken.
            if inserted == 0,
                let replay = try await Self.replay(
                    events, stream: stream, expected: expectedVersion, on: connection, logger: logger)
            {
                return replay
            }
            throw try await Self.conflict(events, stream: stream, on: connection, logger: logger)
        }
        return AppendResult(
            stream: stream, streamVersion: (actual ?? 0) + Int64(events.count), firstPosition: firstPosition,
            lastPosition: lastPosition, isReplay: false)
    }

    /// One statement: reads the stream's version and, when `expected` is satisfied, inserts the
    /// events after it (skipping any whose id or version is taken). Returns the version before,
    /// how many rows it inserted and their first and last positions.
    private static func insert(
        _ events: ArraySlice<NewEvent>, to stream: String, expectedVersion: ExpectedVersion,
        recorded: Int64, on connection: PostgresConnection, logger: Logger
    ) async throws -> (version: Int64?, count: Int, first: Int64, last: Int64) {
        var bindings = PostgresBindings(capacity: 4 + events.count * 10)
        bindings.append(stream)
        let (kind, value) = Self.expectation(expectedVersion)
        bindings.append(kind)
        bindings.append(value)
        bindings.append(recorded)
        var rows: [String] = []
        rows.reserveCapacity(events.count)
        var parameter = 5
        for (index, event) in events.enumerated() {
            let metadata = event.metadata
            let headers: String? =
                metadata.headers.isEmpty ? nil : String(decoding: try EventJSON.encode(metadata.headers), as: UTF8.self)
            bindings.append(Int64(index + 1))
            bindings.append(event.id)
            bindings.append(event.type)
            bindings.append(Int32(clamping: event.schemaVersion))
            try bindings.append(event.data)
            bindings.append(metadata.causationID)
            bindings.append(metadata.correlationID)
            bindings.append(metadata.traceParent)
            bindings.append(metadata.traceState)
            bindings.append(headers)
            bindings.append(event.occurredAt.map(Microseconds.of) ?? recorded)
            let p = parameter
            rows.append(
                "($\(p)::BIGINT, $\(p + 1)::UUID, $\(p + 2)::TEXT, $\(p + 3)::INTEGER, $\(p + 4)::BYTEA, $\(p + 5)::TEXT, "
                    + "$\(p + 6)::TEXT, $\(p + 7)::TEXT, $\(p + 8)::TEXT, $\(p + 9)::TEXT, $\(p + 10)::BIGINT)")
            parameter += 11
        }
        let sql = """
            WITH current AS (SELECT max(stream_version) AS version FROM es_events WHERE stream_id = $1),
            inserted AS (
                INSERT INTO es_events (stream_id, stream_version, event_id, type, schema_version, data,
                    causation_id, correlation_id, trace_parent, trace_state, headers, occurred_at, recorded_at)
                SELECT $1, coalesce(current.version, 0) + e.n, e.id, e.type, e.schema_version, e.data,
                    e.causation_id, e.correlation_id, e.trace_parent, e.trace_state, e.headers,
                    \(Self.timestamp("e.occurred_at")), \(Self.timestamp("$4::BIGINT"))
                FROM current, (VALUES \(rows.joined(separator: ", ")))
                    AS e (n, id, type, schema_version, data, causation_id, correlation_id, trace_parent, trace_state,
                        headers, occurred_at)
                WHERE CASE $2::TEXT
                    WHEN 'any' THEN TRUE
                    WHEN 'none' THEN current.version IS NULL
                    WHEN 'exists' THEN current.version IS NOT NULL
                    ELSE coalesce(current.version, 0) = $3::BIGINT END
                ORDER BY e.n
                ON CONFLICT DO NOTHING
                RETURNING position)
            SELECT (SELECT version FROM current), count(*), coalesce(min(position), 0), coalesce(max(position), 0)
            FROM inserted
            """
        let result = try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger)
        for try await (version, count, first, last) in result.decode((Int64?, Int64, Int64, Int64).self) {
            return (version, Int(count), first, last)
        }
        throw AviaryError(.internal, "event store append: the insert returned no row")
    }

    /// SQL for a `TIMESTAMPTZ` from microseconds since 1970 (exact, unlike `to_timestamp`'s float).
    static func timestamp(_ microseconds: String) -> String {
        "(TIMESTAMPTZ 'epoch' + \(microseconds) * INTERVAL '1 microsecond')"
    }

    /// SQL for microseconds since 1970 from a `TIMESTAMPTZ` column.
    static func microseconds(_ column: String) -> String {
        "(EXTRACT(EPOCH FROM \(column)) * 1000000)::BIGINT"
    }

    static func version(of stream: String, on connection: PostgresConnection, logger: Logger) async throws -> Int64? {
        let rows = try await connection.query(
            "SELECT max(stream_version) FROM es_events WHERE stream_id = \(stream)", logger: logger)
        for try await version in rows.decode(Int64?.self) { return version }
        return nil
    }

    /// The original result when `events` were all recorded before, by one append to `stream`
    /// that `expected` describes; nil when none of them was recorded (or the expectation differs).
    private static func replay(
        _ events: [NewEvent], stream: String, expected: ExpectedVersion, on connection: PostgresConnection,
        logger: Logger
    ) async throws -> AppendResult? {
        let rows = try await Self.recorded(ids: events.map(\.id), on: connection, logger: logger)
        guard !rows.isEmpty else { return nil }
        guard rows.count == events.count,
            let first = rows[events[0].id],
            events.enumerated().allSatisfy({ index, event in
                rows[event.id].map { $0.stream == stream && $0.version == first.version + Int64(index) } ?? false
            })
        else {
            throw try await Self.conflict(events, stream: stream, on: connection, logger: logger, rows: rows)
        }
        let before = first.version - 1
        guard expected.isSatisfied(by: before == 0 ? nil : before), let lastEvent = events.last,
            let last = rows[lastEvent.id]
        else { return nil }
        return AppendResult(
            stream: stream, streamVersion: last.version, firstPosition: first.position, lastPosition: last.position,
            isReplay: true)
    }

    private static func recorded(
        ids: [UUID], on connection: PostgresConnection, logger: Logger
    ) async throws -> [UUID: (stream: String, version: Int64, position: Int64)] {
        var found: [UUID: (stream: String, version: Int64, position: Int64)] = [:]
        // Rows this transaction inserted (before an id collided further on) are not "recorded before".
        let rows = try await connection.query(
            """
            SELECT event_id, stream_id, stream_version, position FROM es_events
            WHERE event_id = ANY(\(ids)) AND xmin <> pg_current_xact_id()::XID
            """, logger: logger)
        for try await (id, stream, version, position) in rows.decode((UUID, String, Int64, Int64).self) {
            found[id] = (stream, version, position)
        }
        return found
    }

    /// The error for an append that repeats ids of another append (or lost a version race).
    private static func conflict(
        _ events: [NewEvent], stream: String, on connection: PostgresConnection, logger: Logger,
        rows known: [UUID: (stream: String, version: Int64, position: Int64)]? = nil
    ) async throws -> any Error {
        let rows: [UUID: (stream: String, version: Int64, position: Int64)]
        if let known {
            rows = known
        } else {
            rows = try await Self.recorded(ids: events.map(\.id), on: connection, logger: logger)
        }
        guard let event = events.first(where: { rows[$0.id] != nil }), let row = rows[event.id] else {
            // No id was taken: a stream version was, by an append this transaction's snapshot
            // does not show (a caller's REPEATABLE READ transaction that began before the lock).
            let actual = try await Self.version(of: stream, on: connection, logger: logger)
            return AviaryError(
                .conflict,
                "\(stream): another append recorded version \((actual ?? 0) + 1) first; run appends in READ COMMITTED "
                    + "transactions")
        }
        return AviaryError(
            .conflict,
            "event \(event.id) is already recorded in stream \(row.stream) at version \(row.version); "
                + "an append is idempotent only when it repeats one whole earlier append to the same stream")
    }

    // MARK: Reading

    /// The columns of a ``RecordedEvent``, in the order `events(_:)` decodes them. The timestamps
    /// are read as they are stored (binary `TIMESTAMPTZ`, microseconds since 2000) and turned
    /// into microseconds since 1970 by `EpochMicroseconds`, which is exact and costs the server
    /// nothing (unlike `EXTRACT(EPOCH ...)`, a `numeric` computation per row).
    static let columns = """
        stream_id, stream_version, position, event_id, type, schema_version, data, causation_id, correlation_id, \
        trace_parent, trace_state, headers, occurred_at, recorded_at
        """

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws
        -> [RecordedEvent]
    {
        try EventStoreChecks.limit(limit)
        let logger = self.logger
        let query: PostgresQuery =
            switch direction {
            case .forwards:
                """
                SELECT \(unescaped: Self.columns) FROM es_events WHERE stream_id = \(stream) AND stream_version >= \(version)
                ORDER BY stream_version LIMIT \(Int64(limit))
                """
            case .backwards:
                """
                SELECT \(unescaped: Self.columns) FROM es_events WHERE stream_id = \(stream) AND stream_version <= \(version)
                ORDER BY stream_version DESC LIMIT \(Int64(limit))
                """
            }
        return try await self.store.withConnection { connection in
            try await Self.events(query, on: connection, logger: logger, capacity: min(limit, 1000))
        }
    }

    public func readAll(after position: Int64, limit: Int) async throws -> [RecordedEvent] {
        try EventStoreChecks.limit(limit)
        let logger = self.logger
        return try await self.store.withConnection { connection in
            try await Self.readAll(after: position, limit: limit, on: connection, logger: logger)
        }
    }

    /// ``readAll(after:limit:)`` on a connection the caller holds, inside its transaction (a
    /// projection whose read model lives in this database reads and applies in one transaction).
    ///
    /// ```swift
    /// try await store.withTransaction { connection in
    ///     let batch = try await events.readAll(after: checkpoint, limit: 500, in: connection)
    ///     // apply the batch and move the checkpoint in the same transaction
    /// }
    /// ```
    public func readAll(
        after position: Int64, limit: Int, in connection: PostgresConnection
    ) async throws
        -> [RecordedEvent]
    {
        try EventStoreChecks.limit(limit)
        return try await Self.readAll(after: position, limit: limit, on: connection, logger: self.logger)
    }

    static func readAll(
        after position: Int64, limit: Int, on connection: PostgresConnection, logger: Logger
    ) async throws -> [RecordedEvent] {
        try await Self.events(
            """
            SELECT \(unescaped: Self.columns) FROM es_events WHERE position > \(position)
            ORDER BY position LIMIT \(Int64(limit))
            """, on: connection, logger: logger, capacity: min(limit, 10000))
    }

    public func streamVersion(_ stream: String) async throws -> Int64? {
        let logger = self.logger
        return try await self.store.withConnection { connection in
            try await Self.version(of: stream, on: connection, logger: logger)
        }
    }

    public func headPosition() async throws -> Int64 {
        let logger = self.logger
        return try await self.store.withConnection { connection in
            try await Self.headPosition(on: connection, logger: logger)
        }
    }

    static func headPosition(on connection: PostgresConnection, logger: Logger) async throws -> Int64 {
        let rows = try await connection.query("SELECT coalesce(max(position), 0) FROM es_events", logger: logger)
        for try await head in rows.decode(Int64.self) { return head }
        return 0
    }

    public func streams(after: String?, limit: Int) async throws -> [StreamInfo] {
        try EventStoreChecks.limit(limit)
        let logger = self.logger
        return try await self.store.withConnection { connection in
            // Postgres compares text by the database's collation; `COLLATE "C"` orders by bytes, as SQLite does.
            let rows = try await connection.query(
                """
                SELECT stream_id, max(stream_version), max(position) FROM es_events
                WHERE stream_id COLLATE "C" > \(after ?? "") GROUP BY stream_id ORDER BY stream_id COLLATE "C"
                LIMIT \(Int64(limit))
                """, logger: logger)
            var streams: [StreamInfo] = []
            for try await (stream, version, position) in rows.decode((String, Int64, Int64).self) {
                streams.append(StreamInfo(stream: stream, version: version, lastPosition: position))
            }
            return streams
        }
    }

    // MARK: Snapshots

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        try EventStoreChecks.stream(snapshot.stream)
        let logger = self.logger
        let takenAt = Microseconds.of(snapshot.takenAt)
        try await self.store.withConnection { connection in
            _ = try await connection.complete(
                """
                INSERT INTO es_snapshots (stream_id, stream_version, schema_version, data, taken_at)
                VALUES (\(snapshot.stream), \(snapshot.streamVersion), \(Int32(clamping: snapshot.schemaVersion)),
                    \(snapshot.data), TIMESTAMPTZ 'epoch' + \(takenAt) * INTERVAL '1 microsecond')
                ON CONFLICT (stream_id) DO UPDATE SET stream_version = excluded.stream_version,
                    schema_version = excluded.schema_version, data = excluded.data, taken_at = excluded.taken_at
                """, logger: logger)
        }
    }

    public func latestSnapshot(of stream: String) async throws -> Snapshot? {
        let logger = self.logger
        return try await self.store.withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT stream_version, schema_version, data, \(unescaped: Self.microseconds("taken_at"))
                FROM es_snapshots WHERE stream_id = \(stream)
                """, logger: logger)
            for try await (version, schema, data, taken) in rows.decode((Int64, Int, Data, Int64).self) {
                return Snapshot(
                    stream: stream, streamVersion: version, schemaVersion: schema, data: data,
                    takenAt: Microseconds.date(taken))
            }
            return nil
        }
    }

    // MARK: Rows

    /// Runs a query of `columns` and decodes its rows into events as they arrive, on the
    /// connection's event loop (PostgresNIO's `onRow` interface), instead of through the async
    /// row sequence. The sequence hands every row from the event loop to the reading task
    /// through a locked buffer with back-pressure, waking the task for each burst; for reads of
    /// thousands of small rows (a projection's page) that hand-over costs as much as decoding.
    /// No package offers a cheaper path from PostgreSQL rows to our own type, so this is written
    /// here. Every read returns all its rows as one array anyway, so the missing back-pressure
    /// holds nothing in memory that the result would not.
    private static func events(
        _ query: PostgresQuery, on connection: PostgresConnection, logger: Logger, capacity: Int = 0
    ) async throws -> [RecordedEvent] {
        let rows = DecodedEvents(capacity: capacity)
        _ = try await connection.query(query, logger: logger) { row in
            let event = try RecordedEvent(row)
            rows.events.withLock { $0.append(event) }
        }.get()
        return rows.take()
    }
}

/// The events decoded by an `onRow` callback (which must be `Sendable`), collected under a lock
/// that is never contended: the callback runs on one event loop, and the events are taken after
/// the query has completed.
private final class DecodedEvents: Sendable {
    let events: Mutex<[RecordedEvent]>

    init(capacity: Int) {
        var events: [RecordedEvent] = []
        events.reserveCapacity(capacity)
        self.events = Mutex(events)
    }

    func take() -> [RecordedEvent] {
        self.events.withLock { events in
            defer { events = [] }
            return events
        }
    }
}

extension RecordedEvent {
    /// Decodes a row of ``PostgresEventStore``'s `columns`, cell by cell in column order, with
    /// decoders specialised for each column's type (PostgresNIO's variadic
    /// `row.decode((A, B, ...).self)` is not specialised: it looks up generic metadata for every
    /// cell, which cost more than the rest of the decoding; `makeRandomAccess()` allocates an
    /// array of cells per row). The headers' JSON is decoded only when an event has headers.
    init(_ row: PostgresRow) throws {
        var cells = PostgresCells(row)
        let stream = try cells.next(String.self)
        let streamVersion = try cells.next(Int64.self)
        let position = try cells.next(Int64.self)
        let id = try cells.next(UUID.self)
        let type = try cells.next(String.self)
        let schemaVersion = try cells.next(Int.self)
        let data = try cells.next(Data.self)
        var metadata = EventMetadata(
            causationID: try cells.next(String?.self), correlationID: try cells.next(String?.self),
            traceParent: try cells.next(String?.self), traceState: try cells.next(String?.self))
        if let headers = try cells.next(String?.self) {
            metadata.headers = try EventJSON.decode([String: String].self, from: Data(headers.utf8))
        }
        let occurredAt = try cells.next(EpochMicroseconds.self).value
        let recordedAt = try cells.next(EpochMicroseconds.self).value
        self.init(
            stream: stream, streamVersion: streamVersion, position: position, id: id, type: type,
            schemaVersion: schemaVersion, data: data, metadata: metadata, occurredAt: Microseconds.date(occurredAt),
            recordedAt: Microseconds.date(recordedAt))
    }
}

/// A row's cells in column order.
private struct PostgresCells {
    var iterator: PostgresRow.Iterator

    init(_ row: PostgresRow) { self.iterator = row.makeIterator() }

    mutating func next<Value: PostgresDecodable>(_ type: Value.Type) throws -> Value {
        guard let cell = self.iterator.next() else { throw PostgresDecodingError.Code.missingData }
        return try cell.decode(Value.self)
    }
}

/// A `TIMESTAMPTZ` (or `TIMESTAMP`) cell read as whole microseconds since 1970 UTC: PostgreSQL
/// sends it in binary as microseconds since 2000-01-01, so this is one integer addition, exact
/// like the stored value.
struct EpochMicroseconds: PostgresDecodable {
    /// Microseconds from 1970-01-01 to 2000-01-01.
    static let offset: Int64 = 946_684_800_000_000

    /// Microseconds since 1970.
    var value: Int64

    init<JSONDecoder: PostgresJSONDecoder>(
        from buffer: inout ByteBuffer, type: PostgresDataType, format: PostgresFormat,
        context: PostgresDecodingContext<JSONDecoder>
    ) throws {
        guard format == .binary, type == .timestamptz || type == .timestamp else {
            throw PostgresDecodingError.Code.typeMismatch
        }
        guard buffer.readableBytes == 8, let raw = buffer.readInteger(as: Int64.self) else {
            throw PostgresDecodingError.Code.failure
        }
        self.value = raw + Self.offset
    }
}
