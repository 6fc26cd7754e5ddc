//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryResilience
public import AviaryStorage
public import CoreMetrics
import Foundation
import GRDB
public import Logging
import PostgresNIO
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
/// It counts the messages it published (`aviary_outbox_published_total`) and its failed attempts
/// (`aviary_outbox_publish_failures_total`, a log that is down or refuses): a count of failures
/// that keeps rising is a relay that cannot publish, with messages piling up in the outbox.
///
/// At graceful shutdown the batch in flight finishes, then the relay returns. On SQLite, run one
/// relay per database; a second one (another process) is safe — it may publish a head twice,
/// which the inbox absorbs, and the first copies stay in order — but it is wasted work. On
/// PostgreSQL (the initialiser taking a
/// `PostgresStore`) relays take turns under an advisory lock, so several replicas can each run one.
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

    /// Where the outbox rows are (the service's SQLite or PostgreSQL store).
    let storage: any OutboxStorage
    /// Where messages go.
    public let log: any MessageLog
    /// How the relay works.
    public let configuration: Configuration
    let logger: Logger
    let clock: any MonotonicClock
    let published: Counter
    let failures: Counter

    /// Creates a relay; it starts working when ``run()`` is called.
    ///
    /// - Parameters:
    ///   - store: the service's store with the outbox table.
    ///   - log: the message log to publish to.
    ///   - configuration: batching, polling, backoff and topics.
    ///   - logger: where failures and retries are reported (`aviary.messaging.outbox` by default).
    ///   - clock: the clock for polling and backoff (tests inject a ``AviaryCore/ManualClock``).
    ///   - metricsFactory: where its counters go: the process's `MetricsSystem` unless the service
    ///     keeps a registry of its own (an `AviaryTelemetry` `MetricsRegistry`'s `factory`).
    public init(
        store: SQLiteStore, log: any MessageLog, configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "aviary.messaging.outbox"), clock: any MonotonicClock = SystemClock(),
        metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        self.storage = SQLiteOutboxStorage(store: store)
        self.log = log
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.published = Counter(label: MessagingMetrics.outboxPublished, factory: metricsFactory)
        self.failures = Counter(label: MessagingMetrics.outboxFailures, factory: metricsFactory)
    }

    /// Creates a relay for a PostgreSQL store; it starts working when ``run()`` is called.
    ///
    /// Several relays (processes) may share the database: one publishes at a time and the others
    /// skip their turn, so no row goes twice in normal operation and the order per key holds.
    /// The relay finds rows committed by any process at its next poll
    /// (``Configuration/pollInterval``).
    ///
    /// ```swift
    /// let relay = OutboxRelay(store: ordersStore, log: broker, configuration: .init(pollInterval: .milliseconds(200)))
    /// let group = ServiceGroup(services: [ordersStore, broker, server, relay], logger: logger)
    /// ```
    ///
    /// - Parameters: as for a SQLite store; `store`'s migrations include the PostgreSQL
    ///   `Outbox.addMigrations(to:)`.
    public init(
        store: PostgresStore, log: any MessageLog, configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "aviary.messaging.outbox"), clock: any MonotonicClock = SystemClock(),
        metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        self.storage = PostgresOutboxStorage(store: store, logger: logger)
        self.log = log
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.published = Counter(label: MessagingMetrics.outboxPublished, factory: metricsFactory)
        self.failures = Counter(label: MessagingMetrics.outboxFailures, factory: metricsFactory)
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
                self.failures.increment()
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
        let published = try await self.storage.relayBatch(limit: self.configuration.batchSize, to: self.log)
        if published > 0 {
            self.published.increment(by: published)
            self.logger.trace("outbox relayed", metadata: ["aviary.outbox.published": "\(published)"])
        }
        return published
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
        try await self.storage.checkTable()
    }
}

/// The outbox table of one store, as the relay uses it.
protocol OutboxStorage: Sendable {
    /// Throws ``MessagingError`` (`.invalidArgument`) naming the fix when the table is missing.
    func checkTable() async throws
    /// Publishes the oldest pending rows (up to `limit`) to `log` in one publish and deletes
    /// them; on the log's failure records the attempt on the rows and throws the log's error.
    /// Returns how many went.
    func relayBatch(limit: Int, to log: any MessageLog) async throws -> Int
}

/// The outbox in a SQLite store: one writer at a time, so `seq` order is commit order.
struct SQLiteOutboxStorage: OutboxStorage {
    let store: SQLiteStore

    func checkTable() async throws {
        let exists = try await self.store.read { db in try db.tableExists(Outbox.table) }
        guard exists else {
            throw MessagingError(
                .invalidArgument,
                "\(self.store.url) has no \(Outbox.table) table: add Outbox.addMigrations(to:) to its migrations")
        }
    }

    func relayBatch(limit: Int, to log: any MessageLog) async throws -> Int {
        let batch = try await self.store.read { db in try Outbox.pending(in: db, limit: limit) }
        guard !batch.isEmpty else { return 0 }
        let sequences = batch.map(\.sequence)
        do {
            try await log.publish(batch.map(\.message))
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
        return batch.count
    }
}

/// The outbox in a PostgreSQL store. Each batch is one transaction holding the relays' advisory
/// lock (see ``Outbox``'s PostgreSQL extension for why a lock and not `FOR UPDATE SKIP LOCKED`):
/// read, publish, delete, commit. A relay that does not get the lock publishes nothing this turn.
struct PostgresOutboxStorage: OutboxStorage {
    let store: PostgresStore
    let logger: Logger

    func checkTable() async throws {
        let logger = self.logger
        let exists = try await self.store.withConnection { connection in
            try await PostgresMessageLog.rows(
                connection, "SELECT to_regclass(\(Outbox.table)) IS NOT NULL AS present", logger
            ).first?["present"].decode(Bool.self) ?? false
        }
        guard exists else {
            throw MessagingError(
                .invalidArgument,
                "\(self.store.address) has no \(Outbox.table) table: add Outbox.addMigrations(to:) to its migrations")
        }
    }

    func relayBatch(limit: Int, to log: any MessageLog) async throws -> Int {
        let logger = self.logger
        let outcome = try await self.store.withTransaction("outbox relay") { connection -> Result<Int, any Error> in
            let locked = try await PostgresMessageLog.rows(
                connection, "SELECT pg_try_advisory_xact_lock(\(Outbox.postgresRelayLockClass), 0) AS locked", logger)
            guard try locked.first?["locked"].decode(Bool.self) == true else { return .success(0) }
            let batch = try await Outbox.pending(in: connection, limit: limit)
            guard !batch.isEmpty else { return .success(0) }
            let sequences = batch.map(\.sequence)
            do {
                try await log.publish(batch.map(\.message))
            } catch {
                // Committed with the transaction (which also releases the lock); then thrown.
                let text = "\(error)"
                _ = try await PostgresMessageLog.execute(
                    connection,
                    "UPDATE aviary_outbox SET attempts = attempts + 1, last_error = \(text) WHERE seq = ANY(\(sequences))",
                    logger)
                return .failure(error)
            }
            _ = try await PostgresMessageLog.execute(
                connection, "DELETE FROM aviary_outbox WHERE seq = ANY(\(sequences))", logger)
            return .success(batch.count)
        }
        return try outcome.get()
    }
}
