//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Foundation
public import Logging
public import PostgresNIO
public import ServiceLifecycle
import Synchronization
public import Tracing
import _ConnectionPoolModule

/// A service's own PostgreSQL database: a pool of postgres-nio connections with versioned
/// migrations, retried transactions and a readiness check, the counterpart of ``SQLiteStore`` for
/// `postgres://` URLs.
///
/// The pool is postgres-nio's (the one inside its `PostgresClient`); the store opens the pooled
/// sockets itself so that they carry TCP keep-alive (``Options/keepAliveFrequency``).
///
/// ## Lifetime
///
/// The pool works only while ``run()`` runs, so the store is a ServiceLifecycle `Service`: put it
/// in the `ServiceGroup` *before* the services that use it (a group stops services in reverse
/// order, so the store outlives its users). ``run()`` starts the pool, applies the migrations
/// that have not run yet, then serves until the group shuts down gracefully or the task is
/// cancelled. Calls made before the migrations finished wait for them (up to
/// ``Options/acquireTimeout``). Outside a service group, ``withStore(url:migrations:options:logger:tracer:_:)``
/// runs a store for the duration of a closure.
///
/// ```swift
/// var migrations = PostgresMigrations()
/// migrations.add("v1: orders") { connection, logger in
///     try await connection.query("CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)", logger: logger)
/// }
/// let store = try PostgresStore(url: StoreURL(parsing: "postgres://shop:secret@127.0.0.1:5432/orders"), migrations: migrations)
/// let group = ServiceGroup(services: [store, app], logger: logger)   // store first: it stops last
/// // in a request handler:
/// try await store.withTransaction { connection in
///     try await connection.query("INSERT INTO orders VALUES (\("o-1"), \(2500))", logger: store.logger)
/// }
/// ```
public final class PostgresStore: Sendable, Service {
    /// Pool size, timeouts and retries. Every field has a default.
    public struct Options: Sendable {
        /// The most connections the pool opens.
        public var maximumConnections: Int
        /// Connections the pool keeps open while idle; 1 by default.
        ///
        /// The pool closes a connection beyond the minimum after it has been idle for a minute,
        /// and for that arms a timer (a task sleeping on a dispatch timer) every time such a
        /// connection goes back to the pool, cancelled at its next lease. The pool lends its first
        /// connections first, so with a minimum of 1 a caller that makes one call at a time always
        /// gets the kept connection and arms no timer; with 0 every call did, about a quarter of
        /// a single query's client CPU time (see AviaryMessaging's performance notes). Raise it for
        /// steady concurrent load; 0 holds no connection while the store is idle.
        ///
        /// ```swift
        /// let options = PostgresStore.Options(maximumConnections: 40, minimumConnections: 4)
        /// ```
        public var minimumConnections: Int
        /// How long one connection attempt may take.
        public var connectTimeout: Duration
        /// How long a call waits for the store to be ready and for a free connection before it
        /// fails with a message saying why (server down, store not running, pool exhausted).
        public var acquireTimeout: Duration
        /// How many times ``PostgresStore/withTransaction(_:isolation:_:)`` runs a transaction that
        /// fails with a serialization failure (SQLSTATE 40001) or a deadlock (40P01); at least 1.
        public var maximumTransactionAttempts: Int
        /// Shown as `application_name` in `pg_stat_activity`.
        public var applicationName: String
        /// How long a connection may stay without traffic before the operating system checks it
        /// with TCP keep-alive probes; `nil` turns the probes off.
        ///
        /// Every connection the store opens (pooled or dedicated) sets SO_KEEPALIVE with
        /// TCP_KEEPIDLE at this time (whole seconds, at least 1), TCP_KEEPINTVL at a third of it
        /// (at least 1 s) and TCP_KEEPCNT 3, as libpq's `keepalives` settings do. A peer that
        /// vanished without closing the connection (a dropped NAT entry, a crashed host) is found
        /// by the kernel within about twice this time of the last traffic: the socket is reset,
        /// the pool removes the connection and opens another when needed. On Linux the same time
        /// (the idle time and three probes) is also the connection's TCP_USER_TIMEOUT: when the
        /// peer stops taking the bytes of a call (its host went away, or it stopped reading mid-call),
        /// the kernel gives the connection up after that time rather than retransmitting for
        /// about 15 minutes, and the call on it fails as unavailable. A query the server has
        /// received and is still running is not affected: its bytes were acknowledged.
        ///
        /// A connection the server closes (`pg_terminate_backend`, a restart) leaves the pool
        /// when the pool hears of the close; a call that leases it after its channel closed
        /// fails as unavailable, and a later one gets a new connection. A call running on a
        /// connection when it closes fails too: with postgres-nio's error, or, for a query
        /// postgres-nio dropped because it met the channel closing, as unavailable half a
        /// second after the close.
        ///
        /// The probes cost nothing per call. postgres-nio's own keep-alive (a `SELECT 1` after an
        /// idle period), which this replaced, armed a timer (a task sleeping on a dispatch timer)
        /// every time a connection went back to the pool: about a quarter of a single publish's
        /// client CPU time from the message log's executor.
        ///
        /// Without keep-alive, a connection whose peer vanished while it was idle is found broken
        /// only by the next call on it, which fails.
        ///
        /// ```swift
        /// let options = PostgresStore.Options(keepAliveFrequency: .seconds(60))  // probes after a minute idle
        /// ```
        public var keepAliveFrequency: Duration?
        /// The one event loop of every pooled connection, or `nil` to spread them over
        /// postgres-nio's default group (the default).
        ///
        /// With a loop, the store offers ``PostgresStore/executor``: a task that prefers it runs on
        /// that loop, where its calls lease, query and resume without waking another thread. The
        /// pool's own work (connecting, its idle timers' bookkeeping) runs there too.
        /// Connections outside the pool (``PostgresStore/withDedicatedConnection(_:)``) keep
        /// postgres-nio's default.
        ///
        /// ```swift
        /// let options = PostgresStore.Options(eventLoop: MultiThreadedEventLoopGroup.singleton.next())
        /// ```
        public var eventLoop: (any EventLoop)?
        /// The most connections the store's lean protocol client opens besides the pool, for the
        /// hottest single calls (the message log's single publishes and acks); 4 by default, at least 1.
        ///
        /// Each is opened when a call finds the others busy, so a caller that makes one call at a
        /// time holds one. Concurrent calls run on separate backends up to this number, where the
        /// server flushes their commits together; beyond it they are pipelined behind calls in
        /// flight on one backend, whose commits are flushed one after another. Count them with
        /// ``maximumConnections`` against the server's `max_connections`.
        ///
        /// ```swift
        /// let options = PostgresStore.Options(pipelineConnections: 8)  // 8 concurrent publishers
        /// ```
        public var pipelineConnections: Int
        /// How long a caller of the lean protocol client may wait for its call's reply on its own
        /// thread, yielding the CPU between looks, before its task suspends; 500 µs by default
        /// (a durable commit through the network takes longer than SQLite's), zero to always
        /// suspend.
        ///
        /// A suspended caller is resumed by waking a thread of the concurrency pool, which on a
        /// small virtual machine costs a good part of a single publish. One caller of a store at
        /// a time waits this way (the others suspend), none does while the last reply took longer
        /// than this, and a caller on a NIO event loop (the connection's or another) never does.
        ///
        /// ```swift
        /// let options = PostgresStore.Options(commitSpin: .zero)  // callers always suspend
        /// ```
        public var commitSpin: Duration

        /// Creates options; see each property for its meaning.
        public init(
            maximumConnections: Int = 20, minimumConnections: Int = 1, connectTimeout: Duration = .seconds(10),
            acquireTimeout: Duration = .seconds(30), maximumTransactionAttempts: Int = 5,
            applicationName: String = "aviary", keepAliveFrequency: Duration? = .seconds(30),
            eventLoop: (any EventLoop)? = nil, pipelineConnections: Int = 4, commitSpin: Duration = .microseconds(500)
        ) {
            self.commitSpin = commitSpin
            self.pipelineConnections = pipelineConnections
            self.eventLoop = eventLoop
            self.maximumConnections = maximumConnections
            self.minimumConnections = minimumConnections
            self.connectTimeout = connectTimeout
            self.acquireTimeout = acquireTimeout
            self.maximumTransactionAttempts = maximumTransactionAttempts
            self.applicationName = applicationName
            self.keepAliveFrequency = keepAliveFrequency
        }
    }

    /// A transaction's isolation level (PostgreSQL's `BEGIN ISOLATION LEVEL ...`).
    public enum IsolationLevel: String, Sendable, Hashable {
        /// Each statement sees the data committed before it began (PostgreSQL's default).
        case readCommitted = "READ COMMITTED"
        /// The transaction sees one snapshot; concurrent updates of the same rows fail with 40001.
        case repeatableRead = "REPEATABLE READ"
        /// As if transactions ran one after another; conflicting ones fail with 40001 and are retried.
        case serializable = "SERIALIZABLE"
    }

    /// Where the store lives, as configured.
    public let url: StoreURL
    /// The parsed address (its description masks the password).
    public let address: PostgresAddress
    /// The pool; ``withConnection(_:)`` leases from it.
    let pool: Pool
    /// How connections are opened, pooled or dedicated.
    let setup: ConnectionSetup
    /// The logger queries log to (pass it to `connection.query(_:logger:)`), labelled `aviary.storage`.
    public let logger: Logger
    /// The owning service's tracer: transactions inside a traced request get a client span.
    public let tracer: (any Tracer)?
    /// The options the store was made with.
    public let options: Options
    /// Runs a task on the pool's event loop when ``Options/eventLoop`` is set (`nil` otherwise).
    ///
    /// A task that prefers it runs its own code on that loop, and its calls
    /// (``withTransaction(_:isolation:_:)``, ``withConnection(_:)``) stay there from the lease to
    /// the caller's resumption: no thread is woken to send a query or to resume the caller. Calls
    /// from other tasks work as without it. The task's code delays the loop's other channels while
    /// it runs, so it should mostly wait on the database and never block.
    ///
    /// ```swift
    /// let store = try PostgresStore(url: url, options: .init(eventLoop: MultiThreadedEventLoopGroup.singleton.next()))
    /// // while store.run() runs:
    /// if let executor = store.executor {
    ///     try await withTaskExecutorPreference(executor) {
    ///         for order in orders {
    ///             try await store.withTransaction { connection in
    ///                 try await connection.query("INSERT INTO orders VALUES (\(order.id), \(order.total))", logger: store.logger)
    ///             }
    ///         }
    ///     }
    /// }
    /// ```
    public let executor: EventLoopTaskExecutor?
    /// The connection ``pipeline(_:)`` runs its calls on.
    let wireLane: WireLane
    /// How ``pipeline(_:)``'s callers wait for their replies (``Options/commitSpin``).
    package let commitWait: CommitWait

    let migrations: PostgresMigrations
    private let lifecycle = Mutex(Lifecycle())
    /// The deadlines of calls waiting for readiness or a connection.
    private let deadlines = AcquireDeadlines()
    /// The pooled connections, each with the call running on it.
    let calls: ConnectionCalls
    /// Ids of dedicated connections (negative, apart from the pool's).
    private static let connectionIDs = Atomic<Int>(0)
    /// The advisory lock key that serialises migrations of one database ("aviary_mi" in ASCII).
    static let migrationLockKey: Int64 = 0x6176_6961_7279_6d69

    /// Creates a store for a `postgres://` URL. Nothing connects until ``run()``.
    ///
    /// - Parameters:
    ///   - url: a `postgres://user:password@host:port/database` store URL.
    ///   - migrations: the schema migrations, applied in order by ``run()``.
    ///   - options: pool size, timeouts and retries.
    ///   - logger: where the pool and the queries log (`aviary.storage` by default).
    ///   - tracer: the owning service's tracer (`AviaryApplication.tracer`), for database spans.
    /// - Throws: ``AviaryCore/AviaryError`` (invalid argument) when the URL is not a valid
    ///   PostgreSQL URL, saying which part is wrong.
    public init(
        url: StoreURL, migrations: PostgresMigrations = PostgresMigrations(), options: Options = Options(),
        logger: Logger = Logger(label: "aviary.storage"), tracer: (any Tracer)? = nil
    ) throws(AviaryError) {
        let address = try url.postgresAddress()
        precondition(options.maximumTransactionAttempts >= 1, "maximumTransactionAttempts must be at least 1")
        self.url = url
        self.address = address
        self.migrations = migrations
        self.options = options
        self.tracer = tracer
        var logger = logger
        logger[metadataKey: "db.namespace"] = "\(address.database)"
        self.logger = logger
        let setup = ConnectionSetup(
            address: address, tls: Self.connectionTLS(address), connectTimeout: TimeAmount(options.connectTimeout),
            applicationName: options.applicationName, keepAlive: options.keepAliveFrequency.map(TCPKeepAlive.init),
            logger: logger)
        self.setup = setup
        // With a loop, every connection the pool makes is on it.
        let calls = ConnectionCalls(address: address)
        self.calls = calls
        self.pool = Self.makePool(options: options, setup: setup, calls: calls)
        self.executor = options.eventLoop.map(EventLoopTaskExecutor.init)
        self.wireLane = WireLane(
            setup: setup, eventLoop: options.eventLoop ?? MultiThreadedEventLoopGroup.singleton.next(),
            limit: options.pipelineConnections)
        self.commitWait = CommitWait(limit: options.commitSpin)
    }

    // MARK: Lifetime

    /// Runs the pool, applies the pending migrations, then serves until graceful shutdown or
    /// cancellation. Call it once (a `ServiceGroup` does).
    ///
    /// ```swift
    /// try await withThrowingDiscardingTaskGroup { group in
    ///     group.addTask { try await store.run() }
    ///     try await store.ready()
    ///     // ... use the store, then cancel the group
    /// }
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError``: `unavailable` when the server cannot be reached (the
    ///   message names the address and the cause, such as "connection refused"), `internal` naming
    ///   the migration that failed, `failedPrecondition` when called twice.
    public func run() async throws {
        let first = self.lifecycle.withLock { state -> Bool in
            guard case .idle = state.phase else { return false }
            state.phase = .starting
            return true
        }
        guard first else {
            throw AviaryError(.failedPrecondition, "PostgresStore(\(self.address)).run() was called twice")
        }
        defer {
            self.finish(.stopped)
            self.wireLane.stop()
        }
        try await withThrowingDiscardingTaskGroup { group in
            // With an event loop of its own, the pool's work runs there as well: its timers
            // (connection backoff, idle timeouts) start from the pool's task, which a caller on
            // the loop then hands over without waking a thread.
            group.addTask(executorPreference: self.executor) {
                await cancelWhenGracefulShutdown { await self.pool.run() }
            }
            do {
                try await self.migrate()
            } catch {
                self.finish(.failed(error))
                throw error
            }
            self.finish(.ready)
        }
    }

    /// Waits until ``run()`` has applied the migrations.
    ///
    /// ```swift
    /// try await store.ready()
    /// ```
    ///
    /// - Throws: the error that stopped ``run()``, or ``AviaryCore/AviaryError`` (unavailable) when
    ///   the store stopped, or `timedOut` after ``Options/acquireTimeout`` (saying whether ``run()``
    ///   was ever called).
    public func ready() async throws {
        try await self.withAcquireDeadline { try await self.waitUntilReady() }
    }

    /// Runs a store for the duration of `body`: starts it, waits for its migrations, calls `body`,
    /// then stops it. For tools and tests; services put the store in their `ServiceGroup` instead.
    ///
    /// ```swift
    /// let count = try await PostgresStore.withStore(url: url, migrations: migrations) { store in
    ///     try await store.withTransaction { connection in
    ///         try await connection.query("SELECT count(*) FROM orders", logger: store.logger).decode(Int.self)
    ///             .reduce(0) { $0 + $1 }
    ///     }
    /// }
    /// ```
    ///
    /// - Throws: what ``init(url:migrations:options:logger:tracer:)``, ``run()`` or `body` throws.
    public static func withStore<T: Sendable>(
        url: StoreURL, migrations: PostgresMigrations = PostgresMigrations(), options: Options = Options(),
        logger: Logger = Logger(label: "aviary.storage"), tracer: (any Tracer)? = nil,
        _ body: @Sendable (PostgresStore) async throws -> T
    ) async throws -> T {
        let store = try PostgresStore(
            url: url, migrations: migrations, options: options, logger: logger, tracer: tracer)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await store.run() }
            do {
                // When run() fails (a refused connection, a failed migration), ready() throws its error.
                try await store.ready()
                let value = try await body(store)
                group.cancelAll()
                return value
            } catch {
                group.cancelAll()
                throw error
            }
        }
    }

    // MARK: Work

    /// Runs `body` in a transaction on a pooled connection: it commits when `body` returns and
    /// rolls back when it throws. A transaction that fails with a serialization failure (40001) or
    /// a deadlock (40P01) is rolled back and run again, up to ``Options/maximumTransactionAttempts``
    /// times, after a short randomised pause, so `body` must be safe to run again (no effects
    /// outside the database).
    ///
    /// ```swift
    /// let total = try await store.withTransaction("sum orders", isolation: .serializable) { connection in
    ///     let rows = try await connection.query("SELECT coalesce(sum(total), 0)::BIGINT FROM orders", logger: store.logger)
    ///     return try await rows.decode(Int.self).reduce(0, +)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - operation: the span's name inside a traced request (`postgresql transaction` by default).
    ///   - isolation: the transaction's isolation level.
    ///   - body: the transaction's work; pass ``logger`` to the connection's queries.
    /// - Throws: `body`'s own error (after the rollback); ``AviaryCore/AviaryError`` `conflict`
    ///   when every attempt failed to serialize, `unavailable` when no connection came in time or
    ///   the outcome of COMMIT is unknown (the connection broke during it).
    public func withTransaction<T: Sendable>(
        _ operation: String? = nil, isolation: IsolationLevel = .readCommitted,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await self.traced(operation ?? "postgresql transaction") {
            var attempt = 1
            while true {
                do {
                    return try await self.withAcquiredConnection { connection in
                        try await self.transaction(on: connection, isolation: isolation, body)
                    }
                } catch let error where Self.isRetryable(error) {
                    guard attempt < self.options.maximumTransactionAttempts else {
                        throw AviaryError(
                            .conflict,
                            "a \(isolation.rawValue.lowercased()) transaction on \(self.address) failed \(attempt) times: \(Self.describe(error))",
                            cause: error)
                    }
                    self.logger.debug(
                        "transaction retried",
                        metadata: ["aviary.attempt": "\(attempt)", "error.type": "\(Self.sqlState(error) ?? "")"])
                    // A randomised pause lets the transaction that won the conflict finish first.
                    let base = 5 * (1 << min(attempt, 5))
                    try await Task.sleep(for: .milliseconds(Int.random(in: base / 2...base)))
                    attempt += 1
                }
            }
        }
    }

    /// Runs `body` with a pooled connection outside any transaction (each statement commits on its
    /// own), waiting up to ``Options/acquireTimeout`` for one.
    ///
    /// ```swift
    /// try await store.withConnection { connection in
    ///     try await connection.query("VACUUM orders", logger: store.logger)
    /// }
    /// ```
    ///
    /// - Throws: `body`'s error, or ``AviaryCore/AviaryError`` (unavailable) when no connection came in time.
    public func withConnection<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await self.withAcquiredConnection(body)
    }

    /// Runs one prepared statement on a pooled connection, outside any transaction (it commits on
    /// its own), and returns its rows, waiting up to ``Options/acquireTimeout`` for a connection.
    ///
    /// With ``Options/eventLoop`` set this is the store's cheapest call: the lease, the statement
    /// and its rows are handled on the loop in the caller's own task, with no task, answer or watch
    /// of its own (a statement written from its connection's loop cannot be dropped, see
    /// `executeOnLoop`). A task that prefers ``executor`` is there already; any other caller hops
    /// there for the call and back (two hand-offs between threads, where a call in a task of its
    /// own crosses between the caller, the concurrency pool and the loop several times). The
    /// statement's bindings are made on the loop then, which holds the loop's other connections
    /// meanwhile: for large arrays prefer ``withConnection(_:)``. Without a loop of its own the
    /// store runs the statement as ``withConnection(_:)`` would. The statement is prepared on each
    /// connection at its first use there.
    ///
    /// ```swift
    /// struct CountOrders: PostgresPreparedStatement {
    ///     static let sql = "SELECT count(*) FROM orders WHERE customer = $1"
    ///     typealias Row = Int
    ///     var customer: String
    ///     func makeBindings() throws -> PostgresBindings {
    ///         var bindings = PostgresBindings()
    ///         bindings.append(self.customer)
    ///         return bindings
    ///     }
    ///     func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int.self) }
    /// }
    /// let count = try await store.execute(CountOrders(customer: "alice")).first ?? 0
    /// ```
    ///
    /// - Throws: the statement's error, or ``AviaryCore/AviaryError`` when no connection came in
    ///   time (saying why, as ``withConnection(_:)``) or the connection had closed (unavailable).
    public func execute<Statement: PostgresPreparedStatement>(
        _ statement: Statement
    ) async throws -> [Statement.Row] where Statement.Row: Sendable {
        if let executor = self.executor, self.isReady {
            return try await executor.run { try await self.executeOnLoop(statement) }
        }
        return try await self.executeWatched(statement)
    }

    /// Runs `body` with a connection of its own, outside the pool, closed afterwards: for
    /// long-lived sessions such as `LISTEN`, which would otherwise hold a pooled connection.
    ///
    /// ```swift
    /// try await store.withDedicatedConnection { connection in
    ///     try await connection.listen(on: "orders") { notifications in
    ///         for try await notification in notifications { print(notification.payload) }
    ///     }
    /// }
    /// ```
    ///
    /// `body` runs in a task of its own (it inherits the caller's priority and task-local values;
    /// cancelling the caller cancels it), so that the connection's close can end the call: as
    /// with a pooled connection, a call still running half a second after its connection closed
    /// fails as unavailable (a query postgres-nio dropped on the closing channel would otherwise
    /// wait forever).
    ///
    /// - Throws: `body`'s error, or ``AviaryCore/AviaryError`` (unavailable) when the connection
    ///   cannot be opened, naming the address and the cause, or closed during the call.
    public func withDedicatedConnection<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await self.connect()
        let watch = self.calls.watchDedicated(connection)
        let answer = CallAnswer<T>()
        let address = self.address
        let call = Task {
            do {
                let value = try await watch.run(
                    answer,
                    closed: AviaryError(
                        .unavailable, "the connection to PostgreSQL at \(address) closed before the call")
                ) { try await body(connection) }
                answer.answer(.success(value))
            } catch {
                answer.answer(.failure(error))
            }
        }
        do {
            let value = try await withTaskCancellationHandler {
                try await answer.value
            } onCancel: {
                call.cancel()
            }
            try? await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// Checks that the store is migrated and the database answers a query; used by readiness probes.
    ///
    /// ```swift
    /// try await store.ping()
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError`` saying why not (server down with its cause, store not
    ///   running, migrations failed or still running, pool exhausted).
    public func ping() async throws {
        try await self.withAcquiredConnection { connection in
            do {
                _ = try await connection.complete("SELECT 1", logger: self.logger)
            } catch {
                throw AviaryError(
                    .unavailable, "PostgreSQL at \(self.address) did not answer: \(Self.describe(error))", cause: error)
            }
        }
    }

    // MARK: Errors

    /// A readable description of a postgres-nio error: the server's SQLSTATE, message, detail and
    /// hint, or the network cause ("connection refused"). postgres-nio's own `description` hides
    /// them, so that errors rendered to end users do not leak; use this in logs and operator messages.
    ///
    /// ```swift
    /// logger.error("insert failed", metadata: ["error.message": "\(PostgresStore.describe(error))"])
    /// ```
    public static func describe(_ error: any Error) -> String {
        switch error {
        case let error as PSQLError:
            if let info = error.serverInfo {
                var text = "\(info[.severity] ?? "ERROR") \(info[.sqlState] ?? "?"): \(info[.message] ?? "")"
                if let detail = info[.detail] { text += " (\(detail))" }
                if let hint = info[.hint] { text += " hint: \(hint)" }
                return text
            }
            if let underlying = error.underlying { return Self.describe(underlying) }
            return "\(error.code)"
        case let error as PostgresTransactionError:
            return [error.beginError, error.closureError, error.commitError, error.rollbackError]
                .compactMap { $0.map(Self.describe) }.joined(separator: "; ")
        case let error as NIOConnectionError:
            let causes = error.connectionErrors.map { Self.describe($0.error) }
            if let dns = error.dnsAError ?? error.dnsAAAAError, causes.isEmpty {
                return "cannot resolve \(error.host): \(dns)"
            }
            return causes.isEmpty ? "cannot connect to \(error.host):\(error.port)" : causes.joined(separator: "; ")
        case let error as IOError:
            return String(cString: strerror(error.errnoCode)).lowercased()
        case let error as ChannelError:
            if case .connectTimeout(let amount) = error {
                return "no connection within \(Double(amount.nanoseconds) / 1e9) s (connect timeout)"
            }
            return "\(error)"
        case let error as AviaryError:
            return error.message
        case let error as PostgresWireServerError:
            return error.description
        default:
            return "\(error)"
        }
    }

    /// The SQLSTATE of a server error, if `error` is one.
    ///
    /// ```swift
    /// if PostgresStore.sqlState(error) == "23505" { /* unique violation */ }
    /// ```
    public static func sqlState(_ error: any Error) -> String? {
        if let error = error as? PostgresWireServerError { return error.sqlState }
        return (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    /// Serialization failures and deadlocks: the server rolled the transaction back and running it
    /// again may succeed.
    static func isRetryable(_ error: any Error) -> Bool {
        switch Self.sqlState(error) {
        case "40001", "40P01": true
        default: false
        }
    }

    // MARK: Internals

    private struct Lifecycle {
        enum Phase {
            case idle
            case starting
            case ready
            case failed(any Error)
            case stopped
        }
        var phase = Phase.idle
        var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var nextWaiter = 0
    }

    private func finish(_ phase: Lifecycle.Phase) {
        let (waiters, result): ([CheckedContinuation<Void, any Error>], Result<Void, any Error>) =
            self.lifecycle.withLock { state in
                switch (state.phase, phase) {
                case (.failed, .stopped):
                    break  // the failure says more than "stopped"
                default:
                    state.phase = phase
                }
                let result: Result<Void, any Error>
                switch state.phase {
                case .ready: result = .success(())
                case .failed(let error): result = .failure(error)
                default: result = .failure(self.stoppedError())
                }
                let waiters = Array(state.waiters.values)
                state.waiters.removeAll()
                return (waiters, result)
            }
        for waiter in waiters { waiter.resume(with: result) }
    }

    private func stoppedError() -> AviaryError {
        AviaryError(.unavailable, "PostgresStore(\(self.address)) has stopped")
    }

    /// Waits for ``run()`` to finish the migrations; cancellable.
    private func waitUntilReady() async throws {
        let id: Int? = self.lifecycle.withLock { state in
            if case .ready = state.phase { return nil }
            state.nextWaiter += 1
            return state.nextWaiter
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let now: Result<Void, any Error>? = self.lifecycle.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    switch state.phase {
                    case .ready: return .success(())
                    case .failed(let error): return .failure(error)
                    case .stopped: return .failure(self.stoppedError())
                    case .idle, .starting:
                        state.waiters[id] = continuation
                        return nil
                    }
                }
                if let now { continuation.resume(with: now) }
            }
        } onCancel: {
            self.lifecycle.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    /// Who won: the call that got a connection, or the deadline.
    private final class Claim: Sendable {
        private let state = Atomic<Int>(0)  // 0 waiting, 1 claimed by the call, 2 timed out
        func claim(_ value: Int) -> Bool {
            self.state.compareExchange(expected: 0, desired: value, ordering: .acquiringAndReleasing).exchanged
        }
        var timedOut: Bool { self.state.load(ordering: .acquiring) == 2 }
    }

    /// Runs `body` on a pooled connection once the store is ready, failing with an explanation when
    /// readiness and a connection take longer than ``Options/acquireTimeout``. Only the waiting is
    /// timed: once `body` started, it runs to its end.
    ///
    /// The call runs in a task of its own (it inherits the caller's priority and task-local values;
    /// cancelling the caller cancels it) so that the deadline can cancel its wait; the deadline is
    /// kept by the store's ``AcquireDeadlines`` rather than a timer of its own. A task group with
    /// the call and a `Task.sleep` child, as this was before, cost a single PostgreSQL publish about
    /// a fifth of its client CPU time: two child tasks, and a dispatch timer created, armed by
    /// libdispatch's manager thread and cancelled on every call.
    private func withAcquiredConnection<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let claim = Claim()
        // A caller on the pool's event loop (a task preferring ``executor``) keeps the call there:
        // a plain `Task` would start on the concurrency pool and wake a thread twice per call.
        let onLoop = self.executor.flatMap { $0.eventLoop.inEventLoop ? $0 : nil }
        // Answered by the call's task when it ends, or by its connection's close (see
        // ``ConnectionCalls``: postgres-nio can drop a query sent as the connection closes).
        let answer = CallAnswer<T>()
        let call = Task(executorPreference: onLoop) {
            do {
                answer.answer(.success(try await self.runLeased(claim: claim, answer: answer, body)))
            } catch {
                answer.answer(.failure(error))
            }
        }
        let deadline = self.deadlines.add(deadline: .now + self.options.acquireTimeout) {
            if claim.claim(2) { call.cancel() }
        }
        defer { self.deadlines.remove(deadline) }
        do {
            return try await withTaskCancellationHandler {
                try await answer.value
            } onCancel: {
                call.cancel()
            }
        } catch {
            if claim.timedOut { throw await self.acquireTimeoutError() }
            throw error
        }
    }

    /// ``execute(_:)`` from a task on the pool's event loop, once the store is ready.
    ///
    /// What ``withAcquiredConnection(_:)`` needs a task per call for, this does without one. Its
    /// deadline cancels the lease request itself. And no statement can be dropped: postgres-nio
    /// drops a query only when it writes it to a channel whose pipeline has gone, after the
    /// channel closed; from the channel's own loop the write is made at once, inside the call, so
    /// a connection found open on the loop just before takes the statement into postgres-nio's
    /// state machine, and its close then fails the statement there.
    private func executeOnLoop<Statement: PostgresPreparedStatement>(
        _ statement: Statement
    ) async throws -> [Statement.Row] where Statement.Row: Sendable {
        let id = Self.nextLeaseRequestID()
        let claim = Claim()
        let pool = self.pool
        let deadline = self.deadlines.add(deadline: .now + self.options.acquireTimeout) {
            if claim.claim(2) { pool.cancelLeaseConnection(id) }
        }
        let lease: ConnectionLease<PostgresConnection>
        do {
            lease = try await self.lease(id)
        } catch {
            self.deadlines.remove(deadline)
            if claim.timedOut { throw await self.acquireTimeoutError() }
            throw error
        }
        self.deadlines.remove(deadline)
        let connection = lease.connection
        // The deadline passed while the lease was being handed over.
        guard claim.claim(1) else {
            lease.release()
            throw await self.acquireTimeoutError()
        }
        // The task resumed off the loop (it runs on an executor other than the store's that
        // shares its thread, say): the statement takes the watched way.
        guard connection.eventLoop.inEventLoop else {
            lease.release()
            return try await self.executeWatched(statement)
        }
        defer { lease.release() }
        guard !connection.isClosed else { throw self.pooledConnectionClosed() }
        do {
            return try await Self.rows(of: statement, on: connection, logger: self.logger)
        } catch {
            await Self.closeIfEnded(connection, by: error)
            throw error
        }
    }

    /// ``execute(_:)`` in a task of its own, as ``withConnection(_:)`` runs its body.
    private func executeWatched<Statement: PostgresPreparedStatement>(
        _ statement: Statement
    ) async throws -> [Statement.Row] where Statement.Row: Sendable {
        let logger = self.logger
        return try await self.withAcquiredConnection { connection in
            try await Self.rows(of: statement, on: connection, logger: logger)
        }
    }

    /// The rows of `statement` run on `connection`.
    private static func rows<Statement: PostgresPreparedStatement>(
        of statement: Statement, on connection: PostgresConnection, logger: Logger
    ) async throws -> [Statement.Row] {
        var rows: [Statement.Row] = []
        for try await row in try await connection.execute(statement, logger: logger) {
            rows.append(row)
        }
        return rows
    }

    /// Why a call got a pooled connection that had closed (a terminated backend, a restart, before
    /// the pool heard of it).
    private func pooledConnectionClosed() -> AviaryError {
        AviaryError(.unavailable, "the pooled connection to \(self.address) was closed; try again")
    }

    /// Whether ``run()`` has applied the migrations and the store serves.
    var isReady: Bool {
        self.lifecycle.withLock { state in
            if case .ready = state.phase { return true }
            return false
        }
    }

    /// ``withAcquiredConnection(_:)``'s call: waits for readiness and a lease, then runs `body` on
    /// the leased connection while ``ConnectionCalls`` watches it.
    private func runLeased<T: Sendable>(
        claim: Claim, answer: CallAnswer<T>, _ body: @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await self.waitUntilReady()
        let lease = try await self.lease(Self.nextLeaseRequestID())
        defer { lease.release() }
        // The deadline passed while this lease was being handed over: give it back unused.
        guard claim.claim(1) else { throw CancellationError() }
        // A connection the server has just closed (a terminated backend, a restart) can still be
        // handed out before the pool hears of the close; it fails the call here, and the pool
        // replaces it. One that closes during the call answers the call (``ConnectionCalls``).
        let connection = lease.connection
        guard !connection.isClosed, let watch = self.calls.watch(connection.id) else {
            throw self.pooledConnectionClosed()
        }
        do {
            return try await watch.run(answer, closed: self.pooledConnectionClosed()) { try await body(connection) }
        } catch {
            await Self.closeIfEnded(connection, by: error)
            throw error
        }
    }

    /// Whether `error` is the server's last word on its connection: an error of severity `FATAL`
    /// or `PANIC` (a terminated backend, a server shutting down), after which the server closes
    /// the socket without a `ReadyForQuery`.
    static func endsConnection(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError, error.code == .server else { return false }
        let severity = error.serverInfo?[.severity] ?? error.serverInfo?[.localizedSeverity]
        return severity == "FATAL" || severity == "PANIC"
    }

    /// Closes `connection` before its lease goes back when `error` ended it on the server's side.
    ///
    /// postgres-nio fails the call on such an error but keeps the connection open until the
    /// server's close arrives, which can come a while later (the backend cleans up first); a
    /// connection handed back to the pool meanwhile would be leased again and fail its next
    /// caller's statement with `serverClosedConnection`. Closed here, the pool replaces it. The
    /// wait is for the close future, not `close()`'s answer: a channel the server's close has
    /// already made inactive answers `close()` at once, before the pool (whose callback on the
    /// close future comes before this one) has heard of the close.
    private static func closeIfEnded(_ connection: PostgresConnection, by error: any Error) async {
        guard Self.endsConnection(error) else { return }
        _ = connection.close() as EventLoopFuture<Void>
        try? await connection.closeFuture.get()
    }

    /// ``withAcquiredConnection(_:)``'s deadline for work that needs no connection.
    private func withAcquireDeadline(_ body: @escaping @Sendable () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await body()
                return true
            }
            group.addTask {
                try await Task.sleep(for: self.options.acquireTimeout)
                throw await self.acquireTimeoutError()
            }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    /// Why a call got no connection in time.
    private func acquireTimeoutError() async -> AviaryError {
        let phase = self.lifecycle.withLock { $0.phase }
        let waited = "\(self.options.acquireTimeout)"
        switch phase {
        case .idle:
            return AviaryError(
                .unavailable,
                "PostgresStore(\(self.address)) is not running: call run() (or add the store to a ServiceGroup) before using it"
            )
        case .starting:
            return AviaryError(
                .timedOut, "PostgresStore(\(self.address)) was still applying its migrations after \(waited)")
        case .failed(let error):
            return AviaryError(
                .unavailable, "PostgresStore(\(self.address)) failed to start: \(Self.describe(error))", cause: error)
        case .stopped:
            return self.stoppedError()
        case .ready:
            // Find out whether the server is reachable at all: the pool retries quietly.
            do {
                let connection = try await self.connect()
                try? await connection.close()
                return AviaryError(
                    .resourceExhausted,
                    "all \(self.options.maximumConnections) connections to \(self.address) stayed busy for \(waited)")
            } catch {
                return AviaryError(
                    .unavailable, "no connection to PostgreSQL in \(waited): \(Self.describe(error))", cause: error)
            }
        }
    }

    /// One transaction on `connection`; see ``withTransaction(_:isolation:_:)``.
    private func transaction<T: Sendable>(
        on connection: PostgresConnection, isolation: IsolationLevel,
        _ body: @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        do {
            try await connection.query(
                PostgresQuery(unsafeSQL: "BEGIN ISOLATION LEVEL \(isolation.rawValue)"), logger: self.logger)
        } catch {
            throw AviaryError(
                .unavailable, "cannot begin a transaction on \(self.address): \(Self.describe(error))", cause: error)
        }
        let value: T
        do {
            value = try await body(connection)
        } catch {
            do {
                try await connection.query("ROLLBACK", logger: self.logger)
            } catch let rollbackError {
                // The connection is unusable; closing it keeps it out of the pool.
                self.logger.warning(
                    "rollback failed; closing the connection",
                    metadata: ["error.message": "\(Self.describe(rollbackError))"])
                try? await connection.close()
            }
            throw error
        }
        let committed: PostgresQueryResult
        do {
            committed = try await connection.complete("COMMIT", logger: self.logger)
        } catch {
            if Self.isRetryable(error) { throw error }
            if (error as? PSQLError)?.serverInfo != nil {
                throw AviaryError(
                    .conflict, "the transaction on \(self.address) was rolled back at COMMIT: \(Self.describe(error))",
                    cause: error)
            }
            throw AviaryError(
                .unavailable,
                "COMMIT on \(self.address) failed, so whether the transaction committed is unknown: \(Self.describe(error))",
                cause: error)
        }
        // A statement that failed inside the transaction, its error caught by `body`, aborts the
        // transaction: the server then answers COMMIT with ROLLBACK. Never report that as success.
        guard committed.metadata.command == "COMMIT" else {
            throw AviaryError(
                .conflict,
                "the transaction on \(self.address) was rolled back: a statement in it failed (its error was caught inside the transaction)"
            )
        }
        return value
    }

    /// Opens a connection outside the pool, on postgres-nio's default event loop group.
    func connect() async throws -> PostgresConnection {
        let id = Self.connectionIDs.subtract(1, ordering: .relaxed).newValue
        do {
            return try await self.setup.connect(on: PostgresConnection.defaultEventLoopGroup.any(), id: id)
        } catch let error as AviaryError {
            throw error
        } catch {
            throw AviaryError(
                .unavailable, "cannot connect to PostgreSQL at \(self.address): \(Self.describe(error))", cause: error)
        }
    }

    /// Applies the pending migrations on a connection of its own, holding the database's
    /// migration advisory lock so that concurrent starters take turns.
    private func migrate() async throws {
        // A dedicated connection, watched: a query dropped as it closes fails run() instead of
        // holding it (and every caller waiting for readiness) forever.
        try await self.withDedicatedConnection { connection in try await self.migrate(on: connection) }
    }

    private func migrate(on connection: PostgresConnection) async throws {
        let logger = self.logger
        do {
            _ = try await connection.complete("SELECT pg_advisory_lock(\(Self.migrationLockKey))", logger: logger)
            try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS aviary_migrations (
                    name TEXT PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """, logger: logger)
        } catch {
            throw AviaryError(
                .internal, "migrating \(self.address) failed before any migration: \(Self.describe(error))",
                cause: error)
        }
        var applied = Set<String>()
        for try await name in try await connection.query("SELECT name FROM aviary_migrations", logger: logger)
            .decode(String.self)
        {
            applied.insert(name)
        }
        for migration in self.migrations.list where !applied.contains(migration.name) {
            do {
                try await connection.query("BEGIN", logger: logger)
                do {
                    try await migration.migrate(connection, logger)
                    try await connection.query(
                        "INSERT INTO aviary_migrations (name) VALUES (\(migration.name))", logger: logger)
                    guard try await connection.complete("COMMIT", logger: logger).metadata.command == "COMMIT" else {
                        throw AviaryError(.internal, "a statement failed and the transaction was rolled back")
                    }
                } catch {
                    _ = try? await connection.query("ROLLBACK", logger: logger)
                    throw error
                }
            } catch {
                throw AviaryError(
                    .internal,
                    "migrating \(self.address) failed at \"\(migration.name)\": \(Self.describe(error))", cause: error)
            }
            logger.info("migration applied", metadata: ["aviary.migration": "\(migration.name)"])
        }
        _ = try await connection.complete("SELECT pg_advisory_unlock(\(Self.migrationLockKey))", logger: logger)
    }

    /// A client span (OpenTelemetry database conventions) around one transaction inside a traced
    /// request; calls outside any trace get none, as in ``SQLiteStore``.
    private func traced<T>(_ name: String, _ call: () async throws -> T) async throws -> T {
        guard let tracer = self.tracer, let parent = ServiceContext.current else {
            return try await call()
        }
        let span = tracer.startSpan(name, context: parent, ofKind: .client)
        defer { span.end() }
        span.attributes["db.system.name"] = "postgresql"
        span.attributes["db.namespace"] = self.address.database
        span.attributes["server.address"] = self.address.host
        span.attributes["server.port"] = self.address.port
        do {
            return try await call()
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            throw error
        }
    }

    /// The TLS of every connection, its context made once; an error here fails each connection
    /// attempt with the reason.
    private static func connectionTLS(
        _ address: PostgresAddress
    ) -> Result<PostgresConnection.Configuration.TLS, AviaryError> {
        guard address.tls != .disable else { return .success(.disable) }
        // As libpq's sslmode=prefer/require: encrypted, the certificate not verified.
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .none
        do {
            let context = try NIOSSLContext(configuration: configuration)
            return .success(address.tls == .require ? .require(context) : .prefer(context))
        } catch {
            return .failure(AviaryError(.internal, "cannot set up TLS for \(address): \(error)", cause: error))
        }
    }
}

extension PostgresConnection {
    /// Runs `query` to its end and returns its rows and command tag.
    ///
    /// postgres-nio's async `query` returns once the rows start, so a statement that fails while
    /// it produces rows (`SELECT 1/0`, a lock function) fails only when its rows are read; a caller
    /// that discards them would not see the error. This reads them all.
    package func complete(_ query: PostgresQuery, logger: Logger) async throws -> PostgresQueryResult {
        let future: EventLoopFuture<PostgresQueryResult> = self.query(query, logger: logger)
        return try await future.get()
    }
}

extension TimeAmount {
    /// `duration` in NIO's unit, rounded down to the nanosecond.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
