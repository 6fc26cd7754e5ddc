//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import Foundation
import GRDB

/// The order-history read model (the query side of CQRS): one row per order in the view
/// `order_history` of `orders.db`, kept by a ``AviaryEventSourcing/ProjectionRunner`` from the
/// global event order, its checkpoint committed with each batch of rows. `GET /orders?user=ID`
/// reads it; `aviary events projections --store sqlite://.aviary/shop/orders.db` shows its lag.
///
/// ```swift
/// let runner = try ProjectionRunner(OrderHistory(), events: book.events, store: book.store)
/// try await runner.catchUp()
/// ```
struct OrderHistory: Projection {
    let name = "order_history"
    let version = 1
    let tables = ["order_history"]

    func setUp(_ context: ProjectionContext) throws {
        let table = context.table("order_history")
        try context.db.execute(
            sql: """
                CREATE TABLE \(table) (
                    id TEXT PRIMARY KEY NOT NULL,
                    user_id TEXT NOT NULL,
                    items TEXT NOT NULL,
                    total_cents INTEGER NOT NULL,
                    status TEXT NOT NULL,
                    payment_id TEXT,
                    cancel_reason TEXT,
                    placed_position INTEGER NOT NULL,
                    version INTEGER NOT NULL
                );
                CREATE INDEX \(table)_user ON \(table) (user_id, placed_position);
                """)
    }

    func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
        guard OrderAggregate.events.contains(event.type) else { return }
        let table = context.table("order_history")
        switch try OrderAggregate.events.decode(event) {
        case let placed as OrderPlaced:
            let items = String(decoding: try JSONEncoder().encode(placed.items), as: UTF8.self)
            try context.db.execute(
                sql: """
                    INSERT INTO \(table) (id, user_id, items, total_cents, status, placed_position, version)
                    VALUES (?, ?, ?, ?, 'pending', ?, ?)
                    """,
                arguments: [
                    placed.orderId, placed.userId, items, placed.totalCents, event.position, event.streamVersion,
                ])
        case let confirmed as OrderConfirmed:
            try context.db.execute(
                sql: "UPDATE \(table) SET status = 'confirmed', payment_id = ?, version = ? WHERE id = ?",
                arguments: [confirmed.paymentId, event.streamVersion, confirmed.orderId])
        case let cancelled as OrderCancelled:
            try context.db.execute(
                sql: "UPDATE \(table) SET status = 'cancelled', cancel_reason = ?, version = ? WHERE id = ?",
                arguments: [cancelled.reason, event.streamVersion, cancelled.orderId])
        default:
            try context.db.execute(
                sql: "UPDATE \(table) SET version = ? WHERE id = ?",
                arguments: [event.streamVersion, String(event.stream.dropFirst(OrderAggregate.category.count + 1))])
        }
    }

    /// A user's orders from the read model, newest first.
    static func orders(of user: String, limit: Int, in db: Database) throws -> [Order] {
        try Row.fetchAll(
            db, sql: "SELECT * FROM order_history WHERE user_id = ? ORDER BY placed_position DESC LIMIT ?",
            arguments: [user, limit]
        ).map { row in
            let items: String = row["items"]
            return Order(
                id: row["id"], userId: row["user_id"],
                items: try JSONDecoder().decode([OrderItem].self, from: Data(items.utf8)),
                totalCents: row["total_cents"], status: row["status"], paymentId: row["payment_id"],
                cancelReason: row["cancel_reason"])
        }
    }
}
