//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryMessaging
public import GRDB

/// Choreography: a service reacts to an event by changing its own data and emitting the next
/// event, with no coordinator.
///
/// ``react(to:inbox:_:)`` does all of it in **one transaction** of the service's store: the inbox
/// record (so a redelivered event is skipped), the reaction's writes, and the next events in the
/// outbox (published by the ``OutboxRelay`` after commit). A crash anywhere leaves either all of
/// it or none of it; a redelivery after a crash applies it once.
///
/// ```swift
/// let inbox = Inbox(store: store, group: "payments")
/// let consumer = MessageConsumer(log: log, configuration: .init(group: "payments", topic: "inventory"),
///                                logger: logger) { delivery in
///     try await Choreography.react(to: delivery.message, inbox: inbox) { db, message in
///         let reserved = try message.event.decodeData(as: StockReserved.self)
///         try db.execute(sql: "INSERT INTO charges (order_id) VALUES (?)", arguments: [reserved.orderId])
///         let charged = try CloudEvent(source: "/shop/payments", type: "payment.charged",
///                                      subject: reserved.orderId, json: ["orderId": reserved.orderId])
///         return [OutgoingMessage(topic: "payments", event: charged)]
///     }
/// }
/// ```
public enum Choreography {
    /// Applies `reaction` to `message` once (through `inbox`) and enqueues the messages it returns
    /// in the outbox, in the same transaction.
    ///
    /// - Parameters:
    ///   - message: the delivered event.
    ///   - inbox: the consumer's inbox; its store's migrations include the inbox and outbox tables.
    ///   - reaction: the writes for the event; returns the next events (none is fine).
    /// - Returns: ``InboxOutcome/duplicate`` when the event had been handled (nothing ran).
    /// - Throws: what `reaction` or the outbox throws; then nothing was recorded.
    @discardableResult
    public static func react(
        to message: Message, inbox: Inbox,
        _ reaction: @escaping @Sendable (Database, Message) throws -> [OutgoingMessage]
    ) async throws -> InboxOutcome {
        try await inbox.process(message) { db in
            let next = try reaction(db, message)
            if !next.isEmpty { try Outbox.enqueue(next, in: db) }
        }
    }
}
