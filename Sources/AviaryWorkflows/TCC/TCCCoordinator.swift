//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryMessaging
public import AviaryStorage
public import Foundation
import GRDB
public import Logging

/// One party of a TCC (try / confirm / cancel) transaction.
///
/// `tryReserve` holds the resource (stock, credit) until `expiresAt` without using it; `confirm`
/// uses what was reserved; `cancel` releases it. All three are idempotent per transaction id, and
/// a `cancel` that arrives before its `tryReserve` must make that `tryReserve` fail (see
/// ``TCCReservations``, which does all of this in the participant's own database).
///
/// ```swift
/// struct Inventory: TCCParticipant {
///     let name = "inventory"
///     func tryReserve(_ request: TCCRequest) async throws { try await client.reserve(request) }
///     func confirm(_ transactionID: String) async throws { try await client.confirm(transactionID) }
///     func cancel(_ transactionID: String) async throws { try await client.cancel(transactionID) }
/// }
/// ```
public protocol TCCParticipant: Sendable {
    /// A stable name, stored with the transaction (recovery finds the participant by it).
    var name: String { get }
    /// Reserves, until `request.expiresAt`.
    func tryReserve(_ request: TCCRequest) async throws
    /// Uses the reservation. Throws when it expired or was cancelled.
    func confirm(_ transactionID: String) async throws
    /// Releases the reservation (or refuses a later `tryReserve`).
    func cancel(_ transactionID: String) async throws
}

/// What a participant gets in `tryReserve`.
public struct TCCRequest: Sendable, Hashable {
    /// The transaction's id; also the idempotency key of the three calls.
    public var transactionID: String
    /// When the reservation lapses if not confirmed.
    public var expiresAt: Date

    /// Creates a request.
    public init(transactionID: String, expiresAt: Date) {
        self.transactionID = transactionID
        self.expiresAt = expiresAt
    }
}

/// Where a TCC transaction is.
public enum TCCStatus: String, Sendable, Hashable, Codable {
    /// Reserving with every participant.
    case trying
    /// Every reservation held; confirming them all.
    case confirming
    /// A reservation failed (or time ran out); cancelling them all.
    case cancelling
    /// Final: every participant confirmed.
    case confirmed
    /// Final: every participant cancelled.
    case cancelled
}

/// The second coordinator: TCC. It reserves with every participant, then confirms all or cancels
/// all, recording each phase in the service's database so that ``recover(_:)`` finishes what a
/// crash interrupted (`trying` and `cancelling` are cancelled, `confirming` is confirmed).
///
/// ```swift
/// var migrations = Migrations()
/// TCCCoordinator.addMigrations(to: &migrations)
/// let coordinator = TCCCoordinator(store: try SQLiteStore(url: url, migrations: migrations))
/// let outcome = try await coordinator.execute("order-17", participants: [inventory, payments],
///                                             reservationTTL: .seconds(30))
/// ```
public struct TCCCoordinator: Sendable {
    /// The coordinator's database.
    public let store: SQLiteStore
    private let wallClock: any WallClock
    private let logger: Logger

    /// Adds the `aviary_tcc` table to a service's migrations.
    public static func addMigrations(to migrations: inout Migrations) {
        migrations.add("aviary-workflows v1: tcc") { db in
            try db.execute(
                sql: """
                    CREATE TABLE aviary_tcc (
                        id TEXT PRIMARY KEY,
                        status TEXT NOT NULL,
                        participants TEXT NOT NULL,
                        expires_at DOUBLE NOT NULL,
                        last_error TEXT,
                        updated_at DOUBLE NOT NULL
                    )
                    """)
        }
    }

    /// Creates a coordinator over `store` (whose migrations include ``addMigrations(to:)``).
    public init(
        store: SQLiteStore, wallClock: any WallClock = SystemWallClock(), logger: Logger = Logger(label: "aviary.tcc")
    ) {
        self.store = store
        self.wallClock = wallClock
        self.logger = logger
    }

    /// Runs one transaction: try every participant in order; if all reservations hold (before
    /// they expire), confirm all, else cancel all.
    ///
    /// - Returns: `.confirmed` or `.cancelled`; a phase a participant did not finish leaves the
    ///   transaction `confirming` or `cancelling` for ``recover(_:)``, and that status is returned.
    /// - Throws: the store's errors; a duplicate id.
    public func execute(
        _ id: String, participants: [any TCCParticipant], reservationTTL: Duration
    ) async throws -> TCCStatus {
        try await self.engine.execute(id, participants: participants, reservationTTL: reservationTTL)
    }

    /// Finishes every unfinished transaction (after a restart): `trying` and `cancelling` are
    /// cancelled with every participant, `confirming` is confirmed. Returns how many finished.
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
        TCCEngine(log: SQLiteTCCLog(store: self.store), wallClock: self.wallClock, logger: self.logger)
    }
}

/// The coordinator's table in SQLite.
struct SQLiteTCCLog: TCCLog {
    let store: SQLiteStore

    func insert(_ id: String, participants: String, expiresAt: Date, now: Date) async throws {
        try await self.store.write { db in
            try db.execute(
                sql: "INSERT INTO aviary_tcc VALUES (?, 'trying', ?, ?, NULL, ?)",
                arguments: [id, participants, expiresAt.timeIntervalSince1970, now.timeIntervalSince1970])
        }
    }

    func set(_ id: String, _ status: TCCStatus, error: String?, now: Date) async throws {
        try await self.store.write { db in
            try db.execute(
                sql:
                    "UPDATE aviary_tcc SET status = ?, last_error = COALESCE(?, last_error), updated_at = ? WHERE id = ?",
                arguments: [status.rawValue, error, now.timeIntervalSince1970, id])
        }
    }

    func unfinished() async throws -> [TCCLogEntry] {
        try await self.store.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT id, status, participants FROM aviary_tcc WHERE status IN ('trying', 'confirming', 'cancelling')"
            )
            .map { TCCLogEntry(id: $0["id"], status: $0["status"], participants: $0["participants"]) }
        }
    }

    func status(_ id: String) async throws -> TCCStatus? {
        try await self.store.read { db in
            try String.fetchOne(db, sql: "SELECT status FROM aviary_tcc WHERE id = ?", arguments: [id])
                .flatMap(TCCStatus.init(rawValue:))
        }
    }
}
