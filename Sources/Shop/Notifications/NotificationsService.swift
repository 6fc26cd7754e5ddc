//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryMessaging
import AviaryService
import AviaryStorage
import Foundation
import GRDB
import Hummingbird
import Logging
import Tracing

/// A notification for a customer.
public struct ShopNotification: Codable, Sendable, Equatable {
    public var id: Int64
    public var userId: String
    public var orderId: String
    public var kind: String
    public var text: String
    public var createdAt: String
}

/// The `notifications` service: tells customers what happened to their orders.
///
/// It consumes `order.placed`, `order.confirmed` and `order.cancelled` (with the reason, e.g. a
/// declined payment) from the `orders` topic as the consumer group `notifications`,
/// idempotently: the notification and the inbox record of the event commit in one transaction
/// of its own database, so a redelivered or republished event is acknowledged without a second
/// notification. `GET /notifications?user=ID` lists a customer's notifications, newest first,
/// behind a token with the `notifications` scope whose subject is that user.
struct NotificationsService: Sendable {
    /// The consumer group on the `orders` topic.
    static let group = "notifications"

    let store: SQLiteStore
    let inbox: Inbox
    let logger: Logger

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1: notifications") { db in
            try db.execute(
                sql: """
                    CREATE TABLE notifications (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        user_id TEXT NOT NULL,
                        order_id TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        text TEXT NOT NULL,
                        created_at TEXT NOT NULL
                    )
                    """)
            try db.execute(sql: "CREATE INDEX notifications_user ON notifications (user_id, id)")
        }
        Inbox.addMigrations(to: &migrations)
        return migrations
    }

    init(url: StoreURL, logger: Logger, tracer: (any Tracer)? = nil) throws {
        self.store = try SQLiteStore(url: url, migrations: Self.migrations, tracer: tracer)
        self.inbox = Inbox(store: self.store, group: Self.group)
        self.logger = logger
    }

    /// The service's health checks.
    var healthChecks: [HealthCheck] { [databaseCheck(self.store)] }

    /// The writes for one message of the `orders` topic, run by the ``AviaryMessaging/Inbox`` in
    /// the transaction that records the event (so at most once per event): `order.placed`,
    /// `order.confirmed` and `order.cancelled` become notifications; other event types change
    /// nothing.
    ///
    /// - Throws: when the event's data does not decode as its type (the delivery is then retried
    ///   and, after the group's deliveries, dead-lettered) or the store fails.
    static func apply(_ message: Message, in db: Database) throws {
        let event = message.event
        let note: (user: String, order: String, text: String)
        switch event.type {
        case OrderPlaced.eventType:
            let placed = try event.decodeData(as: OrderPlaced.self)
            note = (
                placed.userId, placed.orderId,
                "Your order \(placed.orderId) of \(Self.amount(placed.totalCents)) was placed."
            )
        case OrderConfirmed.eventType:
            let confirmed = try event.decodeData(as: OrderConfirmed.self)
            note = (
                confirmed.userId, confirmed.orderId,
                "Your order \(confirmed.orderId) is confirmed: \(Self.amount(confirmed.totalCents)) paid."
            )
        case OrderCancelled.eventType:
            let cancelled = try event.decodeData(as: OrderCancelled.self)
            note = (
                cancelled.userId, cancelled.orderId,
                "Your order \(cancelled.orderId) was cancelled (\(cancelled.reason)); nothing was charged."
            )
        default:
            return
        }
        try db.execute(
            sql: "INSERT INTO notifications (user_id, order_id, kind, text, created_at) VALUES (?, ?, ?, ?, ?)",
            arguments: [note.user, note.order, event.type, note.text, Date().formatted(.iso8601)])
    }

    static func amount(_ cents: Int) -> String {
        "\(cents / 100).\(String(format: "%02d", cents % 100))"
    }

    /// Adds the service's routes to `router`: a group that requires a token with the
    /// `notifications` scope (see ``ShopSystem``).
    func addRoutes(to router: some RouterMethods<AviaryRequestContext>) {
        let store = self.store
        router.get("/notifications") { request, context -> JSONResponse<[ShopNotification]> in
            let principal = try context.requirePrincipal()
            guard let user = request.uri.queryParameters["user"].map(String.init), !user.isEmpty else {
                throw HTTPProblem(
                    status: 400, slug: "invalid-query", detail: "user: expected the query parameter ?user=ID")
            }
            guard user == principal.subject else {
                throw HTTPProblem(
                    status: 403, slug: "not-your-account",
                    detail: "the token of \"\(principal.subject)\" cannot read the notifications of \"\(user)\"")
            }
            let notifications = try await store.read { db in
                try Row.fetchAll(
                    db, sql: "SELECT * FROM notifications WHERE user_id = ? ORDER BY id DESC LIMIT 100",
                    arguments: [user]
                ).map { row in
                    ShopNotification(
                        id: row["id"], userId: row["user_id"], orderId: row["order_id"], kind: row["kind"],
                        text: row["text"], createdAt: row["created_at"])
                }
            }
            return JSONResponse(status: .ok, value: notifications)
        }
    }
}
