//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import AviaryMessaging
@testable import AviaryStorage

@Suite("PostgresMessageLog schema upgrades", .timeLimit(.minutes(5)))
struct PostgresMessageLogUpgradeTests {
    /// The log's migrations up to and including the `count`-th: the schema an older version made.
    static func migrations(through count: Int) -> PostgresMigrations {
        var migrations = PostgresMigrations()
        for migration in PostgresMessageLog.migrations.list.prefix(count) {
            migrations.add(migration.name, migration.migrate)
        }
        return migrations
    }

    /// `count` events with subjects `o-1`, `o-2`, ...
    static func events(_ count: Int) throws -> [CloudEvent] {
        try (1...count).map { n in
            try CloudEvent(source: "/test", type: "test.placed", subject: "o-\(n)", json: ["n": n])
        }
    }

    /// A key that lands in partition 0 and one that lands in partition 1 of a two-partition topic.
    static func keysOfTwoPartitions() throws -> [String] {
        try [0, 1].map { partition in
            try #require(
                (1...100).lazy.map { "k-\($0)" }.first { Partitioner.partition(forKey: $0, partitions: 2) == partition }
            )
        }
    }

    @Test(
        "a database of the v2 layout (before aviary_listeners and aviary_publish_now) upgrades, keeping messages and offsets"
    )
    func upgradeFromV2() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let v2 = Self.migrations(through: 2)
        #expect(v2.list.map(\.name).last == "aviary messaging v2: one-statement publish")
        let store = try PostgresStore(url: url, migrations: v2)
        let running = Task { try await store.run() }
        try await store.ready()
        let logger = Logger(label: "aviary.test")
        let events = try Self.events(2)
        let stored = try events.map(StoredJSON.event)
        // What a process of that version did: a topic, then a publish through aviary_publish.
        try await store.withTransaction { connection in
            try await connection.query(
                "INSERT INTO aviary_topics (name, partitions, created_at) VALUES ('orders', 1, 0)", logger: logger)
            try await connection.query(
                "INSERT INTO aviary_partitions (topic, partition) VALUES ('orders', 0)", logger: logger)
            _ = try await connection.complete(
                """
                SELECT * FROM aviary_publish(ARRAY['orders', 'orders'], ARRAY[0, 0]::BIGINT[], ARRAY[0, 0]::BIGINT[],
                    ARRAY['o-1', 'o-2'], \(stored), ARRAY['{}', '{}'], ARRAY[10, 10]::BIGINT[], 1, 'aviary_message_log')
                """, logger: logger)
        }
        running.cancel()
        _ = try? await running.value

        let log = try await PostgresMessageLog(url: url)
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let third = try CloudEvent(source: "/test", type: "test.placed", subject: "o-3", json: ["n": 3])
        let positions = try await log.publish([OutgoingMessage(topic: "orders", key: "o-3", event: third)])
        #expect(positions == [MessagePosition(topic: "orders", partition: 0, offset: 3)])
        let batch = try await log.receive(
            ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 10))
        #expect(batch.deliveries.map(\.message.event.id) == (events + [third]).map(\.id))
        #expect(batch.deliveries.map(\.message.position.offset) == [1, 2, 3])
        try await log.close()
    }

    @Test(
        "a database of the v3 layout (messages keyed by topic name) upgrades to topic ids in place, keeping messages, offsets, positions, leases, the schedule and dead letters"
    )
    func upgradeFromV3() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let v3 = Self.migrations(through: 3)
        #expect(v3.list.map(\.name).last == "aviary messaging v3: listeners, compact publish")
        let store = try PostgresStore(url: url, migrations: v3)
        let running = Task { try await store.run() }
        try await store.ready()
        let logger = Logger(label: "aviary.test")
        let clock = ManualWallClock()
        let now = PostgresMessageLog.millis(clock.now)
        let events = try Self.events(6)
        let stored = try events.map(StoredJSON.event)
        let keys = try Self.keysOfTwoPartitions()
        let letterHeaders = try PostgresMessageLog.json([
            DeadLetterHeader.topic: "orders", DeadLetterHeader.partition: "1", DeadLetterHeader.offset: "1",
            DeadLetterHeader.group: "mail", DeadLetterHeader.reason: "max-deliveries", DeadLetterHeader.deliveries: "5",
        ])
        var counts = DeliveryCounts()
        counts.add(1, from: 2, through: 3)
        let leased = counts.text
        // What processes of that version left: partition 0 of orders lost offset 1 to retention and
        // has offsets 2-3 leased by a consumer (delivered once); partition 1's offset 1 was
        // dead-lettered and its group cursor is at 2; a message is scheduled for partition 1.
        try await store.withTransaction { connection in
            for statement: PostgresQuery in [
                """
                INSERT INTO aviary_topics (name, partitions, max_age_ms, created_at)
                VALUES ('orders', 2, 604800000, 0), ('orders.mail.dlq', 1, NULL, 0)
                """,
                """
                INSERT INTO aviary_partitions (topic, partition, last_offset, start_offset)
                VALUES ('orders', 0, 3, 2), ('orders', 1, 2, 1), ('orders.mail.dlq', 0, 1, 1)
                """,
                """
                INSERT INTO aviary_messages (topic, partition, msg_offset, key, event, headers, appended_at, bytes)
                VALUES ('orders', 0, 2, \(keys[0]), \(stored[0]), '{}', \(now), 10),
                    ('orders', 0, 3, \(keys[0]), \(stored[1]), '{}', \(now), 10),
                    ('orders', 1, 1, \(keys[1]), \(stored[2]), '{}', \(now), 10),
                    ('orders', 1, 2, \(keys[1]), \(stored[3]), '{}', \(now), 10),
                    ('orders.mail.dlq', 0, 1, \(keys[1]), \(stored[2]), \(letterHeaders), \(now), 10)
                """,
                """
                INSERT INTO aviary_groups (name, topic, max_deliveries, on_poison, dead_letter_topic, created_at)
                VALUES ('mail', 'orders', 5, 'dead-letter', 'orders.mail.dlq', 0)
                """,
                """
                INSERT INTO aviary_group_partitions (group_name, topic, partition, next_offset, lease_owner, lease_id,
                    lease_expires_at, lease_through, leased_at, deliveries, dead_lettered)
                VALUES ('mail', 'orders', 0, 2, 'old', 'old-lease', \(now + 60_000), 3, \(now), \(leased), 0),
                    ('mail', 'orders', 1, 2, NULL, NULL, NULL, NULL, \(now), '', 1)
                """,
                """
                INSERT INTO aviary_schedule (topic, key, event, headers, deliver_at)
                VALUES ('orders', \(keys[1]), \(stored[5]), '{}', \(now + 30_000))
                """,
            ] {
                try await connection.query(statement, logger: logger)
            }
        }
        running.cancel()
        _ = try? await running.value

        let log = try await PostgresMessageLog(url: url, clock: clock)
        let before = try await log.topics()
        #expect(
            before.first { $0.name == "orders" }?.partitions == [
                PartitionInfo(partition: 0, firstOffset: 2, lastOffset: 3, depth: 2, bytes: 20),
                PartitionInfo(partition: 1, firstOffset: 1, lastOffset: 2, depth: 2, bytes: 20),
            ])
        #expect(before.first { $0.name == "orders" }?.groups.map(\.lag) == [3])
        #expect(before.first { $0.name == "orders" }?.groups.map(\.deadLettered) == [1])
        #expect(before.first { $0.name == "orders" }?.scheduled == 1)
        let letters = try await log.deadLetters(topic: "orders.mail.dlq", limit: 10)
        #expect(letters.map(\.message.position) == [MessagePosition(topic: "orders.mail.dlq", partition: 0, offset: 1)])
        #expect(letters.map(\.origin) == [MessagePosition(topic: "orders", partition: 1, offset: 1)])
        #expect(letters.map(\.message.event.id) == [events[2].id])

        // Partition 0 is still leased: only partition 1 delivers, from the group's cursor.
        let first = try await log.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "new"))
        #expect(first.deliveries.map(\.message.position) == [MessagePosition(topic: "orders", partition: 1, offset: 2)])
        #expect(first.deliveries.map(\.message.event.id) == [events[3].id])
        for delivery in first.deliveries { try await log.ack(delivery) }
        // Offsets go on from where they were.
        let published = try await log.publish([OutgoingMessage(topic: "orders", key: keys[0], event: events[4])])
        #expect(published == [MessagePosition(topic: "orders", partition: 0, offset: 4)])

        // The old lease runs out: partition 0 is delivered again, counting the earlier delivery; the
        // scheduled message comes due and is appended after partition 1's messages.
        clock.advance(by: .seconds(61))
        let second = try await log.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "new"))
        let delivered = second.deliveries.sorted { $0.message.position.partition < $1.message.position.partition }
        #expect(
            delivered.map(\.message.position) == [
                MessagePosition(topic: "orders", partition: 0, offset: 2),
                MessagePosition(topic: "orders", partition: 0, offset: 3),
                MessagePosition(topic: "orders", partition: 0, offset: 4),
                MessagePosition(topic: "orders", partition: 1, offset: 3),
            ])
        #expect(delivered.map(\.message.event.id) == [events[0], events[1], events[4], events[5]].map(\.id))
        #expect(delivered.map(\.deliveryCount) == [2, 1, 1, 1])

        // A topic created after the upgrade gets an id of its own.
        try await log.createTopic("refunds", TopicOptions(partitions: 1))
        let refund = try await log.publish([OutgoingMessage(topic: "refunds", key: "r-1", event: events[5])])
        #expect(refund == [MessagePosition(topic: "refunds", partition: 0, offset: 1)])
        // A producer of a version before v3 still publishes, through aviary_publish.
        try await log.store.withConnection { connection in
            _ = try await connection.complete(
                """
                SELECT * FROM aviary_publish(ARRAY['refunds'], ARRAY[0]::BIGINT[], ARRAY[0]::BIGINT[], ARRAY['r-2'],
                    ARRAY[\(stored[0])], ARRAY['{}'], ARRAY[10]::BIGINT[], \(now), 'aviary_message_log')
                """, logger: logger)
        }
        let after = try await log.topics()
        #expect(after.first { $0.name == "refunds" }?.partitions.map(\.lastOffset) == [2])
        #expect(after.first { $0.name == "refunds" }?.partitions.map(\.depth) == [2])
        #expect(after.first { $0.name == "orders" }?.partitions.map(\.depth) == [3, 3])
        try await log.replayDeadLetter(MessagePosition(topic: "orders.mail.dlq", partition: 0, offset: 1))
        #expect(try await log.deadLetters(topic: "orders.mail.dlq", limit: 10).isEmpty)
        let replayed = try await log.topics().first { $0.name == "orders" }?.partitions
        #expect(replayed?.map(\.lastOffset) == [4, 4])
        try await log.close()
    }

    @Test(
        "a database of the v4 layout upgrades to v5's publish function, which streams its message arrays; offsets go on from what v4's function published"
    )
    func upgradeFromV4() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let v4 = Self.migrations(through: 4)
        #expect(v4.list.map(\.name).last == "aviary messaging v4: integer topic ids, messages keyed by topic id")
        let store = try PostgresStore(url: url, migrations: v4)
        let running = Task { try await store.run() }
        try await store.ready()
        let logger = Logger(label: "aviary.test")
        let events = try Self.events(5)
        let stored = try events.map(StoredJSON.event)
        let keys = try Self.keysOfTwoPartitions()
        // What a producer of that version did: three messages through v4's aviary_publish_now, two
        // for partition 0 (slot 1) and one for partition 1 (slot 2), interleaved.
        let bases = try await store.withConnection { connection in
            try await connection.query(
                "INSERT INTO aviary_topics (name, partitions, created_at) VALUES ('orders', 2, 0)", logger: logger)
            try await connection.query(
                "INSERT INTO aviary_partitions (topic, partition) VALUES ('orders', 0), ('orders', 1)", logger: logger)
            var bases: [[Int64]?] = []
            for try await row in try await connection.query(
                """
                SELECT aviary_publish_now(\(["orders"]), \([Int32(2)]), \(["orders", "orders"]), \([Int32(0), 1]),
                    \([Int32(2), 1]), \([Int32(1), 2, 1]), \([Int32(1), 1, 2]), \([keys[0], keys[1], keys[0]]),
                    \(Array(stored[0..<3])), \(["{}", "{}", "{}"]), \([Int32(10), 10, 10]), \(Int64(1)),
                    'aviary_message_log')
                """, logger: logger
            ).decode([Int64]?.self) {
                bases.append(row)
            }
            return bases
        }
        #expect(bases == [[0, 0]])
        running.cancel()
        _ = try? await running.value

        let log = try await PostgresMessageLog(url: url)
        let source = try await PostgresOutboxTests.strings(
            log.store, "SELECT prosrc FROM pg_proc WHERE proname = 'aviary_publish_now'")
        #expect(source.count == 1)
        #expect(source.first?.contains("unnest(p_slots) AS slot") == true)
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let positions = try await log.publish([
            OutgoingMessage(topic: "orders", key: keys[1], event: events[3]),
            OutgoingMessage(topic: "orders", key: keys[0], event: events[4]),
            OutgoingMessage(topic: "orders", key: keys[1], event: events[0]),
        ])
        #expect(
            positions == [
                MessagePosition(topic: "orders", partition: 1, offset: 2),
                MessagePosition(topic: "orders", partition: 0, offset: 3),
                MessagePosition(topic: "orders", partition: 1, offset: 3),
            ])
        let inOrder = try await receiveAndAcknowledge(log, atLeast: 6)
        #expect(
            inOrder.map(\.message.position) == [
                MessagePosition(topic: "orders", partition: 0, offset: 1),
                MessagePosition(topic: "orders", partition: 0, offset: 2),
                MessagePosition(topic: "orders", partition: 0, offset: 3),
                MessagePosition(topic: "orders", partition: 1, offset: 1),
                MessagePosition(topic: "orders", partition: 1, offset: 2),
                MessagePosition(topic: "orders", partition: 1, offset: 3),
            ])
        #expect(
            inOrder.map(\.message.event.id)
                == [events[0], events[2], events[4], events[1], events[3], events[0]].map(\.id))
        try await log.close()
    }

    @Test(
        "a database of the v5 layout upgrades to v6 (aviary_publish_one) in place, keeping messages, offsets and groups; a v5 process still opens and publishes on it"
    )
    func upgradeFromV5() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let v5 = Self.migrations(through: 5)
        #expect(v5.list.map(\.name).last == "aviary messaging v5: publish streams its message arrays")
        let logger = Logger(label: "aviary.test")
        let events = try Self.events(6)
        let stored = try events.map(StoredJSON.event)
        let keys = try Self.keysOfTwoPartitions()
        /// A publish as a producer of v5 makes it: aviary_publish_now with one message.
        func publishAsV5(_ store: PostgresStore, partition: Int, event: Int) async throws -> [Int64]? {
            try await store.withConnection { connection in
                var bases: [[Int64]?] = []
                for try await row in try await connection.query(
                    """
                    SELECT aviary_publish_now(\(["orders"]), \([Int32(2)]), \(["orders"]), \([Int32(partition)]),
                        \([Int32(1)]), \([Int32(1)]), \([Int32(1)]), \([keys[partition]]), \([stored[event]]), \(["{}"]),
                        \([Int32(10)]), \(Int64(1)), 'aviary_message_log')
                    """, logger: logger
                ).decode([Int64]?.self) {
                    bases.append(row)
                }
                return bases.first ?? nil
            }
        }
        let store = try PostgresStore(url: url, migrations: v5)
        let running = Task { try await store.run() }
        try await store.ready()
        // What processes of v5 left: two messages in partition 0 and one in partition 1, and a
        // group that has acknowledged partition 0's first message.
        try await store.withTransaction { connection in
            for statement: PostgresQuery in [
                "INSERT INTO aviary_topics (name, partitions, created_at) VALUES ('orders', 2, 0), ('orders.mail.dlq', 1, 0)",
                """
                INSERT INTO aviary_partitions (topic, partition)
                VALUES ('orders', 0), ('orders', 1), ('orders.mail.dlq', 0)
                """,
                """
                INSERT INTO aviary_groups (name, topic, max_deliveries, on_poison, dead_letter_topic, created_at)
                VALUES ('mail', 'orders', 5, 'dead-letter', 'orders.mail.dlq', 0)
                """,
                """
                INSERT INTO aviary_group_partitions (group_name, topic, partition, next_offset)
                VALUES ('mail', 'orders', 0, 2), ('mail', 'orders', 1, 1)
                """,
            ] {
                try await connection.query(statement, logger: logger)
            }
        }
        #expect(try await publishAsV5(store, partition: 0, event: 0) == [0])
        #expect(try await publishAsV5(store, partition: 1, event: 1) == [0])
        #expect(try await publishAsV5(store, partition: 0, event: 2) == [1])
        running.cancel()
        _ = try? await running.value

        let log = try await PostgresMessageLog(url: url)
        let functions = try await PostgresOutboxTests.strings(
            log.store, "SELECT proname FROM pg_proc WHERE proname LIKE 'aviary_publish%' ORDER BY proname")
        #expect(functions == ["aviary_publish", "aviary_publish_now", "aviary_publish_one"])
        // A single message goes on at its partition's next offset.
        let single = try await log.publish([OutgoingMessage(topic: "orders", key: keys[0], event: events[3])])
        #expect(single == [MessagePosition(topic: "orders", partition: 0, offset: 3)])

        // A process of v5 opens the upgraded database (it ignores the migration it does not know)
        // and publishes through aviary_publish_now, which v6 left as it was.
        let old = try PostgresStore(url: url, migrations: v5)
        let oldRunning = Task { try await old.run() }
        try await old.ready()
        #expect(try await publishAsV5(old, partition: 1, event: 4) == [1])
        oldRunning.cancel()
        _ = try? await oldRunning.value
        let next = try await log.publish([OutgoingMessage(topic: "orders", key: keys[1], event: events[5])])
        #expect(next == [MessagePosition(topic: "orders", partition: 1, offset: 3)])

        // The group goes on from its cursor.
        let inOrder = try await receiveAndAcknowledge(log, atLeast: 5)
        #expect(
            inOrder.map(\.message.position) == [
                MessagePosition(topic: "orders", partition: 0, offset: 2),
                MessagePosition(topic: "orders", partition: 0, offset: 3),
                MessagePosition(topic: "orders", partition: 1, offset: 1),
                MessagePosition(topic: "orders", partition: 1, offset: 2),
                MessagePosition(topic: "orders", partition: 1, offset: 3),
            ])
        #expect(inOrder.map(\.message.event.id) == [events[2], events[3], events[1], events[4], events[5]].map(\.id))
        try await log.close()
    }
}

/// Receives and acknowledges the `mail` group's messages of `orders` (at most four receives, until
/// `count` arrived) and returns them in (partition, offset) order.
private func receiveAndAcknowledge(_ log: any MessageLog, atLeast count: Int) async throws -> [Delivery] {
    var delivered: [Delivery] = []
    for _ in 0..<4 where delivered.count < count {
        let batch = try await log.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "c"))
        for delivery in batch.deliveries { try await log.ack(delivery) }
        delivered += batch.deliveries
    }
    return delivered.sorted {
        ($0.message.position.partition, $0.message.position.offset)
            < ($1.message.position.partition, $1.message.position.offset)
    }
}
