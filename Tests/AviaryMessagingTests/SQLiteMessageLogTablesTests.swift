//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import Foundation
import GRDB
import Testing

/// Schema version 3: each partition's messages in a table of its own (`messages_<table_id>`),
/// found through `partitions` by every log on the file, and the upgrade of older files to it.
@Suite("SQLiteMessageLog partition tables", .timeLimit(.minutes(5)))
struct SQLiteMessageLogTablesTests {
    static func event(_ id: String) -> CloudEvent { CloudEvent(id: id, source: "/t", type: "t") }

    @Test(
        "a v2 file (one messages table) with acked and dead-lettered messages in several topics upgrades to tables per partition: every message at its position, cursors kept, offsets go on"
    )
    func upgradeFromVersion2() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let clock = ManualWallClock()
        var log = try SQLiteMessageLog(path: path, clock: clock)
        try await log.createTopic("orders", TopicOptions(partitions: 3, retention: .forever))
        try await log.createTopic("audit", TopicOptions(partitions: 2, retention: .forever))
        try await log.subscribe(group: "billing", topic: "orders", options: GroupOptions(maxDeliveries: 1))
        try await log.subscribe(group: "archive", topic: "audit", options: GroupOptions())
        let orderKeys = SQLiteOlderSchema.keys(partitions: 3)
        let auditKeys = SQLiteOlderSchema.keys(partitions: 2)
        try await log.publish(
            (0..<15).map { OutgoingMessage(topic: "orders", key: orderKeys[$0 % 3], event: Self.event("o\($0)")) })
        clock.advance(by: .seconds(1))
        try await log.publish(
            (0..<6).map { OutgoingMessage(topic: "audit", key: auditKeys[$0 % 2], event: Self.event("a\($0)")) })
        // billing acks two messages of each partition and fails the third of partition 0 (dead
        // letter: one delivery at most); the rest goes back.
        let leased = try await log.receive(
            ReceiveRequest(group: "billing", topic: "orders", consumer: "c", maxMessages: 100, maxPartitions: 3))
        #expect(leased.deliveries.count == 15)
        var released: [Delivery] = []
        for partition in 0..<3 {
            let deliveries = leased.deliveries.filter { $0.message.position.partition == partition }
            try await log.ack(deliveries[0])
            try await log.ack(deliveries[1])
            if partition == 0 {
                try await log.nack(deliveries[2], redeliverAfter: .zero, error: "bad order")
            } else {
                released.append(deliveries[2])
            }
        }
        try await log.release(released)
        let deadLetterTopic = SQLiteMessageLog.deadLetterTopic(for: "orders", group: "billing")
        let lettersBefore = try await log.deadLetters(topic: deadLetterTopic, limit: 10)
        #expect(lettersBefore.map(\.message.event.id) == ["o6"])
        let topicsBefore = try await log.topics()
        try await log.close()

        let before = try SQLiteOlderSchema.read(path: path) { db in
            (try SQLiteOlderSchema.messages(db), try SQLiteOlderSchema.cursors(db))
        }
        #expect(before.0.count == 15 + 6 + 1)
        try SQLiteOlderSchema.downgradeToVersion2(path: path)
        #expect(try SQLiteOlderSchema.version(path: path) == 2)
        let downgraded = try SQLiteOlderSchema.read(path: path) { db in
            (try SQLiteOlderSchema.messages(db), try SQLiteOlderSchema.cursors(db), try db.tableExists("messages"))
        }
        #expect(downgraded.2)
        #expect(downgraded.0 == before.0)
        #expect(downgraded.1 == before.1)

        log = try SQLiteMessageLog(path: path, clock: clock)
        #expect(try SQLiteOlderSchema.version(path: path) == 3)
        let upgraded = try SQLiteOlderSchema.read(path: path) { db in
            (
                try SQLiteOlderSchema.messages(db), try SQLiteOlderSchema.cursors(db),
                try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('messages', 'messages_position')"),
                try SQLiteOlderSchema.tableIDs(db)
            )
        }
        #expect(upgraded.0 == before.0)
        #expect(upgraded.1 == before.1)
        #expect(upgraded.2 == 0)
        let ids = upgraded.3.values.flatMap { $0 }
        // 3 of orders, 2 of audit, 1 of the dead-letter topic of each group (made when it subscribed).
        #expect(ids.count == 7)
        #expect(Set(ids).count == ids.count)
        #expect(try await log.topics() == topicsBefore)
        #expect(try await log.deadLetters(topic: deadLetterTopic, limit: 10) == lettersBefore)

        // Every message read back at its old position.
        try await log.subscribe(group: "late", topic: "orders", options: GroupOptions(start: .earliest))
        try await log.subscribe(group: "late", topic: "audit", options: GroupOptions(start: .earliest))
        var read: [MessagePosition: String] = [:]
        for topic in ["orders", "audit"] {
            let batch = try await log.receive(
                ReceiveRequest(group: "late", topic: topic, consumer: "c", maxMessages: 100, maxPartitions: 3))
            for delivery in batch.deliveries { read[delivery.message.position] = delivery.message.event.id }
        }
        let stored = before.0.filter { $0.topic != deadLetterTopic }
        #expect(read.count == stored.count)
        for message in stored {
            let position = MessagePosition(topic: message.topic, partition: message.partition, offset: message.offset)
            #expect(read[position] != nil && message.event.contains("\"\(read[position] ?? "")\""), "\(position)")
        }
        // billing goes on after its cursors: the dead-lettered message is not delivered again.
        let next = try await log.receive(
            ReceiveRequest(group: "billing", topic: "orders", consumer: "c", maxMessages: 100, maxPartitions: 3))
        #expect(Set(next.deliveries.map(\.message.event.id)) == Set((6..<15).map { "o\($0)" }).subtracting(["o6"]))
        for partition in 0..<3 {
            let first = next.deliveries.first { $0.message.position.partition == partition }?.message.position.offset
            #expect(first == (partition == 0 ? 4 : 3))
        }
        // New publishes continue each partition's offsets.
        let positions = try await log.publish(
            (0..<3).map { OutgoingMessage(topic: "orders", key: orderKeys[$0], event: Self.event("n\($0)")) })
        #expect(positions.map(\.offset) == [6, 6, 6])
        try await log.replayDeadLetter(lettersBefore[0].message.position)
        #expect(try await log.deadLetters(topic: deadLetterTopic, limit: 10).isEmpty)
        try await log.close()
    }

    @Test("a topic another log on the file creates after this one opened is subscribed to, published to and read")
    func topicFromAnotherPool() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("first", TopicOptions(partitions: 2))
        try await log.publish([OutgoingMessage(topic: "first", key: "k", event: Self.event("f"))])
        // Another pool (as another process) creates a topic: new tables this log's connections
        // have not seen.
        let other = try SQLiteMessageLog(path: path)
        try await other.createTopic("second", TopicOptions(partitions: 3))
        try await other.subscribe(group: "g", topic: "second", options: GroupOptions())
        let keys = SQLiteOlderSchema.keys(partitions: 3)
        let positions = try await log.publish(
            (0..<6).map { OutgoingMessage(topic: "second", key: keys[$0 % 3], event: Self.event("s\($0)")) })
        #expect(positions.map(\.partition) == [0, 1, 2, 0, 1, 2])
        #expect(positions.map(\.offset) == [1, 1, 1, 2, 2, 2])
        let batch = try await log.receive(
            ReceiveRequest(group: "g", topic: "second", consumer: "c", maxMessages: 10, maxPartitions: 3))
        #expect(batch.deliveries.map(\.message.event.id).sorted() == (0..<6).map { "s\($0)" })
        // The other log, which created the topic, reads what this one published, and goes on.
        try await other.subscribe(group: "h", topic: "second", options: GroupOptions())
        let more = try await other.publish([OutgoingMessage(topic: "second", key: keys[1], event: Self.event("s6"))])
        #expect(more.map(\.offset) == [3])
        let seen = try await other.receive(
            ReceiveRequest(group: "h", topic: "second", consumer: "c", maxMessages: 10, maxPartitions: 3))
        #expect(seen.deliveries.count == 7)
        let second = try #require(try await log.topics().first { $0.name == "second" })
        #expect(second.partitions.map(\.depth) == [2, 3, 2])
        try await other.close()
        try await log.close()
    }

    @Test(
        "each partition has a table id of its own, distinct across topics and unchanged when the file is opened again")
    func tableIDsStable() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        var log = try SQLiteMessageLog(path: path)
        try await log.createTopic("a", TopicOptions(partitions: 3))
        try await log.createTopic("b", TopicOptions(partitions: 2))
        // Created again with the same count: nothing changes.
        try await log.createTopic("a", TopicOptions(partitions: 3))
        try await log.publish([OutgoingMessage(topic: "b", key: "k", event: Self.event("b1"))])
        try await log.close()
        let first = try SQLiteOlderSchema.read(path: path) { try SQLiteOlderSchema.tableIDs($0) }
        #expect(first["a"]?.count == 3)
        #expect(first["b"]?.count == 2)
        #expect(Set(first.values.flatMap { $0 }).count == 5)

        log = try SQLiteMessageLog(path: path)
        try await log.createTopic("c", TopicOptions(partitions: 2))
        let position = try await log.publish([OutgoingMessage(topic: "b", key: "k", event: Self.event("b2"))])
        #expect(position.map(\.offset) == [2])
        try await log.close()
        let second = try SQLiteOlderSchema.read(path: path) { try SQLiteOlderSchema.tableIDs($0) }
        #expect(second["a"] == first["a"])
        #expect(second["b"] == first["b"])
        let all = second.values.flatMap { $0 }
        #expect(all.count == 7)
        #expect(Set(all).count == 7)
        // Both messages of b are in the table of their partition.
        let partition = Partitioner.partition(forKey: "k", partitions: 2)
        let table = try #require(second["b"]?[partition])
        let count = try SQLiteOlderSchema.read(path: path) { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM messages_\(table)")
        }
        #expect(count == 2)
    }

    @Test("retention of one partition and purging a dead letter of one partition leave the other partitions alone")
    func onePartitionAtATime() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        let keys = SQLiteOlderSchema.keys(partitions: 2)
        try await log.createTopic(
            "t", TopicOptions(partitions: 2, retention: Retention(maxAge: nil, maxBytesPerPartition: 2_000)))
        // Partition 0 gets far more than its limit, partition 1 less.
        try await log.publish(
            (0..<40).map { OutgoingMessage(topic: "t", key: keys[0], event: Self.event("big-\($0)")) })
        try await log.publish(
            (0..<3).map { OutgoingMessage(topic: "t", key: keys[1], event: Self.event("small-\($0)")) })
        let deleted = try await log.applyRetention()
        #expect(deleted > 0)
        let topic = try #require(try await log.topics().first { $0.name == "t" })
        #expect(topic.partitions[0].depth == 40 - deleted)
        #expect(topic.partitions[0].firstOffset == Int64(deleted) + 1)
        #expect(topic.partitions[0].lastOffset == 40)
        #expect(topic.partitions[1].depth == 3)
        #expect(topic.partitions[1].firstOffset == 1)
        let next = try await log.publish([OutgoingMessage(topic: "t", key: keys[0], event: Self.event("after"))])
        #expect(next.map(\.offset) == [41])

        // A dead-letter topic of two partitions: purging one letter leaves the other partition's.
        try await log.createTopic("letters", TopicOptions(partitions: 2, retention: .forever))
        try await log.subscribe(
            group: "g", topic: "t", options: GroupOptions(maxDeliveries: 1, deadLetterTopic: "letters"))
        // The head of each partition of t fails once: it goes to the partition of "letters" its
        // key gives (keys[0] to 0, keys[1] to 1).
        let batch = try await log.receive(
            ReceiveRequest(group: "g", topic: "t", consumer: "c", maxMessages: 100, maxPartitions: 2))
        for partition in 0..<2 {
            let head = try #require(batch.deliveries.first { $0.message.position.partition == partition })
            try await log.nack(head, redeliverAfter: .zero, error: "no")
        }
        let letters = try await log.deadLetters(topic: "letters", limit: 10).map(\.message.position)
        #expect(letters.map(\.partition).sorted() == [0, 1])
        let purged = try await log.purgeDeadLetters(topic: "letters", positions: [letters[0]])
        #expect(purged == 1)
        let left = try await log.deadLetters(topic: "letters", limit: 10).map(\.message.position)
        #expect(left == [letters[1]])
        #expect(try await log.purgeDeadLetters(topic: "letters", positions: nil) == 1)
        let after = try await log.publish([OutgoingMessage(topic: "letters", key: keys[1], event: Self.event("x"))])
        #expect(after.map(\.offset) == [2])
        try await log.close()
    }

    @Test(
        "a topic of the most partitions (4096, a table each) is published to, received from, listed and dead-lettered")
    func mostPartitions() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("wide", TopicOptions(partitions: 4096))
        try await log.subscribe(group: "g", topic: "wide", options: GroupOptions(maxDeliveries: 1))
        let published = try await log.publish(
            (0..<300).map { OutgoingMessage(topic: "wide", key: "key-\($0)", event: Self.event("w\($0)")) })
        #expect(Set(published.map(\.partition)).count > 250)
        var received: [Delivery] = []
        for _ in 0..<20 where received.count < 300 {
            let batch = try await log.receive(
                ReceiveRequest(group: "g", topic: "wide", consumer: "c", maxMessages: 300, maxPartitions: 4096))
            for delivery in batch.deliveries {
                if delivery.message.event.id == "w7" {
                    try await log.nack(delivery, redeliverAfter: .zero, error: "no")
                } else {
                    try await log.ack(delivery)
                }
            }
            received += batch.deliveries
        }
        #expect(Set(received.map(\.message.event.id)).count == 300)
        let topic = try #require(try await log.topics().first { $0.name == "wide" })
        #expect(topic.partitions.count == 4096)
        #expect(topic.partitions.reduce(0) { $0 + $1.depth } == 300)
        #expect(topic.groups.first?.lag == 0)
        #expect(topic.groups.first?.deadLettered == 1)
        let letters = try await log.deadLetters(
            topic: SQLiteMessageLog.deadLetterTopic(for: "wide", group: "g"), limit: 5)
        #expect(letters.map(\.message.event.id) == ["w7"])
        try await log.close()
    }
}
