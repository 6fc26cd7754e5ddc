//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import AviaryTestSupport
import Foundation
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
