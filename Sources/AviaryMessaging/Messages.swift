//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import Foundation

/// A message to append to a topic: a CloudEvents envelope, the key that orders it, and headers.
///
/// Messages with the same `key` land in the same partition and are delivered to each consumer
/// group in the order they were published. The trace context travels in `headers`
/// (`traceparent`, `tracestate`), so a consumer's span continues the producer's trace.
///
/// ```swift
/// let placed = try CloudEvent(source: "/shop/orders", type: "order.placed", subject: "order-17",
///                             json: OrderPlaced(orderID: "order-17", total: 4200))
/// try await log.publish([OutgoingMessage(topic: "orders", key: "order-17", event: placed)])
/// ```
public struct OutgoingMessage: Sendable, Hashable {
    /// The topic to append to; it must exist (``MessageLog/createTopic(_:_:)``).
    public var topic: String
    /// The ordering key; the partition is ``Partitioner/partition(forKey:partitions:)`` of it.
    public var key: String
    /// The envelope; consumers deduplicate on its `source` and `id`.
    public var event: CloudEvent
    /// Transport headers (trace context, producer hints); small strings only.
    public var headers: [String: String]
    /// Deliver no earlier than this time (delayed delivery); `nil` delivers at once. A delayed
    /// message takes its place in the partition's order when it becomes due, not when published.
    public var deliverAt: Date?

    /// Creates a message; `key` defaults to the event's subject, or its id when it has none.
    public init(
        topic: String, key: String? = nil, event: CloudEvent, headers: [String: String] = [:],
        deliverAt: Date? = nil
    ) {
        self.topic = topic
        self.key = key ?? event.subject ?? event.id
        self.event = event
        self.headers = headers
        self.deliverAt = deliverAt
    }
}

/// Where a message sits in the log: a topic, a partition and an offset (1, 2, 3, ... per partition).
public struct MessagePosition: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The topic.
    public var topic: String
    /// The partition, `0 ..< partitions`.
    public var partition: Int
    /// The offset within the partition; offsets grow by one per appended message and are never
    /// reused. A delayed message that is not yet due has no offset (`0`).
    public var offset: Int64

    /// Creates a position.
    public init(topic: String, partition: Int, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }

    public static func < (lhs: MessagePosition, rhs: MessagePosition) -> Bool {
        (lhs.topic, lhs.partition, lhs.offset) < (rhs.topic, rhs.partition, rhs.offset)
    }

    /// `topic/partition@offset`.
    public var description: String { "\(self.topic)/\(self.partition)@\(self.offset)" }
}

/// A message as stored in the log.
public struct Message: Sendable, Hashable {
    /// Where it is.
    public var position: MessagePosition
    /// Its ordering key.
    public var key: String
    /// Its envelope.
    public var event: CloudEvent
    /// Its headers.
    public var headers: [String: String]
    /// When it was appended to the partition (for a delayed message: when it became due).
    public var appendedAt: Date

    /// Creates a stored message (backends and tests).
    public init(position: MessagePosition, key: String, event: CloudEvent, headers: [String: String], appendedAt: Date)
    {
        self.position = position
        self.key = key
        self.event = event
        self.headers = headers
        self.appendedAt = appendedAt
    }
}

/// One message leased to one consumer of a group: process it, then ``MessageLog/ack(_:)`` or
/// ``MessageLog/nack(_:redeliverAfter:error:)`` it before ``leaseExpiresAt``.
public struct Delivery: Sendable, Hashable {
    /// The message.
    public var message: Message
    /// The consumer group it was leased to.
    public var group: String
    /// The consumer that holds the lease.
    public var consumer: String
    /// How many times this message has been delivered to this group, this delivery included (1 the
    /// first time).
    public var deliveryCount: Int
    /// The lease's identity: an ack or nack with a stale lease (expired and taken by another
    /// consumer) fails with ``MessagingError/Kind/leaseLost``.
    public var leaseID: String
    /// When the lease runs out; the message is then redelivered to the group.
    public var leaseExpiresAt: Date

    /// Creates a delivery (backends).
    public init(
        message: Message, group: String, consumer: String, deliveryCount: Int, leaseID: String, leaseExpiresAt: Date
    ) {
        self.message = message
        self.group = group
        self.consumer = consumer
        self.deliveryCount = deliveryCount
        self.leaseID = leaseID
        self.leaseExpiresAt = leaseExpiresAt
    }
}

/// How long a topic keeps its messages. Messages go from the head of each partition, oldest first,
/// whether or not every group consumed them; a group that had not is told (``RetentionGap``).
public struct Retention: Sendable, Hashable {
    /// Delete messages appended longer ago than this; `nil` keeps them forever. A partition is
    /// cut before its oldest message young enough to keep: a message stamped older than one
    /// before it (the wall clock stepped back) goes with that one, so no message younger than
    /// this is ever deleted.
    public var maxAge: Duration?
    /// Keep at most this many bytes of messages per partition; `nil` has no limit.
    public var maxBytesPerPartition: Int64?

    /// Creates a retention policy.
    public init(maxAge: Duration? = .seconds(7 * 24 * 3600), maxBytesPerPartition: Int64? = nil) {
        self.maxAge = maxAge
        self.maxBytesPerPartition = maxBytesPerPartition
    }

    /// Keeps everything (dead-letter topics use it).
    public static let forever = Retention(maxAge: nil, maxBytesPerPartition: nil)
}

/// How a topic is laid out.
public struct TopicOptions: Sendable, Hashable {
    /// The number of partitions, fixed at creation: the most consumers of one group that work at
    /// once.
    public var partitions: Int
    /// How long messages are kept.
    public var retention: Retention

    /// Creates topic options.
    public init(partitions: Int = 8, retention: Retention = Retention()) {
        self.partitions = partitions
        self.retention = retention
    }
}

/// What a group does with a message that failed ``GroupOptions/maxDeliveries`` times.
public enum PoisonPolicy: String, Sendable, Hashable, Codable {
    /// Move it to the group's dead-letter topic with the reason and last error, and go on.
    case deadLetter = "dead-letter"
    /// Stop the partition for this group (later messages of the partition wait) until an operator
    /// repairs it: for streams where order matters more than progress.
    case stopPartition = "stop-partition"
}

/// Where a new group starts reading.
public enum StartPosition: String, Sendable, Hashable, Codable {
    /// From the oldest retained message.
    case earliest
    /// From messages appended after the group was created.
    case latest
}

/// A consumer group's settings on one topic.
public struct GroupOptions: Sendable, Hashable {
    /// Deliveries of one message after which it counts as poison.
    public var maxDeliveries: Int
    /// What happens to poison.
    public var onPoison: PoisonPolicy
    /// Where a new group starts (ignored for an existing group).
    public var start: StartPosition
    /// The dead-letter topic; `nil` means ``MessageLog/deadLetterTopic(for:group:)``.
    public var deadLetterTopic: String?

    /// Creates group options.
    public init(
        maxDeliveries: Int = 5, onPoison: PoisonPolicy = .deadLetter, start: StartPosition = .earliest,
        deadLetterTopic: String? = nil
    ) {
        self.maxDeliveries = maxDeliveries
        self.onPoison = onPoison
        self.start = start
        self.deadLetterTopic = deadLetterTopic
    }
}

/// Messages a group never saw because retention deleted them first.
public struct RetentionGap: Sendable, Hashable {
    /// The group.
    public var group: String
    /// The topic.
    public var topic: String
    /// The partition.
    public var partition: Int
    /// The first offset the group missed.
    public var firstMissed: Int64
    /// The last offset the group missed.
    public var lastMissed: Int64

    /// Creates a gap (backends and tests).
    ///
    /// ```swift
    /// let gap = RetentionGap(group: "mailer", topic: "orders", partition: 0, firstMissed: 1, lastMissed: 3)
    /// ```
    public init(group: String, topic: String, partition: Int, firstMissed: Int64, lastMissed: Int64) {
        self.group = group
        self.topic = topic
        self.partition = partition
        self.firstMissed = firstMissed
        self.lastMissed = lastMissed
    }
}

/// What one ``MessageLog/receive(_:)`` call returns.
public struct ReceivedBatch: Sendable {
    /// The leased messages, in partition order (several partitions may be mixed).
    public var deliveries: [Delivery]
    /// Messages the group lost to retention, reported once each; the group's cursor moved past them.
    public var gaps: [RetentionGap]

    /// Creates a batch.
    public init(deliveries: [Delivery], gaps: [RetentionGap] = []) {
        self.deliveries = deliveries
        self.gaps = gaps
    }
}

/// A request for messages.
public struct ReceiveRequest: Sendable, Hashable {
    /// The consumer group.
    public var group: String
    /// The topic (the group must be subscribed).
    public var topic: String
    /// Who asks: leases are held per consumer (unique per process and runtime instance).
    public var consumer: String
    /// The most messages to lease.
    public var maxMessages: Int
    /// The most partitions to lease at once (each leased partition is worked in order).
    public var maxPartitions: Int
    /// How long the leases last.
    public var lease: Duration

    /// Creates a request.
    public init(
        group: String, topic: String, consumer: String, maxMessages: Int = 64, maxPartitions: Int = .max,
        lease: Duration = .seconds(30)
    ) {
        self.group = group
        self.topic = topic
        self.consumer = consumer
        self.maxMessages = maxMessages
        self.maxPartitions = maxPartitions
        self.lease = lease
    }
}
