//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryMessaging
public import AviaryStorage
public import Foundation
public import Logging
public import PostgresNIO

/// ``TCCCoordinator`` on PostgreSQL: the same protocol, with its `aviary_tcc` table in the
/// coordinating service's PostgreSQL database.
///
/// ```swift
/// var migrations = PostgresMigrations()
/// PostgresTCCCoordinator.addMigrations(to: &migrations)
/// let store = try PostgresStore(url: url, migrations: migrations)   // run in the service group
/// let coordinator = PostgresTCCCoordinator(store: store)
/// let outcome = try await coordinator.execute("order-17", participants: [inventory, payments],
///                                             reservationTTL: .seconds(30))
/// ```
public struct PostgresTCCCoordinator: Sendable {
    /// The coordinator's database.
    public let store: PostgresStore
    private let wallClock: any WallClock
    private let logger: Logger

    /// Adds the `aviary_tcc` table to a service's PostgreSQL migrations.
    ///
    /// ```swift
    /// PostgresTCCCoordinator.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary-workflows v1: tcc") { connection, logger in
            try await connection.query(
                """
                CREATE TABLE aviary_tcc (
                    id TEXT PRIMARY KEY,
                    status TEXT NOT NULL,
                    participants TEXT NOT NULL,
                    expires_at DOUBLE PRECISION NOT NULL,
                    last_error TEXT,
                    updated_at DOUBLE PRECISION NOT NULL
                )
                """, logger: logger)
        }
    }

    /// Creates a coordinator over `store` (whose migrations include ``addMigrations(to:)``).
    public init(
        store: PostgresStore, wallClock: any WallClock = SystemWallClock(),
        logger: Logger = Logger(label: "aviary.tcc")
    ) {
        self.store = store
        self.wallClock = wallClock
        self.logger = logger
    }

    /// Runs one transaction; see ``TCCCoordinator/execute(_:participants:reservationTTL:)``.
    ///
    /// ```swift
    /// let outcome = try await coordinator.execute("order-17", participants: [inventory, payments],
    ///                                             reservationTTL: .seconds(30))
    /// ```
    public func execute(
        _ id: String, participants: [any TCCParticipant], reservationTTL: Duration
    ) async throws -> TCCStatus {
        try await self.engine.execute(id, participants: participants, reservationTTL: reservationTTL)
    }

    /// Finishes every unfinished transaction; see ``TCCCoordinator/recover(_:)``.
    ///
    /// ```swift
    /// try await coordinator.recover(["inventory": inventory, "payments": payments])
    /// ```
    @discardableResult
    public func recover(_ participants: [String: any TCCParticipant]) async throws -> Int {
        try await self.engine.recover(participants)
    }

    /// The status of a transaction, or nil.
    public func status(_ id: String) async throws -> TCCStatus? {
        try await self.engine.log.status(id)
    }

    private var engine: TCCEngine {
        TCCEngine(log: PostgresTCCLog(store: self.store), wallClock: self.wallClock, logger: self.logger)
    }
}

/// The coordinator's table in PostgreSQL.
struct PostgresTCCLog: TCCLog {
    let store: PostgresStore

    func insert(_ id: String, participants: String, expiresAt: Date, now: Date) async throws {
        let (expires, at) = (expiresAt.timeIntervalSince1970, now.timeIntervalSince1970)
        try await self.run(
            "INSERT INTO aviary_tcc VALUES (\(id), 'trying', \(participants), \(expires), NULL, \(at))")
    }

    func set(_ id: String, _ status: TCCStatus, error: String?, now: Date) async throws {
        let at = now.timeIntervalSince1970
        try await self.run(
            """
            UPDATE aviary_tcc SET status = \(status.rawValue), last_error = COALESCE(\(error), last_error),
                updated_at = \(at)
            WHERE id = \(id)
            """)
    }

    func unfinished() async throws -> [TCCLogEntry] {
        try await self.run(
            "SELECT id, status, participants FROM aviary_tcc WHERE status IN ('trying', 'confirming', 'cancelling')"
        ).map { row in
            TCCLogEntry(
                id: try row["id"].decode(String.self), status: try row["status"].decode(String.self),
                participants: try row["participants"].decode(String.self))
        }
    }

    func status(_ id: String) async throws -> TCCStatus? {
        try await self.run("SELECT status FROM aviary_tcc WHERE id = \(id)").first.flatMap {
            TCCStatus(rawValue: try $0["status"].decode(String.self))
        }
    }

    @discardableResult
    private func run(_ query: PostgresQuery) async throws -> [PostgresRandomAccessRow] {
        let logger = self.store.logger
        return try await self.store.withConnection { connection in
            try await PostgresSagaWriter.rows(connection, query, logger)
        }
    }
}

/// ``TCCReservations`` on PostgreSQL: a participant's reservations with an expiry, written on
/// the connection of the participant's own transaction (take the stock when reserving, give it
/// back when a reservation is cancelled or expires), with the same rules. Rows are locked
/// (`FOR UPDATE`) while they are decided, so concurrent calls of one transaction take turns.
///
/// ```swift
/// try await store.withTransaction { connection in
///     if try await PostgresTCCReservations.reserve(request, resource: "sku-1", amount: 2, now: now, on: connection) {
///         try await connection.query("UPDATE stock SET available = available - 2 WHERE sku = 'sku-1'", logger: logger)
///     }
/// }
/// ```
public enum PostgresTCCReservations {
    /// Adds the `aviary_tcc_reservations` table to the participant's PostgreSQL migrations.
    ///
    /// ```swift
    /// PostgresTCCReservations.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary-workflows v1: tcc reservations") { connection, logger in
            try await connection.query(
                """
                CREATE TABLE aviary_tcc_reservations (
                    transaction_id TEXT PRIMARY KEY,
                    resource TEXT NOT NULL,
                    amount BIGINT NOT NULL,
                    state TEXT NOT NULL,
                    expires_at DOUBLE PRECISION NOT NULL
                )
                """, logger: logger)
            try await connection.query(
                """
                CREATE INDEX aviary_tcc_reservations_live ON aviary_tcc_reservations (expires_at)
                WHERE state = 'reserved'
                """, logger: logger)
        }
    }

    /// Reserves; returns true when this call made the reservation (take the resource then, in
    /// the same transaction), false when it existed already.
    ///
    /// - Throws: ``TCCReservations/Refused`` when the transaction was cancelled (or expired)
    ///   before, or `request.expiresAt` has passed.
    @discardableResult
    public static func reserve(
        _ request: TCCRequest, resource: String, amount: Int, now: Date, on connection: PostgresConnection,
        logger: Logger = Logger(label: "aviary.tcc")
    ) async throws -> Bool {
        let id = request.transactionID
        func existing() async throws -> Bool? {
            guard
                let row = try await PostgresSagaWriter.rows(
                    connection, "SELECT state FROM aviary_tcc_reservations WHERE transaction_id = \(id) FOR UPDATE",
                    logger
                ).first
            else { return nil }
            let state = try row["state"].decode(String.self)
            guard state == "reserved" || state == "confirmed" else {
                throw TCCReservations.Refused(state: state, transactionID: id)
            }
            return false
        }
        if let made = try await existing() { return made }
        guard request.expiresAt > now else { throw TCCReservations.Refused(state: "expired", transactionID: id) }
        let expires = request.expiresAt.timeIntervalSince1970
        let inserted =
            try await connection.complete(
                """
                INSERT INTO aviary_tcc_reservations VALUES (\(id), \(resource), \(amount), 'reserved', \(expires))
                ON CONFLICT (transaction_id) DO NOTHING
                """, logger: logger
            ).metadata.rows ?? 0
        if inserted == 1 { return true }
        // Made (or cancelled) concurrently by another call of the same transaction.
        return try await existing() ?? false
    }

    /// Confirms a live reservation (idempotent); returns true when this call confirmed it (use
    /// the resource then, in the same transaction).
    ///
    /// - Throws: ``TCCReservations/Refused`` when it is missing, cancelled or expired (also when
    ///   its expiry passed and the sweeper did not run yet).
    @discardableResult
    public static func confirm(
        _ transactionID: String, now: Date, on connection: PostgresConnection,
        logger: Logger = Logger(label: "aviary.tcc")
    ) async throws -> Bool {
        guard
            let row = try await PostgresSagaWriter.rows(
                connection,
                """
                SELECT state, expires_at FROM aviary_tcc_reservations WHERE transaction_id = \(transactionID)
                FOR UPDATE
                """, logger
            ).first
        else { throw TCCReservations.Refused(state: "missing", transactionID: transactionID) }
        let state = try row["state"].decode(String.self)
        if state == "confirmed" { return false }
        guard state == "reserved", try row["expires_at"].decode(Double.self) > now.timeIntervalSince1970 else {
            throw TCCReservations.Refused(state: state == "reserved" ? "expired" : state, transactionID: transactionID)
        }
        _ = try await connection.complete(
            "UPDATE aviary_tcc_reservations SET state = 'confirmed' WHERE transaction_id = \(transactionID)",
            logger: logger)
        return true
    }

    /// Cancels: returns the reservation to give back (nil when there was none live). An unknown
    /// transaction gets a tombstone, so that a late try is refused.
    ///
    /// - Throws: ``TCCReservations/Refused`` when it was confirmed already.
    public static func cancel(
        _ transactionID: String, on connection: PostgresConnection, logger: Logger = Logger(label: "aviary.tcc")
    ) async throws -> TCCReservations.Reservation? {
        let tombstone =
            try await connection.complete(
                """
                INSERT INTO aviary_tcc_reservations VALUES (\(transactionID), '', 0, 'cancelled', 0)
                ON CONFLICT (transaction_id) DO NOTHING
                """, logger: logger
            ).metadata.rows ?? 0
        if tombstone == 1 { return nil }
        guard
            let row = try await PostgresSagaWriter.rows(
                connection,
                "SELECT * FROM aviary_tcc_reservations WHERE transaction_id = \(transactionID) FOR UPDATE", logger
            ).first
        else { return nil }
        let state = try row["state"].decode(String.self)
        if state == "confirmed" { throw TCCReservations.Refused(state: state, transactionID: transactionID) }
        guard state == "reserved" else { return nil }
        _ = try await connection.complete(
            "UPDATE aviary_tcc_reservations SET state = 'cancelled' WHERE transaction_id = \(transactionID)",
            logger: logger)
        return try Self.reservation(row)
    }

    /// Marks every live reservation whose expiry passed as expired and returns them (give them
    /// back in the same transaction).
    public static func expire(
        now: Date, on connection: PostgresConnection, logger: Logger = Logger(label: "aviary.tcc")
    ) async throws -> [TCCReservations.Reservation] {
        let at = now.timeIntervalSince1970
        return try await PostgresSagaWriter.rows(
            connection,
            """
            UPDATE aviary_tcc_reservations SET state = 'expired'
            WHERE state = 'reserved' AND expires_at <= \(at)
            RETURNING *
            """, logger
        ).map(Self.reservation)
    }

    private static func reservation(_ row: PostgresRandomAccessRow) throws -> TCCReservations.Reservation {
        TCCReservations.Reservation(
            transactionID: try row["transaction_id"].decode(String.self),
            resource: try row["resource"].decode(String.self), amount: try row["amount"].decode(Int.self),
            expiresAt: Date(timeIntervalSince1970: try row["expires_at"].decode(Double.self)))
    }
}

extension Choreography {
    /// ``react(to:inbox:_:)`` on PostgreSQL: applies `reaction` to `message` once (through
    /// `inbox`) and enqueues the messages it returns in the PostgreSQL outbox, in the same
    /// transaction. The reaction may run again when the store retries a serialization failure,
    /// so it must only write to the database.
    ///
    /// ```swift
    /// try await Choreography.react(to: delivery.message, inbox: inbox) { connection, message in
    ///     try await connection.query("INSERT INTO charges VALUES (\(message.key))", logger: logger)
    ///     return [OutgoingMessage(topic: "payments", event: charged)]
    /// }
    /// ```
    ///
    /// - Returns: ``InboxOutcome/duplicate`` when the event had been handled (nothing ran).
    /// - Throws: what `reaction` or the outbox throws; then nothing was recorded.
    @discardableResult
    public static func react(
        to message: Message, inbox: PostgresInbox,
        _ reaction: @escaping @Sendable (PostgresConnection, Message) async throws -> [OutgoingMessage]
    ) async throws -> InboxOutcome {
        try await inbox.process(message) { connection in
            let next = try await reaction(connection, message)
            if !next.isEmpty { try await Outbox.enqueue(next, in: connection) }
        }
    }
}
