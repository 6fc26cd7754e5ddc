//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import GRDB

extension Inbox {
    /// A handler for the consumer runtime (`MessageConsumer`) that applies each delivery through
    /// the inbox: the effect and the record commit together; a duplicate returns at once (and
    /// is acknowledged) without running the effect; an effect that throws records nothing and
    /// is nacked by the runtime.
    ///
    /// ```swift
    /// let inbox = Inbox(store: store, group: "notifications")
    /// let consumer = MessageConsumer(
    ///     log: log, configuration: .init(group: "notifications", topic: "orders"), logger: logger,
    ///     handler: inbox.handler { db, message in
    ///         let placed = try message.event.decodeData(as: OrderPlaced.self)
    ///         try db.execute(sql: "INSERT INTO notifications (user_id) VALUES (?)", arguments: [placed.userId])
    ///     })
    /// ```
    ///
    /// - Parameter effect: the handler's writes for one message (see ``process(_:_:)``).
    /// - Returns: a handler taking one delivery.
    public func handler(
        _ effect: @escaping @Sendable (Database, Message) throws -> Void
    ) -> @Sendable (Delivery) async throws -> Void {
        { delivery in
            let message = delivery.message
            try await self.process(message) { db in try effect(db, message) }
        }
    }

    /// Works one received batch straight against the log: each delivery, in order, goes through
    /// ``process(_:_:)`` and is acknowledged; a delivery whose effect fails is nacked (redelivered
    /// after `redeliverAfter`) and the rest of its partition in the batch is left alone, so the
    /// order per key holds.
    ///
    /// Acknowledgements are cumulative per partition, so one ack goes to the log per partition
    /// run, after its last effect committed. A crash before that ack redelivers the run; the
    /// inbox skips what was already applied.
    ///
    /// ```swift
    /// let batch = try await log.receive(ReceiveRequest(group: "notifications", topic: "orders", consumer: id))
    /// let summary = try await inbox.consume(batch, from: log) { db, message in
    ///     try record(message, db)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - batch: what ``MessageLog/receive(_:)`` returned.
    ///   - log: the log to acknowledge to.
    ///   - redeliverAfter: the nack delay after a failed effect.
    ///   - effect: the handler's writes for one message (see ``process(_:_:)``).
    /// - Returns: how many deliveries were applied, skipped as duplicates, and failed.
    /// - Throws: the log's error when an ack or nack fails (other than a lost lease, which only
    ///   means the message comes again and the inbox absorbs it); the store's errors count as
    ///   failed effects.
    @discardableResult
    public func consume(
        _ batch: ReceivedBatch, from log: any MessageLog, redeliverAfter: Duration = .seconds(1),
        _ effect: @escaping @Sendable (Database, Message) throws -> Void
    ) async throws -> InboxSummary {
        var summary = InboxSummary()
        var pendingAck: [PartitionKey: Delivery] = [:]
        var failedPartitions: Set<PartitionKey> = []
        for delivery in batch.deliveries {
            let partition = PartitionKey(delivery)
            if failedPartitions.contains(partition) { continue }
            do {
                let message = delivery.message
                switch try await self.process(message, { db in try effect(db, message) }) {
                case .processed: summary.processed += 1
                case .duplicate: summary.duplicates += 1
                }
                pendingAck[partition] = delivery
            } catch {
                summary.failed += 1
                failedPartitions.insert(partition)
                // The nack acknowledges the partition's earlier deliveries too.
                pendingAck[partition] = nil
                try await Self.settle {
                    try await log.nack(delivery, redeliverAfter: redeliverAfter, error: "\(error)")
                }
            }
        }
        for delivery in pendingAck.values {
            try await Self.settle { try await log.ack(delivery) }
        }
        return summary
    }

    /// Runs an ack or nack; a lost lease is not a failure here (the message is redelivered and
    /// the inbox absorbs it).
    private static func settle(_ call: () async throws -> Void) async throws {
        do {
            try await call()
        } catch let error as MessagingError where error.kind == .leaseLost {
            return
        }
    }

    private struct PartitionKey: Hashable {
        var topic: String
        var partition: Int
        init(_ delivery: Delivery) {
            self.topic = delivery.message.position.topic
            self.partition = delivery.message.position.partition
        }
    }
}

/// What ``Inbox/consume(_:from:redeliverAfter:_:)`` did with a batch.
public struct InboxSummary: Sendable, Hashable {
    /// Deliveries whose effect ran and committed.
    public var processed = 0
    /// Deliveries skipped as already processed.
    public var duplicates = 0
    /// Deliveries whose effect failed (nacked).
    public var failed = 0

    /// An empty summary.
    public init() {}
}
