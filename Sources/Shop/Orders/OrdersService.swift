//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryAuth
import AviaryCore
import AviaryEventSourcing
import AviaryMessaging
import AviaryResilience
import AviaryService
import AviaryStorage
import AviaryWorkflows
import Crypto
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Tracing

/// What a client sends to place an order.
struct PlaceOrder: Codable, Sendable {
    var userId: String
    var items: [OrderItem]
}

/// The `orders` service: places orders, event-sourced, through a saga.
///
/// `POST /orders` checks the user with `users` (an unknown user is a 422 `unknown-user`
/// problem), then runs the place-order saga (``makeSaga()``): the order is recorded
/// (`OrderPlaced`, and `order.placed` in the outbox, in one transaction), its stock reserved with
/// `inventory`, the total charged with `payments`, the stock committed and the order confirmed
/// (`OrderConfirmed`). The answer is `201` with the confirmed order. A declined charge (`402`
/// `payment-declined`), missing stock (`409` `out-of-stock`) or a dependency that is down (`503`
/// `dependency-unavailable`, `Retry-After` when known) compensate: the stock is released, the
/// charge refunded and the order cancelled (`OrderCancelled`); the problem names the order. A saga
/// that waits (a retry after backoff) answers `202` with the pending order; the saga runner
/// finishes it in the background, also after a restart. An `Idempotency-Key` on the request makes
/// placing an order safe to repeat: the order id is derived from the user and the key, so the same
/// key returns the same order.
///
/// `GET /orders/{id}` reads the order from its events; `GET /orders?user=ID` lists a customer's
/// orders from the ``OrderHistory`` read model, caught up first.
struct OrdersService: Sendable {
    let store: SQLiteStore
    let logger: Logger
    let users: Upstream
    let inventory: Upstream
    let payments: Upstream
    let serviceToken: ServiceToken
    let failpoint: @Sendable (String) -> Void
    /// The event store and the outbox.
    let book: OrderBook
    /// Where the sagas live (the same `orders.db`).
    let sagas: SQLiteSagaStore
    /// Drives the sagas; also a lifecycle service that resumes unfinished ones.
    let runner: SagaRunner
    /// Keeps the order history up to date.
    let history: ProjectionRunner<OrderHistory>
    let notes = SagaFailureNotes()

    static var migrations: Migrations {
        var migrations = Migrations()
        // Orders stored before orders was event-sourced: read by GET /orders/{id}, never written.
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
        migrations.addEventStore()
        SQLiteSagaStore.addMigrations(to: &migrations)
        return migrations
    }

    init(
        url: StoreURL, logger: Logger, users: Upstream, inventory: Upstream, payments: Upstream,
        serviceToken: ServiceToken, tracer: (any Tracer)? = nil,
        failpoint: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.logger = logger
        self.users = users
        self.inventory = inventory
        self.payments = payments
        self.serviceToken = serviceToken
        self.failpoint = failpoint
        self.book = try OrderBook(store: self.store)
        self.sagas = SQLiteSagaStore(store: self.store)
        var sagaLogger = logger
        sagaLogger[metadataKey: "aviary.component"] = "sagas"
        self.runner = SagaRunner(store: self.sagas, logger: sagaLogger)
        self.history = try ProjectionRunner(OrderHistory(), events: self.book.events, store: self.store, logger: logger)
        self.runner.register(self.makeSaga())
    }

    static func legacyOrder(from row: Row) throws -> Order {
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

    /// The order with that id: from its events, or from the table of orders placed before orders
    /// was event-sourced.
    func order(_ id: String) async throws -> Order? {
        if let order = try await self.book.order(id)?.order { return order }
        return try await self.store.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM orders WHERE id = ?", arguments: [id]).map(Self.legacyOrder(from:))
        }
    }

    /// A customer's orders from the order history, newest first, after catching it up (so a
    /// customer sees their own orders at once).
    func orders(of user: String, limit: Int = 100) async throws -> [Order] {
        do {
            try await self.history.catchUp()
        } catch {
            // Another process is rebuilding it, or an event failed: serve what is there.
            self.logger.warning("order history not caught up", metadata: ["error.message": "\(error)"])
        }
        return try await self.store.read { db in try OrderHistory.orders(of: user, limit: limit, in: db) }
    }

    /// Adds the service's routes to `router`: a group that requires a token with the `orders`
    /// scope (see ``ShopSystem``).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>) {
        router.post("/orders") { request, context in
            try await self.place(request, principal: context.principal)
        }
        router.get("/orders") { request, context -> JSONResponse<[Order]> in
            guard let user = request.uri.queryParameters["user"].map(String.init), !user.isEmpty else {
                throw HTTPProblem(
                    status: 400, slug: "invalid-query", detail: "user: expected the query parameter ?user=ID")
            }
            if let principal = context.principal, principal.subject != user {
                throw HTTPProblem(
                    status: 403, slug: "not-your-account",
                    detail: "the token of \"\(principal.subject)\" cannot read the orders of \"\(user)\"")
            }
            return JSONResponse(status: .ok, value: try await self.orders(of: user))
        }
        router.get("/orders/:id") { _, context -> JSONResponse<Order> in
            let id = try context.parameters.require("id")
            let order = try await self.order(id)
            // Another customer's order is as good as absent: its existence is not disclosed.
            guard let order, context.principal.map({ $0.subject == order.userId }) ?? true else {
                throw HTTPProblem(status: 404, slug: "order-not-found", detail: "no order \"\(id)\"")
            }
            return JSONResponse(status: .ok, value: order)
        }
    }

    /// The id of the order a customer's `Idempotency-Key` places: the same for every repeat.
    static func orderID(user: String, idempotencyKey: String) -> String {
        let digest = SHA256.hash(data: Data("\(user)\u{0}\(idempotencyKey)".utf8))
        return "ord-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// The answer to a repeated request: the order as it is now.
    private func replay(_ order: Order, of placeOrder: PlaceOrder) throws -> JSONResponse<Order> {
        guard order.userId == placeOrder.userId, order.items == placeOrder.items else {
            throw HTTPProblem(
                status: 422, slug: "idempotency-key-reused",
                detail: "the Idempotency-Key was used for a different order (\(order.id))")
        }
        return JSONResponse(status: .ok, value: order, headers: [HTTPField.Name("Idempotent-Replayed")!: "true"])
    }

    func place(_ request: Request, principal: Principal?) async throws -> JSONResponse<Order> {
        let idempotencyKey = request.headers[HTTPField.Name("Idempotency-Key")!]
        let placeOrder = try await request.decodeJSON(as: PlaceOrder.self)
        let problems = Self.validate(placeOrder)
        if !problems.isEmpty {
            throw HTTPProblem(status: 400, slug: "invalid-order", detail: problems.joined(separator: "; "))
        }
        // A customer orders for themselves.
        if let principal, placeOrder.userId != principal.subject {
            throw HTTPProblem(
                status: 403, slug: "not-your-account",
                detail: "the token of \"\(principal.subject)\" cannot order for user \"\(placeOrder.userId)\"")
        }
        let orderID =
            idempotencyKey.map { Self.orderID(user: placeOrder.userId, idempotencyKey: $0) }
            ?? "ord-" + UUID().uuidString.lowercased().prefix(12)
        if idempotencyKey != nil, let existing = try await self.order(orderID) {
            return try self.replay(existing, of: placeOrder)
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

        // 2. The saga: place, reserve, charge, commit, confirm (or compensate).
        let total = placeOrder.items.reduce(0) { $0 + $1.quantity * $1.unitPriceCents }
        let state = PlaceOrderState(
            orderId: orderID, userId: placeOrder.userId, items: placeOrder.items, totalCents: total)
        self.notes.watch(orderID)
        let instance: SagaInstance
        do {
            instance = try await self.runner.start(self.makeSaga(), id: orderID, state: state)
        } catch let error as SagaError where error.kind == .duplicate {
            _ = self.notes.take(orderID)
            // A concurrent request with the same Idempotency-Key runs it.
            if let existing = try await self.order(orderID) { return try self.replay(existing, of: placeOrder) }
            throw HTTPProblem(
                status: 409, slug: "idempotency-key-in-use",
                detail: "a request with the same Idempotency-Key is being processed",
                headers: [.retryAfter: "1"])
        } catch {
            _ = self.notes.take(orderID)
            throw error
        }
        let failure = self.notes.take(orderID)
        guard let order = try await self.book.order(orderID)?.order else {
            throw failure
                ?? HTTPProblem(status: 500, slug: "order-missing", detail: "order \(orderID) was not recorded")
        }
        let location: HTTPFields = [.location: "/orders/\(order.id)"]
        switch instance.status {
        case .completed:
            self.logger.info(
                "order confirmed",
                metadata: [
                    "aviary.order_id": "\(order.id)", "aviary.user_id": "\(order.userId)", "aviary.total": "\(total)",
                ])
            return JSONResponse(status: .created, value: order, headers: location)
        case .running:
            // Waiting for a retry after backoff: the runner finishes it in the background, and
            // the order is pending until then (whatever the attempt that failed said).
            return JSONResponse(status: .accepted, value: order, headers: location)
        default:
            self.logger.info(
                "order not placed",
                metadata: [
                    "aviary.order_id": "\(order.id)", "aviary.saga_status": "\(instance.status.rawValue)",
                    "error.message": "\(instance.lastError ?? "")",
                ])
            // The problem names the order, which shows how it ends (cancelled once compensated).
            var problem =
                failure
                ?? HTTPProblem(
                    status: 502, slug: "order-failed",
                    detail: "order \(order.id) could not be completed: \(instance.lastError ?? "unknown")")
            problem.problemDetails.extensions["order_id"] = order.id
            problem.problemDetails.extensions["order_status"] = order.status
            problem.headers[.location] = "/orders/\(order.id)"
            throw problem
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
