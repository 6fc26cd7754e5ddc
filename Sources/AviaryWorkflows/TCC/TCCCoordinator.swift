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
        let now = self.wallClock.now
        let expiresAt = now.addingTimeInterval(reservationTTL.aviaryTimeInterval)
        let names = participants.map(\.name).joined(separator: ",")
        try await self.store.write { db in
            try db.execute(
                sql: "INSERT INTO aviary_tcc VALUES (?, 'trying', ?, ?, NULL, ?)",
                arguments: [id, names, expiresAt.timeIntervalSince1970, now.timeIntervalSince1970])
        }
        var failure: String?
        for participant in participants {
            do {
                try await participant.tryReserve(TCCRequest(transactionID: id, expiresAt: expiresAt))
            } catch {
                failure = "\(participant.name): \(error)"
                break
            }
        }
        if failure == nil && self.wallClock.now >= expiresAt {
            failure = "the reservations expired before every participant had reserved"
        }
        let next: TCCStatus = failure == nil ? .confirming : .cancelling
        try await self.set(id, next, error: failure)
        return try await self.finish(id, next, participants)
    }

    /// Finishes every unfinished transaction (after a restart): `trying` and `cancelling` are
    /// cancelled with every participant, `confirming` is confirmed. Returns how many finished.
    ///
    /// ```swift
    /// try await coordinator.recover(["inventory": inventory, "payments": payments])
    /// ```
    @discardableResult
    public func recover(_ participants: [String: any TCCParticipant]) async throws -> Int {
        let rows = try await self.store.read { db in
            try Row.fetchAll(
                db,
                sql:
                    "SELECT id, status, participants FROM aviary_tcc WHERE status IN ('trying', 'confirming', 'cancelling')"
            )
            .map { ($0["id"] as String, $0["status"] as String, $0["participants"] as String) }
        }
        var finished = 0
        for (id, status, names) in rows {
            let members = try names.split(separator: ",").map { name in
                guard let participant = participants[String(name)] else {
                    throw SagaError(.unknownSaga, "TCC transaction \(id) names an unknown participant \(name)")
                }
                return participant
            }
            var phase = TCCStatus(rawValue: status) ?? .cancelling
            if phase == .trying {
                phase = .cancelling
                try await self.set(id, .cancelling, error: "interrupted while trying")
            }
            if try await self.finish(id, phase, members) != phase { finished += 1 }
        }
        return finished
    }

    /// The status of a transaction, or nil.
    public func status(_ id: String) async throws -> TCCStatus? {
        try await self.store.read { db in
            try String.fetchOne(db, sql: "SELECT status FROM aviary_tcc WHERE id = ?", arguments: [id])
                .flatMap(TCCStatus.init(rawValue:))
        }
    }

    private func finish(
        _ id: String, _ phase: TCCStatus, _ participants: [any TCCParticipant]
    ) async throws -> TCCStatus {
        var errors: [String] = []
        for participant in participants {
            do {
                if phase == .confirming {
                    try await participant.confirm(id)
                } else {
                    try await participant.cancel(id)
                }
            } catch {
                errors.append("\(participant.name): \(error)")
            }
        }
        guard errors.isEmpty else {
            self.logger.warning(
                "TCC phase incomplete; recover() retries it",
                metadata: ["transaction": "\(id)", "phase": "\(phase.rawValue)", "errors": "\(errors)"])
            try await self.set(id, phase, error: errors.joined(separator: "; "))
            return phase
        }
        let final: TCCStatus = phase == .confirming ? .confirmed : .cancelled
        try await self.set(id, final, error: nil)
        return final
    }

    private func set(_ id: String, _ status: TCCStatus, error: String?) async throws {
        let now = self.wallClock.now.timeIntervalSince1970
        try await self.store.write { db in
            try db.execute(
                sql:
                    "UPDATE aviary_tcc SET status = ?, last_error = COALESCE(?, last_error), updated_at = ? WHERE id = ?",
                arguments: [status.rawValue, error, now, id])
        }
    }
}
