//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Logging
import PostgresNIO

// Retention, inspection and repair: what `aviary broker` and the operators use.
extension PostgresMessageLog {
    @discardableResult
    public func applyRetention() async throws -> Int {
        let now = self.nowMillis
        return try await self.write { connection, logger in
            var deleted = 0
            let topics = try await Self.rows(
                connection,
                """
                SELECT id, name, max_age_ms, max_bytes FROM aviary_topics
                WHERE max_age_ms IS NOT NULL OR max_bytes IS NOT NULL ORDER BY name
                """, logger)
            for topic in topics {
                let id = try topic["id"].decode(Int32.self)
                let name = try topic["name"].decode(String.self)
                let maxAge = try topic["max_age_ms"].decode(Int64?.self)
                let maxBytes = try topic["max_bytes"].decode(Int64?.self)
                // Locks the partition rows (as appends do), so retention and appends take turns.
                let partitions = try await Self.rows(
                    connection,
                    "SELECT partition FROM aviary_partitions WHERE topic = \(name) ORDER BY partition FOR UPDATE",
                    logger)
                for partitionRow in partitions {
                    let partition = try partitionRow["partition"].decode(Int.self)
                    var cut: Int64 = 0
                    if let maxAge {
                        // Everything before the oldest message young enough to keep (a walk of the
                        // primary key from the partition's start that reads only what goes); a
                        // message the wall clock, stepped back, stamped older than one before it
                        // waits for that one, and no message younger than the limit is deleted.
                        let rows = try await Self.rows(
                            connection,
                            """
                            SELECT max(msg_offset) AS cut FROM aviary_messages
                            WHERE topic_id = \(id) AND partition = \(partition) AND msg_offset < coalesce(
                                (SELECT msg_offset FROM aviary_messages
                                 WHERE topic_id = \(id) AND partition = \(partition) AND appended_at >= \(now - maxAge)
                                 ORDER BY msg_offset LIMIT 1),
                                9223372036854775807)
                            """, logger)
                        cut = max(cut, try rows.first?["cut"].decode(Int64?.self) ?? 0)
                    }
                    if let maxBytes {
                        // The newest message whose bytes, with every newer message's, exceed the
                        // limit: it and everything older go.
                        let rows = try await Self.rows(
                            connection,
                            """
                            SELECT max(msg_offset) AS cut FROM (
                                SELECT msg_offset, sum(bytes) OVER (ORDER BY msg_offset DESC) AS newer
                                FROM aviary_messages WHERE topic_id = \(id) AND partition = \(partition)
                            ) AS sized WHERE newer > \(maxBytes)
                            """, logger)
                        cut = max(cut, try rows.first?["cut"].decode(Int64?.self) ?? 0)
                    }
                    guard cut > 0 else { continue }
                    // Groups that had not acknowledged what goes lose it: counted now, told on their
                    // next receive (RetentionGap).
                    try await connection.query(
                        """
                        UPDATE aviary_group_partitions g SET lost_to_retention = lost_to_retention + (
                            SELECT count(*) FROM aviary_messages m
                            WHERE m.topic_id = \(id) AND m.partition = g.partition
                                AND m.msg_offset >= g.next_offset AND m.msg_offset <= \(cut))
                        WHERE g.topic = \(name) AND g.partition = \(partition)
                        """, logger: logger)
                    deleted += try await Self.execute(
                        connection,
                        "DELETE FROM aviary_messages WHERE topic_id = \(id) AND partition = \(partition) AND msg_offset <= \(cut)",
                        logger)
                    try await connection.query(
                        """
                        UPDATE aviary_partitions SET start_offset = greatest(start_offset, \(cut + 1))
                        WHERE topic = \(name) AND partition = \(partition)
                        """, logger: logger)
                }
            }
            return deleted
        }
    }

    public func topics() async throws -> [TopicInfo] {
        let now = self.nowMillis
        return try await self.read { connection, logger in
            var result: [TopicInfo] = []
            for topicRow in try await Self.rows(connection, "SELECT id, name FROM aviary_topics ORDER BY name", logger)
            {
                let id = try topicRow["id"].decode(Int32.self)
                let name = try topicRow["name"].decode(String.self)
                var partitions: [PartitionInfo] = []
                for row in try await Self.rows(
                    connection,
                    """
                    SELECT p.partition, p.last_offset,
                        (SELECT min(msg_offset) FROM aviary_messages m WHERE m.topic_id = \(id) AND m.partition = p.partition) AS first,
                        (SELECT count(*) FROM aviary_messages m WHERE m.topic_id = \(id) AND m.partition = p.partition) AS depth,
                        (SELECT coalesce(sum(bytes), 0)::BIGINT FROM aviary_messages m WHERE m.topic_id = \(id) AND m.partition = p.partition) AS bytes
                    FROM aviary_partitions p WHERE p.topic = \(name) ORDER BY p.partition
                    """, logger)
                {
                    partitions.append(
                        PartitionInfo(
                            partition: try row["partition"].decode(Int.self),
                            firstOffset: try row["first"].decode(Int64?.self) ?? 0,
                            lastOffset: try row["last_offset"].decode(Int64.self),
                            depth: try row["depth"].decode(Int64.self), bytes: try row["bytes"].decode(Int64.self)))
                }
                var groups: [GroupInfo] = []
                for groupRow in try await Self.rows(
                    connection, "SELECT name FROM aviary_groups WHERE topic = \(name) ORDER BY name", logger)
                {
                    let group = try groupRow["name"].decode(String.self)
                    var info = GroupInfo(
                        name: group, lag: 0, oldestUnackedAge: nil, stoppedPartitions: [], lostToRetention: 0,
                        deadLettered: 0)
                    var oldest: Int64?
                    for row in try await Self.rows(
                        connection,
                        """
                        SELECT g.partition, g.stopped, g.lost_to_retention, g.dead_lettered,
                            (SELECT count(*) FROM aviary_messages m WHERE m.topic_id = \(id) AND m.partition = g.partition
                                AND m.msg_offset >= g.next_offset) AS lag,
                            (SELECT min(appended_at) FROM aviary_messages m WHERE m.topic_id = \(id)
                                AND m.partition = g.partition AND m.msg_offset >= g.next_offset) AS oldest
                        FROM aviary_group_partitions g WHERE g.group_name = \(group) AND g.topic = \(name)
                        ORDER BY g.partition
                        """, logger)
                    {
                        info.lag += try row["lag"].decode(Int64.self)
                        info.lostToRetention += try row["lost_to_retention"].decode(Int64.self)
                        info.deadLettered += try row["dead_lettered"].decode(Int64.self)
                        if try row["stopped"].decode(Bool.self) {
                            info.stoppedPartitions.append(try row["partition"].decode(Int.self))
                        }
                        if let appended = try row["oldest"].decode(Int64?.self) {
                            oldest = min(oldest ?? appended, appended)
                        }
                    }
                    if let oldest { info.oldestUnackedAge = .milliseconds(max(0, now - oldest)) }
                    groups.append(info)
                }
                let scheduled = try await Self.rows(
                    connection, "SELECT count(*) AS scheduled FROM aviary_schedule WHERE topic = \(name)", logger)
                result.append(
                    TopicInfo(
                        name: name, partitions: partitions, groups: groups,
                        scheduled: Int(try scheduled.first?["scheduled"].decode(Int64.self) ?? 0)))
            }
            return result
        }
    }

    /// Checks that `topic` is some group's dead-letter topic.
    static func requireDeadLetterTopic(
        _ connection: PostgresConnection, _ topic: String, _ logger: Logger
    ) async throws {
        guard try await !Self.rows(connection, "SELECT 1 FROM aviary_topics WHERE name = \(topic)", logger).isEmpty
        else {
            throw MessagingError(.notFound, "no topic \(topic)")
        }
        guard
            try await !Self.rows(
                connection, "SELECT 1 FROM aviary_groups WHERE dead_letter_topic = \(topic) LIMIT 1", logger
            ).isEmpty
        else {
            throw MessagingError(.invalidArgument, "topic \(topic) is not the dead-letter topic of any group")
        }
    }

    public func deadLetters(topic: String, limit: Int) async throws -> [DeadLetter] {
        try await self.read { connection, logger in
            try await Self.requireDeadLetterTopic(connection, topic, logger)
            let rows = try await Self.rows(
                connection,
                """
                SELECT partition, msg_offset, key, event, headers, appended_at FROM aviary_messages
                WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = \(topic))
                ORDER BY appended_at, partition, msg_offset LIMIT \(max(0, limit))
                """, logger)
            return try rows.map { row in
                let message = try Self.decodeMessage(
                    row,
                    position: MessagePosition(
                        topic: topic, partition: try row["partition"].decode(Int.self),
                        offset: try row["msg_offset"].decode(Int64.self)))
                return DeadLetter(message: message)
            }
        }
    }

    public func replayDeadLetter(_ position: MessagePosition) async throws {
        let now = self.nowMillis
        try await self.write { connection, logger in
            try await Self.requireDeadLetterTopic(connection, position.topic, logger)
            let rows = try await Self.rows(
                connection,
                """
                DELETE FROM aviary_messages
                WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = \(position.topic))
                    AND partition = \(position.partition) AND msg_offset = \(position.offset)
                RETURNING key, event, headers, appended_at
                """, logger)
            guard let row = rows.first else {
                throw MessagingError(.notFound, "no dead letter at \(position)")
            }
            let letter = DeadLetter(message: try Self.decodeMessage(row, position: position))
            guard !letter.origin.topic.isEmpty else {
                throw MessagingError(
                    .invalidArgument, "dead letter \(position) has no \(DeadLetterHeader.topic) header to replay to")
            }
            let partitions = try await Self.partitionCount(connection, letter.origin.topic, logger)
            let headers = letter.message.headers.filter { !$0.key.hasPrefix("aviary-dlq-") }
            let message = Encoded(
                topic: letter.origin.topic, key: try row["key"].decode(String.self),
                event: try row["event"].decode(String.self), headers: try Self.json(headers))
            _ = try await Self.append(
                connection, [message], partitionCounts: [letter.origin.topic: partitions], now: now, logger)
            try await self.notify(connection, topic: letter.origin.topic, logger)
        }
    }

    @discardableResult
    public func purgeDeadLetters(topic: String, positions: [MessagePosition]?) async throws -> Int {
        try await self.write { connection, logger in
            try await Self.requireDeadLetterTopic(connection, topic, logger)
            guard let positions else {
                return try await Self.execute(
                    connection,
                    "DELETE FROM aviary_messages WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = \(topic))",
                    logger)
            }
            var purged = 0
            for position in positions {
                guard position.topic == topic else {
                    throw MessagingError(.invalidArgument, "position \(position) is not in topic \(topic)")
                }
                purged += try await Self.execute(
                    connection,
                    """
                    DELETE FROM aviary_messages
                    WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = \(topic))
                        AND partition = \(position.partition) AND msg_offset = \(position.offset)
                    """, logger)
            }
            return purged
        }
    }

    public func resumePartition(group: String, topic: String, partition: Int, skipHead: Bool) async throws {
        let now = self.nowMillis
        try await self.write { connection, logger in
            let groupRow = try await GroupRow.fetch(connection, group: group, topic: topic, logger)
            var state = try await PartitionState.fetch(
                connection, group: group, topic: topic, partition: partition, logger)
            guard state.stopped else {
                throw MessagingError(
                    .invalidArgument, "partition \(partition) of topic \(topic) is not stopped for group \(group)")
            }
            if skipHead {
                try await Self.deadLetter(
                    connection, groupRow, &state, reason: state.stopReason ?? "max-deliveries", error: state.lastError,
                    deliveries: state.deliveries.count(at: state.nextOffset), now: now, logger)
            } else {
                state.stopped = false
                state.stopReason = nil
                state.deliveries = DeliveryCounts()
                state.availableAt = now
            }
            try await state.save(connection, group: group, topic: topic, logger)
            try await self.notify(connection, topic: topic, logger)
        }
    }

    // MARK: Wake-ups and closing

    public func wakeUps(topic: String) -> AsyncStream<Void> {
        self.wakeUpHub.stream(topic: topic)
    }

    public func close() async throws {
        await self.wakeUpHub.close()
        self.running.cancel()
        await self.running.value
    }
}
