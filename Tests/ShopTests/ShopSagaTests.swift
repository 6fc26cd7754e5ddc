//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryEventSourcing
import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop's place-order saga: event-sourced orders, inventory, payments", .serialized, .timeLimit(.minutes(2)))
struct ShopSagaTests {
    static func stock(_ shop: ShopHarness, _ sku: String) async throws -> StockLevel {
        let reply = try await shop.send(.GET, "inventory", "/inventory/\(sku)", as: nil)
        try #require(reply.status == 200, "\(reply.text)")
        return try JSONDecoder().decode(StockLevel.self, from: reply.body)
    }

    @Test("a charge above the decline limit releases the stock and cancels the order")
    func declinedPaymentCompensates() async throws {
        try await withShop(declineAbove: 10_000) { shop in
            let before = try await Self.stock(shop, "mug-1")
            let expensive = #"{"userId":"alice","items":[{"sku":"mug-1","quantity":3,"unitPriceCents":4000}]}"#
            let reply = try await shop.send(.POST, "orders", "/orders", json: expensive)
            #expect(reply.status == 402, "\(reply.text)")
            let problem = try reply.json()
            #expect(problem["type"] as? String == "urn:aviary:problem:payment-declined")
            #expect((problem["detail"] as? String)?.contains("above the limit of 100.00") == true, "\(problem)")
            // Cancelled, or still compensating when a compensation call of a loaded machine has to
            // wait for its retry; either way the runner finishes it.
            let answered = problem["order_status"] as? String
            #expect(answered == "cancelled" || answered == "pending", "\(problem)")
            let id = try #require(problem["order_id"] as? String)
            #expect(reply.headers.first(name: "location") == "/orders/\(id)")
            try await ShopMessagingTests.eventually(timeout: .seconds(60), "saga \(id) is compensated") {
                try await shop.shop.orders.sagas.instance(id)?.status == .compensated
            }

            let order = try JSONDecoder().decode(
                Order.self, from: try await shop.send(.GET, "orders", "/orders/\(id)").body)
            #expect(order.status == "cancelled")
            #expect(order.paymentId == nil)
            #expect(order.cancelReason?.hasPrefix("payment declined") == true, "\(order)")
            // The stock is back, and no money moved.
            #expect(try await Self.stock(shop, "mug-1") == before)
            let payments = try await shop.shop.payments.store.read { db in
                try String.fetchAll(db, sql: "SELECT status FROM payments WHERE order_id = ?", arguments: [id])
            }
            #expect(payments == ["declined"])

            // The saga's timeline: placed, reserved, charge failed, then compensated in reverse order.
            let instance = try #require(try await shop.shop.orders.sagas.instance(id))
            #expect(instance.status == .compensated)
            let history = try await shop.shop.orders.sagas.history(id)
            #expect(
                history.filter { $0.kind == .completed }.map(\.stepName) == ["place order", "reserve stock"])
            #expect(
                history.filter { $0.kind == .compensated }.map(\.stepName) == [
                    "charge", "reserve stock", "place order",
                ])
            // The event store says the same.
            let types = try await shop.shop.orders.book.events.readStream("order-\(id)").map(\.type)
            #expect(types == ["order.placed", "order.payment-declined", "order.cancelled"])

            // alice hears about it.
            try await ShopMessagingTests.eventually("alice is told that \(id) was cancelled") {
                let reply = try await shop.send(.GET, "notifications", "/notifications?user=alice")
                let notes = try JSONDecoder().decode([ShopNotification].self, from: reply.body)
                return notes.contains { $0.orderId == id && $0.kind == "order.cancelled" }
            }
            let notes = try JSONDecoder().decode(
                [ShopNotification].self,
                from: try await shop.send(.GET, "notifications", "/notifications?user=alice").body)
            #expect(
                notes.first { $0.kind == "order.cancelled" }?.text
                    == "Your order \(id) was cancelled (payment declined: the charge of 120.00 was declined: it is "
                    + "above the limit of 100.00); nothing was charged.")

            // Below the limit, orders go through.
            let cheap = #"{"userId":"alice","items":[{"sku":"mug-1","quantity":1,"unitPriceCents":4000}]}"#
            #expect(try await shop.send(.POST, "orders", "/orders", json: cheap).status == 201)
            #expect(try await Self.stock(shop, "mug-1").onHand == before.onHand - 1)
        }
    }

    @Test("an order for more than the stock is a 409, holds nothing and charges nothing")
    func outOfStock() async throws {
        try await withShop { shop in
            let before = try await Self.stock(shop, "poster-1")
            let json =
                #"{"userId":"alice","items":[{"sku":"book-1","quantity":1,"unitPriceCents":100},{"sku":"poster-1","quantity":\#(before.available + 1),"unitPriceCents":100}]}"#
            let reply = try await shop.send(.POST, "orders", "/orders", json: json)
            #expect(reply.status == 409, "\(reply.text)")
            #expect(try reply.json()["type"] as? String == "urn:aviary:problem:out-of-stock")
            let id = try #require(try reply.json()["order_id"] as? String)
            let order = try JSONDecoder().decode(
                Order.self, from: try await shop.send(.GET, "orders", "/orders/\(id)").body)
            #expect(order.status == "cancelled")
            #expect(try await Self.stock(shop, "poster-1") == before)
            #expect(try await Self.stock(shop, "book-1").reserved == 0)
            let charged = try await shop.shop.payments.store.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payments") ?? -1
            }
            #expect(charged == 0)
        }
    }

    @Test("GET /orders?user= is the order history read model, and it equals what the events say")
    func orderHistory() async throws {
        try await withShop(declineAbove: 5000) { shop in
            var placed: [String] = []
            for quantity in [1, 2, 3] {
                let json =
                    #"{"userId":"alice","items":[{"sku":"book-2","quantity":\#(quantity),"unitPriceCents":2000}]}"#
                let reply = try await shop.send(.POST, "orders", "/orders", json: json)
                let id =
                    reply.status == 201
                    ? try JSONDecoder().decode(Order.self, from: reply.body).id
                    : try #require(try reply.json()["order_id"] as? String)
                placed.append(id)
            }
            _ = try await shop.send(.POST, "orders", "/orders", json: ShopTests.order, as: "bob")

            let reply = try await shop.send(.GET, "orders", "/orders?user=alice")
            #expect(reply.status == 200, "\(reply.text)")
            let history = try JSONDecoder().decode([Order].self, from: reply.body)
            // Newest first; only alice's; the third (60.00) was declined.
            #expect(history.map(\.id) == placed.reversed())
            #expect(history.map(\.status) == ["cancelled", "confirmed", "confirmed"])
            for order in history {
                let fromEvents = try #require(try await shop.shop.orders.book.order(order.id)?.order)
                #expect(order == fromEvents)
            }
            #expect(try await shop.shop.orders.history.lag() == 0)

            #expect(try await shop.send(.GET, "orders", "/orders?user=bob", as: "alice").status == 403)
            #expect(try await shop.send(.GET, "orders", "/orders", as: "alice").status == 400)
        }
    }

    @Test("inventory: reservations are idempotent, and a release that comes first refuses a late reserve")
    func inventoryReservations() async throws {
        try await withShop { shop in
            let token = try await shop.shop.users.makeIssuer().issue(
                subject: "orders", scopes: ["inventory"], roles: ["service"])
            let service = [("authorization", "Bearer \(token)")]
            let body = #"{"orderId":"o-1","items":[{"sku":"pen-1","quantity":4}]}"#
            let first = try await shop.send(
                .POST, "inventory", "/reservations", json: body, headers: service + [("Idempotency-Key", "k-1")],
                as: nil)
            #expect(first.status == 201, "\(first.text)")
            let again = try await shop.send(
                .POST, "inventory", "/reservations", json: body, headers: service + [("Idempotency-Key", "k-1")],
                as: nil)
            #expect(again.status == 200)
            #expect(again.headers.first(name: "idempotent-replayed") == "true")
            #expect(try await Self.stock(shop, "pen-1").reserved == 4)
            // The same key for another order is refused, and holds nothing.
            let reused = try await shop.send(
                .POST, "inventory", "/reservations", json: #"{"orderId":"o-3","items":[{"sku":"pen-1","quantity":1}]}"#,
                headers: service + [("Idempotency-Key", "k-1")], as: nil)
            #expect(reused.status == 422)
            #expect(try await Self.stock(shop, "pen-1").reserved == 4)

            // A customer cannot reserve.
            let customer = try await shop.send(
                .POST, "inventory", "/reservations", json: body, headers: [("Idempotency-Key", "k-2")], as: "alice")
            #expect(customer.status == 403)

            // Released twice: once given back.
            for _ in 0..<2 {
                let released = try await shop.send(
                    .POST, "inventory", "/reservations/o-1/release", json: "{}",
                    headers: service + [("Idempotency-Key", "r-1")], as: nil)
                #expect(released.status == 200)
            }
            #expect(try await Self.stock(shop, "pen-1").reserved == 0)

            // A release before any reserve: the late reserve is refused.
            let early = try await shop.send(
                .POST, "inventory", "/reservations/o-2/release", json: "{}",
                headers: service + [("Idempotency-Key", "r-2")], as: nil)
            #expect(early.status == 200)
            let late = try await shop.send(
                .POST, "inventory", "/reservations", json: #"{"orderId":"o-2","items":[{"sku":"pen-1","quantity":1}]}"#,
                headers: service + [("Idempotency-Key", "k-3")], as: nil)
            #expect(late.status == 409)
            #expect(try late.json()["type"] as? String == "urn:aviary:problem:reservation-released")
            #expect(try await shop.send(.GET, "inventory", "/inventory/nope", as: nil).status == 404)
        }
    }

    @Test("payments: a refund that comes first voids the order, so a late charge is refused")
    func refundBeforeCharge() async throws {
        try await withShop { shop in
            let token = try await shop.shop.users.makeIssuer().issue(
                subject: "orders", scopes: ["payments"], roles: ["service"])
            let service = [("authorization", "Bearer \(token)")]
            let refund = try await shop.send(
                .POST, "payments", "/payments/refunds", json: #"{"orderId":"o-9"}"#,
                headers: service + [("Idempotency-Key", "o-9/2/compensate")], as: nil)
            #expect(refund.status == 200, "\(refund.text)")
            let late = try await shop.send(
                .POST, "payments", "/payments", json: #"{"orderId":"o-9","userId":"alice","amountCents":500}"#,
                headers: service + [("Idempotency-Key", "o-9/2")], as: nil)
            #expect(late.status == 409)
            #expect(try late.json()["type"] as? String == "urn:aviary:problem:order-voided")
            // Customers cannot refund.
            let customer = try await shop.send(
                .POST, "payments", "/payments/refunds", json: #"{"orderId":"o-9"}"#,
                headers: [("Idempotency-Key", "x")], as: "alice")
            #expect(customer.status == 403)
        }
    }
}
