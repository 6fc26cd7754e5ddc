//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
import Foundation
public import Logging
import PostgresNIO
import Synchronization

/// The ``MessageLog`` on a PostgreSQL database, for several processes and machines at once.
///
/// Every state change is one transaction of a ``AviaryStorage/PostgresStore`` (retried on a
/// serialization failure or deadlock), so a crash at any point leaves the log as it was before or
/// after the change, never in between. Receivers lease partitions with `SELECT ... FOR UPDATE SKIP
/// LOCKED` on the group's partition rows: concurrent receivers of a group never wait on each
/// other and never lease the same partition. Appends lock their partition's row, which gives
/// each message the next offset in commit order.
///
/// Idle consumers wait on ``wakeUps(topic:)``, fed by `LISTEN/NOTIFY`: a publish (or a release,
/// replay or resume) by any process notifies in its transaction, so waiting consumers wake when it
/// commits. A publish of messages for now notifies only topics that some log's listening session
/// has registered for (`aviary_listeners`, written by the first ``wakeUps(topic:)`` stream of a
/// topic), so publishing to a topic nobody listens for costs no notification. Time-based changes (a nack delay or a delivery time passing, a lease running out)
/// have no notification; for those the stream also yields every ``Configuration/pollInterval``
/// (one second by default: slow, not a hot poll).
///
/// The log owns its store: the initializer starts it (an internal task runs the connection pool
/// and applies the schema migrations) and ``close()`` stops it.
///
/// ```swift
/// let log = try await PostgresMessageLog(url: StoreURL(parsing: "postgres://broker:secret@db:5432/broker"))
/// try await log.createTopic("orders", TopicOptions(partitions: 8))
/// ```
public final class PostgresMessageLog: MessageLog {
    /// Pool, timing and notification settings; every field has a default.
    public struct Configuration: Sendable {
        /// The store's pool size, timeouts and transaction retries.
        ///
        /// By default the pool keeps one connection open, so that a steady producer does not pay
        /// postgres-nio's idle timer (armed for a connection beyond the minimum every time it goes
        /// back to the pool), and keeps the store's TCP keep-alive on
        /// (``PostgresStore/Options/keepAliveFrequency``), so that a connection a NAT or firewall
        /// dropped while idle is reset by the kernel and replaced before a call fails on it; the
        /// kernel's probes cost nothing per call.
        ///
        /// The pool's connections are all on one event loop, ``PostgresStore/Options/eventLoop``
        /// when it is set, otherwise one loop of SwiftNIO's shared group: the loop of
        /// ``PostgresMessageLog/executor``.
        public var store: PostgresStore.Options
        /// How often ``PostgresMessageLog/wakeUps(topic:)`` yields without a notification, for
        /// changes that only time makes (delays ending, leases expiring).
        public var pollInterval: Duration
        /// The `LISTEN/NOTIFY` channel.
        public var channel: String
        /// Whether the transactions that only move a group's cursor and leases (receive, ack,
        /// nack, release, extending leases) wait for their WAL flush; `false` by default: they
        /// commit with `synchronous_commit = off`. PostgreSQL flushes its WAL in order, so such a
        /// commit is lost only by a crash of the server within a fraction of a second and only
        /// together with everything committed after it; that means redelivery, never a lost or
        /// reordered message. It saves a consumer one WAL flush per message.
        public var synchronousAcknowledgements: Bool

        /// Creates a configuration.
        ///
        /// ```swift
        /// let configuration = PostgresMessageLog.Configuration(pollInterval: .milliseconds(250))
        /// ```
        public init(
            store: PostgresStore.Options = PostgresStore.Options(
                minimumConnections: 1, applicationName: "aviary-message-log"),
            pollInterval: Duration = .seconds(1), channel: String = "aviary_message_log",
            synchronousAcknowledgements: Bool = false
        ) {
            self.store = store
            self.pollInterval = pollInterval
            self.channel = channel
            self.synchronousAcknowledgements = synchronousAcknowledgements
        }
    }

    /// The store the log lives in.
    public let store: PostgresStore
    /// Runs a task on the event loop of the log's connections, for producers that publish one
    /// message (or batch) after another.
    ///
    /// A publish from the concurrency pool crosses to the connection's event loop to send its
    /// statement, and the reply wakes a pool thread to resume the caller: two hand-offs between
    /// threads, each a wake-up of a sleeping thread. A task that prefers this executor runs on
    /// that loop, so its publishes lease a connection, send, read the reply and resume the task
    /// all on one thread. Every other call of the log (consumers, the outbox relay, other
    /// producers) works as before, beside it. The task's own code between publishes runs on the
    /// event loop too and delays the loop's connections meanwhile: keep it short and never block
    /// in it (no file I/O, no locks held long, no `sleep`).
    ///
    /// ```swift
    /// let log = try await PostgresMessageLog(url: url)
    /// try await withTaskExecutorPreference(log.executor) {
    ///     for order in orders {
    ///         try await log.publish([OutgoingMessage(topic: "orders", key: order.id, event: try order.event())])
    ///     }
    /// }
    /// ```
    public let executor: EventLoopTaskExecutor
    let clock: any WallClock
    let configuration: Configuration
    let logger: Logger
    let running: Task<Void, Never>
    let wakeUpHub: PostgresWakeUps
    /// Topics' partition counts as read from the database (a topic's count never changes).
    let knownPartitionCounts = Mutex<[String: Int]>([:])

    /// Opens the log at a `postgres://` URL: starts its store and applies the log's schema.
    ///
    /// ```swift
    /// let log = try await PostgresMessageLog(url: url, clock: SystemWallClock())
    /// ```
    ///
    /// - Parameters:
    ///   - url: a `postgres://user:password@host:port/database` store URL.
    ///   - clock: the wall clock for leases, delays and retention.
    ///   - configuration: pool, timing and notification settings.
    ///   - logger: where the store logs.
    /// - Throws: ``MessagingError``: `.invalidArgument` for a bad URL (naming the part that is
    ///   wrong), `.unavailable` when the server cannot be reached or the schema cannot be applied
    ///   (naming the address and the cause).
    public init(
        url: StoreURL, clock: any WallClock = SystemWallClock(), configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "aviary.messaging")
    ) async throws {
        let store: PostgresStore
        var options = configuration.store
        let eventLoop = options.eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        options.eventLoop = eventLoop
        do {
            store = try PostgresStore(url: url, migrations: Self.migrations, options: options, logger: logger)
        } catch {
            throw MessagingError(.invalidArgument, error.message)
        }
        self.store = store
        // The options name a loop, so the store offers its executor.
        self.executor = store.executor!
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
        self.running = Task {
            do {
                try await store.run()
            } catch {
                logger.error(
                    "message log store stopped", metadata: ["error.message": "\(PostgresStore.describe(error))"])
            }
        }
        self.wakeUpHub = PostgresWakeUps(
            store: store, channel: configuration.channel, pollInterval: configuration.pollInterval, logger: logger)
        do {
            try await store.ready()
        } catch {
            self.running.cancel()
            await self.running.value
            throw MessagingError(
                .unavailable, "cannot open the message log at \(store.address): \(PostgresStore.describe(error))")
        }
    }

    // MARK: Transactions

    /// Runs `body` in one transaction of the store (retried on serialization failures and
    /// deadlocks); errors other than ``MessagingError`` become `.unavailable` with the cause.
    func write<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T
    ) async throws -> T {
        try await self.storeCall {
            try await self.store.withTransaction { connection in try await body(connection, self.logger) }
        }
    }

    /// Runs `body` in a transaction that only moves a group's cursor and leases (receive, ack,
    /// nack, release, extending leases). Unless ``Configuration/synchronousAcknowledgements``, it
    /// commits without waiting for its WAL flush.
    ///
    /// That setting costs no round trip of its own: `body`'s first statement must select
    /// `relax`, a `set_config` call that does what `SET LOCAL synchronous_commit TO off` does (it
    /// is empty when acknowledgements are synchronous). A first statement that returns no row
    /// leaves the commit synchronous, which is only slower. A consumer makes about one receive
    /// and one ack per message, and every statement is a round trip through the connection's
    /// event loop, so the separate `SET LOCAL` was a fifth of an ack's statements. (The common
    /// ack is one statement of its own, ``AckStatement``, which selects the same item: a
    /// `set_config` local to a statement outside a transaction lasts until its own commit.)
    ///
    /// The transaction runs on the log's event loop (``executor``), where its connection's socket
    /// is served: its statements are written and their replies read there, with no hand-off
    /// between threads per statement (a receive is five). A caller elsewhere hops there and back
    /// once. `body`'s own work (decoding a receive's messages) runs on the loop too, as the
    /// executor's producers' does.
    func acknowledging<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection, _ relax: String, Logger) async throws -> T
    ) async throws -> T {
        let relax = self.configuration.synchronousAcknowledgements ? "" : Self.relaxedCommit
        return try await self.storeCall {
            try await self.executor.run {
                try await self.store.withTransaction { connection in try await body(connection, relax, self.logger) }
            }
        }
    }

    /// A select-list item that turns `synchronous_commit` off until the end of the transaction.
    static let relaxedCommit = ", set_config('synchronous_commit', 'off', true) AS relaxed_commit"

    /// A consistent read (one snapshot).
    func read<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T
    ) async throws -> T {
        try await self.storeCall {
            try await self.store.withTransaction(isolation: .repeatableRead) { connection in
                try await body(connection, self.logger)
            }
        }
    }

    /// Runs a call of the store: errors other than ``MessagingError`` become `.unavailable`, naming
    /// the store and the cause.
    func storeCall<T: Sendable>(_ call: () async throws -> T) async throws -> T {
        do {
            return try await call()
        } catch let error as MessagingError {
            throw error
        } catch {
            throw MessagingError(.unavailable, "message log \(self.store.address): \(PostgresStore.describe(error))")
        }
    }

    var nowMillis: Int64 { Self.millis(self.clock.now) }

    static func millis(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    static func date(_ millis: Int64) -> Date { Date(timeIntervalSince1970: Double(millis) / 1000) }
    static func millis(_ duration: Duration) -> Int64 {
        let components = duration.components
        return components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// Runs `query` and returns its rows, each with access by column name.
    static func rows(
        _ connection: PostgresConnection, _ query: PostgresQuery, _ logger: Logger
    ) async throws -> [PostgresRandomAccessRow] {
        var result: [PostgresRandomAccessRow] = []
        for try await row in try await connection.query(query, logger: logger) {
            result.append(row.makeRandomAccess())
        }
        return result
    }

    /// The rows of a prepared `statement`.
    static func rows<Statement: PostgresPreparedStatement>(
        _ connection: PostgresConnection, _ statement: Statement, _ logger: Logger
    ) async throws -> [Statement.Row] {
        var result: [Statement.Row] = []
        for try await row in try await connection.execute(statement, logger: logger) {
            result.append(row)
        }
        return result
    }

    /// Runs `query` and returns how many rows it changed.
    static func execute(_ connection: PostgresConnection, _ query: PostgresQuery, _ logger: Logger) async throws -> Int
    {
        try await connection.complete(query, logger: logger).metadata.rows ?? 0
    }

    /// Wakes the topic's consumers in every process when the transaction commits.
    func notify(_ connection: PostgresConnection, topic: String, _ logger: Logger) async throws {
        _ = try await connection.complete("SELECT pg_notify(\(self.configuration.channel), \(topic))", logger: logger)
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
        try await self.write { connection, logger in
            try await Self.createTopic(connection, topic, options, now: now, logger)
        }
    }

    static func createTopic(
        _ connection: PostgresConnection, _ topic: String, _ options: TopicOptions, now: Int64, _ logger: Logger
    ) async throws {
        let maxAge = options.retention.maxAge.map(Self.millis)
        let maxBytes = options.retention.maxBytesPerPartition
        // A concurrent creator of the same topic waits for this insert and then finds the row.
        let created = try await Self.execute(
            connection,
            """
            INSERT INTO aviary_topics (name, partitions, max_age_ms, max_bytes, created_at)
            VALUES (\(topic), \(options.partitions), \(maxAge), \(maxBytes), \(now))
            ON CONFLICT (name) DO NOTHING
            """, logger)
        if created == 1 {
            try await connection.query(
                """
                INSERT INTO aviary_partitions (topic, partition)
                SELECT \(topic), generate_series(0, \(options.partitions - 1))
                """, logger: logger)
            return
        }
        let existing = try await Self.partitionCount(connection, topic, logger)
        guard existing == options.partitions else {
            throw MessagingError(
                .invalidArgument,
                "topic \(topic) has \(existing) partitions; it cannot be changed to \(options.partitions)")
        }
        try await connection.query(
            "UPDATE aviary_topics SET max_age_ms = \(maxAge), max_bytes = \(maxBytes) WHERE name = \(topic)",
            logger: logger)
    }

    static func partitionCount(_ connection: PostgresConnection, _ topic: String, _ logger: Logger) async throws -> Int
    {
        let rows = try await Self.rows(connection, "SELECT partitions FROM aviary_topics WHERE name = \(topic)", logger)
        guard let row = rows.first else {
            throw MessagingError(.notFound, "no topic \(topic)")
        }
        return try row["partitions"].decode(Int.self)
    }

    // MARK: Publishing

    /// A message encoded for storage (the same JSON as the SQLite backend's).
    struct Encoded: Sendable {
        var topic: String
        var key: String
        var event: String
        var headers: String
        var deliverAt: Int64?

        var bytes: Int { self.key.utf8.count + self.event.utf8.count + self.headers.utf8.count }
    }

    static func encode(_ message: OutgoingMessage) throws -> Encoded {
        let problems = message.event.validate()
        guard problems.isEmpty else {
            throw MessagingError(.invalidArgument, "event \(message.event.id): \(problems.joined(separator: "; "))")
        }
        return Encoded(
            topic: message.topic, key: message.key, event: try StoredJSON.event(message.event),
            headers: StoredJSON.headers(message.headers), deliverAt: message.deliverAt.map(Self.millis))
    }

    static func json(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    @discardableResult
    public func publish(_ messages: [OutgoingMessage]) async throws -> [MessagePosition] {
        guard !messages.isEmpty else { return [] }
        let encoded = try messages.map(Self.encode)
        let now = self.nowMillis
        if encoded.allSatisfy({ ($0.deliverAt ?? now) <= now }),
            let positions = try await self.publishNow(encoded, now: now)
        {
            return positions
        }
        return try await self.write { connection, logger in
            let topics = Set(encoded.map(\.topic)).sorted()
            var partitionCounts: [String: Int] = [:]
            for topic in topics {
                partitionCounts[topic] = try await Self.partitionCount(connection, topic, logger)
                try await Self.promoteDue(connection, topic: topic, now: now, logger)
            }
            var positions = [MessagePosition?](repeating: nil, count: encoded.count)
            var immediate: [(index: Int, message: Encoded)] = []
            var scheduled: [(index: Int, message: Encoded)] = []
            for (index, message) in encoded.enumerated() {
                if let deliverAt = message.deliverAt, deliverAt > now {
                    scheduled.append((index, message))
                } else {
                    immediate.append((index, message))
                }
            }
            let appended = try await Self.append(
                connection, immediate.map(\.message), partitionCounts: partitionCounts, now: now, logger)
            for (slot, position) in zip(immediate, appended) { positions[slot.index] = position }
            if !scheduled.isEmpty {
                try await connection.query(
                    """
                    INSERT INTO aviary_schedule (topic, key, event, headers, deliver_at)
                    SELECT * FROM unnest(\(scheduled.map(\.message.topic)), \(scheduled.map(\.message.key)),
                        \(scheduled.map(\.message.event)), \(scheduled.map(\.message.headers)),
                        \(scheduled.map { $0.message.deliverAt ?? now }))
                    """, logger: logger)
                for slot in scheduled {
                    let partitions = partitionCounts[slot.message.topic] ?? 1
                    positions[slot.index] = MessagePosition(
                        topic: slot.message.topic,
                        partition: Partitioner.partition(forKey: slot.message.key, partitions: partitions), offset: 0)
                }
            }
            for topic in topics { try await self.notify(connection, topic: topic, logger) }
            return positions.compactMap { $0 }
        }
    }

    /// Publishes messages that are all for now with one statement (`aviary_publish_now`, its own
    /// transaction); `nil` when a topic has due scheduled messages, which the multi-statement path
    /// appends first.
    ///
    /// The partitions are computed here, from the topics' partition counts (read once per topic
    /// and kept: a topic's count never changes; the function checks it and a mismatch reads it
    /// again), so that the server only takes offsets and inserts rows.
    private func publishNow(_ encoded: [Encoded], now: Int64) async throws -> [MessagePosition]? {
        var retried = false
        while true {
            // A batch's messages mostly share their topic: each run of one topic is inserted once.
            var topics = Set<String>()
            var lastTopic: String?
            for message in encoded where message.topic != lastTopic {
                topics.insert(message.topic)
                lastTopic = message.topic
            }
            let counts = try await self.partitionCounts(topics)
            do {
                return try await self.publishNow(encoded, counts: counts, now: now)
            } catch let error where PostgresStore.sqlState(error) == Self.partitionCountState && !retried {
                retried = true
                self.knownPartitionCounts.withLock { known in
                    for topic in counts.keys { known.removeValue(forKey: topic) }
                }
            } catch let error where PostgresStore.sqlState(error) == Self.noTopicState {
                throw MessagingError(.notFound, Self.serverMessage(error) ?? "no topic")
            } catch let error as MessagingError {
                throw error
            } catch {
                throw MessagingError(
                    .unavailable, "message log \(self.store.address): \(PostgresStore.describe(error))")
            }
        }
    }

    /// The partition counts of `topics`, from memory or read once; `.notFound` for a topic that
    /// does not exist.
    private func partitionCounts(_ topics: Set<String>) async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        let missing = self.knownPartitionCounts.withLock { known in
            topics.filter { topic in
                guard let count = known[topic] else { return true }
                counts[topic] = count
                return false
            }
        }
        guard !missing.isEmpty else { return counts }
        let logger = self.logger
        let names = Array(missing)
        let rows = try await self.store.withConnection { connection in
            var rows: [(String, Int32)] = []
            for try await row in try await connection.query(
                "SELECT name, partitions FROM aviary_topics WHERE name = ANY (\(names))", logger: logger
            ).decode((String, Int32).self) {
                rows.append(row)
            }
            return rows
        }
        for (name, count) in rows { counts[name] = Int(count) }
        if let absent = names.sorted().first(where: { counts[$0] == nil }) {
            throw MessagingError(.notFound, "no topic \(absent)")
        }
        self.knownPartitionCounts.withLock { known in
            for (name, count) in rows { known[name] = Int(count) }
        }
        return counts
    }

    private func publishNow(_ encoded: [Encoded], counts: [String: Int], now: Int64) async throws -> [MessagePosition]?
    {
        if encoded.count == 1, let partitions = counts[encoded[0].topic] {
            return try await self.publishOne(encoded[0], partitions: partitions, now: now)
        }
        // Every partition of the batch's topics is a cell of one array, the topics' runs of cells
        // in name order, so a message's (topic, partition) slot is found by position rather than by
        // hashing, and the cells in order are the slots in (topic, partition) order, the order the
        // function locks partition rows in.
        let topics = counts.keys.sorted()
        var topicIndexes: [String: Int] = [:]
        var firstCells: [Int] = []
        var cellCount = 0
        for (index, topic) in topics.enumerated() {
            topicIndexes[topic] = index
            firstCells.append(cellCount)
            cellCount += max(1, counts[topic] ?? 1)
        }
        var sizes = [Int32](repeating: 0, count: cellCount)
        var cellTopics = [Int](repeating: 0, count: cellCount)
        var usedCells: [Int] = []
        var messageCells: [Int] = []
        var ranks: [Int32] = []
        var bytes: [Int32] = []
        messageCells.reserveCapacity(encoded.count)
        ranks.reserveCapacity(encoded.count)
        bytes.reserveCapacity(encoded.count)
        // Messages of a batch mostly share their topic: it is looked up when it changes.
        var lastTopic: String?
        var firstCell = 0
        var partitions = 1
        var topicIndex = 0
        for index in encoded.indices {
            let topic = encoded[index].topic
            if topic != lastTopic {
                topicIndex = topicIndexes[topic] ?? 0
                firstCell = firstCells[topicIndex]
                partitions = max(1, counts[topic] ?? 1)
                lastTopic = topic
            }
            let cell = firstCell + Partitioner.partition(forKey: encoded[index].key, partitions: partitions)
            if sizes[cell] == 0 {
                usedCells.append(cell)
                cellTopics[cell] = topicIndex
            }
            sizes[cell] += 1
            messageCells.append(cell)
            ranks.append(sizes[cell])
            bytes.append(Int32(encoded[index].bytes))
        }
        usedCells.sort()
        // Slots are numbered from 1, as the function's arrays are.
        var cellSlots = [Int32](repeating: 0, count: cellCount)
        var slotTopics: [String] = []
        var slotPartitions: [Int32] = []
        var slotSizes: [Int32] = []
        for cell in usedCells {
            let topicIndex = cellTopics[cell]
            slotTopics.append(topics[topicIndex])
            slotPartitions.append(Int32(cell - firstCells[topicIndex]))
            slotSizes.append(sizes[cell])
            cellSlots[cell] = Int32(slotSizes.count)
        }
        let query: PostgresQuery = """
            SELECT aviary_publish_now(\(topics), \(topics.map { Int32(counts[$0] ?? 0) }),
                \(slotTopics), \(slotPartitions), \(slotSizes),
                \(PostgresArrayParameter(messageCells.map { cellSlots[$0] })), \(PostgresArrayParameter(ranks)),
                \(PostgresArrayParameter(encoded.map(\.key))), \(PostgresArrayParameter(encoded.map(\.event))),
                \(PostgresArrayParameter(encoded.map(\.headers))), \(PostgresArrayParameter(bytes)), \(now),
                \(self.configuration.channel)) AS bases
            """
        let logger = self.logger
        let bases = try await self.store.withConnection { connection in
            var bases: [Int64]?
            for try await row in try await connection.query(query, logger: logger).decode([Int64]?.self) {
                bases = row
            }
            return bases
        }
        guard let bases else { return nil }
        guard bases.count == slotSizes.count else {
            throw MessagingError(
                .unavailable, "aviary_publish_now returned \(bases.count) offsets for \(slotSizes.count) partitions")
        }
        var positions: [MessagePosition] = []
        positions.reserveCapacity(encoded.count)
        for (cell, rank) in zip(messageCells, ranks) {
            let slot = Int(cellSlots[cell]) - 1
            positions.append(
                MessagePosition(
                    topic: slotTopics[slot], partition: Int(slotPartitions[slot]), offset: bases[slot] + Int64(rank)))
        }
        return positions
    }

    /// Publishes one message for now with `aviary_publish_one` (its own transaction, two statements
    /// on the server where `aviary_publish_now` runs four); `nil` when its topic has due scheduled
    /// messages. The errors are `aviary_publish_now`'s.
    private func publishOne(_ message: Encoded, partitions: Int, now: Int64) async throws -> [MessagePosition]? {
        let partition = Partitioner.partition(forKey: message.key, partitions: max(1, partitions))
        // One prepared call on one of the store's wire connections (`PostgresStore.pipeline`): about a
        // quarter of the client CPU of the same call through postgres-nio and the pool (see the
        // performance notes, twenty-first session). A caller on the log's loop (`executor`) sends
        // and resumes there; others hop there and back. Batches stay on postgres-nio: their
        // arrays' binary encoding pays there, and they pay the call's fixed cost once.
        let results = try await self.store.pipeline([
            PostgresWireStep(
                Self.publishOneStatement,
                [
                    .text(message.topic), .integer(Int64(partitions)), .integer(Int64(partition)), .text(message.key),
                    .text(message.event), .text(message.headers), .integer(Int64(message.bytes)), .integer(now),
                    .text(self.configuration.channel),
                ])
        ])
        guard let offset = results.first?.rows.first?.integer(0) else { return nil }
        return [MessagePosition(topic: message.topic, partition: partition, offset: offset)]
    }

    /// `aviary_publish_one`'s call, which each wire connection prepares once. The function may be
    /// replaced by a later migration with the same arguments and result (a prepared call picks
    /// the new body up); one that changes its result type needs a new name here.
    static let publishOneStatement = PostgresWireStatement(
        name: "aviary_publish_one_v6",
        sql: "SELECT aviary_publish_one($1, $2, $3, $4, $5, $6, $7, $8, $9) AS msg_offset")

    /// The server's message of a PostgreSQL error.
    static func serverMessage(_ error: any Error) -> String? {
        if let error = error as? PostgresWireServerError { return error.message }
        return (error as? PSQLError)?.serverInfo?[.message]
    }

    /// Appends messages at the next offsets of their partitions (inside a transaction), keeping
    /// their order within each partition, and returns their positions in the order given.
    ///
    /// Partition rows are locked in (topic, partition) order, so concurrent appends never deadlock;
    /// each partition's offsets are taken with one update, and all rows go in with one insert.
    static func append(
        _ connection: PostgresConnection, _ messages: [Encoded], partitionCounts: [String: Int], now: Int64,
        _ logger: Logger
    ) async throws -> [MessagePosition] {
        guard !messages.isEmpty else { return [] }
        struct Slot: Hashable, Comparable {
            var topic: String
            var partition: Int
            static func < (lhs: Slot, rhs: Slot) -> Bool { (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition) }
        }
        var slots: [Slot] = []
        var indexes: [Slot: [Int]] = [:]
        for (index, message) in messages.enumerated() {
            guard let partitions = partitionCounts[message.topic] else {
                throw MessagingError(.notFound, "no topic \(message.topic)")
            }
            let slot = Slot(
                topic: message.topic, partition: Partitioner.partition(forKey: message.key, partitions: partitions))
            slots.append(slot)
            indexes[slot, default: []].append(index)
        }
        var offsets = [Int64](repeating: 0, count: messages.count)
        for slot in indexes.keys.sorted() {
            let members = indexes[slot] ?? []
            let rows = try await Self.rows(
                connection,
                """
                UPDATE aviary_partitions SET last_offset = last_offset + \(members.count)
                WHERE topic = \(slot.topic) AND partition = \(slot.partition) RETURNING last_offset
                """, logger)
            guard let last = try rows.first?["last_offset"].decode(Int64.self) else {
                throw MessagingError(.notFound, "no partition \(slot.partition) in topic \(slot.topic)")
            }
            var offset = last - Int64(members.count)
            for index in members {
                offset += 1
                offsets[index] = offset
            }
        }
        try await connection.query(
            """
            INSERT INTO aviary_messages (topic_id, partition, msg_offset, appended_at, bytes, key, event, headers)
            SELECT t.id, m.partition, m.msg_offset, \(now), m.bytes, m.key, m.event, m.headers FROM unnest(
                \(messages.map(\.topic)), \(slots.map { Int32($0.partition) }), \(offsets), \(messages.map(\.key)),
                \(messages.map(\.event)), \(messages.map(\.headers)), \(messages.map { Int32($0.bytes) })
            ) AS m (topic, partition, msg_offset, key, event, headers, bytes)
            JOIN aviary_topics t ON t.name = m.topic
            """, logger: logger)
        return zip(slots, offsets).map { MessagePosition(topic: $0.topic, partition: $0.partition, offset: $1) }
    }

    /// Appends the topic's scheduled messages that are due, in the order they are due. Promoters
    /// of one topic take turns (a transaction-scoped advisory lock), so that due messages keep
    /// their order; a publish that finds nothing due takes no lock.
    static func promoteDue(_ connection: PostgresConnection, topic: String, now: Int64, _ logger: Logger) async throws {
        let due = try await Self.rows(
            connection,
            "SELECT EXISTS (SELECT 1 FROM aviary_schedule WHERE topic = \(topic) AND deliver_at <= \(now)) AS due",
            logger)
        guard try due.first?["due"].decode(Bool.self) == true else { return }
        _ = try await connection.complete(
            "SELECT pg_advisory_xact_lock(hashtext('aviary_schedule'), hashtext(\(topic)))", logger: logger)
        var rows: [(id: Int64, deliverAt: Int64, message: Encoded)] = []
        for row in try await Self.rows(
            connection,
            """
            DELETE FROM aviary_schedule WHERE topic = \(topic) AND deliver_at <= \(now)
            RETURNING id, deliver_at, key, event, headers
            """, logger)
        {
            rows.append(
                (
                    try row["id"].decode(Int64.self), try row["deliver_at"].decode(Int64.self),
                    Encoded(
                        topic: topic, key: try row["key"].decode(String.self),
                        event: try row["event"].decode(String.self), headers: try row["headers"].decode(String.self))
                ))
        }
        guard !rows.isEmpty else { return }
        rows.sort { ($0.deliverAt, $0.id) < ($1.deliverAt, $1.id) }
        let partitions = try await Self.partitionCount(connection, topic, logger)
        _ = try await Self.append(
            connection, rows.map(\.message), partitionCounts: [topic: partitions], now: now, logger)
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
        try await self.write { connection, logger in
            _ = try await Self.partitionCount(connection, topic, logger)
            let created = try await Self.execute(
                connection,
                """
                INSERT INTO aviary_groups (name, topic, max_deliveries, on_poison, dead_letter_topic, created_at)
                VALUES (\(group), \(topic), \(options.maxDeliveries), \(options.onPoison.rawValue), \(deadLetterTopic), \(now))
                ON CONFLICT (name, topic) DO NOTHING
                """, logger)
            if created == 1 {
                let next = options.start == .earliest ? "start_offset" : "last_offset + 1"
                try await connection.query(
                    """
                    INSERT INTO aviary_group_partitions (group_name, topic, partition, next_offset)
                    SELECT \(group), topic, partition, \(unescaped: next) FROM aviary_partitions WHERE topic = \(topic)
                    """, logger: logger)
            } else {
                try await connection.query(
                    """
                    UPDATE aviary_groups SET max_deliveries = \(options.maxDeliveries),
                        on_poison = \(options.onPoison.rawValue), dead_letter_topic = \(deadLetterTopic)
                    WHERE name = \(group) AND topic = \(topic)
                    """, logger: logger)
            }
            let exists = try await Self.rows(
                connection, "SELECT 1 FROM aviary_topics WHERE name = \(deadLetterTopic)", logger)
            if exists.isEmpty {
                try await Self.createTopic(
                    connection, deadLetterTopic, TopicOptions(partitions: 1, retention: .forever), now: now, logger)
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

        static func notSubscribed(_ group: String, _ topic: String) -> MessagingError {
            MessagingError(.notFound, "group \(group) is not subscribed to topic \(topic)")
        }

        static func fetch(
            _ connection: PostgresConnection, group: String, topic: String, _ logger: Logger
        ) async throws -> GroupRow {
            let rows = try await PostgresMessageLog.rows(
                connection,
                "SELECT max_deliveries, on_poison, dead_letter_topic FROM aviary_groups WHERE name = \(group) AND topic = \(topic)",
                logger)
            guard let row = rows.first else { throw Self.notSubscribed(group, topic) }
            return GroupRow(
                name: group, topic: topic, maxDeliveries: try row["max_deliveries"].decode(Int.self),
                onPoison: PoisonPolicy(rawValue: try row["on_poison"].decode(String.self)) ?? .deadLetter,
                deadLetterTopic: try row["dead_letter_topic"].decode(String.self))
        }
    }
}
