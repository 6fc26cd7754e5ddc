//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// What only the PostgreSQL backend has to prove, beyond the conformance suite: notifications
/// across connections, and leasing by concurrent receivers in several "processes" (log instances
/// with their own connections) at once.
@Suite("PostgresMessageLog", .timeLimit(.minutes(5)))
struct PostgresMessageLogTests {
    @Test("a publish through one log instance wakes a consumer waiting on another, without waiting for the poll")
    func notifyWakesOtherInstances() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        // A poll interval far beyond the test's patience: only LISTEN/NOTIFY can wake the consumer.
        let quiet = PostgresMessageLog.Configuration(pollInterval: .seconds(3600))
        let producer = try await PostgresMessageLog(url: url, configuration: quiet)
        let consumer = try await PostgresMessageLog(url: url, configuration: quiet)
        try await producer.createTopic("orders", TopicOptions(partitions: 2))
        try await consumer.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let wakeUps = consumer.wakeUps(topic: "orders")
        var iterator = wakeUps.makeAsyncIterator()
        // The first wake-up says the listener is in place (it wakes everyone when it (re)connects).
        _ = await iterator.next()
        #expect(
            try await consumer.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "c")).deliveries.isEmpty
        )

        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        try await producer.publish([OutgoingMessage(topic: "orders", event: event)])
        let woke: Void? = await iterator.next()
        #expect(woke != nil)
        let batch = try await consumer.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "c"))
        #expect(batch.deliveries.map(\.message.event.id) == [event.id])
        try await producer.close()
        try await consumer.close()
    }

    @Test("a topic's listening sessions are registered while a log listens and removed when it closes")
    func listenersAreRegistered() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let quiet = PostgresMessageLog.Configuration(pollInterval: .seconds(3600))
        let producer = try await PostgresMessageLog(url: url, configuration: quiet)
        let consumer = try await PostgresMessageLog(url: url, configuration: quiet)
        try await producer.createTopic("orders", TopicOptions(partitions: 2))
        try await producer.createTopic("refunds", TopicOptions(partitions: 1))
        #expect(try await Self.listeners(producer) == [])
        var orders = consumer.wakeUps(topic: "orders").makeAsyncIterator()
        // The first wake-up of a topic's stream comes once its registration has committed.
        _ = await orders.next()
        #expect(try await Self.listeners(producer) == ["orders"])
        var refunds = consumer.wakeUps(topic: "refunds").makeAsyncIterator()
        _ = await refunds.next()
        #expect(try await Self.listeners(producer) == ["orders", "refunds"])
        try await consumer.close()
        #expect(try await Self.listeners(producer) == [])
        try await producer.close()
    }

    @Test("a publish notifies a topic only while some log's listening session has registered for it")
    func notifiesOnlyRegisteredTopics() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let quiet = PostgresMessageLog.Configuration(pollInterval: .seconds(3600))
        let producer = try await PostgresMessageLog(url: url, configuration: quiet)
        let consumer = try await PostgresMessageLog(url: url, configuration: quiet)
        try await producer.createTopic("orders", TopicOptions(partitions: 2))
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        let logger = Logger(label: "aviary.test")
        // A session of its own listens on the channel (without registering). Notifications arrive
        // in commit order, so what came before a sentinel notified after a publish is all that
        // publish sent.
        let (before, after) = try await producer.store.withDedicatedConnection { connection in
            try await connection.listen(on: quiet.channel) { notifications in
                var iterator = notifications.makeAsyncIterator()
                func heardUntil(_ sentinel: String) async throws -> [String] {
                    try await producer.store.withConnection { other in
                        _ = try await other.complete("SELECT pg_notify(\(quiet.channel), \(sentinel))", logger: logger)
                    }
                    var payloads: [String] = []
                    while let notification = try await iterator.next(), notification.payload != sentinel {
                        payloads.append(notification.payload)
                    }
                    return payloads
                }
                try await producer.publish([OutgoingMessage(topic: "orders", event: event)])
                let before = try await heardUntil("sentinel-1")
                var wakeUps = consumer.wakeUps(topic: "orders").makeAsyncIterator()
                _ = await wakeUps.next()
                try await producer.publish([OutgoingMessage(topic: "orders", event: event)])
                let after = try await heardUntil("sentinel-2")
                return (before, after)
            }
        }
        #expect(before == [])
        #expect(after == ["orders"])
        try await producer.close()
        try await consumer.close()
    }

    /// A publish of a copy of the topic's one message, as each publish function makes it.
    static let publishesInFlight = [
        """
        SELECT aviary_publish_now(ARRAY['orders'], ARRAY[1], ARRAY['orders'], ARRAY[0], ARRAY[1],
            ARRAY[1], ARRAY[1], ARRAY[key], ARRAY[event], ARRAY[headers], ARRAY[bytes::INTEGER],
            appended_at, 'aviary_message_log')
        FROM aviary_messages WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = 'orders')
        """,
        """
        SELECT aviary_publish_one('orders', 1, 0, key, event, headers, bytes::INTEGER, appended_at,
            'aviary_message_log')
        FROM aviary_messages WHERE topic_id = (SELECT id FROM aviary_topics WHERE name = 'orders')
        """,
    ]

    @Test(
        "a consumer registering while a publish is in flight waits for its commit, so its next look finds the message",
        arguments: publishesInFlight)
    func registrationWaitsForAPublishInFlight(publish: String) async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        // No poll: a consumer that slept through the message would never wake.
        let quiet = PostgresMessageLog.Configuration(pollInterval: .seconds(3600))
        let producer = try await PostgresMessageLog(url: url, configuration: quiet)
        let consumer = try await PostgresMessageLog(url: url, configuration: quiet)
        try await producer.createTopic("orders", TopicOptions(partitions: 1))
        let event = try CloudEvent(source: "/test", type: "test.placed", subject: "o-1", json: ["n": 1])
        try await producer.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
        try await consumer.subscribe(group: "mail", topic: "orders", options: GroupOptions(start: .latest))

        // A publish of a copy of that message, held open after the publish function returned: it
        // holds the partition row and found no listener.
        let (commit, commitNow) = AsyncStream.makeStream(of: Void.self)
        let logger = Logger(label: "aviary.test")
        let inFlight = Task {
            try await producer.store.withTransaction { connection in
                _ = try await connection.complete(PostgresQuery(unsafeSQL: publish), logger: logger)
                for await _ in commit { break }
            }
        }
        try await Self.poll(producer, "the publish holding its transaction open") {
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        }
        var wakeUps = consumer.wakeUps(topic: "orders").makeAsyncIterator()
        // The registration must wait for the publish's partition row.
        try await Self.poll(producer, "the registration waiting for the publish") {
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        }
        commitNow.yield()
        commitNow.finish()
        try await inFlight.value
        _ = await wakeUps.next()
        let batch = try await consumer.receive(ReceiveRequest(group: "mail", topic: "orders", consumer: "c"))
        #expect(batch.deliveries.map(\.message.event.id) == [event.id])
        try await producer.close()
        try await consumer.close()
    }

    /// The topics in `aviary_listeners`, in order (one entry per topic).
    static func listeners(_ log: PostgresMessageLog) async throws -> [String] {
        try await log.store.withConnection { connection in
            var topics: [String] = []
            for try await topic in try await connection.query(
                "SELECT DISTINCT topic FROM aviary_listeners ORDER BY topic", logger: Logger(label: "aviary.test")
            ).decode(String.self) {
                topics.append(topic)
            }
            return topics
        }
    }

    /// Polls until `query` (one row, a count `n`) counts at least one, for up to 30 s.
    static func poll(_ log: PostgresMessageLog, _ what: String, _ query: () -> PostgresQuery) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        let query = query()
        while true {
            let count = try await log.store.withConnection { connection in
                var count: Int64 = 0
                for try await n in try await connection.query(query, logger: Logger(label: "aviary.test")).decode(
                    Int64.self)
                {
                    count = n
                }
                return count
            }
            if count > 0 { return }
            guard ContinuousClock.now < deadline else {
                Issue.record("gave up waiting for \(what)")
                throw MessagingError(.unavailable, "gave up waiting for \(what)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test("concurrent receivers on several instances lease disjoint partitions: every message once, in key order")
    func concurrentReceivers() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let logs = [
            try await PostgresMessageLog(url: url), try await PostgresMessageLog(url: url),
        ]
        let keys = (0..<16).map { "key-\($0)" }
        let perKey = 25
        try await logs[0].createTopic("orders", TopicOptions(partitions: 8))
        try await logs[0].subscribe(group: "billing", topic: "orders", options: GroupOptions())
        var messages: [OutgoingMessage] = []
        for n in 0..<perKey {
            for key in keys {
                messages.append(
                    OutgoingMessage(
                        topic: "orders", key: key,
                        event: try CloudEvent(source: "/test", type: "test.n", subject: key, json: ["n": n])))
            }
        }
        // Published in batches of 50, alternating between the instances (one after the other, so
        // that the publish order per key is defined).
        for (index, start) in stride(from: 0, to: messages.count, by: 50).enumerated() {
            try await logs[index % 2].publish(Array(messages[start..<min(start + 50, messages.count)]))
        }

        let tally = Tally()
        let expected = messages.count
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                let log = logs[worker % 2]
                group.addTask {
                    let deadline = ContinuousClock.now + .seconds(120)
                    while tally.total.load(ordering: .relaxed) < expected {
                        guard ContinuousClock.now < deadline else {
                            throw MessagingError(.unavailable, "worker \(worker) gave up with messages left")
                        }
                        let batch = try await log.receive(
                            ReceiveRequest(
                                group: "billing", topic: "orders", consumer: "worker-\(worker)", maxMessages: 10,
                                maxPartitions: 2, lease: .seconds(300)))
                        if batch.deliveries.isEmpty {
                            // Every partition is leased by the other workers: poll again shortly.
                            try await Task.sleep(for: .milliseconds(2))
                            continue
                        }
                        for delivery in batch.deliveries {
                            let n = try delivery.message.event.decodeData(as: [String: Int].self)["n"] ?? -1
                            tally.seen.withLock { $0[delivery.message.key, default: []].append(n) }
                            try await log.ack(delivery)
                        }
                        tally.total.add(batch.deliveries.count, ordering: .relaxed)
                    }
                }
            }
            try await group.waitForAll()
        }
        let delivered = tally.seen.withLock { $0 }
        #expect(delivered.count == keys.count)
        for key in keys {
            // Each key's messages exactly once, in the order they were published.
            #expect(delivered[key] == Array(0..<perKey), "\(key): \(delivered[key] ?? [])")
        }
        let info = try await logs[1].topics().first { $0.name == "orders" }
        #expect(info?.groups.first { $0.name == "billing" }?.lag == 0)
        for log in logs { try await log.close() }
    }

    @Test("a bad URL and a server that is not there are clear errors")
    func openingErrors() async throws {
        await #expect {
            _ = try await PostgresMessageLog(url: StoreURL(.postgres(url: "postgres://broker@db/")))
        } throws: { error in
            (error as? MessagingError)?.kind == .invalidArgument && "\(error)".contains("no database name")
        }
        let server = try await PostgresTestServer.start()
        let url = try await server.makeDatabase()
        await server.shutdown()
        await #expect {
            _ = try await PostgresMessageLog(url: url)
        } throws: { error in
            (error as? MessagingError)?.kind == .unavailable && "\(error)".contains("refused")
        }
    }
}

/// What concurrent workers delivered: the `n`s per key, and how many in all.
final class Tally: Sendable {
    let seen = Mutex<[String: [Int]]>([:])
    let total = Atomic<Int>(0)
}
