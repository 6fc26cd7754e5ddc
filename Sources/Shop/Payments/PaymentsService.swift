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

/// A charge request.
struct ChargeRequest: Codable, Sendable, Equatable {
    var orderId: String
    var userId: String
    var amountCents: Int
}

/// A captured payment.
public struct Payment: Codable, Sendable, Equatable {
    public var id: String
    public var orderId: String
    public var userId: String
    public var amountCents: Int
    public var status: String
}

/// The `payments` service: charges for orders.
///
/// `POST /payments` requires an `Idempotency-Key` header: a repeat with the same key and body
/// returns the original payment (with `Idempotent-Replayed: true`) instead of charging twice; the
/// same key with a different body is a 422 problem. That makes the charge safe to retry.
struct PaymentsService: Sendable {
    let store: SQLiteStore
    let logger: Logger

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1: payments") { db in
            try db.execute(
                sql: """
                    CREATE TABLE payments (
                        id TEXT PRIMARY KEY NOT NULL,
                        idempotency_key TEXT NOT NULL UNIQUE,
                        order_id TEXT NOT NULL,
                        user_id TEXT NOT NULL,
                        amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
                        status TEXT NOT NULL,
                        created_at TEXT NOT NULL
                    )
                    """)
        }
        return migrations
    }

    init(url: StoreURL, logger: Logger, tracer: (any Tracer)? = nil) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
    }

    private static func payment(from row: Row) -> Payment {
        Payment(
            id: row["id"], orderId: row["order_id"], userId: row["user_id"], amountCents: row["amount_cents"],
            status: row["status"])
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    /// Adds the service's routes to `router`: a group that requires a token with the `payments`
    /// scope (see ``ShopSystem``).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>) {
        let store = self.store
        router.post("/payments") { request, context -> JSONResponse<Payment> in
            let principal = try context.requirePrincipal()
            guard let key = request.headers[HTTPField.Name("Idempotency-Key")!], !key.isEmpty, key.count <= 255 else {
                throw HTTPProblem(
                    status: 400, slug: "idempotency-key-required",
                    detail: "POST /payments requires an Idempotency-Key header of 1 to 255 characters")
            }
            let charge = try await request.decodeJSON(as: ChargeRequest.self)
            if charge.amountCents <= 0 {
                throw HTTPProblem(
                    status: 400, slug: "invalid-amount",
                    detail: "amountCents: expected a positive integer, got \(charge.amountCents)")
            }
            // A customer's token pays for that customer only (orders relays the caller's token).
            guard charge.userId == principal.subject else {
                throw HTTPProblem(
                    status: 403, slug: "not-your-account",
                    detail: "the token of \"\(principal.subject)\" cannot charge user \"\(charge.userId)\"")
            }
            let outcome = try await store.write { db -> (Payment, replayed: Bool) in
                if let row = try Row.fetchOne(
                    db, sql: "SELECT * FROM payments WHERE idempotency_key = ?", arguments: [key])
                {
                    return (Self.payment(from: row), true)
                }
                let payment = Payment(
                    id: "pay-" + UUID().uuidString.lowercased().prefix(12), orderId: charge.orderId,
                    userId: charge.userId, amountCents: charge.amountCents, status: "captured")
                try db.execute(
                    sql: """
                        INSERT INTO payments (id, idempotency_key, order_id, user_id, amount_cents, status, created_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        payment.id, key, payment.orderId, payment.userId, payment.amountCents, payment.status,
                        Date().formatted(.iso8601),
                    ])
                return (payment, false)
            }
            if outcome.replayed {
                let original = outcome.0
                guard original.orderId == charge.orderId, original.userId == charge.userId,
                    original.amountCents == charge.amountCents
                else {
                    throw HTTPProblem(
                        status: 422, slug: "idempotency-key-reused",
                        detail: "Idempotency-Key \"\(key)\" was used for a different request")
                }
                return JSONResponse(
                    status: .ok, value: original, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
            }
            return JSONResponse(status: .created, value: outcome.0)
        }
        router.get("/payments/:id") { _, context -> JSONResponse<Payment> in
            let principal = try context.requirePrincipal()
            let id = try context.parameters.require("id")
            let payment = try await store.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM payments WHERE id = ?", arguments: [id]).map(
                    Self.payment(from:))
            }
            // Another customer's payment is as good as absent: its existence is not disclosed.
            guard let payment, payment.userId == principal.subject else {
                throw HTTPProblem(status: 404, slug: "payment-not-found", detail: "no payment \"\(id)\"")
            }
            return JSONResponse(status: .ok, value: payment)
        }
    }
}
