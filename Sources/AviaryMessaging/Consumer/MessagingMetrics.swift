//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import CoreMetrics

/// Every metric AviaryMessaging emits through swift-metrics, declared in one place.
///
/// A ``MessageConsumer`` reports what it does:
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `aviary_messaging_processed_total` | counter | topic, group, outcome (`success`, `failure`) |
/// | `aviary_messaging_process_duration_seconds` | timer | topic, group |
/// | `aviary_messaging_consumer_errors_total` | counter | topic, group, operation (`receive`, `ack`, `nack`, `release`, `extend_lease`) |
/// | `aviary_messaging_retention_missed_total` | counter | topic, group (messages retention deleted before the group consumed them) |
///
/// A ``MessageLogMetrics`` service reports what the log holds, read with ``MessageLog/topics()``
/// at an interval (the figures `aviary broker topics` shows):
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `aviary_messaging_topic_messages` | gauge | topic (retained messages) |
/// | `aviary_messaging_topic_bytes` | gauge | topic (retained bytes) |
/// | `aviary_messaging_topic_scheduled` | gauge | topic (messages waiting for their delivery time) |
/// | `aviary_messaging_group_lag` | gauge | topic, group (messages not yet acknowledged) |
/// | `aviary_messaging_group_oldest_unacked_age_seconds` | gauge | topic, group (0 when nothing waits) |
/// | `aviary_messaging_group_stopped_partitions` | gauge | topic, group (stopped on a poison message) |
/// | `aviary_messaging_group_dead_lettered` | gauge | topic, group (moved to the dead-letter topic, ever) |
/// | `aviary_messaging_group_lost_to_retention` | gauge | topic, group (deleted before consumed, ever) |
/// | `aviary_messaging_log_read_errors_total` | counter | (none) |
///
/// An ``OutboxRelay`` counts what it does:
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `aviary_outbox_published_total` | counter | (none) |
/// | `aviary_outbox_publish_failures_total` | counter | (none; the rows stay and are retried) |
///
/// Handles are made once per consumer, relay, topic or group, never per message.
enum MessagingMetrics {
    static let processed = "aviary_messaging_processed_total"
    static let processDuration = "aviary_messaging_process_duration_seconds"
    static let consumerErrors = "aviary_messaging_consumer_errors_total"
    static let retentionMissed = "aviary_messaging_retention_missed_total"

    static let topicMessages = "aviary_messaging_topic_messages"
    static let topicBytes = "aviary_messaging_topic_bytes"
    static let topicScheduled = "aviary_messaging_topic_scheduled"
    static let groupLag = "aviary_messaging_group_lag"
    static let groupOldestUnackedAge = "aviary_messaging_group_oldest_unacked_age_seconds"
    static let groupStoppedPartitions = "aviary_messaging_group_stopped_partitions"
    static let groupDeadLettered = "aviary_messaging_group_dead_lettered"
    static let groupLostToRetention = "aviary_messaging_group_lost_to_retention"
    static let logReadErrors = "aviary_messaging_log_read_errors_total"

    static let outboxPublished = "aviary_outbox_published_total"
    static let outboxFailures = "aviary_outbox_publish_failures_total"

    /// The log calls a consumer makes that can fail without stopping it.
    enum Operation: String, CaseIterable, Sendable {
        case receive, ack, nack, release
        case extendLease = "extend_lease"
    }

    /// A consumer's handles, made when it is created.
    struct Consumer: Sendable {
        let succeeded: Counter
        let failed: Counter
        let duration: Timer
        let missed: Counter
        private let receiveErrors: Counter
        private let ackErrors: Counter
        private let nackErrors: Counter
        private let releaseErrors: Counter
        private let extendLeaseErrors: Counter

        init(topic: String, group: String, factory: any MetricsFactory) {
            let labels = [("topic", topic), ("group", group)]
            self.succeeded = Counter(
                label: MessagingMetrics.processed, dimensions: labels + [("outcome", "success")], factory: factory)
            self.failed = Counter(
                label: MessagingMetrics.processed, dimensions: labels + [("outcome", "failure")], factory: factory)
            self.duration = Timer(
                label: MessagingMetrics.processDuration, dimensions: labels, preferredDisplayUnit: .seconds,
                factory: factory)
            self.missed = Counter(label: MessagingMetrics.retentionMissed, dimensions: labels, factory: factory)
            func errors(_ operation: Operation) -> Counter {
                Counter(
                    label: MessagingMetrics.consumerErrors, dimensions: labels + [("operation", operation.rawValue)],
                    factory: factory)
            }
            self.receiveErrors = errors(.receive)
            self.ackErrors = errors(.ack)
            self.nackErrors = errors(.nack)
            self.releaseErrors = errors(.release)
            self.extendLeaseErrors = errors(.extendLease)
        }

        /// Counts a failed log call.
        func callFailed(_ operation: Operation) {
            switch operation {
            case .receive: self.receiveErrors.increment()
            case .ack: self.ackErrors.increment()
            case .nack: self.nackErrors.increment()
            case .release: self.releaseErrors.increment()
            case .extendLease: self.extendLeaseErrors.increment()
            }
        }
    }
}
