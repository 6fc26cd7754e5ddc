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
import Tracing

/// Orders' write side: runs ``OrderAggregate`` commands against the event store in `orders.db`
/// and enqueues the public events (`order.placed`, `order.confirmed`, `order.cancelled`) in the
/// outbox **in the same transaction** as the append, so an event is published if and only if it
/// was recorded.
///
/// ```swift
/// let state = try await book.execute(.place(placed), on: placed.orderId)
/// ```
struct OrderBook: Sendable {
    let store: SQLiteStore
    let events: SQLiteEventStore
    let repository: AggregateRepository<OrderAggregate>

    /// The event types that leave the service (through the outbox, topic `orders`).
    static let published: Set<String> = [OrderPlaced.eventType, OrderConfirmed.eventType, OrderCancelled.eventType]

    init(store: SQLiteStore) throws {
        self.store = store
        self.events = try SQLiteEventStore(store: store)
        // Order streams hold a handful of events: no snapshots.
        self.repository = AggregateRepository(events: self.events, snapshotEvery: nil)
    }

    /// The order with that id, from its events; nil when there is no such order.
    func order(_ id: String) async throws -> OrderAggregate.State? {
        let loaded = try await self.repository.load(id)
        return loaded.version == 0 ? nil : loaded.state
    }

    /// Runs a command: loads the order, decides, appends the events with the expected version and
    /// enqueues the public ones in one transaction; decides again after a concurrent append.
    ///
    /// - Returns: the order's state afterwards.
    /// - Throws: the command's rejection (``AviaryCore/AviaryError``), the store's errors.
    @discardableResult
    func execute(_ command: OrderAggregate.Command, on id: String) async throws -> OrderAggregate.State {
        var attempt = 0
        while true {
            attempt += 1
            let loaded = try await self.repository.load(id)
            let decided = try OrderAggregate.decide(command, state: loaded.state)
            if decided.isEmpty { return loaded.state }
            var metadata = EventMetadata(correlationID: id)
            var messages: [OutgoingMessage] = []
            var new: [NewEvent] = []
            for event in decided {
                let recorded = try OrderAggregate.events.encode(event, metadata: metadata)
                new.append(recorded)
                metadata.causationID = recorded.id.uuidString.lowercased()
                guard Self.published.contains(recorded.type) else { continue }
                var message = OutgoingMessage(
                    topic: OrderPlaced.topic,
                    event: CloudEvent(
                        id: recorded.id.uuidString.lowercased(), source: OrderPlaced.source, type: recorded.type,
                        subject: id, dataContentType: "application/json", data: recorded.data))
                // The trace context travels with the event, so that its consumers continue the trace.
                if let tracer = self.store.tracer { message.injectTraceContext(using: tracer) }
                messages.append(message)
            }
            let stream = OrderAggregate.stream(id)
            let expected: ExpectedVersion = loaded.version == 0 ? .noStream : .exact(loaded.version)
            let append = new
            let outgoing = messages
            do {
                try await self.store.write("orders append") { db in
                    try self.events.append(append, to: stream, expectedVersion: expected, in: db)
                    for message in outgoing { try Outbox.enqueue(message, in: db) }
                }
            } catch is WrongExpectedVersion where attempt < 5 {
                continue
            }
            return decided.reduce(loaded.state, OrderAggregate.evolve)
        }
    }
}
