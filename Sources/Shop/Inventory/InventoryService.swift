//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryService
import AviaryStorage
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import Logging
import Tracing

/// The stock of one SKU.
public struct StockLevel: Codable, Sendable, Equatable {
    public var sku: String
    /// Units in the warehouse, reserved ones included.
    public var onHand: Int
    /// Units held for orders that are not confirmed yet.
    public var reserved: Int
    /// Units that can still be reserved: `onHand - reserved`.
    public var available: Int
}

/// One line of a reservation.
public struct ReservedItem: Codable, Sendable, Equatable {
    public var sku: String
    public var quantity: Int
}

/// The stock held for one order.
public struct Reservation: Codable, Sendable, Equatable {
    /// The order it is for (one reservation per order).
    public var orderId: String
    public var items: [ReservedItem]
    /// `reserved`, `committed` (the stock left the warehouse) or `released` (given back; a release
    /// that came before any reservation leaves a `released` reservation without items, so that a
    /// late reserve for that order is refused).
    public var status: String
}

/// What `POST /reservations` expects.
struct ReserveRequest: Codable, Sendable {
    var orderId: String
    var items: [ReservedItem]
}

/// The `inventory` service: stock per SKU, and reservations of it for orders.
///
/// - `GET /inventory/{sku}`: the SKU's ``StockLevel`` (open, no token needed).
/// - `POST /reservations` `{"orderId","items":[{"sku","quantity"}]}` with an `Idempotency-Key`:
///   holds the stock for the order, all items or none (`409` `out-of-stock` naming the SKU,
///   `422` `unknown-sku`). A repeat for the same order and items returns the same reservation
///   (`Idempotent-Replayed: true`); other items for the same order, or the key of another order's
///   reservation, are `422` `idempotency-key-reused`; an order whose reservation was released is `409`
///   `reservation-released`.
/// - `POST /reservations/{orderId}/release`: gives the stock back (a committed reservation's stock
///   returns to the shelf). Idempotent; a release of an order never reserved records the release,
///   so a reserve that arrives later (a request the saga gave up on) is refused.
/// - `POST /reservations/{orderId}/commit`: the stock leaves the warehouse (`onHand` and
///   `reserved` go down). Idempotent; a released reservation is `409` `reservation-released`.
///
/// Each change is one transaction of `inventory.db`, so stock and reservations always agree:
/// `reserved` of a SKU is the sum of its `reserved` reservations.
struct InventoryService: Sendable {
    let store: SQLiteStore
    let logger: Logger
    let failpoint: @Sendable (String) -> Void

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1: inventory") { db in
            try db.execute(
                sql: """
                    CREATE TABLE stock (
                        sku TEXT PRIMARY KEY NOT NULL,
                        on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
                        reserved INTEGER NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand)
                    );
                    CREATE TABLE reservations (
                        order_id TEXT PRIMARY KEY NOT NULL,
                        idempotency_key TEXT UNIQUE,
                        items TEXT NOT NULL,
                        status TEXT NOT NULL,
                        updated_at TEXT NOT NULL
                    );
                    """)
        }
        return migrations
    }

    /// Opens the database and adds the SKUs of `seed` that it does not have yet (a restart keeps
    /// the stock as it is).
    init(
        url: StoreURL, seed: [String: Int], logger: Logger, tracer: (any Tracer)? = nil,
        failpoint: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
        self.failpoint = failpoint
        try self.store.database.write { db in
            for (sku, quantity) in seed {
                try db.execute(
                    sql: "INSERT INTO stock (sku, on_hand, reserved) VALUES (?, ?, 0) ON CONFLICT (sku) DO NOTHING",
                    arguments: [sku, max(0, quantity)])
            }
        }
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    static func level(_ db: Database, _ sku: String) throws -> StockLevel? {
        try Row.fetchOne(db, sql: "SELECT sku, on_hand, reserved FROM stock WHERE sku = ?", arguments: [sku]).map {
            StockLevel(sku: $0[0], onHand: $0[1], reserved: $0[2], available: ($0[1] as Int) - ($0[2] as Int))
        }
    }

    static func reservation(_ db: Database, _ orderID: String) throws -> Reservation? {
        guard
            let row = try Row.fetchOne(
                db, sql: "SELECT items, status FROM reservations WHERE order_id = ?", arguments: [orderID])
        else { return nil }
        let items: String = row[0]
        return Reservation(
            orderId: orderID, items: try JSONDecoder().decode([ReservedItem].self, from: Data(items.utf8)),
            status: row[1])
    }

    /// Adds the open route (`GET /inventory/{sku}`) to `open` and the reservation routes to
    /// `secured`, a group that requires a token with the `inventory` scope (see ``ShopSystem``).
    func addRoutes(
        open: some RouterMethods<AviaryRequestContext>, secured: some RouterMethods<AviaryRequestContext>
    ) {
        let store = self.store
        open.get("/inventory/:sku") { _, context -> JSONResponse<StockLevel> in
            let sku = try context.parameters.require("sku")
            let level = try await store.read { db in try Self.level(db, sku) }
            guard let level else {
                throw HTTPProblem(status: 404, slug: "unknown-sku", detail: "no SKU \"\(sku)\"")
            }
            return JSONResponse(status: .ok, value: level)
        }
        secured.post("/reservations") { request, context in
            try Self.requireService(context)
            return try await self.reserve(request)
        }
        secured.post("/reservations/:order/release") { _, context -> JSONResponse<Reservation> in
            try Self.requireService(context)
            return try await self.release(try context.parameters.require("order"))
        }
        secured.post("/reservations/:order/commit") { _, context -> JSONResponse<Reservation> in
            try Self.requireService(context)
            return try await self.commit(try context.parameters.require("order"))
        }
    }

    /// Reservations are made by services (orders' saga), not by customers: a token with the
    /// `service` role, or no authentication at all (a system run without tokens).
    static func requireService(_ context: AviaryRequestContext) throws {
        if let principal = context.principal, !principal.hasRoles(["service"]) {
            throw HTTPProblem(
                status: 403, slug: "service-only",
                detail: "only Shop's services may change reservations, not \"\(principal.subject)\"")
        }
    }

    func reserve(_ request: Request) async throws -> JSONResponse<Reservation> {
        guard let key = request.headers[HTTPField.Name("Idempotency-Key")!], !key.isEmpty, key.count <= 255 else {
            throw HTTPProblem(
                status: 400, slug: "idempotency-key-required",
                detail: "POST /reservations requires an Idempotency-Key header of 1 to 255 characters")
        }
        let body = try await request.decodeJSON(as: ReserveRequest.self)
        var problems: [String] = []
        if body.orderId.isEmpty || body.orderId.count > 100 { problems.append("orderId: expected 1 to 100 characters") }
        if body.items.isEmpty { problems.append("items: expected at least one item") }
        for (index, item) in body.items.enumerated() where item.quantity < 1 || item.sku.isEmpty {
            problems.append("items[\(index)]: expected a SKU and a positive quantity")
        }
        if !problems.isEmpty {
            throw HTTPProblem(status: 400, slug: "invalid-reservation", detail: problems.joined(separator: "; "))
        }
        // One line per SKU, so that the stock check sees the whole quantity.
        var merged: [String: Int] = [:]
        for item in body.items { merged[item.sku, default: 0] += item.quantity }
        let items = merged.keys.sorted().map { ReservedItem(sku: $0, quantity: merged[$0]!) }
        let itemsJSON = String(decoding: try JSONEncoder().encode(items), as: UTF8.self)
        let outcome = try await self.store.write("inventory reserve") { db -> (Reservation, replayed: Bool) in
            if let other = try String.fetchOne(
                db, sql: "SELECT order_id FROM reservations WHERE idempotency_key = ?", arguments: [key]),
                other != body.orderId
            {
                throw HTTPProblem(
                    status: 422, slug: "idempotency-key-reused",
                    detail: "Idempotency-Key \"\(key)\" was used for the reservation of order \"\(other)\"")
            }
            if let existing = try Self.reservation(db, body.orderId) {
                guard existing.status != "released" else {
                    throw HTTPProblem(
                        status: 409, slug: "reservation-released",
                        detail: "the reservation of order \"\(body.orderId)\" was released",
                        extensions: ["order_id": body.orderId])
                }
                guard existing.items == items else {
                    throw HTTPProblem(
                        status: 422, slug: "idempotency-key-reused",
                        detail: "order \"\(body.orderId)\" already holds a reservation of other items")
                }
                return (existing, true)
            }
            for item in items {
                guard let level = try Self.level(db, item.sku) else {
                    throw HTTPProblem(
                        status: 422, slug: "unknown-sku", detail: "no SKU \"\(item.sku)\"",
                        extensions: ["sku": item.sku])
                }
                guard level.available >= item.quantity else {
                    throw HTTPProblem(
                        status: 409, slug: "out-of-stock",
                        detail: "\(item.sku): \(item.quantity) wanted, \(level.available) available",
                        extensions: ["sku": item.sku, "available": String(level.available)])
                }
                try db.execute(
                    sql: "UPDATE stock SET reserved = reserved + ? WHERE sku = ?", arguments: [item.quantity, item.sku])
            }
            try db.execute(
                sql: """
                    INSERT INTO reservations (order_id, idempotency_key, items, status, updated_at)
                    VALUES (?, ?, ?, 'reserved', ?)
                    """,
                arguments: [body.orderId, key, itemsJSON, Date().formatted(.iso8601)])
            return (Reservation(orderId: body.orderId, items: items, status: "reserved"), false)
        }
        // Crash tests kill the process here: the stock is held, the answer is lost.
        self.failpoint("inventory.reserve.committed")
        if outcome.replayed {
            return JSONResponse(
                status: .ok, value: outcome.0, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
        }
        return JSONResponse(status: .created, value: outcome.0)
    }

    func release(_ orderID: String) async throws -> JSONResponse<Reservation> {
        let released = try await self.store.write("inventory release") { db -> Reservation in
            guard let existing = try Self.reservation(db, orderID) else {
                // Released before it was made: remember, so that a late reserve is refused.
                try db.execute(
                    sql:
                        "INSERT INTO reservations (order_id, items, status, updated_at) VALUES (?, '[]', 'released', ?)",
                    arguments: [orderID, Date().formatted(.iso8601)])
                return Reservation(orderId: orderID, items: [], status: "released")
            }
            guard existing.status != "released" else { return existing }
            for item in existing.items {
                // A committed reservation's stock comes back to the shelf; a held one is let go.
                try db.execute(
                    sql: existing.status == "committed"
                        ? "UPDATE stock SET on_hand = on_hand + ? WHERE sku = ?"
                        : "UPDATE stock SET reserved = reserved - ? WHERE sku = ?",
                    arguments: [item.quantity, item.sku])
            }
            try db.execute(
                sql: "UPDATE reservations SET status = 'released', updated_at = ? WHERE order_id = ?",
                arguments: [Date().formatted(.iso8601), orderID])
            return Reservation(orderId: orderID, items: existing.items, status: "released")
        }
        self.failpoint("inventory.release.committed")
        return JSONResponse(status: .ok, value: released)
    }

    func commit(_ orderID: String) async throws -> JSONResponse<Reservation> {
        let committed = try await self.store.write("inventory commit") { db -> Reservation in
            guard let existing = try Self.reservation(db, orderID) else {
                throw HTTPProblem(
                    status: 404, slug: "reservation-not-found", detail: "order \"\(orderID)\" holds no reservation")
            }
            switch existing.status {
            case "committed":
                return existing
            case "released":
                throw HTTPProblem(
                    status: 409, slug: "reservation-released",
                    detail: "the reservation of order \"\(orderID)\" was released")
            default:
                for item in existing.items {
                    try db.execute(
                        sql: "UPDATE stock SET on_hand = on_hand - ?, reserved = reserved - ? WHERE sku = ?",
                        arguments: [item.quantity, item.quantity, item.sku])
                }
                try db.execute(
                    sql: "UPDATE reservations SET status = 'committed', updated_at = ? WHERE order_id = ?",
                    arguments: [Date().formatted(.iso8601), orderID])
                return Reservation(orderId: orderID, items: existing.items, status: "committed")
            }
        }
        self.failpoint("inventory.commit.committed")
        return JSONResponse(status: .ok, value: committed)
    }
}
