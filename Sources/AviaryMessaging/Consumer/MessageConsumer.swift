//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import CoreMetrics
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization
public import Tracing

/// Runs a handler over a topic for one consumer group: a lifecycle `Service`.
///
/// The consumer subscribes its group, then leases partitions (up to
/// ``Configuration/concurrency`` at once) and works each partition's messages in order, several
/// partitions concurrently. A handler that returns acknowledges its message; one that throws
/// nacks it with exponential backoff (``Backoff``), and the log redelivers it later or, after
/// ``GroupOptions/maxDeliveries``, dead-letters it. Leases are extended while a handler runs, so
/// long handlers keep their partition. When idle it waits on ``MessageLog/wakeUps(topic:)``.
/// Messages lost to retention are logged at `error` and passed to `onGap`.
///
/// On graceful shutdown it stops receiving, lets in-flight handlers finish (at most
/// ``Configuration/shutdownTimeout``, then cancels them), and releases the messages it leased but
/// did not start, so that another consumer takes them at once and they do not count as failed.
///
/// With a tracer, each handler runs in a `consumer` span whose parent is the producer's span
/// (the trace context in the message headers, see ``OutgoingMessage/injectTraceContext(using:context:)``).
/// It reports to swift-metrics (the process's `MetricsSystem`): messages processed by outcome,
/// the handlers' durations, failed log calls and messages lost to retention, each labelled with
/// the topic and the group (see `MessagingMetrics`; ``MessageLogMetrics`` adds the group's lag).
///
/// ```swift
/// let consumer = MessageConsumer(
///     log: log, configuration: .init(group: "notifications", topic: "orders"), logger: logger
/// ) { delivery in
///     let placed = try delivery.message.event.decodeData(as: OrderPlaced.self)
///     try await notifications.record(placed)
/// }
/// let services = ServiceGroup(services: [consumer], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await services.run()
/// ```
public final class MessageConsumer: Service {
    /// Processes one message; throwing nacks it.
    public typealias Handler = @Sendable (Delivery) async throws -> Void

    /// Redelivery delays after a handler throws: `initial × multiplier^(deliveries − 1)`, at most
    /// `maximum`.
    public struct Backoff: Sendable, Hashable {
        /// The delay after the first failed delivery.
        public var initial: Duration
        /// Growth per further delivery.
        public var multiplier: Double
        /// The longest delay.
        public var maximum: Duration

        /// Creates a backoff.
        ///
        /// ```swift
        /// let backoff = MessageConsumer.Backoff(initial: .milliseconds(200), multiplier: 3, maximum: .seconds(60))
        /// backoff.delay(afterDelivery: 3)   // 1.8 seconds
        /// ```
        public init(initial: Duration = .seconds(1), multiplier: Double = 2, maximum: Duration = .seconds(300)) {
            self.initial = initial
            self.multiplier = multiplier
            self.maximum = maximum
        }

        /// The delay before redelivering a message whose delivery number `count` (1 the first
        /// time) failed.
        public func delay(afterDelivery count: Int) -> Duration {
            let factor = pow(max(1, self.multiplier), Double(max(0, count - 1)))
            let scaled = self.initial * min(factor, 1e9)
            return min(scaled, self.maximum)
        }
    }

    /// What the consumer reads and how.
    public struct Configuration: Sendable, Hashable {
        /// The consumer group.
        public var group: String
        /// The topic.
        public var topic: String
        /// The group's settings, applied at start (``MessageLog/subscribe(group:topic:options:)``).
        public var groupOptions: GroupOptions
        /// This consumer's name (unique per process and consumer); leases are held in it.
        public var consumerName: String
        /// Partitions worked at once.
        public var concurrency: Int
        /// Messages leased per receive.
        public var batchSize: Int
        /// How long a lease lasts; it is extended every third of it while a handler runs.
        public var lease: Duration
        /// Redelivery delays after a handler throws.
        public var backoff: Backoff
        /// How long graceful shutdown waits for in-flight handlers before cancelling them.
        public var shutdownTimeout: Duration

        /// Creates a configuration; every setting but the group and topic has a default.
        ///
        /// ```swift
        /// let configuration = MessageConsumer.Configuration(group: "notifications", topic: "orders", concurrency: 8)
        /// ```
        public init(
            group: String, topic: String, groupOptions: GroupOptions = GroupOptions(),
            consumerName: String = MessageConsumer.defaultConsumerName(), concurrency: Int = 4, batchSize: Int = 32,
            lease: Duration = .seconds(30), backoff: Backoff = Backoff(), shutdownTimeout: Duration = .seconds(10)
        ) {
            self.group = group
            self.topic = topic
            self.groupOptions = groupOptions
            self.consumerName = consumerName
            self.concurrency = concurrency
            self.batchSize = batchSize
            self.lease = lease
            self.backoff = backoff
            self.shutdownTimeout = shutdownTimeout
        }
    }

    /// `host-pid-random`: unique per process and consumer.
    public static func defaultConsumerName() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-"
            + UUID().uuidString.prefix(8).lowercased()
    }

    let log: any MessageLog
    let configuration: Configuration
    let logger: Logger
    let tracer: (any Tracer)?
    let onGap: (@Sendable (RetentionGap) -> Void)?
    let handler: Handler
    let metrics: MessagingMetrics.Consumer

    /// Creates a consumer; it starts when run (by a `ServiceGroup`).
    ///
    /// - Parameters:
    ///   - log: the message log.
    ///   - configuration: group, topic, concurrency, leases, backoff, shutdown.
    ///   - logger: for failures, lost leases and retention gaps (label it `aviary.messaging`).
    ///   - tracer: when given, each handler runs in a span continuing the producer's trace.
    ///   - onGap: called for every retention gap (after it is logged at `error`).
    ///   - metricsFactory: where its metrics go: the process's `MetricsSystem` unless a service
    ///     keeps a registry of its own (an `AviaryTelemetry` `MetricsRegistry`'s `factory`).
    ///   - handler: processes one message; throwing nacks it.
    /// - Precondition: `concurrency` and `batchSize` are at least 1 and `lease` is positive.
    public init(
        log: any MessageLog, configuration: Configuration, logger: Logger, tracer: (any Tracer)? = nil,
        onGap: (@Sendable (RetentionGap) -> Void)? = nil, metricsFactory: any MetricsFactory = MetricsSystem.factory,
        handler: @escaping Handler
    ) {
        precondition(configuration.concurrency >= 1, "concurrency must be at least 1")
        precondition(configuration.batchSize >= 1, "batchSize must be at least 1")
        precondition(configuration.lease > .zero, "lease must be positive")
        self.log = log
        self.configuration = configuration
        self.logger = logger
        self.tracer = tracer
        self.onGap = onGap
        self.handler = handler
        self.metrics = MessagingMetrics.Consumer(
            topic: configuration.topic, group: configuration.group, factory: metricsFactory)
    }

    private enum Signal: Sendable {
        case wake
        case workerDone
        case shutdown
        case timeout
    }

    /// Whether workers should stop after their current message.
    private final class StopFlag: Sendable {
        private let value = Atomic<Bool>(false)
        var isSet: Bool { self.value.load(ordering: .acquiring) }
        func set() { self.value.store(true, ordering: .releasing) }
    }

    /// Subscribes, then consumes until graceful shutdown or cancellation.
    ///
    /// - Throws: ``MessagingError`` when the group cannot be subscribed (unknown topic, bad
    ///   options); failures after that are logged and retried, never thrown.
    public func run() async throws {
        let configuration = self.configuration
        try await self.log.subscribe(
            group: configuration.group, topic: configuration.topic, options: configuration.groupOptions)
        let (signals, signal) = AsyncStream.makeStream(of: Signal.self)
        let stop = StopFlag()
        let wakeUps = self.log.wakeUps(topic: configuration.topic)
        let forwarder = Task {
            for await _ in wakeUps { signal.yield(.wake) }
        }
        defer { forwarder.cancel() }
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { workers in
                var active = 0
                var iterator = signals.makeAsyncIterator()
                var stopping = false
                while !stopping {
                    var receivedSome = false
                    if active < configuration.concurrency {
                        do {
                            let batch = try await self.log.receive(
                                ReceiveRequest(
                                    group: configuration.group, topic: configuration.topic,
                                    consumer: configuration.consumerName, maxMessages: configuration.batchSize,
                                    maxPartitions: configuration.concurrency - active, lease: configuration.lease))
                            self.report(batch.gaps)
                            for deliveries in Self.byPartition(batch.deliveries) {
                                active += 1
                                receivedSome = true
                                workers.addTask {
                                    await self.work(deliveries, stop: stop)
                                    signal.yield(.workerDone)
                                }
                            }
                        } catch  where Task.isCancelled {
                            // Cancelled, not shut down gracefully: the loop ends below, and what a
                            // cut-short receive may have leased comes back when its lease runs out.
                        } catch {
                            self.metrics.callFailed(.receive)
                            self.logger.error(
                                "receiving failed; retrying on the next wake-up",
                                metadata: self.metadata([
                                    "error.type": "\(type(of: error))", "error.message": "\(error)",
                                ])
                            )
                        }
                    }
                    if receivedSome && active < configuration.concurrency { continue }
                    guard let next = await iterator.next() else { break }
                    switch next {
                    case .workerDone: active -= 1
                    case .wake, .timeout: break
                    case .shutdown: stopping = true
                    }
                }
                // Shutting down: no more receives; in-flight handlers finish or time out.
                stop.set()
                forwarder.cancel()
                let timeout = configuration.shutdownTimeout
                let timer = Task {
                    try? await Task.sleep(for: timeout)
                    signal.yield(.timeout)
                }
                while active > 0, let next = await iterator.next() {
                    switch next {
                    case .workerDone: active -= 1
                    case .timeout:
                        self.logger.warning(
                            "handlers did not finish within the shutdown timeout; cancelling them",
                            metadata: self.metadata(["aviary.in_flight_partitions": "\(active)"]))
                        workers.cancelAll()
                    case .wake, .shutdown: break
                    }
                }
                timer.cancel()
                await workers.waitForAll()
            }
        } onGracefulShutdown: {
            // At once, not when the loop above reads the signal: a worker that finishes its
            // message meanwhile must not start the next one.
            stop.set()
            signal.yield(.shutdown)
        }
        signal.finish()
    }

    /// Deliveries grouped by partition, each group in offset order, partitions in first-seen order.
    static func byPartition(_ deliveries: [Delivery]) -> [[Delivery]] {
        var order: [Int] = []
        var groups: [Int: [Delivery]] = [:]
        for delivery in deliveries {
            let partition = delivery.message.position.partition
            if groups[partition] == nil { order.append(partition) }
            groups[partition, default: []].append(delivery)
        }
        return order.compactMap { groups[$0]?.sorted { $0.message.position.offset < $1.message.position.offset } }
    }

    private func report(_ gaps: [RetentionGap]) {
        for gap in gaps {
            self.metrics.missed.increment(by: gap.lastMissed - gap.firstMissed + 1)
            self.logger.error(
                "messages were deleted by retention before this group consumed them",
                metadata: self.metadata([
                    "messaging.destination.partition.id": "\(gap.partition)",
                    "aviary.first_missed_offset": "\(gap.firstMissed)",
                    "aviary.last_missed_offset": "\(gap.lastMissed)",
                    "aviary.missed_count": "\(gap.lastMissed - gap.firstMissed + 1)",
                ]))
            self.onGap?(gap)
        }
    }

    private func metadata(_ extra: Logger.Metadata) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "messaging.consumer.group.name": "\(self.configuration.group)",
            "messaging.destination.name": "\(self.configuration.topic)",
        ]
        metadata.merge(extra) { $1 }
        return metadata
    }

    /// Handled messages a worker may leave unacknowledged while later messages of its lease wait.
    static let maxUnacknowledged = 16

    /// Works one leased partition in order: handles its messages, acknowledges what was handled,
    /// nacks and stops at the first failure, releases what is left when stopping.
    ///
    /// Acknowledgements are cumulative (``MessageLog/ack(_:)`` acknowledges the earlier messages
    /// of the lease too), so while more leased messages wait, a handled one is not acknowledged
    /// on its own: one ack covers a run of up to ``maxUnacknowledged`` messages, sent when the
    /// lease has nothing more or before anything else is told to the log (a nack, a release). On
    /// SQLite every ack is a write transaction that waits for the producers' fsyncs; one per
    /// message made a consumer in another process fall behind at 1,000 messages/s, and later
    /// messages of a lease waited for the acks of the earlier ones (scripts/bench-broker.sh).
    /// At-least-once is kept: a crash before the ack redelivers the run, which idempotent
    /// handlers (``Inbox``) absorb; nothing is acknowledged that was not handled.
    private func work(_ deliveries: [Delivery], stop: StopFlag) async {
        let cursor = Cursor()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.keepLeased(deliveries, at: cursor) }
            await self.work(deliveries, stop: stop, cursor: cursor)
            group.cancelAll()
        }
    }

    /// The index of the delivery a worker is at, read by its lease keeper.
    private final class Cursor: Sendable {
        private let value = Atomic<Int>(0)
        var index: Int { self.value.load(ordering: .relaxed) }
        func move(to index: Int) { self.value.store(index, ordering: .relaxed) }
    }

    /// Keeps the lease of a worker's partition alive while the worker runs: every third of a
    /// lease, extends it through the delivery the worker is at (the lease is the partition's, so
    /// one delivery of it extends all). One side task per leased batch, not per message: a task
    /// and a timer per message were a measurable part of consuming a message.
    private func keepLeased(_ deliveries: [Delivery], at cursor: Cursor) async {
        let lease = self.configuration.lease
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: lease / 3)
            } catch {
                return  // the worker is done
            }
            let delivery = deliveries[cursor.index]  // moved only to indices of `deliveries`
            do {
                try await self.log.extendLeases([delivery], by: lease)
            } catch  where Task.isCancelled {
                return
            } catch {
                self.metrics.callFailed(.extendLease)
                self.logger.warning(
                    "extending the lease failed",
                    metadata: self.metadata([
                        "aviary.offset": "\(delivery.message.position.offset)", "error.message": "\(error)",
                    ]))
                if let error = error as? MessagingError, error.kind == .leaseLost { return }
            }
        }
    }

    private func work(_ deliveries: [Delivery], stop: StopFlag, cursor: Cursor) async {
        var index = 0
        /// The last handled message not acknowledged yet.
        var unacknowledged: Delivery?
        var pending = 0
        /// Acknowledges the handled run; false when that failed (the partition is then left to
        /// its lease's expiry, as a failed ack always was).
        func acknowledge() async -> Bool {
            guard let delivery = unacknowledged else { return true }
            unacknowledged = nil
            pending = 0
            do {
                try await Self.shielded { try await self.log.ack(delivery) }
                return true
            } catch {
                self.metrics.callFailed(.ack)
                self.logger.warning(
                    "acknowledging failed; the partition will be redelivered",
                    metadata: self.metadata([
                        "aviary.offset": "\(delivery.message.position.offset)",
                        "messaging.destination.partition.id": "\(delivery.message.position.partition)",
                        "error.message": "\(error)",
                    ]))
                return false
            }
        }
        while index < deliveries.count {
            if stop.isSet || Task.isCancelled { break }
            let delivery = deliveries[index]
            cursor.move(to: index)
            let outcome = await self.process(delivery)
            if Task.isCancelled, case .failure = outcome {
                break  // cancelled by the shutdown timeout: give it back unprocessed
            }
            switch outcome {
            case .success:
                index += 1
                unacknowledged = delivery
                pending += 1
                if pending >= Self.maxUnacknowledged || stop.isSet {
                    guard await acknowledge() else { return }
                }
            case .failure(let error):
                guard await acknowledge() else { return }
                let delay = self.configuration.backoff.delay(afterDelivery: delivery.deliveryCount)
                self.logger.warning(
                    "handler failed; the message will be redelivered",
                    metadata: self.metadata([
                        "messaging.message.id": "\(delivery.message.event.id)",
                        "messaging.destination.partition.id": "\(delivery.message.position.partition)",
                        "aviary.offset": "\(delivery.message.position.offset)",
                        "aviary.delivery_count": "\(delivery.deliveryCount)",
                        "aviary.redeliver_after": "\(delay)", "error.type": "\(type(of: error))",
                    ]))
                do {
                    try await Self.shielded {
                        try await self.log.nack(delivery, redeliverAfter: delay, error: "\(error)")
                    }
                } catch {
                    self.metrics.callFailed(.nack)
                    self.logger.warning(
                        "nacking failed; the partition will be redelivered",
                        metadata: self.metadata([
                            "aviary.offset": "\(delivery.message.position.offset)",
                            "messaging.destination.partition.id": "\(delivery.message.position.partition)",
                            "error.message": "\(error)",
                        ]))
                }
                return  // the nack ended the lease; the rest is redelivered after it
            }
        }
        guard await acknowledge() else { return }
        let rest = Array(deliveries[index...])
        guard !rest.isEmpty else { return }
        do {
            try await Self.shielded { try await self.log.release(rest) }
        } catch {
            self.metrics.callFailed(.release)
            self.logger.warning(
                "releasing leased messages failed; they are redelivered when the lease expires",
                metadata: self.metadata(["error.message": "\(error)"]))
        }
    }

    /// Runs a log call outside the current task's cancellation: a shutdown that cancels handlers
    /// must still be able to ack, nack or release. A call that cancellation cut short while it
    /// ran (the shutdown timeout landing mid-ack) runs once more outside it; otherwise the
    /// partition would stay leased until its lease expired. Repeating is safe: acknowledging an
    /// acknowledged message does nothing, and a nack or release whose lease already ended finds
    /// the lease gone. Only a cancelled call pays for the extra task.
    private static func shielded(_ call: @escaping @Sendable () async throws -> Void) async throws {
        if Task.isCancelled {
            try await Task { try await call() }.value
            return
        }
        do {
            try await call()
        } catch  where Task.isCancelled {
            try await Task { try await call() }.value
        }
    }

    /// Runs the handler (in a span when traced), timed and counted.
    private func process(_ delivery: Delivery) async -> Result<Void, any Error> {
        let clock = SystemClock()
        let start = clock.now
        let result: Result<Void, any Error>
        do {
            try await self.handle(delivery)
            result = .success(())
        } catch {
            result = .failure(error)
        }
        self.metrics.duration.recordNanoseconds(start.duration(to: clock.now).aviaryNanoseconds)
        switch result {
        case .success: self.metrics.succeeded.increment()
        case .failure: self.metrics.failed.increment()
        }
        return result
    }

    private func handle(_ delivery: Delivery) async throws {
        guard let tracer = self.tracer else {
            return try await self.handler(delivery)
        }
        var context = ServiceContext.current ?? .topLevel
        tracer.extract(delivery.message.headers, into: &context, using: HeaderExtractor())
        let message = delivery.message
        try await tracer.withSpan("\(message.position.topic) process", context: context, ofKind: .consumer) { span in
            span.attributes["messaging.system"] = "aviary"
            span.attributes["messaging.operation.type"] = "process"
            span.attributes["messaging.destination.name"] = message.position.topic
            span.attributes["messaging.destination.partition.id"] = "\(message.position.partition)"
            span.attributes["messaging.consumer.group.name"] = delivery.group
            span.attributes["messaging.message.id"] = message.event.id
            span.attributes["messaging.message.delivery_count"] = delivery.deliveryCount
            try await self.handler(delivery)
        }
    }
}
