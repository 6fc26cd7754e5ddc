//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import CoreMetrics
public import Logging
public import ServiceLifecycle
import Synchronization

/// Reports what a message log holds as swift-metrics gauges, read with ``MessageLog/topics()`` at
/// an interval: each topic's retained messages, bytes and scheduled messages, and each group's
/// lag, oldest unacknowledged age, stopped partitions, dead-lettered and lost-to-retention counts
/// (the figures `aviary broker topics` prints). A lifecycle `Service`; one process per log is
/// enough (every process sees the same log).
///
/// Lag is the figure to alert on: a group whose lag grows is falling behind its producers, and
/// `aviary_messaging_group_oldest_unacked_age_seconds` says how far. The metric names are listed
/// in the module's overview.
///
/// A reading counts what the log retains (on SQLite a count and a sum over each partition's
/// messages, in one read transaction that writers do not wait for): on a log that retains
/// millions of messages, give it a longer interval.
///
/// ```swift
/// let logMetrics = MessageLogMetrics(log: log, interval: .seconds(15), logger: logger)
/// let services = ServiceGroup(services: [logMetrics, consumer], gracefulShutdownSignals: [.sigterm], logger: logger)
/// ```
public final class MessageLogMetrics: Service {
    let log: any MessageLog
    let interval: Duration
    let logger: Logger
    let clock: any MonotonicClock
    private let factory: any MetricsFactory
    private let readErrors: Counter

    private struct TopicGauges {
        var messages: Gauge
        var bytes: Gauge
        var scheduled: Gauge
    }

    private struct GroupGauges {
        var lag: Gauge
        var oldestUnackedAge: Gauge
        var stoppedPartitions: Gauge
        var deadLettered: Gauge
        var lostToRetention: Gauge
    }

    private struct Key: Hashable {
        var topic: String
        var group: String
    }

    /// Handles by topic and by (topic, group), made the first time one is seen (topics are never
    /// deleted, so none is ever dropped).
    private struct Handles {
        var topics: [String: TopicGauges] = [:]
        var groups: [Key: GroupGauges] = [:]
    }

    private let handles = Mutex(Handles())

    /// Creates the service.
    ///
    /// - Parameters:
    ///   - log: the message log.
    ///   - interval: the time between readings (the first is at start).
    ///   - logger: a failed reading is logged at `warning` and tried again at the next interval.
    ///   - clock: the clock the interval is measured on (tests inject a ``AviaryCore/ManualClock``).
    ///   - metricsFactory: where the gauges go: the process's `MetricsSystem` unless a service
    ///     keeps a registry of its own (an `AviaryTelemetry` `MetricsRegistry`'s `factory`).
    /// - Precondition: `interval` is positive.
    public init(
        log: any MessageLog, interval: Duration = .seconds(15), logger: Logger,
        clock: any MonotonicClock = SystemClock(), metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        precondition(interval > .zero, "the metrics interval must be positive")
        self.log = log
        self.interval = interval
        self.logger = logger
        self.clock = clock
        self.factory = metricsFactory
        self.readErrors = Counter(label: MessagingMetrics.logReadErrors, factory: metricsFactory)
    }

    /// Reads the log once and sets every gauge.
    ///
    /// ```swift
    /// try await logMetrics.update()
    /// ```
    ///
    /// - Throws: the log's error; the gauges keep their last values.
    public func update() async throws {
        let topics = try await self.log.topics()
        self.handles.withLock { handles in
            for topic in topics {
                let gauges = handles.topics[topic.name] ?? self.topicGauges(topic.name)
                handles.topics[topic.name] = gauges
                gauges.messages.record(topic.partitions.reduce(Int64(0)) { $0 + $1.depth })
                gauges.bytes.record(topic.partitions.reduce(Int64(0)) { $0 + $1.bytes })
                gauges.scheduled.record(topic.scheduled)
                for group in topic.groups {
                    let key = Key(topic: topic.name, group: group.name)
                    let gauges = handles.groups[key] ?? self.groupGauges(key)
                    handles.groups[key] = gauges
                    gauges.lag.record(group.lag)
                    gauges.oldestUnackedAge.record(group.oldestUnackedAge?.aviarySeconds ?? 0)
                    gauges.stoppedPartitions.record(group.stoppedPartitions.count)
                    gauges.deadLettered.record(group.deadLettered)
                    gauges.lostToRetention.record(group.lostToRetention)
                }
            }
        }
    }

    /// Reads the log every interval until graceful shutdown or cancellation.
    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                try await self.update()
            } catch {
                self.readErrors.increment()
                self.logger.warning(
                    "reading the message log for its metrics failed", metadata: ["error.message": "\(error)"])
            }
            let (clock, interval) = (self.clock, self.interval)
            do {
                try await cancelWhenGracefulShutdown { try await clock.sleep(for: interval) }
            } catch {
                return
            }
        }
    }

    private func topicGauges(_ topic: String) -> TopicGauges {
        let labels = [("topic", topic)]
        return TopicGauges(
            messages: Gauge(label: MessagingMetrics.topicMessages, dimensions: labels, factory: self.factory),
            bytes: Gauge(label: MessagingMetrics.topicBytes, dimensions: labels, factory: self.factory),
            scheduled: Gauge(label: MessagingMetrics.topicScheduled, dimensions: labels, factory: self.factory))
    }

    private func groupGauges(_ key: Key) -> GroupGauges {
        let labels = [("topic", key.topic), ("group", key.group)]
        func gauge(_ label: String) -> Gauge { Gauge(label: label, dimensions: labels, factory: self.factory) }
        return GroupGauges(
            lag: gauge(MessagingMetrics.groupLag),
            oldestUnackedAge: gauge(MessagingMetrics.groupOldestUnackedAge),
            stoppedPartitions: gauge(MessagingMetrics.groupStoppedPartitions),
            deadLettered: gauge(MessagingMetrics.groupDeadLettered),
            lostToRetention: gauge(MessagingMetrics.groupLostToRetention))
    }
}
