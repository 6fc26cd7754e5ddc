//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import GRDB
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The ``MessageLog`` on one SQLite file (GRDB `DatabasePool`, WAL), shared safely by the
/// processes of one machine.
///
/// Every state change is one `BEGIN IMMEDIATE` transaction, so processes serialise on SQLite's
/// write lock; a busy or locked database is retried (GRDB's busy timeout, then a bounded retry
/// loop) and reported as ``MessagingError/Kind/unavailable`` only after
/// ``Configuration/busyRetryLimit``, with nothing half-written. `synchronous=FULL` by default: a
/// publish that returned survives a power cut.
///
/// Idle consumers are woken by ``wakeUps(topic:)``: at once when a process published to the
/// topic (this one through any log instance on the same file; on Linux any process, through the
/// topic's file in `<database>-wakeups/`, watched with inotify), and every
/// ``Configuration/pollInterval`` otherwise (nack delays ending, other systems).
///
/// Publishes commit with ``Configuration/synchronous`` (`FULL`); the transactions that only move
/// a group's cursor and leases with ``Configuration/acknowledgementSynchronous`` (`NORMAL`): a
/// power cut may make the latest acknowledgements happen again, never lose a message.
///
/// ```swift
/// let log = try SQLiteMessageLog(path: ".aviary/shop/broker.db")
/// try await log.createTopic("orders", TopicOptions(partitions: 8))
/// ```
public final class SQLiteMessageLog: MessageLog {
    /// How the file is opened.
    public struct Configuration: Sendable, Hashable {
        /// SQLite's `synchronous` setting.
        public enum Synchronous: String, Sendable, Hashable {
            /// fsync on every commit of the WAL (durable against power loss).
            case full = "FULL"
            /// fsync at checkpoints only (durable against a process crash, not a power cut).
            case normal = "NORMAL"
            /// No fsync (tests, benchmarks).
            case off = "OFF"
        }

        /// Durability of commits; `.full` by default.
        public var synchronous: Synchronous
        /// Durability of the transactions that only move a group's cursor and leases (receive,
        /// ack, nack, release, extending leases); `.normal` by default. Such a commit survives a
        /// process crash at once and a power cut with the next `.full` commit of any process (the
        /// WAL is written and synced in order), so a power cut can only undo the latest
        /// acknowledgements and leases, which means redelivery: never a lost or reordered message.
        /// It saves a consumer one fsync per message. Set `.full` to sync these too.
        public var acknowledgementSynchronous: Synchronous
        /// How long one attempt waits for another process's write lock.
        public var busyTimeout: Duration
        /// How long a write keeps retrying a busy or locked database before it fails.
        public var busyRetryLimit: Duration
        /// How often ``SQLiteMessageLog/wakeUps(topic:)`` yields without a notification.
        public var pollInterval: Duration
        /// How long a caller whose write runs on the log's writer thread may wait for its commit
        /// on its own thread, yielding the CPU between looks, before its task suspends; 250 µs by
        /// default, zero to always suspend.
        ///
        /// A suspended caller is resumed after the commit by waking a thread of the concurrency
        /// pool, which on a small virtual machine costs about a third of a single publish on a
        /// quick disk. One caller of a log at a time waits this way (the others suspend), none
        /// does while the last commit took longer than this (a slow disk), and none on a NIO
        /// event loop's thread; so it costs at most one pool thread for this long per write.
        public var commitSpin: Duration

        /// Creates a configuration.
        ///
        /// ```swift
        /// let fast = SQLiteMessageLog.Configuration(synchronous: .normal, pollInterval: .milliseconds(20))
        /// let strict = SQLiteMessageLog.Configuration(acknowledgementSynchronous: .full)
        /// let neverSpins = SQLiteMessageLog.Configuration(commitSpin: .zero)
        /// ```
        public init(
            synchronous: Synchronous = .full, acknowledgementSynchronous: Synchronous = .normal,
            busyTimeout: Duration = .seconds(5), busyRetryLimit: Duration = .seconds(60),
            pollInterval: Duration = .milliseconds(50), commitSpin: Duration = .microseconds(250)
        ) {
            self.synchronous = synchronous
            self.acknowledgementSynchronous = acknowledgementSynchronous
            self.busyTimeout = busyTimeout
            self.busyRetryLimit = busyRetryLimit
            self.pollInterval = pollInterval
            self.commitSpin = commitSpin
        }
    }

    /// The file.
    public let path: String
    let pool: DatabasePool
    /// Runs the write transactions (see ``write(acknowledgement:grouped:shortcut:committed:_:)``).
    let writer: SQLiteWriterThread

    /// The thread that runs this log's write transactions, as an executor for a task that mostly
    /// writes: a producer that publishes one message at a time and waits for each.
    ///
    /// Every write (a publish, an acknowledgement, a receive that leases) runs on one thread of
    /// the log's own, because a commit blocks for its `fdatasync`. A caller on the concurrency pool
    /// hands its write to that thread and waits for the commit (looking for it on its own thread
    /// for up to ``Configuration/commitSpin`` before it suspends). A task that prefers this
    /// executor runs its own code on the writer thread too, so its writes run where it already
    /// is, with no hand-off at all:
    ///
    /// ```swift
    /// try await withTaskExecutorPreference(log.writerExecutor) {
    ///     for order in placedOrders {
    ///         try await log.publish([OutgoingMessage(topic: "orders", key: order.id, event: order.event)])
    ///     }
    /// }
    /// ```
    ///
    /// While such a task runs (between its suspensions) the log's other writers wait, as they
    /// wait for any write; so keep slow work that is not the log's out of it. Writes of other
    /// tasks still run in turn with its jobs, and nothing changes for them.
    public var writerExecutor: any TaskExecutor { self.writer }

    /// Puts publishes submitted while the writer thread is busy into one transaction.
    let groupCommit: SQLiteGroupCommit
    let clock: any WallClock
    let configuration: Configuration
    /// The wake-up streams this instance handed out (finished on ``close()``).
    private let streams = Mutex<[UUID]>([])
    /// The message tables (``messageTable(_:)``) of the partitions of the topics this instance
    /// published to, by partition: a publish does not read them again (one `SELECT` fewer per
    /// transaction). A topic's tables never change once it is created and topics are never
    /// deleted, so an entry never goes stale; a topic not found is not remembered (another
    /// process may create it).
    private let knownTables = Mutex<[String: TopicTables]>([:])
    /// Each partition's next offset as this log's last publish left it, for the next publish while
    /// nothing else wrote the file (see ``NextOffsets``).
    private let nextOffsets = Mutex(NextOffsets())
    /// The doorbell's descriptors of the topics this log published to (closed on ``close()``).
    let bells: SQLiteDoorbell.Bells

    /// Opens (creating if needed) the log at `path`.
    ///
    /// ```swift
    /// let log = try SQLiteMessageLog(path: "/var/lib/shop/broker.db", clock: SystemWallClock())
    /// ```
    ///
    /// - Parameters:
    ///   - path: the database file; its folder is created.
    ///   - clock: the wall clock for leases, delays and retention.
    ///   - configuration: durability and timing.
    /// - Throws: ``MessagingError`` (`.unavailable`) naming the path when the file cannot be
    ///   created, opened or migrated.
    public convenience init(
        path: String, clock: any WallClock = SystemWallClock(), configuration: Configuration = Configuration()
    ) throws {
        try self.init(path: path, clock: clock, configuration: configuration, onBusyOpen: nil)
    }

    /// Opens the log like ``init(path:clock:configuration:)``, calling `onBusyOpen` with the number
    /// of failures so far each time the file was busy or locked and opening is about to try again
    /// (tests use it to know an open is waiting).
    package init(
        path: String, clock: any WallClock, configuration: Configuration, onBusyOpen: ((Int) -> Void)?
    ) throws {
        self.path = URL(fileURLWithPath: path).standardizedFileURL.path
        self.clock = clock
        self.configuration = configuration
        self.writer = SQLiteWriterThread(
            name: "aviary.sqlwrite", commitWait: CommitWait(limit: configuration.commitSpin))
        self.bells = SQLiteDoorbell.Bells(store: self.path)
        let directory = URL(fileURLWithPath: self.path).deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw MessagingError(.unavailable, "cannot create the folder of \(path): \(error.localizedDescription)")
        }
        var grdb = GRDB.Configuration()
        grdb.busyMode = .callback(Self.busyWait(limit: configuration.busyTimeout))
        let synchronous = configuration.synchronous.rawValue
        grdb.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        do {
            // Another process may hold the file locked for longer than one busy timeout (creating
            // or migrating it too, or recovering the WAL of a process killed mid-write): wait for
            // it, up to the retry limit, as writes do.
            let path = self.path
            self.pool = try SQLiteOpening.retryingBusy(
                for: configuration.busyRetryLimit, onRetry: { failures, _ in onBusyOpen?(failures) }
            ) {
                let pool = try DatabasePool(path: path, configuration: grdb)
                // GRDB sets synchronous=NORMAL on the pool's writer after `prepareDatabase` when it
                // turns WAL on; the writer is the connection whose commits must be durable, so set
                // it again.
                try pool.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
                }
                try Self.migrate(pool)
                return pool
            }
        } catch {
            throw MessagingError(.unavailable, "cannot open the message log \(path): \(error)")
        }
        self.groupCommit = SQLiteGroupCommit(pool: self.pool, writer: self.writer)
    }

    /// Waits for another process's write lock in short sleeps until `limit` has passed: 50 µs
    /// each for the first 10 ms, then doubling to 2 ms. SQLite's own busy timeout sleeps 1, 2, 5,
    /// 10 ... up to 100 ms a try, far longer than a commit holds the lock: with a producer and a
    /// consumer in two processes that made publish-to-consume latency hundreds of milliseconds
    /// (scripts/bench-broker.sh). SQLite's lock is not fair: a producer committing every
    /// millisecond takes it again as soon as it lets go, and a waiter that sleeps 2 ms between
    /// tries rarely sees it free, so waits start with short, even sleeps (this halved the
    /// cross-process p50 at 1,000 messages/s); the doubling afterwards keeps a waiter behind a
    /// long transaction from spinning. The callback runs on the thread that writes (the log's
    /// ``SQLiteWriterThread``, or the opener's while the file opens), never on the concurrency pool.
    static func busyWait(limit: Duration) -> Database.BusyCallback {
        let limitMicros = max(0, Self.millis(limit) * 1000)
        let evenTries = 200
        return { tries in
            let delay: Int64
            let slept: Int64
            if tries < evenTries {
                delay = 50
                slept = 50 * Int64(tries)
            } else {
                // After the even tries: 100, 200, ... µs, then 2 ms each.
                let step = tries - evenTries + 1
                delay = Int64(min(2000, 50 << min(step, 6)))
                slept =
                    50 * Int64(evenTries) + (step <= 5 ? 50 * ((Int64(2) << step) - 2) : 3100 + Int64(step - 5) * 2000)
            }
            guard slept < limitMicros else { return false }
            usleep(useconds_t(delay))
            return true
        }
    }

    /// The `synchronous` pragma of the connection that writes (0 off, 1 normal, 2 full), for tests.
    package func currentSynchronous() throws -> Int {
        try self.pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    // MARK: Transactions

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction, retrying while the database is busy or
    /// locked (another process holds the write lock longer than the busy timeout).
    ///
    /// The transaction runs on the log's ``SQLiteWriterThread`` (never on the concurrency pool: a
    /// commit waits for its `fdatasync`), which resumes the caller after the commit. A task
    /// cancelled before its transaction starts gets an error; once started, a transaction is not
    /// interrupted (it is short, and a commit is never reported as failed).
    ///
    /// - Parameters:
    ///   - acknowledgement: the transaction only moves a group's cursor and leases; it commits
    ///     with ``Configuration/acknowledgementSynchronous`` (SQLite allows the setting to change
    ///     between transactions only, so it is set before and restored after).
    ///   - grouped: `body` may share its transaction with other grouped writes submitted while the
    ///     writer thread was busy, each in a savepoint of its own, and one commit (see
    ///     ``SQLiteGroupCommit``); for publishes, whose bodies touch only what they write. Not for
    ///     a caller already on the writer thread (``writerExecutor``), which runs its write at once.
    ///   - shortcut: runs first on the same connection, outside a transaction (a read, no write
    ///     lock); an answer it returns is the result, and `body` does not run.
    ///   - committed: runs on the writer thread right after `body`'s transaction committed,
    ///     before any other transaction of the connection (not when it failed or rolled back; in
    ///     a group, after the group's commit, for each body that succeeded, in their order).
    func write<T: Sendable>(
        acknowledgement: Bool = false, grouped: Bool = false,
        shortcut: (@Sendable (Database) throws -> T?)? = nil, committed: (@Sendable () -> Void)? = nil,
        _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        let start = ContinuousClock.now
        var attempt = 0
        let relaxed =
            acknowledgement && self.configuration.acknowledgementSynchronous != self.configuration.synchronous
            ? self.configuration.acknowledgementSynchronous.rawValue : nil
        let synchronous = self.configuration.synchronous.rawValue
        while true {
            do {
                try Task.checkCancellation()
                if grouped, relaxed == nil, shortcut == nil, !self.writer.isCurrent {
                    return try await self.groupCommit.run(body, committed: committed)
                }
                return try await self.writer.run { [pool = self.pool] in
                    try pool.writeWithoutTransaction { db in
                        if let shortcut, let answer = try shortcut(db) { return answer }
                        if let relaxed { try db.execute(sql: "PRAGMA synchronous = \(relaxed)") }
                        let outcome = Result<T, any Error> { try Self.immediateTransaction(db) { try body(db) } }
                        if case .success = outcome { committed?() }
                        // Publishes that follow on this connection must be durable again.
                        if relaxed != nil { try db.execute(sql: "PRAGMA synchronous = \(synchronous)") }
                        return try outcome.get()
                    }
                }
            } catch let error as DatabaseError
                where error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED
            {
                attempt += 1
                if ContinuousClock.now - start > self.configuration.busyRetryLimit {
                    throw MessagingError(
                        .unavailable, "message log \(self.path) stayed busy for \(attempt) attempts: \(error)")
                }
                try await Task.sleep(for: .milliseconds(min(200, 5 << min(attempt, 6))))
            } catch let error as MessagingError {
                throw error
            } catch {
                throw MessagingError(.unavailable, "message log \(self.path): \(error)")
            }
        }
    }

    /// Runs `body` between `BEGIN IMMEDIATE` and `COMMIT`, rolling back when it throws or the
    /// commit fails. Both statements are prepared once per connection (GRDB's statement cache),
    /// where GRDB's `inTransaction` parsed `BEGIN IMMEDIATE TRANSACTION` and `COMMIT TRANSACTION`
    /// anew for every transaction (about 5% of a single publish's CPU time).
    static func immediateTransaction<T>(_ db: Database, _ body: () throws -> T) throws -> T {
        try db.cachedStatement(sql: "BEGIN IMMEDIATE").execute()
        do {
            let result = try body()
            try db.cachedStatement(sql: "COMMIT").execute()
            return result
        } catch {
            // A failed COMMIT can leave the transaction open (SQLITE_BUSY, I/O errors).
            if db.isInsideTransaction { try? db.execute(sql: "ROLLBACK") }
            throw error
        }
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await self.pool.read(body)
        } catch let error as MessagingError {
            throw error
        } catch {
            throw MessagingError(.unavailable, "message log \(self.path): \(error)")
        }
    }

    var nowMillis: Int64 { Self.millis(self.clock.now) }

    static func millis(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    static func date(_ millis: Int64) -> Date { Date(timeIntervalSince1970: Double(millis) / 1000) }
    static func millis(_ duration: Duration) -> Int64 {
        let components = duration.components
        return components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    // MARK: Topics

    public func createTopic(_ topic: String, _ options: TopicOptions) async throws {
        guard Partitioner.isValidName(topic) else {
            throw MessagingError(
                .invalidArgument, "topic \"\(topic)\": expected 1-200 letters, digits, '.', '_' or '-'")
        }
        guard (1...4096).contains(options.partitions) else {
            throw MessagingError(
                .invalidArgument, "topic \(topic): expected 1 to 4096 partitions, got \(options.partitions)")
        }
        let now = self.nowMillis
        try await self.write { db in
            try Self.createTopic(db, topic, options, now: now)
        }
    }

    static func createTopic(_ db: Database, _ topic: String, _ options: TopicOptions, now: Int64) throws {
        let maxAge = options.retention.maxAge.map(Self.millis)
        let maxBytes = options.retention.maxBytesPerPartition
        if let existing = try Int.fetchOne(db, sql: "SELECT partitions FROM topics WHERE name = ?", arguments: [topic])
        {
            guard existing == options.partitions else {
                throw MessagingError(
                    .invalidArgument,
                    "topic \(topic) has \(existing) partitions; it cannot be changed to \(options.partitions)")
            }
            try db.execute(
                sql: "UPDATE topics SET max_age_ms = ?, max_bytes = ? WHERE name = ?",
                arguments: [maxAge, maxBytes, topic])
            return
        }
        try db.execute(
            sql: "INSERT INTO topics (name, partitions, max_age_ms, max_bytes, created_at) VALUES (?, ?, ?, ?, ?)",
            arguments: [topic, options.partitions, maxAge, maxBytes, now])
        // Table ids follow the highest given: topics are never deleted, so none is given twice.
        var table = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(table_id), 0) FROM partitions") ?? 0
        for partition in 0..<options.partitions {
            table += 1
            try db.execute(
                sql: "INSERT INTO partitions (topic, partition, table_id) VALUES (?, ?, ?)",
                arguments: [topic, partition, table])
            try Self.createMessageTable(db, table)
        }
    }

    /// `topic`'s message tables by partition (their count is its partition count), from
    /// ``knownTables`` or read once.
    func messageTables(_ db: Database, _ topic: String) throws -> [Int64] {
        try self.topicTables(db, topic).tables
    }

    /// `topic`'s tables and the statements over all its partitions, from ``knownTables`` or read
    /// once.
    func topicTables(_ db: Database, _ topic: String) throws -> TopicTables {
        if let known = self.knownTables.withLock({ $0[topic] }) { return known }
        let known = TopicTables(tables: try Self.messageTables(db, topic))
        self.knownTables.withLock { $0[topic] = known }
        return known
    }

    /// A topic's message tables by partition, and the text of the statements of a receive that
    /// look at many partitions at once (made once per topic; GRDB prepares each once per
    /// connection).
    ///
    /// A statement covers at most ``partitionsPerStatement`` partitions: a topic of eight is one
    /// statement each, as it was with one table of messages (a statement per partition's table
    /// made the consumer's path about 50 µs longer, most of a receive that finds nothing); a
    /// topic of 4,096 is 64. One statement naming all 4,096 tables took seconds to prepare:
    /// GRDB's authorizer adds each table a statement reads to the statement's region, copying
    /// the region every time, so that preparing costs the square of the tables named.
    struct TopicTables: Sendable {
        var tables: [Int64]
        /// Each partition's first offset retention kept, its table and the newest offset given;
        /// a statement per range of partitions.
        var boundsSQL: [String]
        /// ``SQLiteMessageLog/mayHaveWork(_:_:now:sql:)``'s statements, one per range of
        /// partitions.
        var mayHaveWorkSQL: [String]

        /// The most partitions (message tables) one statement names.
        static let partitionsPerStatement = 64

        init(tables: [Int64]) {
            self.tables = tables
            self.boundsSQL = []
            self.mayHaveWorkSQL = []
            for lower in stride(from: 0, to: tables.count, by: Self.partitionsPerStatement) {
                let range = lower..<min(tables.count, lower + Self.partitionsPerStatement)
                // The newest offset given of the partition of row `p` (as newestOffset): a CASE
                // evaluates only the subquery of that partition's table, a seek to its last rowid.
                let highest = range.map { partition in
                    "WHEN \(partition) THEN (SELECT MAX(offset) FROM \(SQLiteMessageLog.messageTable(tables[partition])))"
                }.joined(separator: " ")
                let newest = "MAX(p.last_offset, COALESCE(CASE p.partition \(highest) END, 0))"
                let inRange = "p.partition >= \(range.lowerBound) AND p.partition < \(range.upperBound)"
                self.boundsSQL.append(
                    """
                    SELECT p.partition, p.start_offset, p.table_id, \(newest) AS last_offset
                    FROM partitions p WHERE p.topic = ? AND \(inRange)
                    """)
                self.mayHaveWorkSQL.append(
                    """
                    SELECT
                        EXISTS (SELECT 1 FROM groups WHERE name = ?1 AND topic = ?2) AS subscribed,
                        EXISTS (
                            SELECT 1 FROM group_partitions g
                            JOIN partitions p ON p.topic = g.topic AND p.partition = g.partition
                            WHERE g.group_name = ?1 AND g.topic = ?2 AND \(inRange) AND g.stopped = 0 AND (
                                (g.lease_id IS NULL AND g.available_at <= ?3 AND g.next_offset <= \(newest))
                                OR (g.lease_id IS NOT NULL AND g.lease_expires_at <= ?3)
                                OR g.next_offset < p.start_offset)
                        ) AS ready,
                        EXISTS (SELECT 1 FROM schedule WHERE topic = ?2 AND deliver_at <= ?3) AS due
                    """)
            }
        }
    }

    /// `topic`'s message tables by partition, read from `partitions`.
    /// - Throws: ``MessagingError`` (`.notFound`) when there is no such topic.
    static func messageTables(_ db: Database, _ topic: String) throws -> [Int64] {
        let tables = try Self.storedMessageTables(db, topic)
        guard !tables.isEmpty else { throw MessagingError(.notFound, "no topic \(topic)") }
        return tables
    }

    /// `topic`'s message tables by partition; none when there is no such topic.
    static func storedMessageTables(_ db: Database, _ topic: String) throws -> [Int64] {
        try Int64.fetchAll(
            db.cachedStatement(sql: "SELECT table_id FROM partitions WHERE topic = ? ORDER BY partition"),
            arguments: [topic])
    }

    /// The message table of one partition, or `nil` when the topic has no such partition.
    static func messageTable(_ db: Database, topic: String, partition: Int) throws -> Int64? {
        try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT table_id FROM partitions WHERE topic = ? AND partition = ?"),
            arguments: [topic, partition])
    }

    // MARK: Publishing

    /// A message encoded for storage.
    struct Encoded: Sendable {
        var topic: String
        var key: String
        var event: String
        var headers: String
        var deliverAt: Int64?

        var bytes: Int { self.key.utf8.count + self.event.utf8.count + self.headers.utf8.count }
    }

    /// `message` encoded for storage, its event written with `writer` (one per batch).
    static func encode(_ message: OutgoingMessage, with writer: inout JSONWriter) throws -> Encoded {
        let problems = message.event.validate()
        guard problems.isEmpty else {
            throw MessagingError(
                .invalidArgument, "event \(message.event.id): \(problems.joined(separator: "; "))")
        }
        return Encoded(
            topic: message.topic, key: message.key, event: try StoredJSON.event(message.event, into: &writer),
            headers: StoredJSON.headers(message.headers),
            deliverAt: message.deliverAt.map(Self.millis))
    }

    /// `messages` encoded for storage (their events written with one writer), and their topics in
    /// the order they first come.
    static func encode(_ messages: [OutgoingMessage]) throws -> (encoded: [Encoded], topics: [String]) {
        var encoded: [Encoded] = []
        encoded.reserveCapacity(messages.count)
        // Mostly one topic: each message's is compared with the last.
        var topics: [String] = []
        var writer = JSONWriter(capacity: 1024)
        defer { writer.deallocate() }
        for index in messages.indices {
            encoded.append(try Self.encode(messages[index], with: &writer))
            let topic = encoded[index].topic
            if topics.last != topic, !topics.contains(topic) { topics.append(topic) }
        }
        return (encoded, topics)
    }

    @discardableResult
    public func publish(_ messages: [OutgoingMessage]) async throws -> [MessagePosition] {
        guard !messages.isEmpty else { return [] }
        if messages.count == 1 { return [try await self.publishOne(messages[0])] }
        let (encoded, topics) = try Self.encode(messages)
        let now = self.nowMillis
        let positions = try await self.write(grouped: true, committed: { self.commitNextOffsets() }) {
            db in
            // Per topic: its partition count and, per partition, the indices of the batch's
            // immediate messages in the order given.
            var slots: [String: Int] = [:]
            var batches: [TopicBatch] = []
            for topic in topics {
                slots[topic] = batches.count
                let tables = try self.messageTables(db, topic)
                batches.append(
                    TopicBatch(topic: topic, tables: tables, partitions: Array(repeating: [], count: tables.count)))
                try Self.promoteDue(db, topic: topic, now: now)
            }
            var positions: [MessagePosition] = []
            positions.reserveCapacity(encoded.count)
            // Each partition's offsets are taken with one counter update for all its messages
            // of the batch, partitions in the order their first message came.
            var partitionOrder: [(slot: Int, partition: Int)] = []
            // Batches are mostly of one topic: look it up only when it changes.
            var slot = -1
            var slotTopic = ""
            for (index, message) in encoded.enumerated() {
                if slot < 0 || message.topic != slotTopic {
                    slotTopic = message.topic
                    slot = slots[slotTopic] ?? 0
                }
                let partition = Partitioner.partition(
                    forKey: message.key, partitions: batches[slot].partitions.count)
                positions.append(MessagePosition(topic: message.topic, partition: partition, offset: 0))
                if let deliverAt = message.deliverAt, deliverAt > now {
                    try Self.schedule(db, message, at: deliverAt)
                } else {
                    if batches[slot].partitions[partition].isEmpty { partitionOrder.append((slot, partition)) }
                    batches[slot].partitions[partition].append(index)
                }
            }
            var rows: [MessageInserter.Row] = []
            rows.reserveCapacity(encoded.count)
            // The next offsets this log's last publish left, when nothing else wrote the file
            // since (checked here, after the due messages and the scheduled ones were written);
            // other partitions read their newest offset.
            let stamp = try NextOffsets.stamp(db)
            var next = self.nextOffsets.withLock { $0.take(at: stamp) }
            for (slot, partition) in partitionOrder {
                let indices = batches[slot].partitions[partition]
                let table = batches[slot].tables[partition]
                var offset =
                    try next[table]
                    ?? Self.takeOffsets(
                        db, table: table, topic: batches[slot].topic, partition: partition, count: indices.count)
                for index in indices {
                    rows.append(MessageInserter.Row(message: index, table: table, offset: offset))
                    positions[index].offset = offset
                    offset += 1
                }
                next[table] = offset
            }
            try MessageInserter.insert(db, encoded, rows, now: now)
            let inserted = NextOffsets.Stamp(dataVersion: stamp.dataVersion, changes: NextOffsets.changes(db))
            self.nextOffsets.withLock { $0.keep(next, at: inserted) }
            return positions
        }
        for topic in topics { self.wakeConsumers(of: topic) }
        return positions
    }

    /// ``publish(_:)`` of one message: the same statements in the same order (its topic's due
    /// messages, the scheduled row or the offset and the insert, the ``NextOffsets`` stamp and
    /// record), without the batch's grouping by topic and partition (a dictionary of topics, an
    /// array per partition, the partitions' order and the rows), which a single publish built
    /// for its one message.
    private func publishOne(_ message: OutgoingMessage) async throws -> MessagePosition {
        var writer = JSONWriter(capacity: 1024)
        let encoded: Encoded
        do {
            defer { writer.deallocate() }
            encoded = try Self.encode(message, with: &writer)
        }
        let now = self.nowMillis
        let position = try await self.write(grouped: true, committed: { self.commitNextOffsets() }) { db in
            let tables = try self.messageTables(db, encoded.topic)
            try Self.promoteDue(db, topic: encoded.topic, now: now)
            let scheduled = encoded.deliverAt.map { $0 > now } ?? false
            if scheduled, let deliverAt = encoded.deliverAt { try Self.schedule(db, encoded, at: deliverAt) }
            let stamp = try NextOffsets.stamp(db)
            var next = self.nextOffsets.withLock { $0.take(at: stamp) }
            let position =
                scheduled
                ? MessagePosition(
                    topic: encoded.topic,
                    partition: Partitioner.partition(forKey: encoded.key, partitions: tables.count), offset: 0)
                : try Self.append(db, encoded, tables: tables, now: now, next: &next)
            let inserted = NextOffsets.Stamp(dataVersion: stamp.dataVersion, changes: NextOffsets.changes(db))
            self.nextOffsets.withLock { $0.keep(next, at: inserted) }
            return position
        }
        self.wakeConsumers(of: position.topic)
        return position
    }

    /// Makes the offsets the last publish kept valid (``NextOffsets/committed()``), once its
    /// transaction committed.
    private func commitNextOffsets() {
        self.nextOffsets.withLock { $0.committed() }
    }

    /// Wakes the consumers of `topic` after a commit: this process's at once (``WakeUpHub``), other
    /// processes' through the topic's doorbell.
    func wakeConsumers(of topic: String) {
        WakeUpHub.shared.notify(store: self.path, topic: topic)
        self.bells.ring(topic: topic)
    }

    /// Keeps `message` in the schedule until `deliverAt` (inside a write transaction).
    static func schedule(_ db: Database, _ message: Encoded, at deliverAt: Int64) throws {
        try db.cachedStatement(
            sql: "INSERT INTO schedule (topic, key, event, headers, deliver_at) VALUES (?, ?, ?, ?, ?)"
        ).execute(arguments: [message.topic, message.key, message.event, message.headers, deliverAt])
    }

    /// A topic's immediate messages in a batched publish: their indices, by partition.
    struct TopicBatch {
        var topic: String
        /// The message table of each partition.
        var tables: [Int64]
        var partitions: [[Int]]
    }

    /// The newest offset a partition has given: the larger of its `partitions` row's
    /// `last_offset` and the highest offset in its table (its highest rowid, which SQLite finds
    /// at the end of the table's b-tree without a scan), in one statement cached per table.
    ///
    /// A publish does not write the partition row: the next offset is one past this. Writing a
    /// counter on every publish put another page into the WAL of every commit and cost about a
    /// fifth of SQLite's CPU time of a single publish. `last_offset` is instead a lower bound
    /// that only removals of messages raise: whatever deletes messages first raises it to the
    /// highest offset it deletes (retention, purging and replaying dead letters), so that an
    /// offset is never given twice, even after every message of a partition is gone. Files of
    /// version 1, whose counter is exact, need no change.
    ///
    /// - Returns: `nil` when the topic has no such partition.
    static func newestOffset(_ db: Database, table: Int64, topic: String, partition: Int) throws -> Int64? {
        try Int64.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT MAX(p.last_offset, COALESCE((SELECT MAX(offset) FROM \(Self.messageTable(table))), 0))
                    FROM partitions p WHERE p.topic = ? AND p.partition = ?
                    """), arguments: [topic, partition])
    }

    /// Takes the next `count` offsets of a partition (inside a write transaction) and returns the
    /// first of them. The caller inserts the messages at those offsets in the same transaction
    /// (see ``newestOffset(_:table:topic:partition:)``); it must take a partition's offsets once
    /// per transaction unless it has inserted the earlier ones.
    static func takeOffsets(_ db: Database, table: Int64, topic: String, partition: Int, count: Int) throws -> Int64 {
        guard let newest = try Self.newestOffset(db, table: table, topic: topic, partition: partition) else {
            throw MessagingError(.notFound, "no partition \(partition) in topic \(topic)")
        }
        return newest + 1
    }

    /// Raises the stored lower bound of a partition's newest offset (``newestOffset``) to
    /// `offset`, before messages up to `offset` are deleted.
    static func keepNewestOffset(_ db: Database, topic: String, partition: Int, atLeast offset: Int64) throws {
        try db.execute(
            sql: "UPDATE partitions SET last_offset = MAX(last_offset, ?) WHERE topic = ? AND partition = ?",
            arguments: [offset, topic, partition])
    }

    /// Appends one message at the next offset of its partition (inside a write transaction);
    /// `tables` are its topic's message tables by partition.
    static func append(_ db: Database, _ message: Encoded, tables: [Int64], now: Int64) throws -> MessagePosition {
        var next: [Int64: Int64] = [:]
        return try Self.append(db, message, tables: tables, now: now, next: &next)
    }

    /// Appends one message like ``append(_:_:tables:now:)``, at the next offset `next` holds for
    /// its partition's table if it holds one (``NextOffsets``), and leaves the one after it there.
    static func append(
        _ db: Database, _ message: Encoded, tables: [Int64], now: Int64, next: inout [Int64: Int64]
    ) throws -> MessagePosition {
        let partition = Partitioner.partition(forKey: message.key, partitions: tables.count)
        let table = tables[partition]
        let offset =
            try next[table] ?? Self.takeOffsets(db, table: table, topic: message.topic, partition: partition, count: 1)
        try MessageInserter.insert(
            db, CollectionOfOne(message),
            CollectionOfOne(MessageInserter.Row(message: 0, table: table, offset: offset)),
            now: now)
        next[table] = offset + 1
        return MessagePosition(topic: message.topic, partition: partition, offset: offset)
    }

    /// Appends the topic's scheduled messages that are due, in the order they are due.
    static func promoteDue(_ db: Database, topic: String, now: Int64) throws {
        guard try MessageInserter.hasDue(db, topic: topic, now: now) else { return }
        let due = try Row.fetchAll(
            db.cachedStatement(
                sql:
                    "SELECT id, key, event, headers FROM schedule WHERE topic = ? AND deliver_at <= ? ORDER BY deliver_at, id"
            ), arguments: [topic, now])
        guard !due.isEmpty else { return }
        let tables = try Self.messageTables(db, topic)
        for row in due {
            let message = Encoded(topic: topic, key: row["key"], event: row["event"], headers: row["headers"])
            _ = try Self.append(db, message, tables: tables, now: now)
            try db.cachedStatement(sql: "DELETE FROM schedule WHERE id = ?").execute(arguments: [row["id"] as Int64])
        }
    }

    // MARK: Groups

    public func subscribe(group: String, topic: String, options: GroupOptions) async throws {
        guard Partitioner.isValidName(group) else {
            throw MessagingError(
                .invalidArgument, "group \"\(group)\": expected 1-200 letters, digits, '.', '_' or '-'")
        }
        guard options.maxDeliveries >= 1 else {
            throw MessagingError(
                .invalidArgument, "group \(group): maxDeliveries must be at least 1, got \(options.maxDeliveries)")
        }
        let deadLetterTopic = options.deadLetterTopic ?? Self.deadLetterTopic(for: topic, group: group)
        guard Partitioner.isValidName(deadLetterTopic) else {
            throw MessagingError(
                .invalidArgument, "group \(group): dead-letter topic \"\(deadLetterTopic)\" is not a valid name")
        }
        let now = self.nowMillis
        try await self.write { db in
            let tables = try Self.messageTables(db, topic)
            let exists =
                try Bool.fetchOne(
                    db, sql: "SELECT 1 FROM groups WHERE name = ? AND topic = ?", arguments: [group, topic]) ?? false
            if exists {
                try db.execute(
                    sql: """
                        UPDATE groups SET max_deliveries = ?, on_poison = ?, dead_letter_topic = ?
                        WHERE name = ? AND topic = ?
                        """,
                    arguments: [options.maxDeliveries, options.onPoison.rawValue, deadLetterTopic, group, topic])
            } else {
                try db.execute(
                    sql: """
                        INSERT INTO groups (name, topic, max_deliveries, on_poison, dead_letter_topic, created_at)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [group, topic, options.maxDeliveries, options.onPoison.rawValue, deadLetterTopic, now])
                for (partition, table) in tables.enumerated() {
                    let next =
                        options.start == .earliest
                        ? try Int64.fetchOne(
                            db, sql: "SELECT start_offset FROM partitions WHERE topic = ? AND partition = ?",
                            arguments: [topic, partition])
                        : try Self.newestOffset(db, table: table, topic: topic, partition: partition).map { $0 + 1 }
                    try db.execute(
                        sql: """
                            INSERT INTO group_partitions (group_name, topic, partition, next_offset)
                            VALUES (?, ?, ?, ?)
                            """,
                        arguments: [group, topic, partition, next ?? 1])
                }
            }
            if try Int.fetchOne(db, sql: "SELECT 1 FROM topics WHERE name = ?", arguments: [deadLetterTopic]) == nil {
                try Self.createTopic(
                    db, deadLetterTopic, TopicOptions(partitions: 1, retention: .forever), now: now)
            }
        }
    }

    /// A group's settings as stored.
    struct GroupRow: Sendable {
        var name: String
        var topic: String
        var maxDeliveries: Int
        var onPoison: PoisonPolicy
        var deadLetterTopic: String

        static func fetch(_ db: Database, group: String, topic: String) throws -> GroupRow {
            guard
                let row = try Row.fetchOne(
                    db.cachedStatement(
                        sql:
                            "SELECT max_deliveries, on_poison, dead_letter_topic FROM groups WHERE name = ? AND topic = ?"
                    ), arguments: [group, topic])
            else {
                throw MessagingError(.notFound, "group \(group) is not subscribed to topic \(topic)")
            }
            return GroupRow(
                name: group, topic: topic, maxDeliveries: row["max_deliveries"],
                onPoison: PoisonPolicy(rawValue: row["on_poison"]) ?? .deadLetter,
                deadLetterTopic: row["dead_letter_topic"])
        }
    }

    /// One (group, topic, partition) state row; changed in memory, then saved in one statement.
    struct PartitionState: Sendable, Equatable {
        var partition: Int
        var nextOffset: Int64
        var leaseOwner: String?
        var leaseID: String?
        var leaseExpiresAt: Int64?
        var leaseThrough: Int64?
        var leasedAt: Int64
        var availableAt: Int64
        var deliveries: DeliveryCounts
        var lastError: String?
        var stopped: Bool
        var stopReason: String?
        var lostToRetention: Int64
        var deadLettered: Int64

        static let columns = """
            partition, next_offset, lease_owner, lease_id, lease_expires_at, lease_through, leased_at, available_at,
            deliveries, last_error, stopped, stop_reason, lost_to_retention, dead_lettered
            """

        init(row: Row) {
            self.partition = row["partition"]
            self.nextOffset = row["next_offset"]
            self.leaseOwner = row["lease_owner"]
            self.leaseID = row["lease_id"]
            self.leaseExpiresAt = row["lease_expires_at"]
            self.leaseThrough = row["lease_through"]
            self.leasedAt = row["leased_at"]
            self.availableAt = row["available_at"]
            self.deliveries = DeliveryCounts(text: row["deliveries"])
            self.lastError = row["last_error"]
            self.stopped = row["stopped"]
            self.stopReason = row["stop_reason"]
            self.lostToRetention = row["lost_to_retention"]
            self.deadLettered = row["dead_lettered"]
        }

        static func fetchAll(_ db: Database, group: String, topic: String) throws -> [PartitionState] {
            try Row.fetchAll(
                db.cachedStatement(
                    sql:
                        "SELECT \(columns) FROM group_partitions WHERE group_name = ? AND topic = ? ORDER BY leased_at, partition"
                ), arguments: [group, topic]
            ).map(PartitionState.init(row:))
        }

        static func fetch(_ db: Database, group: String, topic: String, partition: Int) throws -> PartitionState {
            guard
                let row = try Row.fetchOne(
                    db.cachedStatement(
                        sql:
                            "SELECT \(columns) FROM group_partitions WHERE group_name = ? AND topic = ? AND partition = ?"
                    ), arguments: [group, topic, partition])
            else {
                throw MessagingError(
                    .notFound, "group \(group) has no partition \(partition) of topic \(topic) (not subscribed?)")
            }
            return PartitionState(row: row)
        }

        func save(_ db: Database, group: String, topic: String) throws {
            try db.cachedStatement(
                sql: """
                    UPDATE group_partitions SET next_offset = ?, lease_owner = ?, lease_id = ?, lease_expires_at = ?,
                        lease_through = ?, leased_at = ?, available_at = ?, deliveries = ?, last_error = ?, stopped = ?,
                        stop_reason = ?, lost_to_retention = ?, dead_lettered = ?
                    WHERE group_name = ? AND topic = ? AND partition = ?
                    """
            ).execute(
                arguments: [
                    self.nextOffset, self.leaseOwner, self.leaseID, self.leaseExpiresAt, self.leaseThrough,
                    self.leasedAt, self.availableAt, self.deliveries.text, self.lastError, self.stopped,
                    self.stopReason, self.lostToRetention, self.deadLettered, group, topic, self.partition,
                ])
        }

        /// Ends the lease on a failure of the head (a nack or an expiry): the later messages of
        /// the lease were not attempted, so their delivery does not count.
        mutating func endLeaseOnHead() {
            if let through = self.leaseThrough {
                self.deliveries.add(-1, from: self.nextOffset + 1, through: through)
                self.deliveries.forget(before: self.nextOffset)
            }
            self.endLease()
        }

        mutating func endLease() {
            self.leaseOwner = nil
            self.leaseID = nil
            self.leaseExpiresAt = nil
            self.leaseThrough = nil
        }

        /// Moves the head to `offset` (the earlier ones are acknowledged or skipped).
        mutating func moveHead(to offset: Int64) {
            guard offset > self.nextOffset else { return }
            self.nextOffset = offset
            self.deliveries.forget(before: offset)
            self.lastError = nil
        }
    }

    // MARK: Receiving

    public func receive(_ request: ReceiveRequest) async throws -> ReceivedBatch {
        guard request.maxMessages >= 1, request.maxPartitions >= 1, request.lease > .zero else {
            throw MessagingError(
                .invalidArgument, "receive: maxMessages, maxPartitions and lease must be positive")
        }
        let now = self.nowMillis
        let leaseMillis = Self.millis(request.lease)
        return try await self.write(
            acknowledgement: true,
            shortcut: { db in
                // A topic not found is left to the transaction to report.
                guard let known = try? self.topicTables(db, request.topic) else { return nil }
                return try Self.mayHaveWork(db, request, now: now, sql: known.mayHaveWorkSQL)
                    ? nil : ReceivedBatch(deliveries: [], gaps: [])
            }
        ) { db in
            try Self.promoteDue(db, topic: request.topic, now: now)
            let group = try GroupRow.fetch(db, group: request.group, topic: request.topic)
            let known = try self.topicTables(db, request.topic)
            var bounds: [Int: (start: Int64, table: Int64, last: Int64)] = [:]
            for sql in known.boundsSQL {
                for row in try Row.fetchAll(db.cachedStatement(sql: sql), arguments: [request.topic]) {
                    bounds[row["partition"]] = (row["start_offset"], row["table_id"], row["last_offset"])
                }
            }
            var deliveries: [Delivery] = []
            var gaps: [RetentionGap] = []
            var leased = 0
            for original in try PartitionState.fetchAll(db, group: request.group, topic: request.topic) {
                var state = original
                let batch = try Self.visit(
                    db, group, request, &state, bounds: bounds[state.partition], now: now, leaseMillis: leaseMillis,
                    room: leased < request.maxPartitions ? request.maxMessages - deliveries.count : 0, gaps: &gaps)
                if state != original { try state.save(db, group: request.group, topic: request.topic) }
                if !batch.isEmpty { leased += 1 }
                deliveries += batch
            }
            return ReceivedBatch(deliveries: deliveries, gaps: gaps)
        }
    }

    /// Whether a ``receive(_:)`` at `now` may find anything to do, read on the writer connection
    /// before its transaction, without SQLite's write lock: a free and due partition of the
    /// group with messages, an expired lease, messages lost to retention, or due scheduled
    /// messages. Most receives of a consumer find nothing (it asks again after every partition it
    /// finished, on every wake-up and every poll); as `BEGIN IMMEDIATE` transactions they queued
    /// for the write lock behind the producers' fsyncs and made the producers wait in turn: at
    /// 1,000 messages/s with the consumer in another process, four receives in five were empty.
    ///
    /// A shortcut only: `false` is the answer the transaction would have given at that moment
    /// (the read sees every commit before it), and a publish after it rings the topic's wake-up
    /// as before. Running in the same job of the writer thread, a receive with work costs no
    /// extra hop. A group that is not subscribed answers `true`, so that the transaction reports
    /// it. `sql` is the topic's ``TopicTables/mayHaveWorkSQL``: one statement per range of
    /// partitions (one for a topic of up to 64), as with one table of messages.
    static func mayHaveWork(_ db: Database, _ request: ReceiveRequest, now: Int64, sql: [String]) throws -> Bool {
        for statement in sql {
            let row = try Row.fetchOne(
                db.cachedStatement(sql: statement), arguments: [request.group, request.topic, now])
            guard let row else { return true }
            let subscribed: Bool = row["subscribed"]
            let ready: Bool = row["ready"]
            let due: Bool = row["due"]
            if !subscribed || ready || due { return true }
        }
        return false
    }

    /// One partition during ``receive(_:)``: ends an expired lease, reports a retention gap, and
    /// leases up to `room` messages when the partition is free and due.
    static func visit(
        _ db: Database, _ group: GroupRow, _ request: ReceiveRequest, _ state: inout PartitionState,
        bounds: (start: Int64, table: Int64, last: Int64)?, now: Int64, leaseMillis: Int64, room: Int,
        gaps: inout [RetentionGap]
    ) throws -> [Delivery] {
        if state.stopped { return [] }
        if state.leaseID != nil {
            guard let expiresAt = state.leaseExpiresAt, expiresAt <= now else { return [] }
            try Self.expireLease(db, group, &state, now: now)
            if state.stopped { return [] }
        }
        guard let (start, table, last) = bounds else { return [] }
        if state.nextOffset < start {
            gaps.append(
                RetentionGap(
                    group: request.group, topic: request.topic, partition: state.partition,
                    firstMissed: state.nextOffset, lastMissed: start - 1))
            state.moveHead(to: start)
        }
        guard room > 0, state.availableAt <= now, state.nextOffset <= last else { return [] }
        // Messages from the head on: a range of rowids.
        let rows = try Row.fetchAll(
            db.cachedStatement(
                sql: """
                    SELECT offset, key, event, headers, appended_at FROM \(Self.messageTable(table))
                    WHERE offset >= ? ORDER BY offset LIMIT ?
                    """),
            arguments: [state.nextOffset, room])
        guard let first = rows.first, let lastRow = rows.last else { return [] }
        state.moveHead(to: first["offset"])
        let through: Int64 = lastRow["offset"]
        let leaseID = CloudEvent.makeID()
        state.leaseOwner = request.consumer
        state.leaseID = leaseID
        state.leaseExpiresAt = now + leaseMillis
        state.leaseThrough = through
        state.leasedAt = now
        state.deliveries.add(1, from: state.nextOffset, through: through)
        state.deliveries.forget(before: state.nextOffset)
        return try rows.map { row in
            let offset: Int64 = row["offset"]
            let message = try Self.decodeMessage(
                row, position: MessagePosition(topic: request.topic, partition: state.partition, offset: offset))
            return Delivery(
                message: message, group: request.group, consumer: request.consumer,
                deliveryCount: state.deliveries.count(at: offset), leaseID: leaseID,
                leaseExpiresAt: Self.date(now + leaseMillis))
        }
    }

    static func decodeMessage(_ row: Row, position: MessagePosition) throws -> Message {
        do {
            let event = try StoredEventReader.decodeEvent(row["event"])
            let headers = try StoredEventReader.decodeHeaders(row["headers"])
            return Message(
                position: position, key: row["key"], event: event, headers: headers,
                appendedAt: Self.date(row["appended_at"]))
        } catch {
            throw MessagingError(.unavailable, "message \(position) cannot be decoded: \(error)")
        }
    }

    /// A lease ran out: the same as a nack of the head without delay.
    static func expireLease(_ db: Database, _ group: GroupRow, _ state: inout PartitionState, now: Int64) throws {
        state.endLeaseOnHead()
        let count = state.deliveries.count(at: state.nextOffset)
        if count >= group.maxDeliveries {
            try Self.poison(
                db, group, &state, reason: "lease-expired",
                error: state.lastError ?? "the lease expired \(count) times", deliveries: count, now: now)
        } else {
            state.availableAt = now
            state.lastError = "lease expired"
        }
    }

    /// The head of `state` failed `maxDeliveries` times: dead-letter it or stop the partition.
    static func poison(
        _ db: Database, _ group: GroupRow, _ state: inout PartitionState, reason: String, error: String,
        deliveries: Int, now: Int64
    ) throws {
        switch group.onPoison {
        case .stopPartition:
            state.stopped = true
            state.stopReason = reason
            state.lastError = error
        case .deadLetter:
            try Self.deadLetter(db, group, &state, reason: reason, error: error, deliveries: deliveries, now: now)
        }
    }

    /// Moves the head message to the group's dead-letter topic and moves the head on.
    static func deadLetter(
        _ db: Database, _ group: GroupRow, _ state: inout PartitionState, reason: String, error: String?,
        deliveries: Int, now: Int64
    ) throws {
        let head = state.nextOffset
        if let table = try Self.messageTable(db, topic: group.topic, partition: state.partition),
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT key, event, headers FROM \(Self.messageTable(table)) WHERE offset = ?"),
                arguments: [head])
        {
            var headers =
                (try? JSONDecoder().decode([String: String].self, from: Data((row["headers"] as String).utf8))) ?? [:]
            headers[DeadLetterHeader.topic] = group.topic
            headers[DeadLetterHeader.partition] = String(state.partition)
            headers[DeadLetterHeader.offset] = String(head)
            headers[DeadLetterHeader.group] = group.name
            headers[DeadLetterHeader.reason] = reason
            headers[DeadLetterHeader.deliveries] = String(deliveries)
            if let error { headers[DeadLetterHeader.error] = error }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let message = Encoded(
                topic: group.deadLetterTopic, key: row["key"], event: row["event"],
                headers: String(decoding: try encoder.encode(headers), as: UTF8.self))
            var tables = try Self.storedMessageTables(db, group.deadLetterTopic)
            if tables.isEmpty {
                try Self.createTopic(
                    db, group.deadLetterTopic, TopicOptions(partitions: 1, retention: .forever), now: now)
                tables = try Self.messageTables(db, group.deadLetterTopic)
            }
            _ = try Self.append(db, message, tables: tables, now: now)
            state.deadLettered += 1
        }
        state.stopped = false
        state.stopReason = nil
        state.moveHead(to: head + 1)
        state.availableAt = now
    }

    // MARK: Acknowledging

    /// Loads the state of a delivery's partition and checks that its lease is still the holder's.
    /// Returns `nil` when the group acknowledged the message already (nothing left to do).
    static func leasedState(_ db: Database, _ delivery: Delivery) throws -> PartitionState? {
        let position = delivery.message.position
        let state = try PartitionState.fetch(
            db, group: delivery.group, topic: position.topic, partition: position.partition)
        if state.leaseID == delivery.leaseID { return state }
        if position.offset < state.nextOffset { return nil }
        throw MessagingError(
            .leaseLost,
            "the lease on \(position) for group \(delivery.group) was lost (it expired and was taken over or given back)"
        )
    }

    public func ack(_ delivery: Delivery) async throws {
        try await self.write(acknowledgement: true) { db in
            guard var state = try Self.leasedState(db, delivery) else { return }
            state.moveHead(to: delivery.message.position.offset + 1)
            if let through = state.leaseThrough, state.nextOffset > through { state.endLease() }
            try state.save(db, group: delivery.group, topic: delivery.message.position.topic)
        }
    }

    public func nack(_ delivery: Delivery, redeliverAfter: Duration, error: String) async throws {
        let now = self.nowMillis
        let delay = max(0, Self.millis(redeliverAfter))
        try await self.write(acknowledgement: true) { db in
            guard var state = try Self.leasedState(db, delivery) else { return }
            let position = delivery.message.position
            // Acknowledged already by a later ack of the same lease: nothing to give back.
            guard position.offset >= state.nextOffset else { return }
            let group = try GroupRow.fetch(db, group: delivery.group, topic: position.topic)
            state.moveHead(to: position.offset)
            state.endLeaseOnHead()
            let count = state.deliveries.count(at: position.offset)
            if count >= group.maxDeliveries {
                try Self.poison(
                    db, group, &state, reason: "max-deliveries", error: error, deliveries: count, now: now)
            } else {
                state.availableAt = now + delay
                state.lastError = error
            }
            try state.save(db, group: delivery.group, topic: position.topic)
        }
    }

    public func release(_ deliveries: [Delivery]) async throws {
        guard !deliveries.isEmpty else { return }
        try await self.write(acknowledgement: true) { db in
            var seen = Set<String>()
            for delivery in deliveries where seen.insert(delivery.leaseID).inserted {
                let position = delivery.message.position
                let state = try PartitionState.fetch(
                    db, group: delivery.group, topic: position.topic, partition: position.partition)
                // A lease lost meanwhile is someone else's now: nothing to give back.
                guard state.leaseID == delivery.leaseID else { continue }
                var released = state
                if let through = state.leaseThrough {
                    released.deliveries.add(-1, from: state.nextOffset, through: through)
                    released.deliveries.forget(before: state.nextOffset)
                }
                released.endLease()
                released.availableAt = 0
                try released.save(db, group: delivery.group, topic: position.topic)
            }
        }
    }

    public func extendLeases(_ deliveries: [Delivery], by duration: Duration) async throws {
        guard !deliveries.isEmpty else { return }
        let expiresAt = self.nowMillis + Self.millis(duration)
        try await self.write(acknowledgement: true) { db in
            var seen = Set<String>()
            for delivery in deliveries where seen.insert(delivery.leaseID).inserted {
                guard var state = try Self.leasedState(db, delivery) else { continue }
                state.leaseExpiresAt = max(state.leaseExpiresAt ?? 0, expiresAt)
                try state.save(db, group: delivery.group, topic: delivery.message.position.topic)
            }
        }
    }

    // MARK: Wake-ups

    public func wakeUps(topic: String) -> AsyncStream<Void> {
        WakeUpHub.shared.stream(store: self.path, topic: topic, poll: self.configuration.pollInterval) { id in
            self.streams.withLock { $0.append(id) }
        }
    }

    public func close() async throws {
        let ids = self.streams.withLock { ids in
            defer { ids.removeAll() }
            return ids
        }
        WakeUpHub.shared.finish(ids)
        self.bells.close()
        try self.pool.close()
    }
}
