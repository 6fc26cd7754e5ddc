//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryStorage
public import Foundation
public import GRDB

/// A participant's side of TCC, in its own database: reservations with an expiry, written in
/// the same transaction as the participant's own data (take the stock when reserving, give it
/// back when a reservation is cancelled or expires).
///
/// The rules: a reservation is made once per transaction id (a repeated try is a no-op); confirm
/// works only on a live reservation; cancel releases it, and a cancel that comes first leaves a
/// tombstone that refuses a late try; a reservation never confirmed by its expiry is released by
/// ``expire(now:in:)``.
///
/// ```swift
/// try await store.write { db in
///     if try TCCReservations.reserve(request, resource: "sku-1", amount: 2, now: clock.now, in: db) {
///         try db.execute(sql: "UPDATE stock SET available = available - 2 WHERE sku = 'sku-1'")
///     }
/// }
/// // A sweeper: release what lapsed.
/// try await store.write { db in
///     for lapsed in try TCCReservations.expire(now: clock.now, in: db) { try giveBack(lapsed, db) }
/// }
/// ```
public enum TCCReservations {
    /// A reservation.
    public struct Reservation: Sendable, Hashable {
        /// The TCC transaction.
        public var transactionID: String
        /// What is reserved (a SKU, an account).
        public var resource: String
        /// How much.
        public var amount: Int
        /// When it lapses.
        public var expiresAt: Date
    }

    /// Why a reservation call was refused.
    public struct Refused: Error, Sendable, Hashable, CustomStringConvertible {
        /// The reservation's state: `cancelled`, `expired`, `missing`.
        public var state: String
        /// The transaction.
        public var transactionID: String
        public var description: String { "the reservation of \(self.transactionID) is \(self.state)" }
    }

    /// Adds the `aviary_tcc_reservations` table to the participant's migrations.
    public static func addMigrations(to migrations: inout Migrations) {
        migrations.add("aviary-workflows v1: tcc reservations") { db in
            try db.execute(
                sql: """
                    CREATE TABLE aviary_tcc_reservations (
                        transaction_id TEXT PRIMARY KEY,
                        resource TEXT NOT NULL,
                        amount INTEGER NOT NULL,
                        state TEXT NOT NULL,
                        expires_at DOUBLE NOT NULL
                    )
                    """)
            try db.execute(
                sql:
                    "CREATE INDEX aviary_tcc_reservations_live ON aviary_tcc_reservations (expires_at) WHERE state = 'reserved'"
            )
        }
    }

    /// Reserves; returns true when this call made the reservation (take the resource then, in
    /// the same transaction), false when it existed already.
    ///
    /// - Throws: ``Refused`` when the transaction was cancelled (or expired) before, or
    ///   `request.expiresAt` has passed.
    @discardableResult
    public static func reserve(
        _ request: TCCRequest, resource: String, amount: Int, now: Date, in db: Database
    ) throws -> Bool {
        if let state = try String.fetchOne(
            db, sql: "SELECT state FROM aviary_tcc_reservations WHERE transaction_id = ?",
            arguments: [request.transactionID])
        {
            guard state == "reserved" || state == "confirmed" else {
                throw Refused(state: state, transactionID: request.transactionID)
            }
            return false
        }
        guard request.expiresAt > now else { throw Refused(state: "expired", transactionID: request.transactionID) }
        try db.execute(
            sql: "INSERT INTO aviary_tcc_reservations VALUES (?, ?, ?, 'reserved', ?)",
            arguments: [request.transactionID, resource, amount, request.expiresAt.timeIntervalSince1970])
        return true
    }

    /// Confirms a live reservation (idempotent).
    ///
    /// - Throws: ``Refused`` when it is missing, cancelled or expired (also when its expiry passed
    ///   and the sweeper did not run yet).
    public static func confirm(_ transactionID: String, now: Date, in db: Database) throws {
        guard
            let row = try Row.fetchOne(
                db, sql: "SELECT state, expires_at FROM aviary_tcc_reservations WHERE transaction_id = ?",
                arguments: [transactionID])
        else { throw Refused(state: "missing", transactionID: transactionID) }
        let state: String = row["state"]
        if state == "confirmed" { return }
        guard state == "reserved", (row["expires_at"] as Double) > now.timeIntervalSince1970 else {
            throw Refused(state: state == "reserved" ? "expired" : state, transactionID: transactionID)
        }
        try db.execute(
            sql: "UPDATE aviary_tcc_reservations SET state = 'confirmed' WHERE transaction_id = ?",
            arguments: [transactionID])
    }

    /// Cancels: returns the reservation to give back (nil when there was none live). An unknown
    /// transaction gets a tombstone, so that a late try is refused.
    ///
    /// - Throws: ``Refused`` when it was confirmed already.
    public static func cancel(_ transactionID: String, in db: Database) throws -> Reservation? {
        guard
            let row = try Row.fetchOne(
                db, sql: "SELECT * FROM aviary_tcc_reservations WHERE transaction_id = ?", arguments: [transactionID])
        else {
            try db.execute(
                sql: "INSERT INTO aviary_tcc_reservations VALUES (?, '', 0, 'cancelled', 0)", arguments: [transactionID]
            )
            return nil
        }
        let state: String = row["state"]
        if state == "confirmed" { throw Refused(state: state, transactionID: transactionID) }
        guard state == "reserved" else { return nil }
        try db.execute(
            sql: "UPDATE aviary_tcc_reservations SET state = 'cancelled' WHERE transaction_id = ?",
            arguments: [transactionID])
        return Self.reservation(row)
    }

    /// Marks every live reservation whose expiry passed as expired and returns them (give them
    /// back in the same transaction).
    public static func expire(now: Date, in db: Database) throws -> [Reservation] {
        let lapsed = try Row.fetchAll(
            db, sql: "SELECT * FROM aviary_tcc_reservations WHERE state = 'reserved' AND expires_at <= ?",
            arguments: [now.timeIntervalSince1970]
        ).map(Self.reservation)
        try db.execute(
            sql: "UPDATE aviary_tcc_reservations SET state = 'expired' WHERE state = 'reserved' AND expires_at <= ?",
            arguments: [now.timeIntervalSince1970])
        return lapsed
    }

    private static func reservation(_ row: Row) -> Reservation {
        Reservation(
            transactionID: row["transaction_id"], resource: row["resource"], amount: row["amount"],
            expiresAt: Date(timeIntervalSince1970: row["expires_at"]))
    }
}
