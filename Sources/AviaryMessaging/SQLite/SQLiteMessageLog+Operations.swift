//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import GRDB

// Retention, inspection and repair: what `aviary broker` and the operators use.
extension SQLiteMessageLog {
    @discardableResult
    public func applyRetention() async throws -> Int {
        let now = self.nowMillis
        return try await self.write { db in
            var deleted = 0
            let topics = try Row.fetchAll(
                db,
                sql:
                    "SELECT name, max_age_ms, max_bytes FROM topics WHERE max_age_ms IS NOT NULL OR max_bytes IS NOT NULL"
            )
            for topic in topics {
                let name: String = topic["name"]
                let maxAge: Int64? = topic["max_age_ms"]
                let maxBytes: Int64? = topic["max_bytes"]
                for (partition, table) in try Self.storedMessageTables(db, name).enumerated() {
                    let messages = Self.messageTable(table)
                    var cut: Int64 = 0
                    if let maxAge {
                        // Everything before the oldest message young enough to keep (a seek
                        // from the partition's start that reads only what goes, where the
                        // newest expired message meant reading the whole table); a message the
                        // wall clock, stepped back, stamped older than one before it waits for
                        // that one, and no message younger than the limit is ever deleted.
                        cut = max(
                            cut,
                            try Int64.fetchOne(
                                db,
                                sql: """
                                    SELECT MAX(offset) FROM \(messages) WHERE offset < COALESCE(
                                        (SELECT offset FROM \(messages) WHERE appended_at >= ? ORDER BY offset LIMIT 1),
                                        9223372036854775807)
                                    """,
                                arguments: [now - maxAge]) ?? 0)
                    }
                    if let maxBytes {
                        // The newest message whose bytes, with every newer message's, exceed the limit:
                        // it and everything older go.
                        cut = max(
                            cut,
                            try Int64.fetchOne(
                                db,
                                sql: """
                                    SELECT MAX(offset) FROM (
                                        SELECT offset, SUM(bytes) OVER (ORDER BY offset DESC) AS newer
                                        FROM \(messages)
                                    ) WHERE newer > ?
                                    """,
                                arguments: [maxBytes]) ?? 0)
                    }
                    guard cut > 0 else { continue }
                    // Groups that had not acknowledged what goes lose it; count it now, tell them on
                    // their next receive (RetentionGap).
                    try db.execute(
                        sql: """
                            UPDATE group_partitions SET lost_to_retention = lost_to_retention + (
                                SELECT COUNT(*) FROM \(messages) m
                                WHERE m.offset >= group_partitions.next_offset AND m.offset <= ?)
                            WHERE topic = ? AND partition = ?
                            """, arguments: [cut, name, partition])
                    // `cut` is a stored offset: the partition's newest offset stays at least that
                    // when it was the newest message (newestOffset).
                    try db.execute(
                        sql: """
                            UPDATE partitions SET start_offset = MAX(start_offset, ?), last_offset = MAX(last_offset, ?)
                            WHERE topic = ? AND partition = ?
                            """,
                        arguments: [cut + 1, cut, name, partition])
                    try db.execute(sql: "DELETE FROM \(messages) WHERE offset <= ?", arguments: [cut])
                    deleted += db.changesCount
                }
            }
            return deleted
        }
    }

    public func topics() async throws -> [TopicInfo] {
        let now = self.nowMillis
        return try await self.read { db in
            var result: [TopicInfo] = []
            for topicRow in try Row.fetchAll(db, sql: "SELECT name FROM topics ORDER BY name") {
                let name: String = topicRow["name"]
                var partitions: [PartitionInfo] = []
                let tables = try Self.storedMessageTables(db, name)
                for (partition, table) in tables.enumerated() {
                    let messages = Self.messageTable(table)
                    guard
                        let row = try Row.fetchOne(
                            db,
                            sql: """
                                SELECT MAX(p.last_offset, COALESCE(m.newest, 0)) AS last_offset, m.first, m.depth, m.bytes
                                FROM partitions p, (
                                    SELECT MAX(offset) AS newest, MIN(offset) AS first, COUNT(*) AS depth,
                                        TOTAL(bytes) AS bytes
                                    FROM \(messages)
                                ) m
                                WHERE p.topic = ? AND p.partition = ?
                                """, arguments: [name, partition])
                    else { continue }
                    partitions.append(
                        PartitionInfo(
                            partition: partition, firstOffset: row["first"] ?? 0, lastOffset: row["last_offset"],
                            depth: row["depth"], bytes: Int64(row["bytes"] as Double)))
                }
                var groups: [GroupInfo] = []
                for groupRow in try Row.fetchAll(
                    db, sql: "SELECT name FROM groups WHERE topic = ? ORDER BY name", arguments: [name])
                {
                    let group: String = groupRow["name"]
                    var info = GroupInfo(
                        name: group, lag: 0, oldestUnackedAge: nil, stoppedPartitions: [], lostToRetention: 0,
                        deadLettered: 0)
                    var oldest: Int64?
                    for (partition, table) in tables.enumerated() {
                        guard
                            let row = try Row.fetchOne(
                                db,
                                sql: """
                                    SELECT g.stopped, g.lost_to_retention, g.dead_lettered,
                                        (SELECT COUNT(*) FROM \(Self.messageTable(table)) m
                                            WHERE m.offset >= g.next_offset) AS lag,
                                        (SELECT MIN(appended_at) FROM \(Self.messageTable(table)) m
                                            WHERE m.offset >= g.next_offset) AS oldest
                                    FROM group_partitions g WHERE g.group_name = ? AND g.topic = ? AND g.partition = ?
                                    """, arguments: [group, name, partition])
                        else { continue }
                        info.lag += row["lag"] as Int64
                        info.lostToRetention += row["lost_to_retention"] as Int64
                        info.deadLettered += row["dead_lettered"] as Int64
                        if row["stopped"] as Bool { info.stoppedPartitions.append(partition) }
                        if let appended: Int64 = row["oldest"] { oldest = min(oldest ?? appended, appended) }
                    }
                    if let oldest { info.oldestUnackedAge = .milliseconds(max(0, now - oldest)) }
                    groups.append(info)
                }
                let scheduled =
                    try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM schedule WHERE topic = ?", arguments: [name]) ?? 0
                result.append(TopicInfo(name: name, partitions: partitions, groups: groups, scheduled: scheduled))
            }
            return result
        }
    }

    /// Checks that `topic` is some group's dead-letter topic.
    static func requireDeadLetterTopic(_ db: Database, _ topic: String) throws {
        guard try Int.fetchOne(db, sql: "SELECT 1 FROM topics WHERE name = ?", arguments: [topic]) != nil else {
            throw MessagingError(.notFound, "no topic \(topic)")
        }
        guard
            try Int.fetchOne(db, sql: "SELECT 1 FROM groups WHERE dead_letter_topic = ? LIMIT 1", arguments: [topic])
                != nil
        else {
            throw MessagingError(.invalidArgument, "topic \(topic) is not the dead-letter topic of any group")
        }
    }

    public func deadLetters(topic: String, limit: Int) async throws -> [DeadLetter] {
        try await self.read { db in
            try Self.requireDeadLetterTopic(db, topic)
            // The first `limit` of each partition, then the first `limit` of them all, in the
            // order they were appended (partition and offset among equal times).
            var letters: [(appendedAt: Int64, partition: Int, offset: Int64, row: Row)] = []
            for (partition, table) in try Self.storedMessageTables(db, topic).enumerated() {
                for row in try Row.fetchAll(
                    db,
                    sql: """
                        SELECT offset, key, event, headers, appended_at FROM \(Self.messageTable(table))
                        ORDER BY appended_at, offset LIMIT ?
                        """, arguments: [max(0, limit)])
                {
                    letters.append((row["appended_at"], partition, row["offset"], row))
                }
            }
            letters.sort { ($0.appendedAt, $0.partition, $0.offset) < ($1.appendedAt, $1.partition, $1.offset) }
            return try letters.prefix(max(0, limit)).map { letter in
                let message = try Self.decodeMessage(
                    letter.row,
                    position: MessagePosition(topic: topic, partition: letter.partition, offset: letter.offset))
                return DeadLetter(message: message)
            }
        }
    }

    public func replayDeadLetter(_ position: MessagePosition) async throws {
        let now = self.nowMillis
        let origin = try await self.write { db in
            try Self.requireDeadLetterTopic(db, position.topic)
            guard
                let table = try Self.messageTable(db, topic: position.topic, partition: position.partition),
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT offset, key, event, headers, appended_at FROM \(Self.messageTable(table))
                        WHERE offset = ?
                        """, arguments: [position.offset])
            else {
                throw MessagingError(.notFound, "no dead letter at \(position)")
            }
            let letter = DeadLetter(message: try Self.decodeMessage(row, position: position))
            guard !letter.origin.topic.isEmpty else {
                throw MessagingError(
                    .invalidArgument, "dead letter \(position) has no \(DeadLetterHeader.topic) header to replay to")
            }
            let tables = try Self.messageTables(db, letter.origin.topic)
            let headers = letter.message.headers.filter { !$0.key.hasPrefix("aviary-dlq-") }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let message = Encoded(
                topic: letter.origin.topic, key: row["key"], event: row["event"],
                headers: String(decoding: try encoder.encode(headers), as: UTF8.self))
            _ = try Self.append(db, message, tables: tables, now: now)
            try Self.keepNewestOffset(
                db, topic: position.topic, partition: position.partition, atLeast: position.offset)
            try db.execute(
                sql: "DELETE FROM \(Self.messageTable(table)) WHERE offset = ?", arguments: [position.offset])
            return letter.origin.topic
        }
        self.wakeConsumers(of: origin)
    }

    @discardableResult
    public func purgeDeadLetters(topic: String, positions: [MessagePosition]?) async throws -> Int {
        try await self.write { db in
            try Self.requireDeadLetterTopic(db, topic)
            guard let positions else {
                var purged = 0
                for (partition, table) in try Self.storedMessageTables(db, topic).enumerated() {
                    // Offsets are not given again once their messages are gone (newestOffset).
                    if let newest = try Self.newestOffset(db, table: table, topic: topic, partition: partition) {
                        try Self.keepNewestOffset(db, topic: topic, partition: partition, atLeast: newest)
                    }
                    try db.execute(sql: "DELETE FROM \(Self.messageTable(table))")
                    purged += db.changesCount
                }
                return purged
            }
            var purged = 0
            for position in positions {
                guard position.topic == topic else {
                    throw MessagingError(.invalidArgument, "position \(position) is not in topic \(topic)")
                }
                guard let table = try Self.messageTable(db, topic: topic, partition: position.partition) else {
                    continue
                }
                try db.execute(
                    sql: "DELETE FROM \(Self.messageTable(table)) WHERE offset = ?", arguments: [position.offset])
                guard db.changesCount > 0 else { continue }
                purged += db.changesCount
                try Self.keepNewestOffset(db, topic: topic, partition: position.partition, atLeast: position.offset)
            }
            return purged
        }
    }

    public func resumePartition(group: String, topic: String, partition: Int, skipHead: Bool) async throws {
        let now = self.nowMillis
        try await self.write { db in
            let groupRow = try GroupRow.fetch(db, group: group, topic: topic)
            var state = try PartitionState.fetch(db, group: group, topic: topic, partition: partition)
            guard state.stopped else {
                throw MessagingError(
                    .invalidArgument, "partition \(partition) of topic \(topic) is not stopped for group \(group)")
            }
            if skipHead {
                try Self.deadLetter(
                    db, groupRow, &state, reason: state.stopReason ?? "max-deliveries", error: state.lastError,
                    deliveries: state.deliveries.count(at: state.nextOffset), now: now)
            } else {
                state.stopped = false
                state.stopReason = nil
                state.deliveries = DeliveryCounts()
                state.availableAt = now
            }
            try state.save(db, group: group, topic: topic)
        }
    }
}
