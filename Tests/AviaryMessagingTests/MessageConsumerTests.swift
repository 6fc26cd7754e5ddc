//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import Foundation
import GRDB
import InMemoryTracing
import Logging
import ServiceLifecycle
import Synchronization
import Testing
import Tracing

/// The consumer runtime on a real SQLite log. Waits are polls with a deadline.
@Suite("MessageConsumer", .timeLimit(.minutes(5)))
struct MessageConsumerTests {
    static let logger = Logger(label: "aviary.messaging.test")

    /// Opens a SQLite log on a temporary file with a fast poll.
    static func withLog<T>(
        clock: any WallClock = ManualWallClock(), _ body: (SQLiteMessageLog) async throws -> T
    ) async throws -> T {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-consumer-\(UUID().uuidString).db").path
        let log = try SQLiteMessageLog(
            path: path, clock: clock, configuration: .init(synchronous: .normal, pollInterval: .milliseconds(20)))
        defer {
            for suffix in ["", "-wal", "-shm", "-wakeups"] {
                try? FileManager.default.removeItem(atPath: path + suffix)
            }
        }
        let result = try await body(log)
        try? await log.close()
        return result
    }

    /// Runs `consumer` in a service group while `body` runs, then shuts it down gracefully and
    /// waits for it to return.
    static func running<T>(_ consumer: MessageConsumer, _ body: () async throws -> T) async throws -> T {
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: [consumer], logger: Self.logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let result = try await body()
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return result
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    /// Polls `condition` until it holds or `timeout` passes.
    static func eventually(
        _ timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("condition did not hold within \(timeout)", sourceLocation: sourceLocation)
    }

    @Test("every message is handled once, in order per key, at most `concurrency` partitions at once")
    func handlesInOrderWithBoundedConcurrency() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 8))
            let keys = 10
            let perKey = 20
            for round in 0..<perKey {
                try await log.publish(
                    (0..<keys).map { OutgoingMessage(topic: "orders", key: "key-\($0)", event: try numbered(round)) })
            }
            let seen = Locked<[String: [Int]]>([:])
            let inFlight = Locked<Int>(0)
            let maxInFlight = Locked<Int>(0)
            let firstTaken = Locked<Bool>(false)
            // Yielded when two handlers run at once (the buffer keeps it for a later reader).
            let (overlaps, overlapped) = AsyncStream.makeStream(of: Void.self)
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders", concurrency: 3, batchSize: 5),
                logger: Self.logger
            ) { delivery in
                let now = inFlight.withLock {
                    $0 += 1; return $0
                }
                maxInFlight.withLock { $0 = max($0, now) }
                if now >= 2 { overlapped.yield() }
                // The first handler waits for another partition's handler to run alongside it:
                // handlers this short would otherwise rarely overlap. (Without concurrency it
                // waits until the shutdown timeout cancels it, and the checks below fail.)
                let first = firstTaken.withLock { taken in
                    defer { taken = true }
                    return !taken
                }
                if first {
                    for await _ in overlaps { break }
                }
                await Task.yield()
                seen.withLock { $0[delivery.message.key, default: []].append(delivery.n) }
                inFlight.withLock { $0 -= 1 }
            }
            try await Self.running(consumer) {
                try await Self.eventually { seen.withLock { $0.values.map(\.count).reduce(0, +) } == keys * perKey }
            }
            let result = seen.withLock { $0 }
            for (key, numbers) in result { #expect(numbers == Array(0..<perKey), "key \(key)") }
            #expect(maxInFlight.value <= 3)
            #expect(maxInFlight.value >= 2)
            let group = try #require(try await log.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.lag == 0)
        }
    }

    @Test("a publish while idle is consumed without waiting for the poll timer")
    func wakesOnPublish() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-wake-\(UUID()).db").path
        defer {
            for suffix in ["", "-wal", "-shm", "-wakeups"] {
                try? FileManager.default.removeItem(atPath: path + suffix)
            }
        }
        // The poll timer is an hour: only the in-process notification can wake the consumer.
        let log = try SQLiteMessageLog(path: path, configuration: .init(pollInterval: .seconds(3600)))
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let handled = Locked<Int>(0)
        let consumer = MessageConsumer(
            log: log, configuration: .init(group: "g", topic: "orders"), logger: Self.logger
        ) { _ in handled.withLock { $0 += 1 } }
        try await Self.running(consumer) {
            // Let the consumer subscribe and go idle, then publish.
            try await Self.eventually { try await log.topics().first { $0.name == "orders" }?.groups.count == 1 }
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
            try await Self.eventually(.seconds(30)) { handled.value == 1 }
        }
        try await log.close()
    }

    @Test("a throwing handler nacks with backoff; after maxDeliveries the message is dead-lettered")
    func failuresDeadLetter() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            struct Rejected: Error, CustomStringConvertible {
                var description: String { "message 2 is rejected" }
            }
            let attempts = Locked<[Int: [Int]]>([:])
            let consumer = MessageConsumer(
                log: log,
                configuration: .init(
                    group: "g", topic: "orders", groupOptions: GroupOptions(maxDeliveries: 3),
                    backoff: .init(initial: .zero)),
                logger: Self.logger
            ) { delivery in
                attempts.withLock { $0[delivery.n, default: []].append(delivery.deliveryCount) }
                if delivery.n == 2 { throw Rejected() }
            }
            try await Self.running(consumer) {
                try await Self.eventually { attempts.withLock { $0[3] != nil } }
            }
            #expect(attempts.withLock { $0 } == [1: [1], 2: [1, 2, 3], 3: [1]])
            let letters = try await log.deadLetters(topic: "orders.g.dlq", limit: 10)
            #expect(letters.map(\.message.event.id).count == 1)
            #expect(letters.first?.lastError == "message 2 is rejected")
            #expect(letters.first?.deliveries == 3)
        }
    }

    @Test("the handled messages of one lease are acknowledged together, after the last of them")
    func acknowledgesRuns() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.publish((1...5).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            // The group's lag while each message is handled: acks before the lease's last
            // message would shrink it.
            let lags = Locked<[Int: Int64]>([:])
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders", concurrency: 1, batchSize: 5),
                logger: Self.logger
            ) { delivery in
                let lag = try await log.topics().first { $0.name == "orders" }?.groups.first?.lag ?? -1
                lags.withLock { $0[delivery.n] = lag }
            }
            try await Self.running(consumer) {
                try await Self.eventually {
                    try await log.topics().first { $0.name == "orders" }?.groups.first?.lag == 0
                }
            }
            #expect(lags.withLock { $0 } == [1: 5, 2: 5, 3: 5, 4: 5, 5: 5])
        }
    }

    @Test("nack delays grow exponentially up to the maximum")
    func backoff() {
        let backoff = MessageConsumer.Backoff(initial: .milliseconds(100), multiplier: 2, maximum: .seconds(1))
        #expect(
            (1...6).map { backoff.delay(afterDelivery: $0) } == [0.1, 0.2, 0.4, 0.8, 1, 1].map { Duration.seconds($0) })
    }

    @Test("graceful shutdown lets the running handler finish and releases the rest uncounted")
    func shutdownFinishesAndReleases() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.publish((1...5).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let started = Locked<Int>(0)
            let finished = Locked<Int>(0)
            let consumer = MessageConsumer(
                log: log,
                configuration: .init(group: "g", topic: "orders", concurrency: 1, shutdownTimeout: .seconds(60)),
                logger: Self.logger
            ) { _ in
                started.withLock { $0 += 1 }
                // Suspended until the consumer is told to shut down (ServiceLifecycle resumes this
                // after it has run the consumer's graceful-shutdown handler).
                try await gracefulShutdown()
                finished.withLock { $0 += 1 }
            }
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [consumer], logger: Self.logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await Self.eventually { started.value == 1 }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            #expect(started.value == 1)
            #expect(finished.value == 1)
            let rest = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "other"))
            #expect(rest.deliveries.map(\.n) == [2, 3, 4, 5])
            #expect(rest.deliveries.allSatisfy { $0.deliveryCount == 1 })
        }
    }

    @Test("a handler that outlives the shutdown timeout is cancelled and its message released")
    func shutdownTimeoutCancels() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.publish((1...2).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let started = Locked<Bool>(false)
            let consumer = MessageConsumer(
                log: log,
                configuration: .init(
                    group: "g", topic: "orders", concurrency: 1, shutdownTimeout: .milliseconds(200)),
                logger: Self.logger
            ) { _ in
                started.set(true)
                try await Task.sleep(for: .seconds(3600))
            }
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [consumer], logger: Self.logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                try await Self.eventually { started.value }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            let rest = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "other"))
            #expect(rest.deliveries.map(\.n) == [1, 2])
            #expect(rest.deliveries.map(\.deliveryCount) == [1, 1])
        }
    }

    @Test(
        "cancelled while an acknowledgement is in flight, the consumer acknowledges anyway: the partition is not left leased"
    )
    func cancelledAcknowledgementIsRepeated() async throws {
        try await Self.withLog { base in
            try await base.createTopic("orders", TopicOptions(partitions: 1))
            try await base.publish((1...2).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let log = FirstAckHangsUntilCancelled(base)
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders", concurrency: 1), logger: Self.logger
            ) { _ in }
            let running = Task { try await consumer.run() }
            var ackStarted = log.ackStarted.makeAsyncIterator()
            _ = await ackStarted.next()
            running.cancel()
            try await running.value
            #expect(log.ackCalls == 2)
            let group = try #require(try await base.topics().first { $0.name == "orders" }?.groups.first)
            #expect(group.lag == 0)
            // The lease ended with the ack: another consumer gets the next message at once, not
            // after the 30 s lease.
            try await base.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(3))])
            let next = try await base.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "other"))
            #expect(next.deliveries.map(\.n) == [3])
        }
    }

    @Test("leases are extended while a long handler runs")
    func extendsLeases() async throws {
        // The log's time is a manual clock, so that a loaded machine cannot make a lease run out:
        // the test moves time by less than a lease, waits until the consumer's extension has
        // recorded a later expiry, and checks that nobody else can take the partition, three times
        // (past two lease lengths in all, which without extensions would free the partition).
        let clock = ManualWallClock()
        try await Self.withLog(clock: clock) { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))])
            let started = Locked<Bool>(false)
            // Finished when the handler may return; the handler waits on it without polling.
            let (finishing, mayFinish) = AsyncStream.makeStream(of: Void.self)
            let calls = Locked<Int>(0)
            let lease = Duration.milliseconds(900)
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders", lease: lease), logger: Self.logger
            ) { _ in
                calls.withLock { $0 += 1 }
                started.set(true)
                for await _ in finishing {}
            }
            let reader = try DatabaseQueue(path: log.path)
            func expiry() throws -> Int64 {
                try reader.read { db in
                    try Int64.fetchOne(db, sql: "SELECT lease_expires_at FROM group_partitions WHERE group_name = 'g'")
                        ?? 0
                }
            }
            try await Self.running(consumer) {
                try await Self.eventually { started.value }
                for _ in 0..<3 {
                    clock.advance(by: .milliseconds(600))
                    let now = Int64((clock.now.timeIntervalSince1970 * 1000).rounded())
                    // An extension made after this move expires a whole lease after the new now.
                    try await Self.eventually { try expiry() >= now + 900 }
                    let stolen = try await log.receive(ReceiveRequest(group: "g", topic: "orders", consumer: "thief"))
                    #expect(stolen.deliveries.isEmpty)
                }
                mayFinish.finish()
                try await Self.eventually {
                    try await log.topics().first { $0.name == "orders" }?.groups.first?.lag == 0
                }
            }
            #expect(calls.value == 1)
        }
    }

    @Test("retention gaps are reported to the callback once")
    func reportsGaps() async throws {
        let clock = ManualWallClock()
        try await Self.withLog(clock: clock) { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            try await log.publish((1...4).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            clock.advance(by: .seconds(61))
            try await log.publish([OutgoingMessage(topic: "orders", key: "k", event: try numbered(5))])
            #expect(try await log.applyRetention() == 4)
            let gaps = Locked<[RetentionGap]>([])
            let handled = Locked<[Int]>([])
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders"), logger: Self.logger,
                onGap: { gap in gaps.withLock { $0.append(gap) } }
            ) { delivery in handled.withLock { $0.append(delivery.n) } }
            try await Self.running(consumer) {
                try await Self.eventually { handled.withLock { $0 } == [5] }
            }
            #expect(
                gaps.withLock { $0 } == [
                    RetentionGap(group: "g", topic: "orders", partition: 0, firstMissed: 1, lastMissed: 4)
                ])
        }
    }

    @Test("the handler's span continues the producer's trace")
    func continuesTrace() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1))
            let tracer = InMemoryTracer()
            let producerSpan = tracer.startSpan("place order", ofKind: .producer)
            var message = OutgoingMessage(topic: "orders", key: "k", event: try numbered(1))
            message.injectTraceContext(using: tracer, context: producerSpan.context)
            producerSpan.end()
            #expect(!message.headers.isEmpty)
            try await log.publish([message])
            let handled = Locked<Bool>(false)
            let consumer = MessageConsumer(
                log: log, configuration: .init(group: "g", topic: "orders"), logger: Self.logger, tracer: tracer
            ) { _ in handled.set(true) }
            try await Self.running(consumer) {
                try await Self.eventually { handled.value }
                try await Self.eventually { tracer.finishedSpans.contains { $0.operationName == "orders process" } }
            }
            let span = try #require(tracer.finishedSpans.first { $0.operationName == "orders process" })
            #expect(span.kind == .consumer)
            #expect(span.traceID == producerSpan.context.inMemorySpanContext?.traceID)
            #expect(span.parentSpanID == producerSpan.context.inMemorySpanContext?.spanID)
            #expect(span.attributes.get("messaging.consumer.group.name") == .string("g"))
        }
    }

    @Test("RetentionService applies retention at its interval and stops on graceful shutdown")
    func retentionService() async throws {
        let clock = ManualWallClock()
        try await Self.withLog(clock: clock) { log in
            try await log.createTopic("orders", TopicOptions(partitions: 1, retention: Retention(maxAge: .seconds(60))))
            try await log.publish((1...3).map { OutgoingMessage(topic: "orders", key: "k", event: try numbered($0)) })
            let service = RetentionService(log: log, interval: .milliseconds(10), logger: Self.logger)
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(services: [service], logger: Self.logger))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                func depth() async throws -> Int64? {
                    try await log.topics().first { $0.name == "orders" }?.partitions.first?.depth
                }
                #expect(try await depth() == 3)
                clock.advance(by: .seconds(61))
                try await Self.eventually { try await depth() == 0 }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }
}

/// A real log whose first ack does not finish until its task is cancelled: a shutdown that
/// cancels the consumer while an acknowledgement is in flight. Later acks go through.
final class FirstAckHangsUntilCancelled: ForwardingLog {
    let base: any MessageLog
    /// Yields when the first ack has started.
    let ackStarted: AsyncStream<Void>
    private let started: AsyncStream<Void>.Continuation
    /// Never yields: iterating it suspends until the iterating task is cancelled.
    private let never: AsyncStream<Void>
    private let neverYields: AsyncStream<Void>.Continuation
    private let acks = Mutex(0)

    init(_ base: any MessageLog) {
        self.base = base
        (self.ackStarted, self.started) = AsyncStream.makeStream()
        (self.never, self.neverYields) = AsyncStream.makeStream()
    }

    var ackCalls: Int { self.acks.withLock { $0 } }

    func ack(_ delivery: Delivery) async throws {
        let call = self.acks.withLock { count in
            count += 1
            return count
        }
        guard call == 1 else { return try await self.base.ack(delivery) }
        self.started.yield()
        for await _ in self.never {}
        throw CancellationError()
    }
}
