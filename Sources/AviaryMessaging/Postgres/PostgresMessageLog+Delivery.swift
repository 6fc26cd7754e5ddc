//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import Logging
import PostgresNIO

// Receiving, acknowledging and poison: the consumer side of the log.
extension PostgresMessageLog {
    /// One (group, topic, partition) state row; changed in memory, then saved in one statement.
    /// Encoded with snake-case keys, its fields are the row's columns (a nil field is left out).
    struct PartitionState: Sendable, Equatable, Encodable {
        var partition: Int
        var nextOffset: Int64
        var leaseOwner: String?
        var leaseID: String?
        var leaseExpiresAt: Int64?
        var leaseThrough: Int64?
        var leasedAt: Int64
        var availableAt: Int64
        var deliveries: DeliveryCounts
        var lastError: String?
        var stopped: Bool
        var stopReason: String?
        var lostToRetention: Int64
        var deadLettered: Int64

        static let columns = """
            partition, next_offset, lease_owner, lease_id, lease_expires_at, lease_through, leased_at, available_at,
            deliveries, last_error, stopped, stop_reason, lost_to_retention, dead_lettered
            """

        init(row: PostgresRandomAccessRow) throws {
            self.partition = try row["partition"].decode(Int.self)
            self.nextOffset = try row["next_offset"].decode(Int64.self)
            self.leaseOwner = try row["lease_owner"].decode(String?.self)
            self.leaseID = try row["lease_id"].decode(String?.self)
            self.leaseExpiresAt = try row["lease_expires_at"].decode(Int64?.self)
            self.leaseThrough = try row["lease_through"].decode(Int64?.self)
            self.leasedAt = try row["leased_at"].decode(Int64.self)
            self.availableAt = try row["available_at"].decode(Int64.self)
            self.deliveries = DeliveryCounts(text: try row["deliveries"].decode(String.self))
            self.lastError = try row["last_error"].decode(String?.self)
            self.stopped = try row["stopped"].decode(Bool.self)
            self.stopReason = try row["stop_reason"].decode(String?.self)
            self.lostToRetention = try row["lost_to_retention"].decode(Int64.self)
            self.deadLettered = try row["dead_lettered"].decode(Int64.self)
        }

        /// One partition's state, locked for this transaction (waiting for a concurrent holder).
        static func fetch(
            _ connection: PostgresConnection, group: String, topic: String, partition: Int, relax: String = "",
            _ logger: Logger
        ) async throws -> PartitionState {
            let rows = try await PostgresMessageLog.rows(
                connection,
                """
                SELECT \(unescaped: columns)\(unescaped: relax) FROM aviary_group_partitions
                WHERE group_name = \(group) AND topic = \(topic) AND partition = \(partition)
                FOR UPDATE
                """, logger)
            guard let row = rows.first else {
                throw MessagingError(
                    .notFound, "group \(group) has no partition \(partition) of topic \(topic) (not subscribed?)")
            }
            return try PartitionState(row: row)
        }

        func save(_ connection: PostgresConnection, group: String, topic: String, _ logger: Logger) async throws {
            _ = try await PostgresMessageLog.rows(
                connection, SavePartitionStatement(self, group: group, topic: topic), logger)
        }

        /// Saves the states of several partitions of one group, in one statement.
        static func save(
            _ states: [PartitionState], _ connection: PostgresConnection, group: String, topic: String,
            _ logger: Logger
        ) async throws {
            guard states.count > 1 else {
                try await states.first?.save(connection, group: group, topic: topic, logger)
                return
            }
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            let json = String(decoding: try encoder.encode(states), as: UTF8.self)
            try await connection.query(
                """
                UPDATE aviary_group_partitions AS gp SET next_offset = v.next_offset, lease_owner = v.lease_owner,
                    lease_id = v.lease_id, lease_expires_at = v.lease_expires_at, lease_through = v.lease_through,
                    leased_at = v.leased_at, available_at = v.available_at, deliveries = v.deliveries,
                    last_error = v.last_error, stopped = v.stopped, stop_reason = v.stop_reason,
                    lost_to_retention = v.lost_to_retention, dead_lettered = v.dead_lettered
                FROM jsonb_to_recordset(\(json)::jsonb) AS v(
                    partition integer, next_offset bigint, lease_owner text, lease_id text, lease_expires_at bigint,
                    lease_through bigint, leased_at bigint, available_at bigint, deliveries text, last_error text,
                    stopped boolean, stop_reason text, lost_to_retention bigint, dead_lettered bigint)
                WHERE gp.group_name = \(group) AND gp.topic = \(topic) AND gp.partition = v.partition
                """, logger: logger)
        }

        /// Ends the lease on a failure of the head (a nack or an expiry): the later messages of
        /// the lease were not attempted, so their delivery does not count.
        mutating func endLeaseOnHead() {
            if let through = self.leaseThrough {
                self.deliveries.add(-1, from: self.nextOffset + 1, through: through)
                self.deliveries.forget(before: self.nextOffset)
            }
            self.endLease()
        }

        mutating func endLease() {
            self.leaseOwner = nil
            self.leaseID = nil
            self.leaseExpiresAt = nil
            self.leaseThrough = nil
        }

        /// Moves the head to `offset` (the earlier ones are acknowledged or skipped).
        mutating func moveHead(to offset: Int64) {
            guard offset > self.nextOffset else { return }
            self.nextOffset = offset
            self.deliveries.forget(before: offset)
            self.lastError = nil
        }
    }

    // MARK: Receiving

    public func receive(_ request: ReceiveRequest) async throws -> ReceivedBatch {
        guard request.maxMessages >= 1, request.maxPartitions >= 1, request.lease > .zero else {
            throw MessagingError(.invalidArgument, "receive: maxMessages, maxPartitions and lease must be positive")
        }
        let now = self.nowMillis
        let leaseMillis = Self.millis(request.lease)
        return try await self.acknowledging { connection, relax, logger in
            var free = try await FreePartitions.fetch(connection, request, now: now, relax: relax, logger)
            if free.due {
                try await Self.promoteDue(connection, topic: request.topic, now: now, logger)
                free.bounds = try await Self.bounds(connection, topic: request.topic, logger)
            }
            guard let group = free.group else { return ReceivedBatch(deliveries: [], gaps: []) }
            // Each free partition: an expired lease ends, a retention gap is reported, and the
            // partitions that are due get a share of the batch, in order, as many messages as
            // they hold (offsets are consecutive) until the batch is full.
            var gaps: [RetentionGap] = []
            var states: [PartitionState] = []
            var wanted: [(partition: Int, from: Int64, limit: Int)] = []
            var room = request.maxMessages
            for original in free.states {
                var state = original
                try await Self.prepare(
                    connection, group, request, &state, bounds: free.bounds[state.partition], now: now, gaps: &gaps,
                    logger)
                if let last = free.bounds[state.partition]?.last, !state.stopped, state.leaseID == nil,
                    state.availableAt <= now, state.nextOffset <= last, room > 0,
                    wanted.count < request.maxPartitions
                {
                    let limit = Int(min(Int64(room), last - state.nextOffset + 1))
                    wanted.append((state.partition, state.nextOffset, limit))
                    room -= limit
                }
                states.append(state)
            }
            let rows = try await Self.leasable(connection, topic: request.topic, wanted, logger)
            var deliveries: [Delivery] = []
            var changed: [PartitionState] = []
            for (index, original) in free.states.enumerated() {
                var state = states[index]
                if let batch = rows[state.partition], !batch.isEmpty {
                    deliveries += try Self.lease(
                        batch, request, &state, now: now, leaseMillis: leaseMillis)
                }
                if state != original { changed.append(state) }
            }
            try await PartitionState.save(changed, connection, group: request.group, topic: request.topic, logger)
            return ReceivedBatch(deliveries: deliveries, gaps: gaps)
        }
    }

    /// What ``receive(_:)`` reads first, in one statement: the group's settings, whether
    /// scheduled messages are due, and the partitions a receiver may work on now with their
    /// bounds, locked for this transaction: not stopped, not leased (or the lease ran out), and
    /// not locked by a concurrent receiver (`SKIP LOCKED`: receivers of one group never wait for
    /// each other).
    struct FreePartitions: Sendable {
        /// `nil` when no partition is free.
        var group: GroupRow?
        var due: Bool
        var states: [PartitionState]
        var bounds: [Int: (start: Int64, last: Int64)]

        /// ``PartitionState/columns`` of the `gp` table of ``FreePartitionsStatement``.
        static let stateColumns = PartitionState.columns.split(separator: ",").map {
            "gp." + $0.trimmingCharacters(in: .whitespacesAndNewlines)
        }.joined(separator: ", ")

        static func fetch(
            _ connection: PostgresConnection, _ request: ReceiveRequest, now: Int64, relax: String, _ logger: Logger
        ) async throws -> FreePartitions {
            // `relax` is `acknowledging`'s item: the prepared statement that selects the same one.
            let rows =
                !relax.isEmpty
                ? try await PostgresMessageLog.rows(
                    connection, FreePartitionsStatement<RelaxedCommit>(request, now: now), logger)
                : try await PostgresMessageLog.rows(
                    connection, FreePartitionsStatement<SynchronousCommit>(request, now: now), logger)
            guard let first = rows.first else {
                // Nothing free: every partition is leased, stopped or locked, or there is no such
                // group (an error). Due scheduled messages are promoted all the same.
                let rows = try await PostgresMessageLog.rows(
                    connection,
                    """
                    SELECT EXISTS (SELECT 1 FROM aviary_schedule WHERE topic = \(request.topic) AND deliver_at <= \(now)) AS due
                    FROM aviary_groups WHERE name = \(request.group) AND topic = \(request.topic)
                    """, logger)
                guard let row = rows.first else { throw GroupRow.notSubscribed(request.group, request.topic) }
                return FreePartitions(group: nil, due: try row["due"].decode(Bool.self), states: [], bounds: [:])
            }
            var bounds: [Int: (start: Int64, last: Int64)] = [:]
            var states: [PartitionState] = []
            for row in rows {
                let state = try PartitionState(row: row)
                if let start = try row["start_offset"].decode(Int64?.self),
                    let last = try row["last_offset"].decode(Int64?.self)
                {
                    bounds[state.partition] = (start, last)
                }
                states.append(state)
            }
            let group = GroupRow(
                name: request.group, topic: request.topic, maxDeliveries: try first["max_deliveries"].decode(Int.self),
                onPoison: PoisonPolicy(rawValue: try first["on_poison"].decode(String.self)) ?? .deadLetter,
                deadLetterTopic: try first["dead_letter_topic"].decode(String.self))
            return FreePartitions(
                group: group, due: try first["due"].decode(Bool.self), states: states, bounds: bounds)
        }

    }

    /// The first and last offset of each partition of `topic`.
    static func bounds(
        _ connection: PostgresConnection, topic: String, _ logger: Logger
    ) async throws -> [Int: (start: Int64, last: Int64)] {
        var bounds: [Int: (start: Int64, last: Int64)] = [:]
        for row in try await Self.rows(
            connection, "SELECT partition, start_offset, last_offset FROM aviary_partitions WHERE topic = \(topic)",
            logger)
        {
            bounds[try row["partition"].decode(Int.self)] = (
                try row["start_offset"].decode(Int64.self), try row["last_offset"].decode(Int64.self)
            )
        }
        return bounds
    }

    /// One free partition during ``receive(_:)``, before leasing: ends an expired lease (a nack of
    /// the head, which may dead-letter it or stop the partition) and reports a retention gap.
    static func prepare(
        _ connection: PostgresConnection, _ group: GroupRow, _ request: ReceiveRequest, _ state: inout PartitionState,
        bounds: (start: Int64, last: Int64)?, now: Int64, gaps: inout [RetentionGap], _ logger: Logger
    ) async throws {
        if state.stopped { return }
        if state.leaseID != nil {
            guard let expiresAt = state.leaseExpiresAt, expiresAt <= now else { return }
            try await Self.expireLease(connection, group, &state, now: now, logger)
            if state.stopped { return }
        }
        guard let (start, _) = bounds else { return }
        if state.nextOffset < start {
            gaps.append(
                RetentionGap(
                    group: request.group, topic: request.topic, partition: state.partition,
                    firstMissed: state.nextOffset, lastMissed: start - 1))
            state.moveHead(to: start)
        }
    }

    /// The messages of several partitions of `topic` in one statement: for each, up to `limit`
    /// from offset `from` on, in offset order.
    static func leasable(
        _ connection: PostgresConnection, topic: String, _ wanted: [(partition: Int, from: Int64, limit: Int)],
        _ logger: Logger
    ) async throws -> [Int: [PostgresRandomAccessRow]] {
        guard !wanted.isEmpty else { return [:] }
        let rows = try await Self.rows(
            connection,
            LeasableStatement(
                topic: topic, partitions: wanted.map { Int64($0.partition) }, from: wanted.map(\.from),
                limits: wanted.map { Int64($0.limit) }), logger)
        var byPartition: [Int: [PostgresRandomAccessRow]] = [:]
        for row in rows { byPartition[try row["partition"].decode(Int.self), default: []].append(row) }
        return byPartition
    }

    /// Leases `rows` (one partition's messages, in offset order) to the receiver.
    static func lease(
        _ rows: [PostgresRandomAccessRow], _ request: ReceiveRequest, _ state: inout PartitionState, now: Int64,
        leaseMillis: Int64
    ) throws -> [Delivery] {
        guard let first = rows.first, let lastRow = rows.last else { return [] }
        state.moveHead(to: try first["msg_offset"].decode(Int64.self))
        let through = try lastRow["msg_offset"].decode(Int64.self)
        let leaseID = CloudEvent.makeID()
        state.leaseOwner = request.consumer
        state.leaseID = leaseID
        state.leaseExpiresAt = now + leaseMillis
        state.leaseThrough = through
        state.leasedAt = now
        state.deliveries.add(1, from: state.nextOffset, through: through)
        state.deliveries.forget(before: state.nextOffset)
        let partition = state.partition
        let counts = state.deliveries
        return try rows.map { row in
            let offset = try row["msg_offset"].decode(Int64.self)
            let message = try Self.decodeMessage(
                row, position: MessagePosition(topic: request.topic, partition: partition, offset: offset))
            return Delivery(
                message: message, group: request.group, consumer: request.consumer,
                deliveryCount: counts.count(at: offset), leaseID: leaseID,
                leaseExpiresAt: Self.date(now + leaseMillis))
        }
    }

    static func decodeMessage(_ row: PostgresRandomAccessRow, position: MessagePosition) throws -> Message {
        do {
            let event = try StoredEventReader.decodeEvent(try row["event"].decode(String.self))
            let headers = try StoredEventReader.decodeHeaders(try row["headers"].decode(String.self))
            return Message(
                position: position, key: try row["key"].decode(String.self), event: event, headers: headers,
                appendedAt: Self.date(try row["appended_at"].decode(Int64.self)))
        } catch {
            throw MessagingError(.unavailable, "message \(position) cannot be decoded: \(error)")
        }
    }

    /// A lease ran out: the same as a nack of the head without delay.
    static func expireLease(
        _ connection: PostgresConnection, _ group: GroupRow, _ state: inout PartitionState, now: Int64,
        _ logger: Logger
    ) async throws {
        state.endLeaseOnHead()
        let count = state.deliveries.count(at: state.nextOffset)
        if count >= group.maxDeliveries {
            try await Self.poison(
                connection, group, &state, reason: "lease-expired",
                error: state.lastError ?? "the lease expired \(count) times", deliveries: count, now: now, logger)
        } else {
            state.availableAt = now
            state.lastError = "lease expired"
        }
    }

    /// The head of `state` failed `maxDeliveries` times: dead-letter it or stop the partition.
    static func poison(
        _ connection: PostgresConnection, _ group: GroupRow, _ state: inout PartitionState, reason: String,
        error: String, deliveries: Int, now: Int64, _ logger: Logger
    ) async throws {
        switch group.onPoison {
        case .stopPartition:
            state.stopped = true
            state.stopReason = reason
            state.lastError = error
        case .deadLetter:
            try await Self.deadLetter(
                connection, group, &state, reason: reason, error: error, deliveries: deliveries, now: now, logger)
        }
    }

    /// Moves the head message to the group's dead-letter topic and moves the head on, in the
    /// caller's transaction: if the move fails, nothing moved.
    static func deadLetter(
        _ connection: PostgresConnection, _ group: GroupRow, _ state: inout PartitionState, reason: String,
        error: String?, deliveries: Int, now: Int64, _ logger: Logger
    ) async throws {
        let head = state.nextOffset
        let rows = try await Self.rows(
            connection,
            """
            SELECT key, event, headers FROM aviary_messages
            WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = \(group.topic))
                AND partition = \(state.partition) AND msg_offset = \(head)
            """, logger)
        if let row = rows.first {
            var headers =
                (try? JSONDecoder().decode(
                    [String: String].self, from: Data(try row["headers"].decode(String.self).utf8))) ?? [:]
            headers[DeadLetterHeader.topic] = group.topic
            headers[DeadLetterHeader.partition] = String(state.partition)
            headers[DeadLetterHeader.offset] = String(head)
            headers[DeadLetterHeader.group] = group.name
            headers[DeadLetterHeader.reason] = reason
            headers[DeadLetterHeader.deliveries] = String(deliveries)
            if let error { headers[DeadLetterHeader.error] = error }
            let message = Encoded(
                topic: group.deadLetterTopic, key: try row["key"].decode(String.self),
                event: try row["event"].decode(String.self), headers: try Self.json(headers))
            let partitions: Int
            do {
                partitions = try await Self.partitionCount(connection, group.deadLetterTopic, logger)
            } catch let error as MessagingError where error.kind == .notFound {
                try await Self.createTopic(
                    connection, group.deadLetterTopic, TopicOptions(partitions: 1, retention: .forever), now: now,
                    logger)
                partitions = 1
            }
            _ = try await Self.append(
                connection, [message], partitionCounts: [group.deadLetterTopic: partitions], now: now, logger)
            state.deadLettered += 1
        }
        state.stopped = false
        state.stopReason = nil
        state.moveHead(to: head + 1)
        state.availableAt = now
    }

    // MARK: Acknowledging

    /// Loads and locks the state of a delivery's partition and checks that its lease is still the
    /// holder's. Returns `nil` when the group acknowledged the message already (nothing to do).
    static func leasedState(
        _ connection: PostgresConnection, _ delivery: Delivery, relax: String, _ logger: Logger
    ) async throws -> PartitionState? {
        let position = delivery.message.position
        let state = try await PartitionState.fetch(
            connection, group: delivery.group, topic: position.topic, partition: position.partition, relax: relax,
            logger)
        if state.leaseID == delivery.leaseID { return state }
        if position.offset < state.nextOffset { return nil }
        throw MessagingError(
            .leaseLost,
            "the lease on \(position) for group \(delivery.group) was lost (it expired and was taken over or given back)"
        )
    }

    public func ack(_ delivery: Delivery) async throws {
        // While the lease is the holder's (nearly always), an ack is one statement of its own:
        // the head moves past the message, and the lease ends when that passes its last offset.
        // Delivery counts before the head are left for the next lease to forget (they are never
        // read). Otherwise the transaction below tells an ack of an acknowledged message (nothing
        // to do) from a lost lease.
        // It runs on one of the store's wire connections (`PostgresStore.pipeline`), as a single
        // publish does: a consumer makes an ack per message, and there the call costs about a
        // third of the client CPU of the same statement through postgres-nio.
        let step =
            self.configuration.synchronousAcknowledgements
            ? AckStatement<SynchronousCommit>.step(delivery) : AckStatement<RelaxedCommit>.step(delivery)
        let acknowledged = try await self.storeCall {
            try await self.store.pipeline([step]).first?.rows.count == 1
        }
        if acknowledged { return }
        try await self.acknowledging { connection, relax, logger in
            guard var state = try await Self.leasedState(connection, delivery, relax: relax, logger) else { return }
            state.moveHead(to: delivery.message.position.offset + 1)
            if let through = state.leaseThrough, state.nextOffset > through { state.endLease() }
            try await state.save(connection, group: delivery.group, topic: delivery.message.position.topic, logger)
        }
    }

    public func nack(_ delivery: Delivery, redeliverAfter: Duration, error: String) async throws {
        let now = self.nowMillis
        let delay = max(0, Self.millis(redeliverAfter))
        try await self.acknowledging { connection, relax, logger in
            guard var state = try await Self.leasedState(connection, delivery, relax: relax, logger) else { return }
            let position = delivery.message.position
            // Acknowledged already by a later ack of the same lease: nothing to give back.
            guard position.offset >= state.nextOffset else { return }
            let group = try await GroupRow.fetch(connection, group: delivery.group, topic: position.topic, logger)
            state.moveHead(to: position.offset)
            state.endLeaseOnHead()
            let count = state.deliveries.count(at: position.offset)
            if count >= group.maxDeliveries {
                try await Self.poison(
                    connection, group, &state, reason: "max-deliveries", error: error, deliveries: count, now: now,
                    logger)
            } else {
                state.availableAt = now + delay
                state.lastError = error
            }
            try await state.save(connection, group: delivery.group, topic: position.topic, logger)
            if delay == 0 { try await self.notify(connection, topic: position.topic, logger) }
        }
    }

    public func release(_ deliveries: [Delivery]) async throws {
        guard !deliveries.isEmpty else { return }
        try await self.acknowledging { connection, relax, logger in
            var seen = Set<String>()
            var topics = Set<String>()
            // Locked in (topic, group, partition) order, so concurrent releases cannot deadlock.
            let ordered = deliveries.sorted {
                ($0.message.position.topic, $0.group, $0.message.position.partition)
                    < ($1.message.position.topic, $1.group, $1.message.position.partition)
            }
            for delivery in ordered where seen.insert(delivery.leaseID).inserted {
                let position = delivery.message.position
                let state = try await PartitionState.fetch(
                    connection, group: delivery.group, topic: position.topic, partition: position.partition,
                    relax: relax, logger)
                // A lease lost meanwhile is someone else's now: nothing to give back.
                guard state.leaseID == delivery.leaseID else { continue }
                var released = state
                if let through = state.leaseThrough {
                    released.deliveries.add(-1, from: state.nextOffset, through: through)
                    released.deliveries.forget(before: state.nextOffset)
                }
                released.endLease()
                released.availableAt = 0
                try await released.save(connection, group: delivery.group, topic: position.topic, logger)
                topics.insert(position.topic)
            }
            for topic in topics.sorted() { try await self.notify(connection, topic: topic, logger) }
        }
    }

    public func extendLeases(_ deliveries: [Delivery], by duration: Duration) async throws {
        guard !deliveries.isEmpty else { return }
        let expiresAt = self.nowMillis + Self.millis(duration)
        try await self.acknowledging { connection, relax, logger in
            var seen = Set<String>()
            let ordered = deliveries.sorted {
                ($0.message.position.topic, $0.group, $0.message.position.partition)
                    < ($1.message.position.topic, $1.group, $1.message.position.partition)
            }
            for delivery in ordered where seen.insert(delivery.leaseID).inserted {
                guard var state = try await Self.leasedState(connection, delivery, relax: relax, logger) else {
                    continue
                }
                state.leaseExpiresAt = max(state.leaseExpiresAt ?? 0, expiresAt)
                try await state.save(connection, group: delivery.group, topic: delivery.message.position.topic, logger)
            }
        }
    }
}

/// A prepared statement's name and text.
struct StatementText: Sendable {
    var name: String
    var sql: String
}

/// How an acknowledgement commits (``PostgresMessageLog/Configuration/synchronousAcknowledgements``),
/// with the texts of the statements that differ by it, made once: postgres-nio reads a prepared
/// statement's name and text at every execution.
protocol AcknowledgementCommit: Sendable {
    /// ``AckStatement``'s.
    static var ack: PostgresWireStatement { get }
    /// ``FreePartitionsStatement``'s.
    static var freePartitions: StatementText { get }
}

/// Commits as the server is configured.
enum SynchronousCommit: AcknowledgementCommit {
    static let ack = AckStatement<Self>.text(relax: "", suffix: "sync")
    static let freePartitions = FreePartitionsStatement<Self>.text(relax: "", suffix: "sync")
}

/// Commits with `synchronous_commit` off for the transaction.
enum RelaxedCommit: AcknowledgementCommit {
    static let ack = AckStatement<Self>.text(relax: PostgresMessageLog.relaxedCommit, suffix: "relaxed")
    static let freePartitions = FreePartitionsStatement<Self>.text(
        relax: PostgresMessageLog.relaxedCommit, suffix: "relaxed")
}

/// An acknowledgement while the lease is the holder's, as a statement each wire connection
/// prepares once: the head moves past the message, and the lease ends when the head passes its
/// last offset. One row when the lease was the holder's, none otherwise
/// (``PostgresMessageLog/ack(_:)`` then tells an ack of an acknowledged message from a lost lease).
enum AckStatement<Commit: AcknowledgementCommit> {
    static var name: String { Commit.ack.name }

    /// The statement selecting `relax` (the commit's select-list item) beside the partition.
    static func text(relax: String, suffix: String) -> PostgresWireStatement {
        // The head passes the lease's last offset.
        let ends = "lease_through < GREATEST(next_offset, $1)"
        return PostgresWireStatement(
            name: "aviary_ack_v1_\(suffix)",
            sql: """
                UPDATE aviary_group_partitions SET next_offset = GREATEST(next_offset, $1),
                    last_error = CASE WHEN next_offset < $1 THEN NULL ELSE last_error END,
                    lease_owner = CASE WHEN \(ends) THEN NULL ELSE lease_owner END,
                    lease_id = CASE WHEN \(ends) THEN NULL ELSE lease_id END,
                    lease_expires_at = CASE WHEN \(ends) THEN NULL ELSE lease_expires_at END,
                    lease_through = CASE WHEN \(ends) THEN NULL ELSE lease_through END
                WHERE group_name = $2 AND topic = $3 AND partition = $4 AND lease_id = $5
                RETURNING partition\(relax)
                """)
    }

    /// The acknowledgement of `delivery`: the next offset, the group, the topic, the partition
    /// and the lease.
    static func step(_ delivery: Delivery) -> PostgresWireStep {
        let position = delivery.message.position
        return PostgresWireStep(
            Commit.ack,
            [
                .integer(position.offset + 1), .text(delivery.group), .text(position.topic),
                .integer(Int64(position.partition)), .text(delivery.leaseID),
            ])
    }
}

/// ``PostgresMessageLog/FreePartitions/fetch(_:_:now:relax:_:)``'s read, as a statement each
/// connection prepares once (a receive runs it first in its transaction; preparing saves the
/// server planning its joins at every receive). Its select list turns the commit relaxed when
/// `Commit` says so. The receive's and the ack's statements carry a version in their names: a
/// migration that changes the type of a column one of them returns must rename it, since
/// PostgreSQL refuses to run a prepared statement whose result type changed.
struct FreePartitionsStatement<Commit: AcknowledgementCommit>: PostgresPreparedStatement {
    static var name: String { Commit.freePartitions.name }
    static var sql: String { Commit.freePartitions.sql }

    /// The statement selecting `relax` (the commit's select-list item).
    static func text(relax: String, suffix: String) -> StatementText {
        StatementText(
            name: "aviary_free_partitions_v1_\(suffix)",
            sql: """
                SELECT \(PostgresMessageLog.FreePartitions.stateColumns), p.start_offset, p.last_offset,
                    g.max_deliveries, g.on_poison, g.dead_letter_topic,
                    EXISTS (SELECT 1 FROM aviary_schedule WHERE topic = $2 AND deliver_at <= $3) AS due
                    \(relax)
                FROM aviary_group_partitions gp
                JOIN aviary_groups g ON g.name = gp.group_name AND g.topic = gp.topic
                LEFT JOIN aviary_partitions p ON p.topic = gp.topic AND p.partition = gp.partition
                WHERE gp.group_name = $1 AND gp.topic = $2 AND NOT gp.stopped
                    AND (gp.lease_id IS NULL OR gp.lease_expires_at <= $3)
                ORDER BY gp.leased_at, gp.partition
                FOR UPDATE OF gp SKIP LOCKED
                """)
    }
    typealias Row = PostgresRandomAccessRow

    var group: String
    var topic: String
    var now: Int64

    init(_ request: ReceiveRequest, now: Int64) {
        self.group = request.group
        self.topic = request.topic
        self.now = now
    }

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 3)
        bindings.append(self.group)
        bindings.append(self.topic)
        bindings.append(self.now)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { row.makeRandomAccess() }
}

/// ``PostgresMessageLog/leasable(_:topic:_:_:)``'s read of several partitions' messages, as a
/// statement each connection prepares once.
struct LeasableStatement: PostgresPreparedStatement {
    static let name = "aviary_leasable_v1"
    static let sql = """
        SELECT w.partition, m.msg_offset, m.key, m.event, m.headers, m.appended_at
        FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[])
            WITH ORDINALITY AS w(partition, from_offset, row_limit, ordinal)
        CROSS JOIN LATERAL (
            SELECT msg_offset, key, event, headers, appended_at FROM aviary_messages
            WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = $4)
                AND partition = w.partition AND msg_offset >= w.from_offset
            ORDER BY msg_offset LIMIT w.row_limit
        ) m
        ORDER BY w.ordinal, m.msg_offset
        """
    typealias Row = PostgresRandomAccessRow

    var topic: String
    var partitions: [Int64]
    var from: [Int64]
    var limits: [Int64]

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 4)
        bindings.append(self.partitions)
        bindings.append(self.from)
        bindings.append(self.limits)
        bindings.append(self.topic)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { row.makeRandomAccess() }
}

/// One partition's state written back (``PostgresMessageLog/PartitionState/save(_:group:topic:_:)``),
/// as a statement each connection prepares once.
struct SavePartitionStatement: PostgresPreparedStatement {
    static let name = "aviary_save_partition_v1"
    static let sql = """
        UPDATE aviary_group_partitions SET next_offset = $4, lease_owner = $5, lease_id = $6,
            lease_expires_at = $7, lease_through = $8, leased_at = $9, available_at = $10,
            deliveries = $11, last_error = $12, stopped = $13, stop_reason = $14,
            lost_to_retention = $15, dead_lettered = $16
        WHERE group_name = $1 AND topic = $2 AND partition = $3
        """
    typealias Row = ()

    var state: PostgresMessageLog.PartitionState
    var group: String
    var topic: String

    init(_ state: PostgresMessageLog.PartitionState, group: String, topic: String) {
        self.state = state
        self.group = group
        self.topic = topic
    }

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 16)
        bindings.append(self.group)
        bindings.append(self.topic)
        bindings.append(self.state.partition)
        bindings.append(self.state.nextOffset)
        bindings.append(self.state.leaseOwner)
        bindings.append(self.state.leaseID)
        bindings.append(self.state.leaseExpiresAt)
        bindings.append(self.state.leaseThrough)
        bindings.append(self.state.leasedAt)
        bindings.append(self.state.availableAt)
        bindings.append(self.state.deliveries.text)
        bindings.append(self.state.lastError)
        bindings.append(self.state.stopped)
        bindings.append(self.state.stopReason)
        bindings.append(self.state.lostToRetention)
        bindings.append(self.state.deadLettered)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Row {}
}
