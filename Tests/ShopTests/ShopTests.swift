//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryResilience
import AviaryService
import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop walking skeleton", .serialized, .timeLimit(.minutes(2)))
struct ShopTests {
    static let order = #"{"userId":"alice","items":[{"sku":"book-1","quantity":2,"unitPriceCents":1250}]}"#

    @Test("placing an order checks the user, reserves stock, charges payments and confirms the order")
    func placeOrder() async throws {
        try await withShop { shop in
            let reply = try await shop.send(.POST, "orders", "/orders", json: Self.order)
            #expect(reply.status == 201)
            let order = try JSONDecoder().decode(Order.self, from: reply.body)
            #expect(order.userId == "alice")
            #expect(order.totalCents == 2500)
            #expect(order.status == "confirmed")
            #expect(reply.headers.first(name: "location") == "/orders/\(order.id)")

            let stored = try await shop.send(.GET, "orders", "/orders/\(order.id)")
            #expect(stored.status == 200)
            #expect(try JSONDecoder().decode(Order.self, from: stored.body) == order)

            let paymentID = try #require(order.paymentId)
            let payment = try await shop.send(.GET, "payments", "/payments/\(paymentID)")
            #expect(payment.status == 200)
            let charged = try JSONDecoder().decode(Payment.self, from: payment.body)
            #expect(charged.amountCents == 2500)
            #expect(charged.orderId == order.id)
            #expect(charged.status == "captured")

            // The two books left the warehouse: committed, nothing held.
            let stock = try await shop.send(.GET, "inventory", "/inventory/book-1")
            #expect(
                try JSONDecoder().decode(StockLevel.self, from: stock.body)
                    == StockLevel(
                        sku: "book-1", onHand: 998, reserved: 0, available: 998))
        }
    }

    @Test("an order for a user the directory does not know is a 422 problem and charges nothing")
    func unknownUser() async throws {
        try await withShop { shop in
            // A valid token (signed with the users service's key) for a user who is not in it.
            let token = try await shop.shop.users.makeIssuer().issue(
                subject: "mallory", scopes: ["orders", "payments"])
            let reply = try await shop.send(
                .POST, "orders", "/orders",
                json: #"{"userId":"mallory","items":[{"sku":"a","quantity":1,"unitPriceCents":100}]}"#,
                headers: [("authorization", "Bearer \(token)")], as: nil)
            #expect(reply.status == 422)
            #expect(reply.headers.first(name: "content-type") == "application/problem+json")
            let problem = try reply.json()
            #expect(problem["type"] as? String == "urn:aviary:problem:unknown-user")
            #expect(problem["status"] as? Int == 422)
            #expect((problem["detail"] as? String)?.contains("mallory") == true)
            let count = try await shop.shop.payments.store.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payments") ?? -1
            }
            #expect(count == 0)
        }
    }

    @Test(
        "malformed orders are 400 problems naming the field",
        arguments: [
            (#"{"userId":"alice","items":[]}"#, "items: expected at least one item"),
            (#"{"userId":"alice","items":[{"sku":"a","quantity":0,"unitPriceCents":1}]}"#, "items[0].quantity"),
            (#"{"userId":"alice"}"#, "items: required field is missing"),
            (#"{"userId":"alice","items":"#, "body"),
        ])
    func malformedOrders(body: String, fragment: String) async throws {
        try await withShop { shop in
            let reply = try await shop.send(.POST, "orders", "/orders", json: body)
            #expect(reply.status == 400)
            let problem = try reply.json()
            #expect((problem["detail"] as? String)?.contains(fragment) == true, "\(problem)")
        }
    }

    @Test("an unknown route is a 404 problem")
    func unknownRoute() async throws {
        try await withShop { shop in
            let reply = try await shop.send(.GET, "orders", "/nope")
            #expect(reply.status == 404)
            #expect(reply.headers.first(name: "content-type") == "application/problem+json")
        }
    }

    @Test("the same Idempotency-Key places one order")
    func idempotentOrder() async throws {
        try await withShop { shop in
            let first = try await shop.send(
                .POST, "orders", "/orders", json: Self.order, headers: [("Idempotency-Key", "k-1")])
            let second = try await shop.send(
                .POST, "orders", "/orders", json: Self.order, headers: [("Idempotency-Key", "k-1")])
            #expect(first.status == 201)
            #expect(second.status == 200)
            #expect(second.headers.first(name: "idempotent-replayed") == "true")
            let a = try JSONDecoder().decode(Order.self, from: first.body)
            let b = try JSONDecoder().decode(Order.self, from: second.body)
            #expect(a == b)
            let payments = try await shop.shop.payments.store.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payments") ?? -1
            }
            #expect(payments == 1)
        }
    }

    @Test("payments applies a charge once per Idempotency-Key and refuses a reused key")
    func paymentIdempotency() async throws {
        try await withShop { shop in
            let charge = #"{"orderId":"o-1","userId":"alice","amountCents":500}"#
            let first = try await shop.send(
                .POST, "payments", "/payments", json: charge, headers: [("Idempotency-Key", "c-1")])
            let again = try await shop.send(
                .POST, "payments", "/payments", json: charge, headers: [("Idempotency-Key", "c-1")])
            #expect(first.status == 201)
            #expect(again.status == 200)
            #expect(
                try JSONDecoder().decode(Payment.self, from: first.body)
                    == JSONDecoder().decode(Payment.self, from: again.body))
            let other = #"{"orderId":"o-1","userId":"alice","amountCents":999}"#
            let reused = try await shop.send(
                .POST, "payments", "/payments", json: other, headers: [("Idempotency-Key", "c-1")])
            #expect(reused.status == 422)
            let missing = try await shop.send(.POST, "payments", "/payments", json: charge)
            #expect(missing.status == 400)
        }
    }

    @Test("probes answer on every service")
    func probes() async throws {
        try await withShop { shop in
            for service in ShopOptions.services {
                #expect(try await shop.send(.GET, service, "/livez").status == 200)
                let ready = try await shop.send(.GET, service, "/readyz")
                #expect(ready.status == 200)
                let body = try ready.json()
                #expect(body["service"] as? String == service)
                let checks = body["checks"] as? [[String: Any]]
                #expect(checks?.first?["name"] as? String == "database")
                #expect(checks?.first?["status"] as? String == "pass")
                #expect(try await shop.send(.GET, service, "/startupz").status == 200)
                let metrics = try await shop.send(.GET, service, "/metrics")
                #expect(metrics.status == 200)
                #expect(
                    metrics.text.contains(
                        #"aviary_http_server_requests_total{service="\#(service)",route="/readyz",method="GET",status_code="200"} 1"#
                    ))
            }
        }
    }

    @Test(
        "with payments down, orders answers 503 at once, its breaker opens, the orders are cancelled, and it recovers")
    func paymentsOutage() async throws {
        try await withShop(minimumCalls: 2) { shop in
            let paymentsEndpoint = try shop.shop.addressBook.require("payments")
            try await shop.stop("payments")

            // First order: attempts fail to connect until the breaker opens; then it rejects.
            let failed = try await shop.send(.POST, "orders", "/orders", json: Self.order)
            #expect(failed.status == 503)
            let problem = try failed.json()
            #expect(problem["type"] as? String == "urn:aviary:problem:dependency-unavailable")
            #expect(problem["dependency"] as? String == "payments")
            #expect(shop.shop.orders.payments.breaker.state == .open)

            // While open: rejected without trying payments, with Retry-After.
            let rejected = try await shop.send(.POST, "orders", "/orders", json: Self.order)
            #expect(rejected.status == 503)
            #expect((try rejected.json()["detail"] as? String)?.contains("circuit breaker is open") == true)
            #expect(rejected.headers.first(name: "retry-after") == "30")

            // payments returns; the breaker still rejects until its open wait has passed.
            try await shop.start("payments", port: paymentsEndpoint.port)
            #expect(try await shop.send(.POST, "orders", "/orders", json: Self.order).status == 503)

            // Each of those orders reserved stock before its charge failed; their sagas compensate
            // (refund, release, cancel) in the background once payments answers again.
            shop.clock.advance(by: .seconds(30))
            let failedIDs = try [failed, rejected].map { try #require($0.json()["order_id"] as? String) }
            try await ShopMessagingTests.eventually("the failed orders are cancelled") {
                try await shop.shop.orders.sagas.instances(status: .compensated, limit: 10).count == 3
            }
            for id in failedIDs {
                let order = try JSONDecoder().decode(
                    Order.self, from: try await shop.send(.GET, "orders", "/orders/\(id)").body)
                #expect(order.status == "cancelled")
            }
            let stock = try await shop.send(.GET, "inventory", "/inventory/book-1")
            #expect(try JSONDecoder().decode(StockLevel.self, from: stock.body).reserved == 0)
            let recovered = try await shop.send(.POST, "orders", "/orders", json: Self.order)
            #expect(recovered.status == 201)
            #expect(shop.shop.orders.payments.breaker.state == .closed)
        }
    }
}
