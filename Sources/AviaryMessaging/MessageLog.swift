//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A durable, partitioned message log with consumer groups: the contract every backend
/// (`sqlite://`, `postgres://`) implements and the conformance suite checks.
///
/// ## Semantics
/// - **Topics and partitions.** A topic has a fixed number of partitions. A message's partition
///   is ``Partitioner/partition(forKey:partitions:)`` of its key, so messages with one key keep
///   their order. Offsets within a partition start at 1 and grow by one per message.
/// - **Publishing** is atomic per call: all messages of one ``publish(_:)`` are durable when it
///   returns, or none are. A message with a future `deliverAt` waits in a schedule and is
///   appended to its partition (taking the next offset) once due, by the first ``receive(_:)`` or
///   ``publish(_:)`` on that topic after that time.
/// - **Consumer groups** (``subscribe(group:topic:options:)``) each see every message. Within a
///   group a partition is worked by one consumer at a time, in order: ``receive(_:)`` leases
///   partitions that no other consumer of the group holds and returns their next messages. A
///   partition's messages after an unacknowledged one are not delivered before it.
/// - **Ack** is cumulative within a partition: acknowledging a delivery acknowledges the earlier
///   deliveries of the same partition lease. When every leased message of a partition is
///   acknowledged the partition's lease ends.
/// - **Nack** acknowledges the earlier messages of the partition lease, ends the lease, and makes
///   the nacked message (and so the partition, for this group) deliverable again after the delay,
///   recording the error. **Lease expiry** has the same effect with no delay.
/// - **Poison**: a message that was delivered ``GroupOptions/maxDeliveries`` times and is nacked
///   or expires again goes, in one transaction, to the group's dead-letter topic (with the
///   reason, the last error and where it came from, in headers named `aviary-dlq-*`), and the
///   partition moves on; or, with ``PoisonPolicy/stopPartition``, the partition stops for the
///   group until ``resumePartition(group:topic:partition:skipHead:)``. If the move fails, the
///   message stays where it was.
/// - **Retention** (``applyRetention()``) deletes the oldest messages of each partition by age
///   and size, whether or not a group consumed them; a group whose cursor was behind is told once
///   in ``ReceivedBatch/gaps`` and the loss is counted in its ``GroupInfo/lostToRetention``.
/// - A stale lease (expired and taken over) makes ``ack(_:)`` and ``nack(_:redeliverAfter:error:)``
///   fail with ``MessagingError/Kind/leaseLost``; the new holder redelivers the message. Acking or
///   nacking a message the group has already acknowledged (by anyone) does nothing.
/// - **Delivery counts** (``Delivery/deliveryCount``) count the leases that included the
///   message, except those that ended (by nack or expiry) on an earlier message of the partition:
///   the messages after the one a lease failed on were not attempted and keep their count, so a
///   poison message does not use up the attempts of the messages behind it. ``release(_:)`` takes
///   its lease back out of the count. ``resumePartition(group:topic:partition:skipHead:)``
///   without `skipHead` starts the count of the stopped message again.
/// - **Dead-letter topics** are ordinary topics, created by ``subscribe(group:topic:options:)``
///   when missing (one partition, ``Retention/forever``), so that their order is the order of
///   arrival and a group may consume them. A replayed dead letter is appended again to the topic it
///   came from, so every group of that topic sees it again (consumers are idempotent).
///
/// Delivery is at least once: a consumer that crashes after its effect and before its ack sees
/// the message again. Consumers make their effect idempotent with an inbox in their own
/// database (the `source` and `id` of the event).
///
/// ```swift
/// let log = try await MessageLogs.open(url: "sqlite://.aviary/shop/broker.db")
/// try await log.createTopic("orders", TopicOptions(partitions: 8))
/// try await log.subscribe(group: "notifications", topic: "orders", options: GroupOptions())
/// let batch = try await log.receive(ReceiveRequest(group: "notifications", topic: "orders", consumer: "n-1"))
/// for delivery in batch.deliveries { try await handle(delivery.message); try await log.ack(delivery) }
/// ```
public protocol MessageLog: Sendable {
    /// Creates a topic, or checks that an existing one has the same partition count (and updates
    /// its retention).
    ///
    /// - Throws: ``MessagingError`` (`.invalidArgument`) for a bad name or partition count, or a
    ///   partition count different from the existing topic's.
    func createTopic(_ topic: String, _ options: TopicOptions) async throws

    /// Appends messages in one durable transaction and returns their positions, in order.
    ///
    /// - Throws: ``MessagingError`` (`.notFound`) for an unknown topic; the storage's error when
    ///   the transaction fails (then nothing was appended).
    @discardableResult
    func publish(_ messages: [OutgoingMessage]) async throws -> [MessagePosition]

    /// Creates a consumer group on a topic, or updates the options of an existing one.
    func subscribe(group: String, topic: String, options: GroupOptions) async throws

    /// Leases the next messages of free partitions to `request.consumer`. Returns an empty batch
    /// when nothing is deliverable; it never waits.
    func receive(_ request: ReceiveRequest) async throws -> ReceivedBatch

    /// Acknowledges a delivery and the earlier ones of its partition lease.
    func ack(_ delivery: Delivery) async throws

    /// Gives a delivery back as failed: it is redelivered after `redeliverAfter` (or treated as
    /// poison when it has been delivered `maxDeliveries` times).
    func nack(_ delivery: Delivery, redeliverAfter: Duration, error: String) async throws

    /// Gives deliveries back unprocessed (a consumer shutting down): their partitions are free
    /// at once and the deliveries do not count towards `maxDeliveries`. Deliveries whose lease was
    /// lost meanwhile are skipped.
    func release(_ deliveries: [Delivery]) async throws

    /// Extends the leases of deliveries still being worked on, to `duration` from now.
    ///
    /// - Throws: ``MessagingError`` `.leaseLost` when a lease was taken over.
    func extendLeases(_ deliveries: [Delivery], by duration: Duration) async throws

    /// A sequence that yields when messages may have become deliverable on `topic` (a publish by
    /// any process, a nack delay ending). Backends without notifications yield on a short timer;
    /// consumers still call ``receive(_:)`` to find out.
    func wakeUps(topic: String) -> AsyncStream<Void>

    /// Deletes messages beyond each topic's retention and reports how many went. Messages a group
    /// had not acknowledged count in its ``GroupInfo/lostToRetention`` at once and are reported in
    /// the group's next ``receive(_:)`` (``ReceivedBatch/gaps``).
    @discardableResult
    func applyRetention() async throws -> Int

    /// Every topic with its partitions and groups, for inspection (`aviary broker topics`).
    func topics() async throws -> [TopicInfo]

    /// The messages in a dead-letter topic, oldest first.
    ///
    /// - Throws: ``MessagingError`` `.notFound` for an unknown topic, `.invalidArgument` for a topic
    ///   that is no group's dead-letter topic (the same for replay and purge).
    func deadLetters(topic: String, limit: Int) async throws -> [DeadLetter]

    /// Publishes a dead letter's original message again to the topic it came from (same key,
    /// event and headers, without the `aviary-dlq-*` ones) and removes it from the dead-letter
    /// topic, in one transaction.
    ///
    /// - Throws: ``MessagingError`` `.notFound` when there is no dead letter at `position`.
    func replayDeadLetter(_ position: MessagePosition) async throws

    /// Removes dead letters for good; `nil` removes all of the topic's.
    @discardableResult
    func purgeDeadLetters(topic: String, positions: [MessagePosition]?) async throws -> Int

    /// Restarts a partition stopped by ``PoisonPolicy/stopPartition``; `skipHead` dead-letters
    /// the poison message first instead of retrying it.
    ///
    /// - Throws: ``MessagingError`` `.invalidArgument` when the partition is not stopped.
    func resumePartition(group: String, topic: String, partition: Int, skipHead: Bool) async throws

    /// Closes connections and files; the log is unusable afterwards.
    func close() async throws
}

extension MessageLog {
    /// The default dead-letter topic of a group on a topic: `<topic>.<group>.dlq`.
    public static func deadLetterTopic(for topic: String, group: String) -> String {
        "\(topic).\(group).dlq"
    }
}

/// A topic as ``MessageLog/topics()`` reports it.
public struct TopicInfo: Sendable, Hashable, Codable {
    /// The topic.
    public var name: String
    /// Its partitions.
    public var partitions: [PartitionInfo]
    /// Its groups.
    public var groups: [GroupInfo]
    /// Messages scheduled for later delivery.
    public var scheduled: Int
}

/// One partition of a topic.
public struct PartitionInfo: Sendable, Hashable, Codable {
    /// The partition.
    public var partition: Int
    /// The oldest retained offset (0 when empty).
    public var firstOffset: Int64
    /// The newest offset (0 when empty).
    public var lastOffset: Int64
    /// Retained messages.
    public var depth: Int64
    /// Retained bytes.
    public var bytes: Int64
}

/// One group on a topic.
public struct GroupInfo: Sendable, Hashable, Codable {
    /// The group.
    public var name: String
    /// Messages not yet acknowledged by the group, over all partitions.
    public var lag: Int64
    /// Age of the oldest unacknowledged message, if any.
    public var oldestUnackedAge: Duration?
    /// Partitions stopped on a poison message.
    public var stoppedPartitions: [Int]
    /// Messages deleted by retention before the group consumed them.
    public var lostToRetention: Int64
    /// Messages moved to the dead-letter topic.
    public var deadLettered: Int64
}

/// A message in a dead-letter topic, with why it is there.
public struct DeadLetter: Sendable, Hashable {
    /// The dead letter itself (in the dead-letter topic).
    public var message: Message
    /// Where it came from.
    public var origin: MessagePosition
    /// The group that gave up on it.
    public var group: String
    /// `max-deliveries`, `lease-expired` or `rejected`.
    public var reason: String
    /// The last error a consumer reported.
    public var lastError: String?
    /// How many times it was delivered.
    public var deliveries: Int

    /// Reads where a dead letter came from and why out of its `aviary-dlq-*` headers
    /// (``DeadLetterHeader``); a header that is missing reads as empty or zero.
    ///
    /// ```swift
    /// let letter = DeadLetter(message: stored)
    /// print(letter.origin, letter.reason, letter.lastError ?? "")
    /// ```
    public init(message: Message) {
        let headers = message.headers
        self.message = message
        self.origin = MessagePosition(
            topic: headers[DeadLetterHeader.topic] ?? "",
            partition: headers[DeadLetterHeader.partition].flatMap { Int($0) } ?? 0,
            offset: headers[DeadLetterHeader.offset].flatMap { Int64($0) } ?? 0)
        self.group = headers[DeadLetterHeader.group] ?? ""
        self.reason = headers[DeadLetterHeader.reason] ?? ""
        self.lastError = headers[DeadLetterHeader.error]
        self.deliveries = headers[DeadLetterHeader.deliveries].flatMap { Int($0) } ?? 0
    }
}

/// Header names a dead letter carries.
public enum DeadLetterHeader {
    /// The topic it came from.
    public static let topic = "aviary-dlq-topic"
    /// The partition it came from.
    public static let partition = "aviary-dlq-partition"
    /// The offset it had.
    public static let offset = "aviary-dlq-offset"
    /// The group that gave up.
    public static let group = "aviary-dlq-group"
    /// Why.
    public static let reason = "aviary-dlq-reason"
    /// The last error.
    public static let error = "aviary-dlq-error"
    /// Deliveries made.
    public static let deliveries = "aviary-dlq-deliveries"
}

/// An error of the messaging layer.
public struct MessagingError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Hashable {
        /// A name, URL or option is not acceptable.
        case invalidArgument
        /// A topic, group or dead letter does not exist.
        case notFound
        /// The lease was lost (expired and taken over); the message will be redelivered.
        case leaseLost
        /// The store could not be reached or answered with an error.
        case unavailable
    }

    /// What went wrong.
    public var kind: Kind
    /// A sentence for people.
    public var message: String

    /// Creates an error.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { self.message }
}

/// Maps keys to partitions; every backend and process computes the same mapping.
public enum Partitioner {
    /// The partition of `key`: FNV-1a (64 bit) of its UTF-8 bytes, modulo `partitions`.
    ///
    /// ```swift
    /// Partitioner.partition(forKey: "order-17", partitions: 8)   // always the same value in 0..<8
    /// ```
    public static func partition(forKey key: String, partitions: Int) -> Int {
        precondition(partitions > 0, "a topic has at least one partition")
        return Int(Self.hash(key) % UInt64(partitions))
    }

    /// FNV-1a (64 bit) of `key`'s UTF-8 bytes: what ``partition(forKey:partitions:)`` takes modulo
    /// the partition count (PostgreSQL's `aviary_publish` takes it from its two 32-bit halves).
    static func hash(_ key: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }

    /// Whether `name` is an acceptable topic or group name: 1–200 characters of letters, digits,
    /// `.`, `_` and `-`.
    public static func isValidName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 200 else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == 0x2e || byte == 0x5f || byte == 0x2d
        }
    }
}
