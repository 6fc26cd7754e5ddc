//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryMessaging
import AviaryStorage
import Foundation
import GRDB
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop messaging: orders → outbox → log → notifications", .serialized, .timeLimit(.minutes(2)))
struct ShopMessagingTests {
    /// Polls `condition` until it holds or `timeout` passes (generous for a loaded machine).
    static func eventually(
        timeout: Duration = .seconds(30), _ what: String, _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("timed out waiting until \(what)")
        throw CancellationError()
    }

    static func notifications(_ shop: ShopHarness, user: String = "alice") async throws -> [ShopNotification] {
        let reply = try await shop.send(.GET, "notifications", "/notifications?user=\(user)", as: user)
        try #require(reply.status == 200, "\(reply.text)")
        return try JSONDecoder().decode([ShopNotification].self, from: reply.body)
    }

    @Test(
        "a placed order becomes one notification per event (placed, confirmed), even when an event is delivered twice")
    func orderBecomesOneNotification() async throws {
        try await withShop { shop in
            let placed = try await shop.send(.POST, "orders", "/orders", json: ShopTests.order)
            #expect(placed.status == 201)
            let order = try JSONDecoder().decode(Order.self, from: placed.body)

            try await Self.eventually("alice has both notifications for \(order.id)") {
                try await Self.notifications(shop).filter { $0.orderId == order.id }.count == 2
            }
            // Newest first.
            let notes = try await Self.notifications(shop)
            #expect(notes.map(\.kind) == ["order.confirmed", "order.placed"])
            #expect(notes.allSatisfy { $0.userId == "alice" && $0.orderId == order.id })
            #expect(notes.last?.text == "Your order \(order.id) of 25.00 was placed.")
            #expect(notes.first?.text == "Your order \(order.id) is confirmed: 25.00 paid.")
            // The relay empties the outbox (order.placed, then order.confirmed).
            try await Self.eventually("the outbox is empty") {
                try await shop.shop.orders.store.read { db in try Outbox.pendingCount(in: db) } == 0
            }

            // The same event again, as a relay that died between publishing and marking would send it.
            let log = try await shop.shop.broker.log()
            let placedID = try #require(
                try await shop.shop.orders.book.events.readStream("order-\(order.id)").first?.id.uuidString.lowercased()
            )
            #expect(
                try await shop.shop.notifications.store.read { db in
                    try String.fetchAll(db, sql: "SELECT event_id FROM aviary_inbox")
                }.contains(placedID))
            let event = try CloudEvent(
                id: placedID,
                source: OrderPlaced.source, type: OrderPlaced.type, subject: order.id,
                json: OrderPlaced(orderId: order.id, userId: "alice", totalCents: 2500, items: order.items))
            try await log.publish([OutgoingMessage(topic: OrderPlaced.topic, event: event)])
            try await Self.eventually("the notifications group consumed everything") {
                let group = try await log.topics().first { $0.name == OrderPlaced.topic }?.groups.first {
                    $0.name == NotificationsService.group
                }
                return group?.lag == 0
            }
            #expect(try await Self.notifications(shop).filter { $0.orderId == order.id }.count == 2)
            // Each event once: order.placed and order.confirmed.
            let inboxed = try await shop.shop.notifications.store.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM aviary_inbox") ?? 0
            }
            #expect(inboxed == 2)

            // notifications' /metrics: three messages handled (the duplicate too: the inbox
            // skipped its effect), and the log's topic.
            let metrics = try await shop.send(.GET, "notifications", "/metrics").text
            let labels = #"topic="\#(OrderPlaced.topic)",group="\#(NotificationsService.group)""#
            #expect(
                metrics.contains(#"aviary_messaging_processed_total{\#(labels),outcome="success"} 3"#), "\(metrics)")
            #expect(metrics.contains(#"aviary_messaging_topic_messages{topic="\#(OrderPlaced.topic)"}"#))
            // orders' relay published both events (order.placed, order.confirmed); it counts
            // a batch right after deleting its rows, so the count may trail the empty outbox.
            try await Self.eventually("orders' relay counted both events") {
                try await shop.send(.GET, "orders", "/metrics").text.contains("aviary_outbox_published_total 2")
            }
        }
    }

    @Test("an order placed while notifications is down is notified once it is back")
    func notificationsCatchUp() async throws {
        try await withShop { shop in
            try await shop.stop("notifications")
            let placed = try await shop.send(.POST, "orders", "/orders", json: ShopTests.order)
            #expect(placed.status == 201)
            let order = try JSONDecoder().decode(Order.self, from: placed.body)
            try await shop.start("notifications")
            try await Self.eventually("the notifications for \(order.id) arrived") {
                try await Self.notifications(shop).filter { $0.orderId == order.id }.count == 2
            }
            #expect(try await Self.notifications(shop).count == 2)
        }
    }

    @Test("notifications are private: no token is a 401, another user's are a 403, no user a 400")
    func notificationsArePrivate() async throws {
        try await withShop { shop in
            #expect(try await shop.send(.GET, "notifications", "/notifications?user=alice", as: nil).status == 401)
            let other = try await shop.send(.GET, "notifications", "/notifications?user=bob", as: "alice")
            #expect(other.status == 403)
            #expect((try other.json()["type"] as? String) == "urn:aviary:problem:not-your-account")
            #expect(try await shop.send(.GET, "notifications", "/notifications", as: "alice").status == 400)
            #expect(try await Self.notifications(shop, user: "bob").isEmpty)
        }
    }

    @Test("the message log lives in the data directory by default, or where --broker-url says")
    func brokerLocation() throws {
        var options = ShopOptions()
        #expect(options.resolvedBrokerURL == "sqlite://.aviary/shop/broker.db")
        options.dataDirectory = "/tmp/elsewhere"
        #expect(options.resolvedBrokerURL == "sqlite:///tmp/elsewhere/broker.db")
        options.brokerURL = "sqlite:///var/lib/shop/broker.db"
        #expect(options.resolvedBrokerURL == "sqlite:///var/lib/shop/broker.db")
    }
}
