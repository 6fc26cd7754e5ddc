//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
public import Logging
import NIOCore
import PostgresNIO

/// The PostgreSQL ``SagaStore``: tables `aviary_sagas` and `aviary_saga_events` in the
/// orchestrating service's own database, shared by any number of orchestrator processes.
///
/// - **Leases** (``SagaLeaseStore``): every unfinished saga is driven by the one ``SagaRunner``
///   holding its lease; runners claim due sagas with `FOR UPDATE SKIP LOCKED`, so two processes
///   never take the same saga, and a saga whose runner died is taken over when its lease expires.
/// - **Batched writes**: concurrent ``create(_:events:)`` and ``update(_:expectedVersion:events:)``
///   calls (of different sagas) are sent together as **one** statement: the instances are inserted
///   or updated (each with its own version check) and the events appended in one round trip and
///   one commit. A version conflict fails only its own call; a statement that fails as a whole is
///   run again call by call, so one bad call never fails another. Each call returns once its
///   statement committed (`synchronous_commit` as the server is configured: on by default).
///
/// ```swift
/// var migrations = PostgresMigrations()
/// PostgresSagaStore.addMigrations(to: &migrations)
/// let store = try PostgresStore(url: StoreURL(parsing: "postgres://orders:secret@db:5432/orders"), migrations: migrations)
/// let sagas = PostgresSagaStore(store: store)   // run `store` in the service group, before the runner
/// let runner = SagaRunner(store: sagas, logger: logger)
/// ```
public final class PostgresSagaStore: SagaLeaseStore {
    /// The database.
    public let store: PostgresStore
    private let writer: PostgresSagaWriter
    private let running: Task<Void, Never>?

    /// Adds the saga tables to a service's PostgreSQL migrations (once; the names are stable).
    ///
    /// ```swift
    /// PostgresSagaStore.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary-workflows v1: sagas") { connection, logger in
            // Times are seconds since 1970 (DOUBLE PRECISION), as in the SQLite store, so that
            // every backend stores exactly the `Date` it was given.
            try await connection.query(
                """
                CREATE TABLE aviary_sagas (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    status TEXT NOT NULL,
                    step INTEGER NOT NULL,
                    attempt INTEGER NOT NULL,
                    state BYTEA NOT NULL,
                    wake_at DOUBLE PRECISION,
                    awaiting_reply BOOLEAN NOT NULL,
                    last_error TEXT,
                    version BIGINT NOT NULL,
                    created_at DOUBLE PRECISION NOT NULL,
                    updated_at DOUBLE PRECISION NOT NULL,
                    lease_owner TEXT,
                    lease_until DOUBLE PRECISION
                )
                """, logger: logger)
            try await connection.query(
                """
                CREATE INDEX aviary_sagas_unfinished ON aviary_sagas (wake_at NULLS FIRST, created_at)
                WHERE status IN ('running', 'compensating')
                """, logger: logger)
            try await connection.query(
                "CREATE INDEX aviary_sagas_status ON aviary_sagas (status, created_at)", logger: logger)
            try await connection.query(
                """
                CREATE TABLE aviary_saga_events (
                    seq BIGSERIAL PRIMARY KEY,
                    saga_id TEXT NOT NULL,
                    step INTEGER NOT NULL,
                    step_name TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    attempt INTEGER NOT NULL,
                    output BYTEA,
                    error TEXT,
                    at DOUBLE PRECISION NOT NULL
                )
                """, logger: logger)
            try await connection.query(
                "CREATE INDEX aviary_saga_events_saga ON aviary_saga_events (saga_id, seq)", logger: logger)
        }
    }

    /// Uses `store`, whose migrations include ``addMigrations(to:)`` and which the caller runs
    /// (in its `ServiceGroup`, before the ``SagaRunner``).
    public init(store: PostgresStore) {
        self.store = store
        self.writer = PostgresSagaWriter(store: store)
        self.running = nil
    }

    /// Opens a store of its own at a `postgres://` URL: starts its connection pool, applies the
    /// saga tables' migrations and waits until they are in place. ``close()`` stops it.
    ///
    /// ```swift
    /// let sagas = try await PostgresSagaStore(url: StoreURL(parsing: "postgres://u:p@127.0.0.1:5432/orders"))
    /// defer { Task { await sagas.close() } }
    /// ```
    ///
    /// - Parameters:
    ///   - url: a `postgres://user:password@host:port/database` store URL.
    ///   - options: pool size and timeouts.
    ///   - logger: where the store logs.
    ///   - migrate: whether to create the saga tables when they are missing; tools that only
    ///     inspect a store pass false, and then a database without them is an error.
    /// - Throws: ``AviaryCore/AviaryError``: `invalidArgument` for a URL that is not a PostgreSQL
    ///   URL, `unavailable` when the server cannot be reached or the migrations fail (naming the
    ///   address and the cause), `notFound` when `migrate` is false and the tables are missing.
    public init(
        url: StoreURL, options: PostgresStore.Options = PostgresStore.Options(applicationName: "aviary-sagas"),
        logger: Logger = Logger(label: "aviary.sagas"), migrate: Bool = true
    ) async throws {
        var migrations = PostgresMigrations()
        if migrate { Self.addMigrations(to: &migrations) }
        let store = try PostgresStore(url: url, migrations: migrations, options: options, logger: logger)
        self.store = store
        self.writer = PostgresSagaWriter(store: store)
        let running = Task {
            do {
                try await store.run()
            } catch {
                logger.error("saga store stopped", metadata: ["error.message": "\(PostgresStore.describe(error))"])
            }
        }
        self.running = running
        do {
            try await store.ready()
            if !migrate {
                let present = try await store.withConnection { connection in
                    try await PostgresSagaWriter.rows(
                        connection, "SELECT to_regclass('aviary_sagas') IS NOT NULL AS present", logger
                    ).first?["present"].decode(Bool.self) ?? false
                }
                guard present else {
                    throw AviaryError(
                        .notFound, "no saga store at \(store.address): the database has no aviary_sagas table")
                }
            }
        } catch let error as AviaryError where error.code == .notFound {
            running.cancel()
            await running.value
            throw error
        } catch {
            running.cancel()
            await running.value
            throw AviaryError(
                .unavailable, "cannot open the saga store at \(store.address): \(PostgresStore.describe(error))",
                cause: error)
        }
    }

    /// Stops the connection pool of a store opened with ``init(url:options:logger:)`` (a store
    /// made with ``init(store:)`` belongs to its caller and is left running).
    public func close() async {
        guard let running = self.running else { return }
        running.cancel()
        await running.value
    }

    // MARK: SagaStore

    public func create(_ instance: SagaInstance, events: [SagaEvent]) async throws {
        precondition(instance.version == 1, "a new saga instance has version 1")
        try await self.writer.submit(.create(instance, events, owner: nil, leaseUntil: nil))
    }

    public func update(_ instance: SagaInstance, expectedVersion: Int, events: [SagaEvent]) async throws {
        try await self.writer.submit(.update(instance, expectedVersion: expectedVersion, events))
    }

    public func instance(_ id: String) async throws -> SagaInstance? {
        try await self.rows("SELECT * FROM aviary_sagas WHERE id = \(id)").first.map(Self.decodeInstance)
    }

    public func history(_ id: String) async throws -> [SagaEvent] {
        try await self.rows("SELECT * FROM aviary_saga_events WHERE saga_id = \(id) ORDER BY seq").map { row in
            SagaEvent(
                step: try row["step"].decode(Int.self), stepName: try row["step_name"].decode(String.self),
                kind: SagaEventKind(rawValue: try row["kind"].decode(String.self)) ?? .note,
                attempt: try row["attempt"].decode(Int.self), output: try row["output"].decode(Data?.self),
                error: try row["error"].decode(String?.self),
                at: Date(timeIntervalSince1970: try row["at"].decode(Double.self)))
        }
    }

    public func instances(status: SagaStatus?, limit: Int) async throws -> [SagaInstance] {
        if let status {
            return try await self.rows(
                "SELECT * FROM aviary_sagas WHERE status = \(status.rawValue) ORDER BY created_at DESC, id LIMIT \(limit)"
            ).map(Self.decodeInstance)
        }
        return try await self.rows("SELECT * FROM aviary_sagas ORDER BY created_at DESC, id LIMIT \(limit)")
            .map(Self.decodeInstance)
    }

    public func due(at date: Date, limit: Int) async throws -> [SagaInstance] {
        let now = date.timeIntervalSince1970
        return try await self.rows(
            """
            SELECT * FROM aviary_sagas
            WHERE status IN ('running', 'compensating') AND (wake_at IS NULL OR wake_at <= \(now))
            ORDER BY wake_at NULLS FIRST, created_at LIMIT \(limit)
            """
        ).map(Self.decodeInstance)
    }

    public func nextWakeUp() async throws -> Date? {
        try await self.rows(
            "SELECT MIN(wake_at) AS next FROM aviary_sagas WHERE status IN ('running', 'compensating')"
        ).first.flatMap { try $0["next"].decode(Double?.self) }.map { Date(timeIntervalSince1970: $0) }
    }

    // MARK: SagaLeaseStore

    public func claimDue(at date: Date, limit: Int, owner: String, leaseUntil: Date) async throws -> [SagaInstance] {
        let now = date.timeIntervalSince1970
        let until = leaseUntil.timeIntervalSince1970
        return try await self.rows(
            """
            UPDATE aviary_sagas SET lease_owner = \(owner), lease_until = \(until)
            WHERE id IN (
                SELECT id FROM aviary_sagas
                WHERE status IN ('running', 'compensating') AND (wake_at IS NULL OR wake_at <= \(now))
                    AND (lease_owner IS NULL OR lease_until <= \(now))
                ORDER BY wake_at NULLS FIRST, created_at LIMIT \(limit)
                FOR UPDATE SKIP LOCKED)
            RETURNING *
            """
        ).map(Self.decodeInstance).sorted { left, right in
            switch (left.wakeAt, right.wakeAt) {
            case (nil, nil): return left.createdAt < right.createdAt
            case (nil, _): return true
            case (_, nil): return false
            case (let l?, let r?): return l == r ? left.createdAt < right.createdAt : l < r
            }
        }
    }

    public func claim(_ id: String, owner: String, at date: Date, leaseUntil: Date) async throws -> SagaInstance? {
        let now = date.timeIntervalSince1970
        let until = leaseUntil.timeIntervalSince1970
        return try await self.rows(
            """
            UPDATE aviary_sagas SET lease_owner = \(owner), lease_until = \(until)
            WHERE id = \(id) AND status IN ('running', 'compensating')
                AND (lease_owner IS NULL OR lease_owner = \(owner) OR lease_until <= \(now))
            RETURNING *
            """
        ).first.map(Self.decodeInstance)
    }

    public func create(_ instance: SagaInstance, events: [SagaEvent], owner: String, leaseUntil: Date) async throws {
        precondition(instance.version == 1, "a new saga instance has version 1")
        try await self.writer.submit(.create(instance, events, owner: owner, leaseUntil: leaseUntil))
    }

    public func renewLeases(_ ids: [String], owner: String, leaseUntil: Date) async throws {
        guard !ids.isEmpty else { return }
        let until = leaseUntil.timeIntervalSince1970
        _ = try await self.rows(
            "UPDATE aviary_sagas SET lease_until = \(until) WHERE id = ANY(\(ids)) AND lease_owner = \(owner)")
    }

    public func releaseLeases(_ ids: [String], owner: String) async throws {
        guard !ids.isEmpty else { return }
        _ = try await self.rows(
            """
            UPDATE aviary_sagas SET lease_owner = NULL, lease_until = NULL
            WHERE id = ANY(\(ids)) AND lease_owner = \(owner)
            """)
    }

    public func nextClaimable() async throws -> Date? {
        try await self.rows(
            """
            SELECT MIN(CASE WHEN lease_owner IS NULL THEN COALESCE(wake_at, 0)
                ELSE GREATEST(lease_until, COALESCE(wake_at, 0)) END) AS next
            FROM aviary_sagas WHERE status IN ('running', 'compensating')
            """
        ).first.flatMap { try $0["next"].decode(Double?.self) }.map { Date(timeIntervalSince1970: $0) }
    }

    /// The lease of an instance (owner and expiry), for operators and tests.
    ///
    /// ```swift
    /// if let lease = try await sagas.lease(of: "order-17") { print(lease.owner, lease.until) }
    /// ```
    public func lease(of id: String) async throws -> (owner: String, until: Date)? {
        guard
            let row = try await self.rows(
                "SELECT lease_owner, lease_until FROM aviary_sagas WHERE id = \(id) AND lease_owner IS NOT NULL"
            ).first
        else { return nil }
        return (
            try row["lease_owner"].decode(String.self),
            Date(timeIntervalSince1970: try row["lease_until"].decode(Double?.self) ?? 0)
        )
    }

    // MARK: Rows

    private func rows(_ query: PostgresQuery) async throws -> [PostgresRandomAccessRow] {
        let logger = self.store.logger
        do {
            return try await self.store.withConnection { connection in
                try await PostgresSagaWriter.rows(connection, query, logger)
            }
        } catch let error as AviaryError {
            throw error
        } catch {
            throw AviaryError(
                .unavailable, "saga store \(self.store.address): \(PostgresStore.describe(error))", cause: error)
        }
    }

    static func decodeInstance(_ row: PostgresRandomAccessRow) throws -> SagaInstance {
        SagaInstance(
            id: try row["id"].decode(String.self), name: try row["name"].decode(String.self),
            status: SagaStatus(rawValue: try row["status"].decode(String.self)) ?? .needsAttention,
            step: try row["step"].decode(Int.self), attempt: try row["attempt"].decode(Int.self),
            state: try row["state"].decode(Data.self),
            wakeAt: try row["wake_at"].decode(Double?.self).map { Date(timeIntervalSince1970: $0) },
            awaitingReply: try row["awaiting_reply"].decode(Bool.self),
            lastError: try row["last_error"].decode(String?.self), version: try row["version"].decode(Int.self),
            createdAt: Date(timeIntervalSince1970: try row["created_at"].decode(Double.self)),
            updatedAt: Date(timeIntervalSince1970: try row["updated_at"].decode(Double.self)))
    }
}
