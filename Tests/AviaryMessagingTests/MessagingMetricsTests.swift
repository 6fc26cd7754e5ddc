//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Logging
import MetricsTestKit
import ServiceLifecycle
import Synchronization
import Testing

@testable import AviaryMessaging

/// The consumer's and the log's metrics, on a real SQLite log, read from a `TestMetrics`.
@Suite("Messaging metrics", .timeLimit(.minutes(5)))
struct MessagingMetricsTests {
    static let logger = Logger(label: "aviary.messaging.test")

    static func counter(
        _ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)]
    ) -> Int64 {
        (try? metrics.expectCounter(label, dimensions).totalValue) ?? 0
    }

    static func gauge(_ metrics: TestMetrics, _ label: String, _ dimensions: [(String, String)]) -> Double? {
        try? metrics.expectGauge(label, dimensions).lastValue
    }

    @Test("a consumer counts its messages by outcome, times every handler run, and counts retention's losses")
    func consumerMetrics() async throws {
        let clock = ManualWallClock()
        let metrics = TestMetrics()
        try await MessageConsumerTests.withLog(clock: clock) { log in
            try await log.createTopic(
                "orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions(maxDeliveries: 2))
            // Two messages retention deletes before the group reads them.
            try await log.publish((1...2).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            clock.advance(by: .seconds(61))
            try await log.publish((3...5).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            #expect(try await log.applyRetention() == 2)
            struct Rejected: Error {}
            let handled = Locked<[Int]>([])
            let consumer = MessageConsumer(
                log: log,
                configuration: .init(
                    group: "g", topic: "orders", groupOptions: GroupOptions(maxDeliveries: 2),
                    backoff: .init(initial: .zero)),
                logger: Self.logger, metricsFactory: metrics
            ) { delivery in
                handled.withLock { $0.append(delivery.n) }
                if delivery.n == 4 { throw Rejected() }
            }
            let labels = [("topic", "orders"), ("group", "g")]
            try await MessageConsumerTests.running(consumer) {
                // Message 4 fails twice and is dead-lettered; 3 and 5 succeed.
                try await MessageConsumerTests.eventually {
                    Self.counter(metrics, MessagingMetrics.processed, labels + [("outcome", "success")]) == 2
                        && Self.counter(metrics, MessagingMetrics.processed, labels + [("outcome", "failure")]) == 2
                }
            }
            #expect(handled.withLock { $0 } == [3, 4, 4, 5])
            #expect(try metrics.expectTimer(MessagingMetrics.processDuration, labels).values.count == 4)
            #expect(Self.counter(metrics, MessagingMetrics.retentionMissed, labels) == 2)
            for operation in MessagingMetrics.Operation.allCases {
                #expect(
                    Self.counter(metrics, MessagingMetrics.consumerErrors, labels + [("operation", operation.rawValue)])
                        == 0)
            }
        }
    }

    @Test("a consumer counts the log calls that failed, by operation")
    func consumerErrors() async throws {
        let metrics = TestMetrics()
        try await MessageConsumerTests.withLog { base in
            try await base.createTopic("orders", TopicOptions(partitions: 1))
            try await base.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
            let log = FailsFirstCalls(base, receives: 2, acks: 1)
            let handled = Locked(0)
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders"), logger: Self.logger,
                metricsFactory: metrics
            ) { _ in handled.withLock { $0 += 1 } }
            let labels = [("topic", "orders"), ("group", "g")]
            try await MessageConsumerTests.running(consumer) {
                // Two receives fail, the third leases the message; its ack fails once, so the
                // message comes back when its lease is released or expires; it is handled at least once.
                try await MessageConsumerTests.eventually {
                    Self.counter(metrics, MessagingMetrics.consumerErrors, labels + [("operation", "ack")]) == 1
                }
            }
            #expect(Self.counter(metrics, MessagingMetrics.consumerErrors, labels + [("operation", "receive")]) == 2)
            #expect(handled.withLock { $0 } >= 1)
            #expect(Self.counter(metrics, MessagingMetrics.consumerErrors, labels + [("operation", "nack")]) == 0)
        }
    }

    @Test("MessageLogMetrics reports each topic's messages, bytes and schedule and each group's lag and losses")
    func logMetrics() async throws {
        let clock = ManualWallClock()
        let metrics = TestMetrics()
        try await MessageConsumerTests.withLog(clock: clock) { log in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions(maxDeliveries: 1))
            try await log.subscribe(group: "audit", topic: "orders", options: GroupOptions())
            try await log.publish(
                (1...5).map { OutgoingMessage(topic: "orders", key: "k\($0)", event: try numbered($0)) })
            try await log.publish([
                OutgoingMessage(
                    topic: "orders", key: "later", event: try numbered(6), deliverAt: clock.now.addingTimeInterval(3600)
                )
            ])
            let service = MessageLogMetrics(
                log: log, interval: .seconds(15), logger: Self.logger, clock: ManualClock(), metricsFactory: metrics)
            try await service.update()
            let orders = [("topic", "orders")]
            let mail = [("topic", "orders"), ("group", "mail")]
            let audit = [("topic", "orders"), ("group", "audit")]
            #expect(Self.gauge(metrics, MessagingMetrics.topicMessages, orders) == 5)
            #expect((Self.gauge(metrics, MessagingMetrics.topicBytes, orders) ?? 0) > 0)
            #expect(Self.gauge(metrics, MessagingMetrics.topicScheduled, orders) == 1)
            #expect(Self.gauge(metrics, MessagingMetrics.groupLag, mail) == 5)
            #expect(Self.gauge(metrics, MessagingMetrics.groupLag, audit) == 5)

            // `mail` acknowledges four and fails one, which goes to its dead-letter topic.
            clock.advance(by: .seconds(7))
            // Receives until nothing is left (a nack ends its lease, so the rest of that
            // partition comes in a later receive); bounded, so that a bug fails instead of looping.
            for _ in 0..<10 {
                let batch = try await log.receive(
                    ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 10, lease: .seconds(30)))
                if batch.deliveries.isEmpty { break }
                for delivery in batch.deliveries {
                    if delivery.n == 3 {
                        try await log.nack(delivery, redeliverAfter: .zero, error: "no")
                        break
                    }
                    try await log.ack(delivery)
                }
            }
            try await service.update()
            #expect(Self.gauge(metrics, MessagingMetrics.groupLag, mail) == 0)
            #expect(Self.gauge(metrics, MessagingMetrics.groupDeadLettered, mail) == 1)
            #expect(Self.gauge(metrics, MessagingMetrics.groupOldestUnackedAge, mail) == 0)
            #expect(Self.gauge(metrics, MessagingMetrics.groupLag, audit) == 5)
            #expect(Self.gauge(metrics, MessagingMetrics.groupOldestUnackedAge, audit) == 7)
            #expect(Self.gauge(metrics, MessagingMetrics.groupStoppedPartitions, audit) == 0)
            #expect(Self.gauge(metrics, MessagingMetrics.groupLostToRetention, audit) == 0)
            // The dead-letter topic is a topic of its own.
            #expect(Self.gauge(metrics, MessagingMetrics.topicMessages, [("topic", "orders.mail.dlq")]) == 1)
        }
    }

    @Test("MessageLogMetrics reads the log at start and then every interval, counts failed readings, and stops")
    func logMetricsService() async throws {
        let metrics = TestMetrics()
        let clock = ManualClock()
        try await MessageConsumerTests.withLog { base in
            try await base.createTopic("orders", TopicOptions(partitions: 1))
            try await base.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let log = FailsFirstCalls(base, topics: 1)
            let service = MessageLogMetrics(
                log: log, interval: .seconds(15), logger: Self.logger, clock: clock, metricsFactory: metrics)
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [service], logger: Self.logger))
            let lag = [("topic", "orders"), ("group", "g")]
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                // The first reading fails: counted, and nothing is set until the next interval.
                await clock.waitForSleepers()
                #expect(Self.counter(metrics, MessagingMetrics.logReadErrors, []) == 1)
                #expect(Self.gauge(metrics, MessagingMetrics.groupLag, lag) == nil)
                try await base.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
                clock.advance(by: .seconds(15))
                try await MessageConsumerTests.eventually { Self.gauge(metrics, MessagingMetrics.groupLag, lag) == 1 }
                try await base.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(2))])
                await clock.waitForSleepers()
                clock.advance(by: .seconds(15))
                try await MessageConsumerTests.eventually { Self.gauge(metrics, MessagingMetrics.groupLag, lag) == 2 }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            #expect(Self.counter(metrics, MessagingMetrics.logReadErrors, []) == 1)
        }
    }
}

/// A real log whose first calls of some kinds fail, as a database that is briefly unreachable.
final class FailsFirstCalls: ForwardingLog {
    struct Unavailable: Error {}

    let base: any MessageLog
    private let left: Mutex<(receives: Int, acks: Int, topics: Int)>

    init(_ base: any MessageLog, receives: Int = 0, acks: Int = 0, topics: Int = 0) {
        self.base = base
        self.left = Mutex((receives, acks, topics))
    }

    func receive(_ request: ReceiveRequest) async throws -> ReceivedBatch {
        let fail = self.left.withLock { left in
            defer { left.receives -= 1 }
            return left.receives > 0
        }
        if fail { throw Unavailable() }
        return try await self.base.receive(request)
    }

    func ack(_ delivery: Delivery) async throws {
        let fail = self.left.withLock { left in
            defer { left.acks -= 1 }
            return left.acks > 0
        }
        if fail { throw Unavailable() }
        try await self.base.ack(delivery)
    }

    func topics() async throws -> [TopicInfo] {
        let fail = self.left.withLock { left in
            defer { left.topics -= 1 }
            return left.topics > 0
        }
        if fail { throw Unavailable() }
        return try await self.base.topics()
    }
}
