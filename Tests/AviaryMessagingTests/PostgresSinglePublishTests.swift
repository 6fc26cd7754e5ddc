//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import AviaryMessaging

/// A publish of one message for now goes through `aviary_publish_one` (schema v6); what it must
/// keep doing that the multi-message path does: the partition-count check, due scheduled
/// messages first, and its errors.
@Suite("PostgresMessageLog single-message publish", .timeLimit(.minutes(5)))
struct PostgresSinglePublishTests {
    let logger = Logger(label: "aviary.test")

    func execute(_ log: PostgresMessageLog, _ sql: String) async throws {
        try await log.store.withConnection { connection in
            _ = try await connection.complete(PostgresQuery(unsafeSQL: sql), logger: self.logger)
        }
    }

    @Test("one message is published through aviary_publish_one alone, several through aviary_publish_now")
    func singleMessagePath() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        try await self.execute(log, "DROP FUNCTION aviary_publish_now")
        let one = try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
        #expect(one == [MessagePosition(topic: "orders", partition: 0, offset: 1)])
        await #expect(throws: MessagingError.self) {
            try await log.publish([
                OutgoingMessage(topic: "orders", key: "o-1", event: event),
                OutgoingMessage(topic: "orders", key: "o-1", event: event),
            ])
        }
        try await log.close()
    }

    @Test(
        "a publish whose known partition count is not the stored one (AV102) reads it again and publishes at the partition for the stored count",
        arguments: [1, 2])
    func partitionCountChanged(messages: Int) async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        // The log now knows the topic has one partition.
        try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
        // A key that is not in partition 0 of 4, so a publish with the stale count would land elsewhere.
        let key = try #require(
            (1...100).lazy.map { "k-\($0)" }.first { Partitioner.partition(forKey: $0, partitions: 4) != 0 })
        let partition = Partitioner.partition(forKey: key, partitions: 4)
        try await self.execute(log, "UPDATE aviary_topics SET partitions = 4 WHERE name = 'orders'")
        try await self.execute(
            log, "INSERT INTO aviary_partitions (topic, partition) SELECT 'orders', generate_series(1, 3)")
        let positions = try await log.publish(
            Array(repeating: OutgoingMessage(topic: "orders", key: key, event: event), count: messages))
        #expect(
            positions
                == (1...messages).map { MessagePosition(topic: "orders", partition: partition, offset: Int64($0)) })
        try await log.close()
    }

    @Test("a single publish appends the topic's due scheduled messages first, then itself")
    func dueScheduledFirst() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let clock = ManualWallClock()
        let log = try await PostgresMessageLog(url: url, clock: clock)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let events = try (1...2).map { n in
            try CloudEvent(source: "/test", type: "test.placed", subject: "o-\(n)", json: ["n": n])
        }
        try await log.publish([
            OutgoingMessage(topic: "orders", key: "o-1", event: events[0], deliverAt: clock.now + 10)
        ])
        clock.advance(by: .seconds(11))
        let positions = try await log.publish([OutgoingMessage(topic: "orders", key: "o-2", event: events[1])])
        #expect(positions == [MessagePosition(topic: "orders", partition: 0, offset: 2)])
        let batch = try await log.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "c"))
        #expect(batch.deliveries.map(\.message.event.id) == events.map(\.id))
        #expect(batch.deliveries.map(\.message.position.offset) == [1, 2])
        try await log.close()
    }

    @Test(
        "a connection prepares aviary_publish_one's call once and runs it for every single publish, also after the function is replaced"
    )
    func preparedOnce() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        var configuration = PostgresMessageLog.Configuration()
        configuration.store.maximumConnections = 1
        let log = try await PostgresMessageLog(url: url, configuration: configuration)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        func publishSingly(_ count: Int) async throws -> [MessagePosition] {
            var positions: [MessagePosition] = []
            for _ in 0..<count {
                positions += try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
            }
            return positions
        }
        // Asked on the store's wire connection, where single publishes run (a session sees only
        // its own prepared statements).
        func executions() async throws -> [Int64] {
            let counts = PostgresWireStatement(
                name: "test_counts",
                sql: "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE name = $1")
            let results = try await log.store.pipeline([
                PostgresWireStep(counts, [.text(PostgresMessageLog.publishOneStatement.name)])
            ])
            return results[0].rows.compactMap { $0.integer(0) }
        }
        #expect(try await publishSingly(5).map(\.offset) == [1, 2, 3, 4, 5])
        // One statement on the store's wire connection, run five times.
        #expect(try await executions() == [5])
        // A migration may replace the function's body with the same arguments and result.
        let definition = try await log.store.withConnection { connection in
            var text = ""
            for try await row in try await connection.query(
                "SELECT pg_get_functiondef('aviary_publish_one'::regproc)", logger: self.logger
            ).decode(String.self) {
                text = row
            }
            return text
        }
        #expect(definition.hasPrefix("CREATE OR REPLACE FUNCTION"))
        try await self.execute(log, definition)
        #expect(try await publishSingly(2).map(\.offset) == [6, 7])
        #expect(try await executions() == [7])
        try await log.close()
    }

    @Test(
        "an ack in its lease and a receive's statements are prepared once per connection, relaxed or synchronous as configured; an ack once more and one of a lost lease are told apart",
        arguments: [false, true])
    func acknowledgementsPreparedOnce(synchronous: Bool) async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        var configuration = PostgresMessageLog.Configuration()
        configuration.store.maximumConnections = 1
        configuration.synchronousAcknowledgements = synchronous
        let log = try await PostgresMessageLog(url: url, configuration: configuration)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        try await log.subscribe(group: "mailer", topic: "orders", options: GroupOptions())
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        for _ in 0..<4 {
            try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
        }
        let request = ReceiveRequest(group: "mailer", topic: "orders", consumer: "m", maxMessages: 10)
        let deliveries = try await log.receive(request).deliveries
        #expect(deliveries.map(\.message.position.offset) == [1, 2, 3, 4])
        for delivery in deliveries { try await log.ack(delivery) }
        // Acknowledged already: nothing to do, no error.
        try await log.ack(deliveries[1])
        let (used, unused) =
            synchronous
            ? (AckStatement<SynchronousCommit>.name, AckStatement<RelaxedCommit>.name)
            : (AckStatement<RelaxedCommit>.name, AckStatement<SynchronousCommit>.name)
        let free =
            synchronous
            ? FreePartitionsStatement<SynchronousCommit>.name : FreePartitionsStatement<RelaxedCommit>.name
        let publish = PostgresMessageLog.publishOneStatement.name
        // The statements prepared on the store's one pooled connection (the receive's) and on its
        // wire connection (single publishes and acks; one call at a time keeps to one), with
        // their executions.
        func executions() async throws -> [String: Int64] {
            let sql = "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements WHERE name LIKE 'aviary%'"
            var counts = try await log.store.withConnection { connection in
                var counts: [String: Int64] = [:]
                for try await (name, count) in try await connection.query(
                    PostgresQuery(unsafeSQL: sql), logger: self.logger
                )
                .decode((String, Int64).self) {
                    counts[name] = count
                }
                return counts
            }
            let listing = PostgresWireStatement(name: "test_prepared_statements", sql: sql)
            for row in try await log.store.pipeline([PostgresWireStep(listing, [])]).first?.rows ?? [] {
                let name = try #require(row.text(0))
                #expect(counts[name] == nil, "\(name) prepared on both connections")
                counts[name] = row.integer(1)
            }
            return counts
        }
        // Four acks and the repeated one, one receive with a lease.
        #expect(
            try await executions() == [
                used: 5, free: 1, LeasableStatement.name: 1,
                SavePartitionStatement.name: 1, publish: 4,
            ], "\(unused) should not be prepared")
        // Nothing left to receive (no messages read, no state saved), and the lease ended with the
        // last ack: a new message is leased anew.
        #expect(try await log.receive(request).deliveries.isEmpty)
        try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
        let next = try await log.receive(request).deliveries
        #expect(next.map(\.message.position.offset) == [5])
        #expect(
            try await executions() == [
                used: 5, free: 3, LeasableStatement.name: 2,
                SavePartitionStatement.name: 2, publish: 5,
            ])
        // A lease that ran out and was taken over is lost to its first holder.
        let stale = try #require(next.first)
        try await self.execute(log, "UPDATE aviary_group_partitions SET lease_expires_at = 0")
        let taken = try await log.receive(request).deliveries
        #expect(taken.map(\.message.position.offset) == [5] && taken.first?.leaseID != stale.leaseID)
        await #expect(throws: MessagingError.self) { try await log.ack(stale) }
        try await log.ack(try #require(taken.first))
        try await log.close()
    }

    @Test("aviary_publish_one names a missing topic or partition (AV101) and a wrong partition count (AV102)")
    func functionErrors() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 2))
        let cases: [(String, String)] = [
            ("'refunds', 2, 0", PostgresMessageLog.noTopicState),
            ("'orders', 2, 2", PostgresMessageLog.noTopicState),
            ("'orders', 3, 0", PostgresMessageLog.partitionCountState),
        ]
        for (arguments, state) in cases {
            let error = await #expect(throws: PSQLError.self) {
                try await self.execute(
                    log, "SELECT aviary_publish_one(\(arguments), 'k', '{}', '{}', 2, 1, 'aviary_message_log')")
            }
            #expect(error?.serverInfo?[.sqlState] == state, "\(arguments)")
        }
        let topics = try await log.topics()
        #expect(topics.first { $0.name == "orders" }?.partitions.map(\.lastOffset) == [0, 0])
        try await log.close()
    }

    @Test(
        "a single publish's caller waits for the reply as the store's commitSpin says; on the log's loop it never looks"
    )
    func commitSpin() async throws {
        for (spin, looks) in [(Duration.seconds(30), true), (.zero, false)] {
            let url = try await PostgresTestServer.shared().makeDatabase()
            var configuration = PostgresMessageLog.Configuration()
            configuration.store.commitSpin = spin
            let log = try await PostgresMessageLog(url: url, configuration: configuration)
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
            let before = log.store.commitWait.statistics
            var positions: [MessagePosition] = []
            for index in 0..<10 {
                positions += try await log.publish([OutgoingMessage(topic: "orders", key: "o-\(index)", event: event)])
            }
            #expect(positions.count == 10)
            let after = log.store.commitWait.statistics
            CommitWaitTests.expectWaits(from: before, to: after, allFound: looks, atLeast: 10)
            // From a task on the log's loop the reply comes to the caller where it is: no wait at all.
            try await withTaskExecutorPreference(log.executor) {
                for index in 0..<5 {
                    try await log.publish([OutgoingMessage(topic: "orders", key: "loop-\(index)", event: event)])
                }
            }
            #expect(log.store.commitWait.statistics == after)
            try await log.close()
        }
    }
}
