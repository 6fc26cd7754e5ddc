//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
public import GRDB

/// The ``EventStore`` on SQLite: tables `es_events` and `es_snapshots` in a service's own
/// ``AviaryStorage/SQLiteStore`` (next to its other tables), or in a file of its own.
///
/// ## Global order
/// The global position is `es_events.position`, an `INTEGER PRIMARY KEY` (SQLite's rowid, which
/// an insert sets to the greatest position plus one). SQLite has one writer at a time (every
/// append is an `IMMEDIATE` transaction), so positions are assigned in commit order: when a
/// reader sees position `p`, every smaller position is either committed and visible in the same
/// snapshot or never will be. Events are never deleted, so a position is never handed out twice
/// and a checkpoint can never be overtaken by a reused one. (`AUTOINCREMENT` would keep that
/// true even if the newest rows were deleted, at the price of a write to `sqlite_sequence` in
/// every append; whoever adds stream deletion or truncation must keep the newest row or switch
/// to it.)
///
/// ``PostgresEventStore`` explains why PostgreSQL needs more than a sequence for the same
/// guarantee, and what it does instead.
///
/// ## Speed
/// An append is one `IMMEDIATE` transaction: one indexed `max()` lookup for the version check,
/// one cached prepared `INSERT` per event, nothing else (no stream table to update, no
/// `sqlite_sequence`). Event ids are time-ordered by default, so their unique index grows at its
/// end. Reads use cached statements too.
///
/// ```swift
/// var migrations = Migrations()
/// migrations.addEventStore()                     // es_events, es_snapshots
/// migrations.add("v1: order history") { db in ... }
/// let store = try SQLiteStore(url: StoreURL(parsing: "sqlite://.aviary/shop/orders.db"), migrations: migrations)
/// let events = try SQLiteEventStore(store: store)
/// ```
public final class SQLiteEventStore: EventStore {
    /// The database the tables live in.
    public let store: SQLiteStore
    let now: @Sendable () -> Date

    /// Uses the event tables in `store`, created by ``AviaryStorage/Migrations/addEventStore()``.
    ///
    /// - Parameters:
    ///   - store: the service's database.
    ///   - now: wall-clock time for `recordedAt` (tests pass a manual clock's `now`).
    /// - Throws: ``AviaryCore/AviaryError`` (`failedPrecondition`) when the tables are missing.
    public init(store: SQLiteStore, now: @escaping @Sendable () -> Date = { Date() }) throws {
        self.store = store
        self.now = now
        let present = try store.database.read { db in try db.tableExists("es_events") }
        guard present else {
            throw AviaryError(
                .failedPrecondition,
                "\(store.url) has no event store tables: add migrations.addEventStore() to its migrations")
        }
    }

    /// Opens (creating if needed) an event store in a database of its own at `url`.
    ///
    /// ```swift
    /// let events = try SQLiteEventStore(url: StoreURL(parsing: "sqlite://.aviary/events.db"))
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError`` when the URL is not a SQLite URL or the file cannot be
    ///   opened or migrated.
    public convenience init(url: StoreURL, now: @escaping @Sendable () -> Date = { Date() }) throws {
        var migrations = Migrations()
        migrations.addEventStore()
        try self.init(store: SQLiteStore(url: url, migrations: migrations), now: now)
    }

    // MARK: Appending

    @discardableResult
    public func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion
    ) async throws
        -> AppendResult
    {
        try EventStoreChecks.stream(stream)
        try EventStoreChecks.events(events)
        let recordedAt = self.now()
        return try await self.store.write("event store append") { db in
            try Self.append(events, to: stream, expectedVersion: expectedVersion, recordedAt: recordedAt, in: db)
        }
    }

    /// Appends inside a transaction the caller already holds, so that the events commit together
    /// with the caller's other writes (an outbox row, a read model), or not at all.
    ///
    /// ```swift
    /// try await store.write { db in
    ///     try events.append([placed], to: "order-17", expectedVersion: .noStream, in: db)
    ///     try outbox.enqueue(message, in: db)
    /// }
    /// ```
    ///
    /// - Throws: as ``append(_:to:expectedVersion:)``; the caller's transaction should then roll
    ///   back (throwing out of the `write` closure does that).
    @discardableResult
    public func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion, in db: Database
    )
        throws -> AppendResult
    {
        try EventStoreChecks.stream(stream)
        try EventStoreChecks.events(events)
        return try Self.append(events, to: stream, expectedVersion: expectedVersion, recordedAt: self.now(), in: db)
    }

    static func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion, recordedAt: Date, in db: Database
    ) throws -> AppendResult {
        let actual = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT max(stream_version) FROM es_events WHERE stream_id = ?"),
            arguments: [stream])
        guard expectedVersion.isSatisfied(by: actual) else {
            if !events.isEmpty, let replay = try Self.replay(events, stream: stream, expected: expectedVersion, db: db)
            {
                return replay
            }
            throw WrongExpectedVersion(stream: stream, expected: expectedVersion, actual: actual)
        }
        guard !events.isEmpty else {
            return AppendResult(
                stream: stream, streamVersion: actual ?? 0, firstPosition: 0, lastPosition: 0, isReplay: false)
        }
        let insert = try db.cachedStatement(
            sql: """
                INSERT INTO es_events (stream_id, stream_version, event_id, type, schema_version, data,
                    causation_id, correlation_id, trace_parent, trace_state, headers, occurred_at, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
        let recorded = Microseconds.of(recordedAt)
        var version = actual ?? 0
        var firstPosition: Int64 = 0
        for (index, event) in events.enumerated() {
            version += 1
            let metadata = event.metadata
            let headers: String? =
                metadata.headers.isEmpty ? nil : String(decoding: try EventJSON.encode(metadata.headers), as: UTF8.self)
            do {
                try insert.execute(arguments: [
                    stream, version, event.id, event.type, event.schemaVersion, event.data,
                    metadata.causationID, metadata.correlationID, metadata.traceParent, metadata.traceState, headers,
                    event.occurredAt.map(Microseconds.of) ?? recorded, recorded,
                ])
            } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
                // An event id recorded before. Only a repeat of one whole earlier append is fine,
                // and then its first event is the one that collides.
                if index == 0, let replay = try Self.replay(events, stream: stream, expected: expectedVersion, db: db) {
                    return replay
                }
                throw try Self.duplicateError(of: event, db: db, cause: error)
            }
            if index == 0 { firstPosition = db.lastInsertedRowID }
        }
        return AppendResult(
            stream: stream, streamVersion: version, firstPosition: firstPosition, lastPosition: db.lastInsertedRowID,
            isReplay: false)
    }

    /// The original result when `events` were all recorded before, by one append to `stream`
    /// that `expected` describes; nil when none of them was recorded.
    private static func replay(
        _ events: [NewEvent], stream: String, expected: ExpectedVersion, db: Database
    ) throws
        -> AppendResult?
    {
        let rows = try Self.recorded(ids: events.map(\.id), db: db)
        guard !rows.isEmpty else { return nil }
        guard rows.count == events.count,
            let first = rows[events[0].id],
            events.enumerated().allSatisfy({ index, event in
                rows[event.id].map { $0.stream == stream && $0.version == first.version + Int64(index) } ?? false
            })
        else {
            let repeated = events.first { rows[$0.id] != nil } ?? events[0]
            throw try Self.duplicateError(of: repeated, db: db, cause: nil)
        }
        let before = first.version - 1
        let satisfied =
            switch expected {
            case .any: true
            case .noStream: before == 0
            case .streamExists: before > 0
            case .exact(let version): before == version
            }
        guard satisfied, let lastEvent = events.last, let last = rows[lastEvent.id] else { return nil }
        return AppendResult(
            stream: stream, streamVersion: last.version, firstPosition: first.position, lastPosition: last.position,
            isReplay: true)
    }

    private static func recorded(
        ids: [UUID], db: Database
    ) throws -> [UUID: (stream: String, version: Int64, position: Int64)] {
        var rows: [UUID: (stream: String, version: Int64, position: Int64)] = [:]
        for chunk in stride(from: 0, to: ids.count, by: 500) {
            let part = Array(ids[chunk..<min(chunk + 500, ids.count)])
            let marks = Array(repeating: "?", count: part.count).joined(separator: ",")
            let cursor = try Row.fetchCursor(
                db,
                sql: "SELECT event_id, stream_id, stream_version, position FROM es_events WHERE event_id IN (\(marks))",
                arguments: StatementArguments(part))
            while let row = try cursor.next() {
                let id: UUID = row[0]
                let stream: String = row[1]
                let version: Int64 = row[2]
                let position: Int64 = row[3]
                rows[id] = (stream, version, position)
            }
        }
        return rows
    }

    private static func duplicateError(of event: NewEvent, db: Database, cause: (any Error)?) throws -> AviaryError {
        if let row = try Self.recorded(ids: [event.id], db: db)[event.id] {
            return AviaryError(
                .conflict,
                "event \(event.id) is already recorded in stream \(row.stream) at version \(row.version); "
                    + "an append is idempotent only when it repeats one whole earlier append to the same stream",
                cause: cause)
        }
        return AviaryError(.conflict, "an event of the append is already recorded", cause: cause)
    }

    // MARK: Reading

    public func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws
        -> [RecordedEvent]
    {
        try EventStoreChecks.limit(limit)
        return try await self.store.read("event store read stream") { db in
            let sql =
                switch direction {
                case .forwards:
                    "SELECT \(Self.columns) FROM es_events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?"
                case .backwards:
                    "SELECT \(Self.columns) FROM es_events WHERE stream_id = ? AND stream_version <= ? ORDER BY stream_version DESC LIMIT ?"
                }
            return try Self.events(db.cachedStatement(sql: sql), [stream, version, limit])
        }
    }

    public func readAll(after position: Int64, limit: Int) async throws -> [RecordedEvent] {
        try EventStoreChecks.limit(limit)
        return try await self.store.read("event store read all") { db in
            try Self.readAll(after: position, limit: limit, in: db)
        }
    }

    /// ``readAll(after:limit:)`` inside a transaction the caller holds (a projection whose read
    /// model lives in this database reads and applies in one transaction).
    public func readAll(after position: Int64, limit: Int, in db: Database) throws -> [RecordedEvent] {
        try EventStoreChecks.limit(limit)
        return try Self.readAll(after: position, limit: limit, in: db)
    }

    static func readAll(after position: Int64, limit: Int, in db: Database) throws -> [RecordedEvent] {
        try Self.events(
            db.cachedStatement(
                sql: "SELECT \(Self.columns) FROM es_events WHERE position > ? ORDER BY position LIMIT ?"),
            [position, limit])
    }

    public func streamVersion(_ stream: String) async throws -> Int64? {
        try await self.store.read("event store stream version") { db in
            try Int64.fetchOne(
                db.cachedStatement(sql: "SELECT max(stream_version) FROM es_events WHERE stream_id = ?"),
                arguments: [stream])
        }
    }

    public func headPosition() async throws -> Int64 {
        try await self.store.read("event store head") { db in try Self.headPosition(in: db) }
    }

    static func headPosition(in db: Database) throws -> Int64 {
        try Int64.fetchOne(db.cachedStatement(sql: "SELECT max(position) FROM es_events")) ?? 0
    }

    public func streams(after: String?, limit: Int) async throws -> [StreamInfo] {
        try EventStoreChecks.limit(limit)
        return try await self.store.read("event store streams") { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT stream_id, max(stream_version), max(position) FROM es_events
                    WHERE stream_id > ? GROUP BY stream_id ORDER BY stream_id LIMIT ?
                    """,
                arguments: [after ?? "", limit]
            ).map { row in StreamInfo(stream: row[0], version: row[1], lastPosition: row[2]) }
        }
    }

    // MARK: Snapshots

    public func saveSnapshot(_ snapshot: Snapshot) async throws {
        try EventStoreChecks.stream(snapshot.stream)
        try await self.store.write("event store save snapshot") { db in
            try db.execute(
                sql: """
                    INSERT INTO es_snapshots (stream_id, stream_version, schema_version, data, taken_at)
                    VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (stream_id) DO UPDATE SET stream_version = excluded.stream_version,
                        schema_version = excluded.schema_version, data = excluded.data, taken_at = excluded.taken_at
                    """,
                arguments: [
                    snapshot.stream, snapshot.streamVersion, snapshot.schemaVersion, snapshot.data,
                    Microseconds.of(snapshot.takenAt),
                ])
        }
    }

    public func latestSnapshot(of stream: String) async throws -> Snapshot? {
        try await self.store.read("event store load snapshot") { db in
            try Row.fetchOne(
                db.cachedStatement(
                    sql: "SELECT stream_version, schema_version, data, taken_at FROM es_snapshots WHERE stream_id = ?"),
                arguments: [stream]
            ).map { row in
                Snapshot(
                    stream: stream, streamVersion: row[0], schemaVersion: row[1], data: row[2],
                    takenAt: Microseconds.date(row[3]))
            }
        }
    }

    // MARK: Rows

    static let columns = """
        stream_id, stream_version, position, event_id, type, schema_version, data, causation_id, correlation_id, \
        trace_parent, trace_state, headers, occurred_at, recorded_at
        """

    private static func events(_ statement: Statement, _ arguments: StatementArguments) throws -> [RecordedEvent] {
        var events: [RecordedEvent] = []
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        while let row = try cursor.next() {
            var metadata = EventMetadata(
                causationID: row[7], correlationID: row[8], traceParent: row[9], traceState: row[10])
            if let headers: String = row[11] {
                metadata.headers = try EventJSON.decode([String: String].self, from: Data(headers.utf8))
            }
            events.append(
                RecordedEvent(
                    stream: row[0], streamVersion: row[1], position: row[2], id: row[3], type: row[4],
                    schemaVersion: row[5], data: row[6], metadata: metadata,
                    occurredAt: Microseconds.date(row[12]), recordedAt: Microseconds.date(row[13])))
        }
        return events
    }
}

/// Timestamps are stored as whole microseconds since 1970 (PostgreSQL's `timestamptz`
/// precision), so both backends return the same `Date`s.
enum Microseconds {
    static func date(_ value: Int64) -> Date {
        Date(timeIntervalSince1970: Double(value) / 1_000_000)
    }

    static func of(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
    }
}

extension Migrations {
    /// Adds the event store's tables (`es_events`, `es_snapshots`) to a service's migrations,
    /// as the migration named `aviary event store v1`.
    ///
    /// ```swift
    /// var migrations = Migrations()
    /// migrations.addEventStore()
    /// ```
    ///
    /// - Precondition: not added twice to the same migrations.
    public mutating func addEventStore() {
        self.add("aviary event store v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE es_events (
                        position INTEGER PRIMARY KEY,
                        stream_id TEXT NOT NULL,
                        stream_version INTEGER NOT NULL,
                        event_id BLOB NOT NULL,
                        type TEXT NOT NULL,
                        schema_version INTEGER NOT NULL,
                        data BLOB NOT NULL,
                        causation_id TEXT,
                        correlation_id TEXT,
                        trace_parent TEXT,
                        trace_state TEXT,
                        headers TEXT,
                        occurred_at INTEGER NOT NULL,
                        recorded_at INTEGER NOT NULL
                    );
                    CREATE UNIQUE INDEX es_events_stream ON es_events (stream_id, stream_version);
                    CREATE UNIQUE INDEX es_events_id ON es_events (event_id);
                    CREATE TABLE es_snapshots (
                        stream_id TEXT PRIMARY KEY,
                        stream_version INTEGER NOT NULL,
                        schema_version INTEGER NOT NULL,
                        data BLOB NOT NULL,
                        taken_at INTEGER NOT NULL
                    );
                    """)
        }
    }
}
