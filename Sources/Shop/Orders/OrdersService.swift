//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryAuth
import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryService
import AviaryStorage
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Tracing

/// One line of an order.
public struct OrderItem: Codable, Sendable, Equatable {
    public var sku: String
    public var quantity: Int
    public var unitPriceCents: Int
}

/// The `order.placed` event `orders` publishes (through its outbox) when an order is stored: a
/// CloudEvent from `/shop/orders` whose subject, and partition key, is the order id.
public struct OrderPlaced: Codable, Sendable, Equatable {
    /// The topic order events go to.
    public static let topic = "orders"
    /// The events' source.
    public static let source = "/shop/orders"
    /// The events' type.
    public static let type = "order.placed"

    public var orderId: String
    public var userId: String
    public var totalCents: Int
}

/// What a client sends to place an order.
struct PlaceOrder: Codable, Sendable {
    var userId: String
    var items: [OrderItem]
}

/// A placed, paid order.
public struct Order: Codable, Sendable, Equatable {
    public var id: String
    public var userId: String
    public var items: [OrderItem]
    public var totalCents: Int
    public var status: String
    public var paymentId: String
}

/// The `orders` service: places orders.
///
/// `POST /orders` checks the user with `users` (an unknown user is a 422 `unknown-user`
/// problem), charges the total with `payments` (idempotently, keyed by the order id, so a retried
/// charge is applied once), stores the order together with its `order.placed` event (one
/// transaction, through the ``AviaryMessaging/Outbox``) and answers `201`. When a dependency is
/// down or its breaker is open, the answer is a quick `503` `dependency-unavailable` problem
/// naming it, with `Retry-After` when known. An `Idempotency-Key` on the request makes placing an order safe to
/// repeat: the same key returns the same order.
struct OrdersService: Sendable {
    let store: SQLiteStore
    let logger: Logger
    let users: Upstream
    let payments: Upstream

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1: orders") { db in
            try db.execute(
                sql: """
                    CREATE TABLE orders (
                        id TEXT PRIMARY KEY NOT NULL,
                        idempotency_key TEXT UNIQUE,
                        user_id TEXT NOT NULL,
                        items TEXT NOT NULL,
                        total_cents INTEGER NOT NULL,
                        status TEXT NOT NULL,
                        payment_id TEXT NOT NULL,
                        created_at TEXT NOT NULL
                    )
                    """)
        }
        // The events of an order commit with it (published by the OutboxRelay ShopSystem runs).
        Outbox.addMigrations(to: &migrations)
        return migrations
    }

    init(url: StoreURL, logger: Logger, users: Upstream, payments: Upstream, tracer: (any Tracer)? = nil) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
        self.users = users
        self.payments = payments
    }

    static func order(from row: Row) throws -> Order {
        let itemsJSON: String = row["items"]
        return Order(
            id: row["id"], userId: row["user_id"],
            items: try JSONDecoder().decode([OrderItem].self, from: Data(itemsJSON.utf8)),
            totalCents: row["total_cents"], status: row["status"], paymentId: row["payment_id"])
    }

    static func validate(_ request: PlaceOrder) -> [String] {
        var problems: [String] = []
        if request.userId.isEmpty { problems.append("userId: expected a non-empty string") }
        if request.items.isEmpty { problems.append("items: expected at least one item") }
        if request.items.count > 100 {
            problems.append("items: expected at most 100 items, got \(request.items.count)")
        }
        for (index, item) in request.items.enumerated() {
            if item.sku.isEmpty { problems.append("items[\(index)].sku: expected a non-empty string") }
            if !(1...1000).contains(item.quantity) {
                problems.append("items[\(index)].quantity: expected an integer in 1...1000, got \(item.quantity)")
            }
            if !(0...100_000_000).contains(item.unitPriceCents) {
                problems.append(
                    "items[\(index)].unitPriceCents: expected an integer in 0...100000000, got \(item.unitPriceCents)")
            }
        }
        if problems.isEmpty, request.items.reduce(0, { $0 + $1.quantity * $1.unitPriceCents }) <= 0 {
            problems.append("items: expected a positive total")
        }
        return problems
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    /// Adds the service's routes to `router`: a group that requires a token with the `orders`
    /// scope (see ``ShopSystem``).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>) {
        router.post("/orders") { request, context in
            try await self.place(request, principal: try context.requirePrincipal())
        }
        let store = self.store
        router.get("/orders/:id") { _, context -> JSONResponse<Order> in
            let principal = try context.requirePrincipal()
            let id = try context.parameters.require("id")
            let order = try await store.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM orders WHERE id = ?", arguments: [id]).map(Self.order(from:))
            }
            // Another customer's order is as good as absent: its existence is not disclosed.
            guard let order, order.userId == principal.subject else {
                throw HTTPProblem(status: 404, slug: "order-not-found", detail: "no order \"\(id)\"")
            }
            return JSONResponse(status: .ok, value: order)
        }
    }

    func place(_ request: Request, principal: Principal) async throws -> JSONResponse<Order> {
        let idempotencyKey = request.headers[HTTPField.Name("Idempotency-Key")!]
        let placeOrder = try await request.decodeJSON(as: PlaceOrder.self)
        let problems = Self.validate(placeOrder)
        if !problems.isEmpty {
            throw HTTPProblem(status: 400, slug: "invalid-order", detail: problems.joined(separator: "; "))
        }
        // A customer orders for themselves.
        guard placeOrder.userId == principal.subject else {
            throw HTTPProblem(
                status: 403, slug: "not-your-account",
                detail: "the token of \"\(principal.subject)\" cannot order for user \"\(placeOrder.userId)\"")
        }
        if let idempotencyKey, let existing = try await self.existingOrder(idempotencyKey: idempotencyKey) {
            return JSONResponse(status: .ok, value: existing, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
        }

        // 1. The user must exist.
        let userPath =
            "/users/" + (placeOrder.userId.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? "")
        let userResponse = try await self.call(self.users) {
            try await self.users.client.execute(.GET, userPath, route: "/users/{id}")
        }
        if userResponse.status == 404 {
            throw HTTPProblem(
                status: 422, slug: "unknown-user", detail: "no user \"\(placeOrder.userId)\" exists",
                extensions: ["user_id": placeOrder.userId])
        }
        guard userResponse.status == 200 else {
            throw HTTPProblem(
                status: 502, slug: "dependency-failed",
                detail: "users answered \(userResponse.status) for user \"\(placeOrder.userId)\"",
                extensions: ["dependency": "users"])
        }

        // 2. Charge, keyed by the order id so that a retry is applied once.
        let orderID = "ord-" + UUID().uuidString.lowercased().prefix(12)
        let total = placeOrder.items.reduce(0) { $0 + $1.quantity * $1.unitPriceCents }
        let charge = try JSONEncoder().encode(
            ChargeRequest(orderId: orderID, userId: placeOrder.userId, amountCents: total))
        let paymentResponse = try await self.call(self.payments) {
            // The Idempotency-Key makes the POST safe to retry: payments applies it once.
            try await self.payments.client.execute(
                .POST, "/payments",
                headers: [
                    ("content-type", "application/json"), ("idempotency-key", "charge-\(orderID)"),
                    // Token relay: payments checks the caller's own token.
                    ("authorization", request.headers[.authorization] ?? ""),
                ],
                body: ByteBuffer(bytes: charge))
        }
        guard paymentResponse.status == 201 || paymentResponse.status == 200,
            let payment = try? paymentResponse.decode(Payment.self)
        else {
            let detail = paymentResponse.problem?.detail ?? "status \(paymentResponse.status)"
            throw HTTPProblem(
                status: 402, slug: "payment-declined", detail: "payments refused the charge: \(detail)",
                extensions: ["dependency": "payments"])
        }

        // 3. Store the order.
        let order = Order(
            id: orderID, userId: placeOrder.userId, items: placeOrder.items, totalCents: total, status: "paid",
            paymentId: payment.id)
        let itemsJSON = String(decoding: try JSONEncoder().encode(order.items), as: UTF8.self)
        var event = OutgoingMessage(
            topic: OrderPlaced.topic,
            event: try CloudEvent(
                source: OrderPlaced.source, type: OrderPlaced.type, subject: order.id,
                json: OrderPlaced(orderId: order.id, userId: order.userId, totalCents: order.totalCents)))
        // The trace context travels with the event, so that its consumers continue this trace.
        if let tracer = self.store.tracer { event.injectTraceContext(using: tracer) }
        let placed = event
        do {
            try await self.store.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO orders (id, idempotency_key, user_id, items, total_cents, status, payment_id, created_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        order.id, idempotencyKey, order.userId, itemsJSON, order.totalCents, order.status,
                        order.paymentId, Date().formatted(.iso8601),
                    ])
                // In the same transaction: the order and its event exist together or not at all.
                try Outbox.enqueue(placed, in: db)
            }
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
            // A concurrent request with the same Idempotency-Key won the race: answer with its order.
            if let idempotencyKey, let existing = try await self.existingOrder(idempotencyKey: idempotencyKey) {
                return JSONResponse(
                    status: .ok, value: existing, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
            }
            throw error
        }
        self.logger.info(
            "order placed",
            metadata: [
                "aviary.order_id": "\(order.id)", "aviary.user_id": "\(order.userId)", "aviary.total": "\(total)",
            ])
        return JSONResponse(status: .created, value: order, headers: [.location: "/orders/\(order.id)"])
    }

    private func existingOrder(idempotencyKey: String) async throws -> Order? {
        try await self.store.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM orders WHERE idempotency_key = ?", arguments: [idempotencyKey])
                .map(Self.order(from:))
        }
    }

    /// Runs an upstream call and turns its failures into problems that name the dependency.
    private func call(
        _ upstream: Upstream,
        _ body: () async throws -> ClientResponse
    ) async throws -> ClientResponse {
        do {
            return try await body()
        } catch let error as HTTPProblem {
            throw error
        } catch {
            throw Self.unavailable(upstream.name, error)
        }
    }

    static func unavailable(_ dependency: String, _ error: any Error) -> HTTPProblem {
        var headers = HTTPFields()
        var retryAfter: Duration?
        let reason: String
        switch error {
        case let error as ResilienceError:
            retryAfter = error.retryAfter
            switch error.code {
            case .circuitOpen: reason = "its circuit breaker is open"
            case .timedOut: reason = "it did not answer in time"
            default: reason = error.message
            }
        case let error as UpstreamError:
            retryAfter = error.retryAfter
            reason = "\(error)\(error.response.problem?.detail.map { ": \($0)" } ?? "")"
        default:
            reason = "it cannot be reached (\(error))"
        }
        var extensions = ["dependency": dependency]
        if let retryAfter {
            let seconds = String(max(1, Int(retryAfter.aviarySeconds.rounded(.up))))
            headers[.retryAfter] = seconds
            extensions["retry_after_seconds"] = seconds
        }
        return HTTPProblem(
            status: 503, slug: "dependency-unavailable", detail: "\(dependency) is unavailable: \(reason)",
            extensions: extensions, headers: headers)
    }
}
