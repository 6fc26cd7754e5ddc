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

/// What `POST /payments/refunds` expects.
struct RefundRequest: Codable, Sendable, Equatable {
    var orderId: String
}

/// What a refund did: the payments of the order it refunded (none when there was nothing to refund).
public struct Refund: Codable, Sendable, Equatable {
    public var orderId: String
    public var refundedCents: Int
    public var paymentIds: [String]
}

/// The `payments` service: charges for orders, declines charges above a limit, refunds.
///
/// `POST /payments` requires an `Idempotency-Key` header: a repeat with the same key and body
/// returns the original payment (with `Idempotent-Replayed: true`) instead of charging twice; the
/// same key with a different body is a 422 problem. That makes the charge safe to retry. With a
/// decline limit (``ShopOptions/paymentsDeclineAbove``), a charge above it is recorded as
/// `declined` and answered `402` `payment-declined` (again for a repeat with the same key).
///
/// `POST /payments/refunds` `{"orderId"}` (with an `Idempotency-Key`; Shop's services only)
/// refunds every captured payment of the order and voids the order, in one transaction: a charge
/// for a voided order is `409` `order-voided`. So a compensating refund that overtakes a charge the
/// saga gave up on (a lost answer, a timeout) can never leave that charge standing.
///
/// A customer's token charges and reads that customer's payments only; a token with the
/// `service` role (orders' saga) charges for any customer.
struct PaymentsService: Sendable {
    let store: SQLiteStore
    let logger: Logger
    /// Charges above this many cents are declined; nil declines none.
    let declineAbove: Int?
    let failpoint: @Sendable (String) -> Void

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
        migrations.add("v2: refunds") { db in
            try db.execute(sql: "CREATE INDEX payments_order ON payments (order_id)")
            try db.execute(
                sql: """
                    CREATE TABLE voided_orders (
                        order_id TEXT PRIMARY KEY NOT NULL,
                        idempotency_key TEXT NOT NULL,
                        refunded_cents INTEGER NOT NULL,
                        payment_ids TEXT NOT NULL,
                        created_at TEXT NOT NULL
                    )
                    """)
        }
        return migrations
    }

    init(
        url: StoreURL, logger: Logger, declineAbove: Int? = nil, tracer: (any Tracer)? = nil,
        failpoint: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
        self.declineAbove = declineAbove
        self.failpoint = failpoint
    }

    private static func payment(from row: Row) -> Payment {
        Payment(
            id: row["id"], orderId: row["order_id"], userId: row["user_id"], amountCents: row["amount_cents"],
            status: row["status"])
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    static func declineProblem(_ payment: Payment, limit: Int?) -> HTTPProblem {
        let limitText = limit.map { ": it is above the limit of \(NotificationsService.amount($0))" } ?? ""
        return HTTPProblem(
            status: 402, slug: "payment-declined",
            detail: "the charge of \(NotificationsService.amount(payment.amountCents)) was declined\(limitText)",
            extensions: ["payment_id": payment.id, "order_id": payment.orderId])
    }

    /// Adds the service's routes to `router`: a group that requires a token with the `payments`
    /// scope (see ``ShopSystem``).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>) {
        let store = self.store
        let declineAbove = self.declineAbove
        let failpoint = self.failpoint
        router.post("/payments") { request, context -> JSONResponse<Payment> in
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
            // A customer's token pays for that customer only; Shop's services (orders' saga) pay
            // for the customer whose order it is.
            if let principal = context.principal, !principal.hasRoles(["service"]), charge.userId != principal.subject {
                throw HTTPProblem(
                    status: 403, slug: "not-your-account",
                    detail: "the token of \"\(principal.subject)\" cannot charge user \"\(charge.userId)\"")
            }
            let outcome = try await store.write("payments charge") { db -> (Payment, replayed: Bool) in
                if let row = try Row.fetchOne(
                    db, sql: "SELECT * FROM payments WHERE idempotency_key = ?", arguments: [key])
                {
                    return (Self.payment(from: row), true)
                }
                if try Bool.fetchOne(
                    db, sql: "SELECT 1 FROM voided_orders WHERE order_id = ?", arguments: [charge.orderId]) ?? false
                {
                    throw HTTPProblem(
                        status: 409, slug: "order-voided",
                        detail: "order \"\(charge.orderId)\" was refunded and voided; it takes no more charges",
                        extensions: ["order_id": charge.orderId])
                }
                let declined = declineAbove.map { charge.amountCents > $0 } ?? false
                let payment = Payment(
                    id: "pay-" + UUID().uuidString.lowercased().prefix(12), orderId: charge.orderId,
                    userId: charge.userId, amountCents: charge.amountCents, status: declined ? "declined" : "captured")
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
            // Crash tests kill the process here: the charge is recorded, the answer is lost.
            failpoint("payments.charge.committed")
            let payment = outcome.0
            if outcome.replayed {
                guard payment.orderId == charge.orderId, payment.userId == charge.userId,
                    payment.amountCents == charge.amountCents
                else {
                    throw HTTPProblem(
                        status: 422, slug: "idempotency-key-reused",
                        detail: "Idempotency-Key \"\(key)\" was used for a different request")
                }
            }
            if payment.status == "declined" {
                throw Self.declineProblem(payment, limit: declineAbove)
            }
            if outcome.replayed {
                return JSONResponse(
                    status: .ok, value: payment, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
            }
            return JSONResponse(status: .created, value: payment)
        }
        router.post("/payments/refunds") { request, context -> JSONResponse<Refund> in
            if let principal = context.principal, !principal.hasRoles(["service"]) {
                throw HTTPProblem(
                    status: 403, slug: "service-only",
                    detail: "only Shop's services may refund, not \"\(principal.subject)\"")
            }
            guard let key = request.headers[HTTPField.Name("Idempotency-Key")!], !key.isEmpty, key.count <= 255 else {
                throw HTTPProblem(
                    status: 400, slug: "idempotency-key-required",
                    detail: "POST /payments/refunds requires an Idempotency-Key header of 1 to 255 characters")
            }
            let refund = try await request.decodeJSON(as: RefundRequest.self)
            guard !refund.orderId.isEmpty else {
                throw HTTPProblem(status: 400, slug: "invalid-refund", detail: "orderId: expected a non-empty string")
            }
            let result = try await store.write("payments refund") { db -> Refund in
                // Voided already: the refund happened (whatever key it came with).
                if let row = try Row.fetchOne(
                    db, sql: "SELECT refunded_cents, payment_ids FROM voided_orders WHERE order_id = ?",
                    arguments: [refund.orderId])
                {
                    let ids: String = row[1]
                    return Refund(
                        orderId: refund.orderId, refundedCents: row[0],
                        paymentIds: ids.split(separator: ",").map(String.init))
                }
                let captured = try Row.fetchAll(
                    db, sql: "SELECT id, amount_cents FROM payments WHERE order_id = ? AND status = 'captured'",
                    arguments: [refund.orderId])
                let ids = captured.map { $0[0] as String }
                let cents = captured.reduce(0) { $0 + ($1[1] as Int) }
                try db.execute(
                    sql: "UPDATE payments SET status = 'refunded' WHERE order_id = ? AND status = 'captured'",
                    arguments: [refund.orderId])
                try db.execute(
                    sql: """
                        INSERT INTO voided_orders (order_id, idempotency_key, refunded_cents, payment_ids, created_at)
                        VALUES (?, ?, ?, ?, ?)
                        """,
                    arguments: [refund.orderId, key, cents, ids.joined(separator: ","), Date().formatted(.iso8601)])
                return Refund(orderId: refund.orderId, refundedCents: cents, paymentIds: ids)
            }
            failpoint("payments.refund.committed")
            return JSONResponse(status: .ok, value: result)
        }
        router.get("/payments/:id") { _, context -> JSONResponse<Payment> in
            let id = try context.parameters.require("id")
            let payment = try await store.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM payments WHERE id = ?", arguments: [id]).map(
                    Self.payment(from:))
            }
            // Another customer's payment is as good as absent: its existence is not disclosed.
            let principal = context.principal
            guard let payment,
                principal.map({ $0.hasRoles(["service"]) || payment.userId == $0.subject }) ?? true
            else {
                throw HTTPProblem(status: 404, slug: "payment-not-found", detail: "no payment \"\(id)\"")
            }
            return JSONResponse(status: .ok, value: payment)
        }
    }
}
