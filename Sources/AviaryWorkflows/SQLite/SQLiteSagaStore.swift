//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryStorage
public import Foundation
import GRDB
import Synchronization

/// The SQLite ``SagaStore``: tables `aviary_sagas` and `aviary_saga_events` in the orchestrating
/// service's own database, written with group commit.
///
/// Every ``create(_:events:)`` and ``update(_:expectedVersion:events:)`` joins a queue; one writer
/// commits everything queued in one transaction, each call in its own savepoint (a conflict rolls
/// back only its own savepoint). Many sagas running at once thus share one fsync instead of
/// paying one each.
///
/// ```swift
/// var migrations = Migrations()
/// SQLiteSagaStore.addMigrations(to: &migrations)
/// let store = try SQLiteStore(url: StoreURL(parsing: "sqlite://.aviary/orders.db"), migrations: migrations)
/// let sagas = SQLiteSagaStore(store: store)
/// ```
public final class SQLiteSagaStore: SagaStore {
    /// The database.
    public let store: SQLiteStore
    private let committer: GroupCommitter

    /// Adds the saga tables to a service's migrations (once; the names are stable).
    ///
    /// ```swift
    /// SQLiteSagaStore.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout Migrations) {
        migrations.add("aviary-workflows v1: sagas") { db in
            try db.execute(
                sql: """
                    CREATE TABLE aviary_sagas (
                        id TEXT PRIMARY KEY,
                        name TEXT NOT NULL,
                        status TEXT NOT NULL,
                        step INTEGER NOT NULL,
                        attempt INTEGER NOT NULL,
                        state BLOB NOT NULL,
                        wake_at DOUBLE,
                        awaiting_reply INTEGER NOT NULL,
                        last_error TEXT,
                        version INTEGER NOT NULL,
                        created_at DOUBLE NOT NULL,
                        updated_at DOUBLE NOT NULL
                    )
                    """)
            try db.execute(
                sql: """
                    CREATE INDEX aviary_sagas_unfinished ON aviary_sagas (wake_at)
                    WHERE status IN ('running', 'compensating')
                    """)
            try db.execute(sql: "CREATE INDEX aviary_sagas_status ON aviary_sagas (status, created_at)")
            try db.execute(
                sql: """
                    CREATE TABLE aviary_saga_events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        saga_id TEXT NOT NULL,
                        step INTEGER NOT NULL,
                        step_name TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        attempt INTEGER NOT NULL,
                        output BLOB,
                        error TEXT,
                        at DOUBLE NOT NULL
                    )
                    """)
            try db.execute(sql: "CREATE INDEX aviary_saga_events_saga ON aviary_saga_events (saga_id, seq)")
        }
    }

    /// Uses `store`, whose migrations include ``addMigrations(to:)``.
    public init(store: SQLiteStore) {
        self.store = store
        self.committer = GroupCommitter(database: store.database)
    }

    /// Opens (creating and migrating) a store of its own at `url`.
    ///
    /// ```swift
    /// let sagas = try SQLiteSagaStore(url: StoreURL(parsing: "sqlite://.aviary/sagas.db"))
    /// ```
    public convenience init(url: StoreURL) throws {
        var migrations = Migrations()
        Self.addMigrations(to: &migrations)
        self.init(store: try SQLiteStore(url: url, migrations: migrations))
    }

    public func create(_ instance: SagaInstance, events: [SagaEvent]) async throws {
        precondition(instance.version == 1, "a new saga instance has version 1")
        try await self.committer.submit { db in
            try db.execute(
                sql: """
                    INSERT INTO aviary_sagas (
                        id, name, status, step, attempt, state, wake_at, awaiting_reply, last_error, version,
                        created_at, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """,
                arguments: Self.row(instance))
            guard db.changesCount == 1 else {
                throw SagaError(.duplicate, "saga \(instance.id) exists already")
            }
            try Self.append(events, to: instance.id, db)
        }
    }

    public func update(_ instance: SagaInstance, expectedVersion: Int, events: [SagaEvent]) async throws {
        try await self.committer.submit { db in
            try db.execute(
                sql: """
                    UPDATE aviary_sagas SET status = ?, step = ?, attempt = ?, state = ?, wake_at = ?,
                        awaiting_reply = ?, last_error = ?, version = ?, updated_at = ?
                    WHERE id = ? AND version = ?
                    """,
                arguments: [
                    instance.status.rawValue, instance.step, instance.attempt, instance.state,
                    instance.wakeAt?.timeIntervalSince1970, instance.awaitingReply, instance.lastError,
                    expectedVersion + 1,
                    instance.updatedAt.timeIntervalSince1970, instance.id, expectedVersion,
                ])
            guard db.changesCount == 1 else {
                let exists =
                    try Bool.fetchOne(db, sql: "SELECT 1 FROM aviary_sagas WHERE id = ?", arguments: [instance.id])
                    ?? false
                throw exists
                    ? SagaError(.conflict, "saga \(instance.id) changed since version \(expectedVersion)")
                    : SagaError(.notFound, "no saga \(instance.id)")
            }
            try Self.append(events, to: instance.id, db)
        }
    }

    public func instance(_ id: String) async throws -> SagaInstance? {
        try await self.store.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM aviary_sagas WHERE id = ?", arguments: [id]).map(
                Self.decodeInstance)
        }
    }

    public func history(_ id: String) async throws -> [SagaEvent] {
        try await self.store.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM aviary_saga_events WHERE saga_id = ? ORDER BY seq", arguments: [id]
            ).map { row in
                SagaEvent(
                    step: row["step"], stepName: row["step_name"],
                    kind: SagaEventKind(rawValue: row["kind"]) ?? .note, attempt: row["attempt"],
                    output: row["output"], error: row["error"],
                    at: Date(timeIntervalSince1970: row["at"]))
            }
        }
    }

    public func instances(status: SagaStatus?, limit: Int) async throws -> [SagaInstance] {
        try await self.store.read { db in
            if let status {
                return try Row.fetchAll(
                    db, sql: "SELECT * FROM aviary_sagas WHERE status = ? ORDER BY created_at DESC, id LIMIT ?",
                    arguments: [status.rawValue, limit]
                ).map(Self.decodeInstance)
            }
            return try Row.fetchAll(
                db, sql: "SELECT * FROM aviary_sagas ORDER BY created_at DESC, id LIMIT ?", arguments: [limit]
            ).map(Self.decodeInstance)
        }
    }

    public func due(at date: Date, limit: Int) async throws -> [SagaInstance] {
        try await self.store.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM aviary_sagas
                    WHERE status IN ('running', 'compensating') AND (wake_at IS NULL OR wake_at <= ?)
                    ORDER BY wake_at, created_at LIMIT ?
                    """,
                arguments: [date.timeIntervalSince1970, limit]
            ).map(Self.decodeInstance)
        }
    }

    public func nextWakeUp() async throws -> Date? {
        try await self.store.read { db in
            try Double.fetchOne(
                db,
                sql: "SELECT MIN(wake_at) FROM aviary_sagas WHERE status IN ('running', 'compensating')"
            ).map { Date(timeIntervalSince1970: $0) }
        }
    }

    private static func row(_ instance: SagaInstance) -> StatementArguments {
        [
            instance.id, instance.name, instance.status.rawValue, instance.step, instance.attempt, instance.state,
            instance.wakeAt?.timeIntervalSince1970, instance.awaitingReply, instance.lastError, instance.version,
            instance.createdAt.timeIntervalSince1970, instance.updatedAt.timeIntervalSince1970,
        ]
    }

    private static func decodeInstance(_ row: Row) -> SagaInstance {
        let wake: Double? = row["wake_at"]
        return SagaInstance(
            id: row["id"], name: row["name"], status: SagaStatus(rawValue: row["status"]) ?? .needsAttention,
            step: row["step"], attempt: row["attempt"], state: row["state"],
            wakeAt: wake.map { Date(timeIntervalSince1970: $0) }, awaitingReply: row["awaiting_reply"],
            lastError: row["last_error"],
            version: row["version"], createdAt: Date(timeIntervalSince1970: row["created_at"]),
            updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
    }

    private static func append(_ events: [SagaEvent], to id: String, _ db: Database) throws {
        for event in events {
            try db.execute(
                sql: """
                    INSERT INTO aviary_saga_events (saga_id, step, step_name, kind, attempt, output, error, at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    id, event.step, event.stepName, event.kind.rawValue, event.attempt, event.output, event.error,
                    event.at.timeIntervalSince1970,
                ])
        }
    }
}

/// Group commit: writes submitted while a transaction is committing wait and go together in the
/// next one, each in its own savepoint. Hand-written because GRDB has no batching writer; the
/// queue is a `Mutex`-guarded array and one draining task at a time.
final class GroupCommitter: Sendable {
    typealias Operation = @Sendable (Database) throws -> Void

    private struct Pending: Sendable {
        var operation: Operation
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct Queue: Sendable {
        var pending: [Pending] = []
        var draining = false
    }

    private let database: any DatabaseWriter
    private let queue = Mutex(Queue())

    init(database: any DatabaseWriter) {
        self.database = database
    }

    func submit(_ operation: @escaping Operation) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let startDraining = self.queue.withLock { queue -> Bool in
                queue.pending.append(Pending(operation: operation, continuation: continuation))
                if queue.draining { return false }
                queue.draining = true
                return true
            }
            if startDraining {
                Task { await self.drain() }
            }
        }
    }

    private func drain() async {
        while true {
            let batch = self.queue.withLock { queue -> [Pending] in
                let batch = queue.pending
                queue.pending = []
                if batch.isEmpty { queue.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            let results: [Result<Void, any Error>]
            do {
                results = try await self.database.write { db in
                    batch.map { pending -> Result<Void, any Error> in
                        do {
                            try db.inSavepoint {
                                try pending.operation(db)
                                return .commit
                            }
                            return .success(())
                        } catch {
                            return .failure(error)
                        }
                    }
                }
            } catch {
                results = Array(repeating: .failure(error), count: batch.count)
            }
            for (pending, result) in zip(batch, results) {
                pending.continuation.resume(with: result)
            }
        }
    }
}
