//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryResilience
public import AviaryStorage
import Foundation
import GRDB
public import Logging
public import ServiceLifecycle

/// Publishes the messages a service enqueued with ``Outbox/enqueue(_:in:)`` to a
/// ``MessageLog``: a lifecycle `Service` that runs next to the service's server.
///
/// The relay reads the oldest pending rows (up to ``Configuration/batchSize``), publishes them in
/// one atomic ``MessageLog/publish(_:)`` in enqueue order — so the order per key is kept — and
/// then deletes them. It wakes at once after a commit in this process that enqueued messages,
/// and polls every ``Configuration/pollInterval`` for rows written by other processes. When the
/// log fails (unavailable, a missing topic), the rows stay, record the attempt and the error,
/// and the relay retries after a growing, jittered delay (``Configuration/backoff``).
///
/// Crashes lose nothing and duplicate only what consumers absorb:
/// - killed before publishing, the rows are still there and are published on restart;
/// - killed after publishing and before deleting, the rows are published again on restart, with
///   the same CloudEvent ids, which an ``Inbox`` on the consumer side skips.
///
/// At graceful shutdown the batch in flight finishes, then the relay returns. Run one relay per
/// database; a second one (another process) is safe — it may publish a head twice, which the
/// inbox absorbs, and the first copies stay in order — but it is wasted work.
///
/// ```swift
/// let relay = OutboxRelay(
///     store: ordersStore, log: broker,
///     configuration: .init(topics: ["orders": TopicOptions(partitions: 8)]),
///     logger: logger)
/// let group = ServiceGroup(services: [server, relay], logger: logger)
/// try await group.run()
/// ```
public final class OutboxRelay: Service, Sendable {
    /// How a relay works.
    public struct Configuration: Sendable {
        /// The most messages published in one ``MessageLog/publish(_:)`` (one log transaction).
        public var batchSize: Int
        /// How long the relay idles between looks at the outbox when nothing in this process
        /// wakes it (rows committed by another process).
        public var pollInterval: Duration
        /// The delays between attempts while the log fails; restarts after a success.
        public var backoff: Backoff
        /// Topics the relay creates (or checks) in the log before it publishes.
        public var topics: [String: TopicOptions]

        /// Creates a configuration.
        ///
        /// - Parameters:
        ///   - batchSize: the most messages per publish (default 100).
        ///   - pollInterval: the idle poll period (default 1 s).
        ///   - backoff: the retry delays while the log fails (default exponential from 100 ms to
        ///     10 s, full jitter).
        ///   - topics: topics to create first (default none).
        /// - Precondition: `batchSize` is positive and `pollInterval` is not negative.
        public init(
            batchSize: Int = 100, pollInterval: Duration = .seconds(1),
            backoff: Backoff = .exponential(base: .milliseconds(100), cap: .seconds(10)),
            topics: [String: TopicOptions] = [:]
        ) {
            precondition(batchSize > 0, "OutboxRelay batchSize must be positive, got \(batchSize)")
            precondition(pollInterval >= .zero, "OutboxRelay pollInterval must not be negative")
            self.batchSize = batchSize
            self.pollInterval = pollInterval
            self.backoff = backoff
            self.topics = topics
        }
    }

    /// The service's store, whose migrations include ``Outbox/addMigrations(to:)``.
    public let store: SQLiteStore
    /// Where messages go.
    public let log: any MessageLog
    /// How the relay works.
    public let configuration: Configuration
    let logger: Logger
    let clock: any MonotonicClock

    /// Creates a relay; it starts working when ``run()`` is called.
    ///
    /// - Parameters:
    ///   - store: the service's store with the outbox table.
    ///   - log: the message log to publish to.
    ///   - configuration: batching, polling, backoff and topics.
    ///   - logger: where failures and retries are reported (`aviary.messaging.outbox` by default).
    ///   - clock: the clock for polling and backoff (tests inject a ``AviaryCore/ManualClock``).
    public init(
        store: SQLiteStore, log: any MessageLog, configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "aviary.messaging.outbox"), clock: any MonotonicClock = SystemClock()
    ) {
        self.store = store
        self.log = log
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
    }

    /// Relays until the task is cancelled or a graceful shutdown (after the batch in flight).
    ///
    /// - Throws: ``MessagingError`` (`.invalidArgument`) at once when the store has no outbox
    ///   table; failures of the log are retried, never thrown.
    public func run() async throws {
        try await self.checkTable()
        var delays = self.configuration.backoff.makeIterator()
        while !self.stopping {
            do {
                for (topic, options) in self.configuration.topics.sorted(by: { $0.key < $1.key }) {
                    try await self.log.createTopic(topic, options)
                }
                break
            } catch {
                let delay = delays.next() ?? self.configuration.pollInterval
                self.logger.warning(
                    "outbox relay cannot create its topics; retrying",
                    metadata: ["error.message": "\(error)", "aviary.retry_in": "\(delay)"])
                await self.pause(delay, orUntilSignalSince: nil)
            }
        }
        delays = self.configuration.backoff.makeIterator()
        while !self.stopping {
            let seen = OutboxSignal.shared.generation
            do {
                let published = try await self.relayBatch()
                delays = self.configuration.backoff.makeIterator()
                if published >= self.configuration.batchSize { continue }  // more may wait
                await self.pause(self.configuration.pollInterval, orUntilSignalSince: seen)
            } catch {
                let delay = delays.next() ?? self.configuration.pollInterval
                self.logger.warning(
                    "outbox relay cannot publish; the messages stay in the outbox and are retried",
                    metadata: ["error.message": "\(error)", "aviary.retry_in": "\(delay)"])
                await self.pause(delay, orUntilSignalSince: nil)
            }
        }
    }

    /// Publishes everything pending now, batch by batch, and returns how many messages went;
    /// for tools and tests (the service's relay does this continuously).
    ///
    /// ```swift
    /// let sent = try await relay.relayPending()
    /// ```
    ///
    /// - Throws: the log's or the store's error; the rows not yet published stay.
    @discardableResult
    public func relayPending() async throws -> Int {
        var total = 0
        while true {
            let published = try await self.relayBatch()
            total += published
            if published < self.configuration.batchSize { return total }
        }
    }

    /// Publishes the oldest batch and deletes it; returns its size.
    func relayBatch() async throws -> Int {
        let limit = self.configuration.batchSize
        let batch = try await self.store.read { db in try Outbox.pending(in: db, limit: limit) }
        guard !batch.isEmpty else { return 0 }
        let sequences = batch.map(\.sequence)
        do {
            try await self.log.publish(batch.map(\.message))
        } catch {
            let message = "\(error)"
            // Best effort: the row's attempts and error are for people; the retry does not need them.
            _ = try? await self.store.write { db in
                try db.execute(
                    sql: """
                        UPDATE aviary_outbox SET attempts = attempts + 1, last_error = ?
                        WHERE seq IN (\(sequences.map { _ in "?" }.joined(separator: ",")))
                        """,
                    arguments: StatementArguments(
                        [message as any DatabaseValueConvertible] + sequences.map { $0 as any DatabaseValueConvertible }
                    ))
            }
            throw error
        }
        // By id, not `seq <= last`: on engines whose sequences are not commit-ordered a smaller
        // seq may still commit later, and must not be deleted unpublished.
        try await self.store.write { db in
            try db.execute(
                sql: "DELETE FROM aviary_outbox WHERE seq IN (\(sequences.map { _ in "?" }.joined(separator: ",")))",
                arguments: StatementArguments(sequences.map { $0 as any DatabaseValueConvertible }))
        }
        self.logger.trace("outbox relayed", metadata: ["aviary.outbox.published": "\(batch.count)"])
        return batch.count
    }

    private var stopping: Bool { Task.isCancelled || Task.isShuttingDownGracefully }

    /// Waits for `duration`, or for an enqueue in this process after generation `seen`, or for
    /// a graceful shutdown or cancellation, whichever comes first.
    private func pause(_ duration: Duration, orUntilSignalSince seen: UInt64?) async {
        let clock = self.clock
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    _ = try? await clock.sleep(until: clock.now.advanced(by: duration), tolerance: nil)
                }
                if let seen {
                    group.addTask { await OutboxSignal.shared.wait(since: seen) }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }

    private func checkTable() async throws {
        let exists = try await self.store.read { db in try db.tableExists(Outbox.table) }
        guard exists else {
            throw MessagingError(
                .invalidArgument,
                "\(self.store.url) has no \(Outbox.table) table: add Outbox.addMigrations(to:) to its migrations")
        }
    }
}
