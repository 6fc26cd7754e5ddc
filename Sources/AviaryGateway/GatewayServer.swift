//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
public import AviaryCore
public import AviaryDiscovery
public import AviaryTelemetry
import Foundation
public import Logging
public import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
public import Tracing

/// What every event loop of a gateway shares for one configuration generation: the
/// configuration, compiled routes, per-cluster state. A reload makes a new one; exchanges that
/// started on the old one finish on it.
final class GatewayCore: Sendable {
    let configuration: GatewayConfiguration
    let routes: RouteTable
    let statistics: GatewayStatistics
    let random: GatewayRandom
    let logger: Logger
    /// Per cluster (index as in `configuration.clusters`), shared by every loop; a cluster the
    /// reload did not change keeps its state (counts, health, ejections).
    let clusters: [ClusterState]
    /// The metrics label of each route (its path or path prefix).
    let routeLabels: [String]
    /// Starts a span per request when set; `nil` costs nothing.
    let tracer: (any Tracer)?
    /// Writes a JSON line per request when `access_log` is configured.
    let accessLog: AccessLog?
    /// Verifies tokens for routes with `auth`; kept by reloads that leave `auth` unchanged.
    let authenticator: JWTAuthenticator?
    /// `limits.idle_timeout` as NIO's type, converted once: the proxy arms the idle deadline
    /// after every response, and `Duration`'s components are 128-bit arithmetic.
    let idleTimeout: TimeAmount

    init(
        configuration: GatewayConfiguration, statistics: GatewayStatistics, random: GatewayRandom, logger: Logger,
        authenticator: JWTAuthenticator?, clock: any MonotonicClock, tracer: (any Tracer)?, previous: GatewayCore?
    ) {
        self.configuration = configuration
        self.idleTimeout = TimeAmount(configuration.limits.idleTimeout)
        self.routes = RouteTable(configuration, authenticator: authenticator, clock: clock)
        self.authenticator = authenticator
        self.statistics = statistics
        self.random = random
        self.logger = logger
        self.tracer = tracer
        let kept = Dictionary(
            (previous?.clusters ?? []).map { ($0.cluster, $0) }, uniquingKeysWith: { a, _ in a })
        let byName = Dictionary(
            (previous?.clusters ?? []).map { ($0.cluster.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.clusters = configuration.clusters.map {
            kept[$0] ?? ClusterState(cluster: $0, clock: clock, previous: $0.discovery == nil ? nil : byName[$0.name])
        }
        self.routeLabels = configuration.routes.map {
            $0.match.path ?? $0.match.pathTemplate ?? $0.match.pathPrefix ?? $0.match.host ?? "/"
        }
        if let previous, let log = previous.accessLog, log.destination == configuration.accessLog?.path {
            self.accessLog = log
        } else {
            self.accessLog = configuration.accessLog.map { AccessLog(destination: $0.path, logger: logger) }
        }
    }
}

/// An HTTP/1.1 and HTTP/2 API gateway: routes requests to upstream clusters over pooled keep-alive
/// connections, streaming bodies both ways with back-pressure.
///
/// ```swift
/// let configuration = try GatewayConfiguration(contentsOfFile: "gateway.yaml")
/// let server = GatewayServer(configuration: configuration, logger: Logger(label: "aviary.gateway"),
///                            configurationFile: "gateway.yaml")
/// let address = try await server.start()
/// print("listening on \(address)")
/// try await server.reloadFromFile()          // what SIGHUP does
/// await server.drain(timeout: .seconds(30))  // what SIGTERM does
/// try await server.stop()
/// ```
///
/// Each event loop of the group has its own connection pools and balancer state; a downstream
/// connection and the upstream connections it uses share one loop. With `listen.admin` set, an
/// admin API is served on that address (see ``AdminServer``). With `listen.tls` the proxy speaks
/// TLS; with `listen.http2` it speaks HTTP/2 too (ALPN `h2` with TLS, h2c by prior knowledge
/// without), each stream proxied like an HTTP/1.1 request.
public final class GatewayServer: Sendable {
    /// The configuration being served (the latest one a reload accepted).
    public var configuration: GatewayConfiguration { self.currentCore.configuration }
    /// What the gateway did so far.
    public let statistics: GatewayStatistics
    /// The file ``reloadFromFile()`` reads, if any.
    public let configurationFile: String?
    /// Extra metrics appended to the admin `/metrics` (and its `process_*` families).
    let metricsRegistry: MetricsRegistry
    let clock: any MonotonicClock
    /// The proxy's timers (the event loops' schedulers; a manual source in tests).
    let timers: any GatewayTimers
    let tracer: (any Tracer)?
    private let group: any EventLoopGroup
    let logger: Logger
    let random: GatewayRandom
    let state: Mutex<State>
    /// Open downstream connections.
    let connections = Atomic<Int>(0)
    /// Set by ``drain(timeout:)``: `/ready` answers 503.
    private let drainingFlag = Atomic<Bool>(false)
    private let drainAnnounced = Atomic<Bool>(false)
    /// Reloads accepted and refused.
    let reloadsAccepted = Atomic<Int>(0)
    let reloadsRefused = Atomic<Int>(0)

    struct State {
        var core: GatewayCore
        var phase: Phase = .idle
        var loops: [NIOLoopBound<GatewayLoop>] = []
        var listener: (any Channel)?
        var admin: AdminServer?
        /// Health checkers by the `ClusterState` they probe.
        var checkers: [ObjectIdentifier: Task<Void, Never>] = [:]
        var watcher: Task<Void, Never>?
        /// Where clusters with `discovery:` find endpoints: the embedder's, or a file's.
        var directory: (any ServiceDirectory)?
        /// The discovery file, when the gateway reads one itself, and the task re-reading it.
        var fileDiscovery: FileDiscovery?
        var fileDiscoveryTask: Task<Void, Never>?
        /// The latest endpoints of each discovered service, and the task following them.
        var discovered: [String: [Endpoint]] = [:]
        var discoveryWatchers: [String: Task<Void, Never>] = [:]
    }

    enum Phase { case idle, running, stopped }

    /// The write buffer bounds of both sides; reading the other side stops above `high`.
    static var writeBufferWaterMark: ChannelOptions.Types.WriteBufferWaterMark {
        .init(low: Self.writeBufferLowWaterMark, high: Self.writeBufferHighWaterMark)
    }
    static let writeBufferLowWaterMark = 32 * 1024
    static let writeBufferHighWaterMark = 64 * 1024

    /// Creates a gateway; nothing listens until ``start()``.
    ///
    /// - Parameters:
    ///   - configuration: a valid configuration (from ``GatewayConfiguration/init(yaml:file:)``).
    ///   - eventLoopGroup: the loops serving connections; the shared singleton by default.
    ///   - logger: where the gateway logs (label it `aviary.gateway`).
    ///   - random: the random source of splits and power-of-two choices.
    ///   - clock: the clock of rate limits, the JWKS cache, health-check intervals and outlier
    ///     ejections (a `ManualClock` in tests).
    ///   - tracer: starts a server span per request and propagates W3C trace context upstream;
    ///     `nil` (the default) traces nothing and costs nothing.
    ///   - configurationFile: the file ``reloadFromFile()`` and `POST /reload` read.
    ///   - metrics: a registry whose exposition the admin `/metrics` appends (with `process_*`).
    ///   - directory: where clusters with `discovery: {service: NAME}` find their endpoints;
    ///     `nil` reads the configuration's `discovery: {file: …}`.
    public convenience init(
        configuration: GatewayConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "aviary.gateway"),
        random: GatewayRandom = .system,
        clock: any MonotonicClock = SystemClock(),
        tracer: (any Tracer)? = nil,
        configurationFile: String? = nil,
        metrics: MetricsRegistry = MetricsRegistry(),
        directory: (any ServiceDirectory)? = nil
    ) {
        self.init(
            configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger, random: random, clock: clock,
            timers: EventLoopTimers(), tracer: tracer, configurationFile: configurationFile, metrics: metrics,
            directory: directory)
    }

    /// Creates a gateway whose proxy timers come from `timers` (a manual source in tests, so
    /// that timeouts fire when the test advances time rather than when a loaded machine lets
    /// them); the other parameters are those of the public initialiser.
    init(
        configuration: GatewayConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "aviary.gateway"),
        random: GatewayRandom = .system,
        clock: any MonotonicClock = SystemClock(),
        timers: any GatewayTimers,
        tracer: (any Tracer)? = nil,
        configurationFile: String? = nil,
        metrics: MetricsRegistry = MetricsRegistry(),
        directory: (any ServiceDirectory)? = nil
    ) {
        self.timers = timers
        self.statistics = GatewayStatistics()
        self.group = eventLoopGroup
        self.logger = logger
        self.random = random
        self.clock = clock
        self.tracer = tracer
        self.configurationFile = configurationFile
        self.metricsRegistry = metrics
        let core = GatewayCore(
            configuration: configuration, statistics: self.statistics, random: random, logger: logger,
            authenticator: nil, clock: clock, tracer: tracer, previous: nil)
        self.state = Mutex(State(core: core, directory: directory))
    }

    var currentCore: GatewayCore { self.state.withLock { $0.core } }

    /// Whether ``drain(timeout:)`` was called.
    public var isDraining: Bool { self.drainingFlag.load(ordering: .relaxed) }

    /// Whether a drain has reached every event loop, so that every response from now on closes
    /// its connection.
    public var drainReachedConnections: Bool { self.drainAnnounced.load(ordering: .relaxed) }

    /// Binds `listen.address` (and `listen.admin`) and starts serving.
    ///
    /// - Returns: the bound address (useful with port 0).
    /// - Throws: when an address cannot be bound, the server was started before, or `auth.jwt`
    ///   names an unusable JWKS file (``GatewayServerError/authenticationUnavailable(_:)``).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let initial = self.currentCore
        let configuration = try self.prepareDiscovery(initial.configuration)
        let authenticator = try await GatewayAuthentication.authenticator(
            initial.configuration.auth, clock: self.clock, logger: self.logger)
        let core = GatewayCore(
            configuration: configuration, statistics: self.statistics, random: self.random,
            logger: self.logger, authenticator: authenticator, clock: self.clock, tracer: self.tracer,
            previous: initial)
        self.state.withLock { $0.core = core }
        var loops: [NIOLoopBound<GatewayLoop>] = []
        let timers = self.timers
        for loop in self.group.makeIterator() {
            loops.append(
                try await loop.submit {
                    NIOLoopBound(GatewayLoop(eventLoop: loop, core: core, timers: timers), eventLoop: loop)
                }
                .get())
        }
        let byLoop = Dictionary(loops.map { (ObjectIdentifier($0.eventLoop), $0) }, uniquingKeysWith: { a, _ in a })
        let statistics = self.statistics
        // `listen` cannot change while running, so the TLS context is made once.
        let listen = core.configuration.listen
        let tlsContext = try listen.tls.map { try ConnectionPipeline.makeTLSContext($0, http2: listen.http2) }
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: Self.writeBufferWaterMark)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { [self] channel in
                let open = self.connections.add(1, ordering: .relaxed).newValue
                channel.closeFuture.whenComplete { _ in self.connections.subtract(1, ordering: .relaxed) }
                guard let gatewayLoop = byLoop[ObjectIdentifier(channel.eventLoop)],
                    open <= gatewayLoop.value.current.core.configuration.limits.maxConnections
                else {
                    statistics.connectionsRejected.add(1, ordering: .relaxed)
                    return channel.close()
                }
                statistics.connectionsAccepted.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    // Limits of the generation current when the connection opened.
                    let limits = gatewayLoop.value.current.core.configuration.limits
                    try ConnectionPipeline(
                        loop: gatewayLoop.value, limits: limits, http2: listen.http2,
                        maxConcurrentStreams: listen.maxConcurrentStreams, tls: tlsContext
                    ).configure(channel)
                }
            }
        let address = core.configuration.listen.address
        let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        let started = self.state.withLock { state -> Bool in
            guard case .idle = state.phase else { return false }
            state.phase = .running
            state.loops = loops
            state.listener = channel
            return true
        }
        guard started else {
            try? await channel.close()
            throw GatewayServerError.alreadyStarted
        }
        guard let local = channel.localAddress else { throw GatewayServerError.alreadyStarted }
        self.startHealthCheckers(core)
        self.startDiscoveryWatchers()
        if let adminAddress = core.configuration.listen.admin {
            let admin = AdminServer(gateway: self)
            do {
                try await admin.start(host: adminAddress.host, port: adminAddress.port, group: self.group)
            } catch {
                try? await self.stop()
                throw error
            }
            self.state.withLock { $0.admin = admin }
        }
        self.logger.info(
            "gateway listening",
            metadata: [
                "server.address": "\(local)", "aviary.routes": "\(core.configuration.routes.count)",
                "aviary.clusters": "\(core.configuration.clusters.count)",
            ])
        return local
    }

    /// The bound address while running.
    public var localAddress: SocketAddress? {
        self.state.withLock { state in
            guard case .running = state.phase else { return nil }
            return state.listener?.localAddress
        }
    }

    /// The admin API's bound address while running with `listen.admin`.
    public var adminAddress: SocketAddress? {
        self.state.withLock { $0.admin?.localAddress }
    }

    /// Stops accepting connections, the admin API, health checks and the file watcher, and closes
    /// idle upstream connections. Connections in use close when their exchanges end (call
    /// ``drain(timeout:)`` first to let them finish).
    public func stop() async throws {
        let running = self.state.withLock {
            state -> (listener: (any Channel)?, loops: [NIOLoopBound<GatewayLoop>], admin: AdminServer?)? in
            guard case .running = state.phase else { return nil }
            state.phase = .stopped
            for task in state.checkers.values { task.cancel() }
            state.checkers = [:]
            state.watcher?.cancel()
            state.watcher = nil
            for task in state.discoveryWatchers.values { task.cancel() }
            state.discoveryWatchers = [:]
            state.fileDiscoveryTask?.cancel()
            state.fileDiscoveryTask = nil
            defer {
                state.listener = nil
                state.admin = nil
            }
            return (state.listener, state.loops, state.admin)
        }
        guard let running else { return }
        try? await running.listener?.close()
        await running.admin?.stop()
        for loop in running.loops {
            try await loop.eventLoop.submit {
                loop.value.current.closeIdle()
                loop.value.flushLog()
            }.get()
        }
        // Every access log line handed over is on disk (or the pipe) before stop returns.
        self.currentCore.accessLog?.flush()
    }

    // MARK: Draining

    /// Drains: `/ready` answers 503 from now on, the listener closes (no new connections), each
    /// connection closes once its current response is written (idle ones at once), and after
    /// `timeout` the connections still open are closed. Returns when none is left.
    ///
    /// ```swift
    /// await server.drain(timeout: .seconds(30))
    /// try await server.stop()
    /// ```
    public func drain(timeout: Duration) async {
        self.drainingFlag.store(true, ordering: .relaxed)
        let (listener, loops) = self.state.withLock { state in
            defer { state.listener = nil }
            return (state.listener, state.loops)
        }
        try? await listener?.close()
        for loop in loops {
            try? await loop.eventLoop.submit { loop.value.drain() }.get()
        }
        // Now every connection knows: a response head written from here on says `close`.
        self.drainAnnounced.store(true, ordering: .relaxed)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while self.connections.load(ordering: .relaxed) > 0 && ContinuousClock.now < deadline {
            // Production polling, not a test wait: connections close on their own loops.
            try? await Task.sleep(for: .milliseconds(5))
        }
        if self.connections.load(ordering: .relaxed) > 0 {
            self.logger.warning(
                "drain timeout: closing connections still open",
                metadata: ["aviary.connections": "\(self.connections.load(ordering: .relaxed))"])
            for loop in loops {
                try? await loop.eventLoop.submit { loop.value.closeAll() }.get()
            }
        }
    }

    // MARK: Reloading

    /// Serves `configuration` to new requests: requests in flight finish on the configuration
    /// they started with, and the upstream pools, counts and health of clusters it leaves
    /// unchanged are kept. `listen` cannot change while running.
    ///
    /// ```swift
    /// try await server.reload(try GatewayConfiguration(contentsOfFile: "gateway.yaml"))
    /// ```
    ///
    /// - Throws: ``GatewayConfigurationError`` when `listen` differs; the running configuration stays.
    public func reload(_ configuration: GatewayConfiguration) async throws(GatewayConfigurationError) {
        let running = self.currentCore
        let authenticator: JWTAuthenticator?
        if configuration.auth == running.configuration.auth {
            authenticator = running.authenticator
        } else {
            do {
                authenticator = try await GatewayAuthentication.authenticator(
                    configuration.auth, clock: self.clock, logger: self.logger)
            } catch {
                self.reloadsRefused.add(1, ordering: .relaxed)
                guard case .authenticationUnavailable(let why) = error else {
                    throw GatewayConfigurationError(problems: ["auth.jwt: \(error)"])
                }
                throw GatewayConfigurationError(problems: [why])
            }
        }
        let outcome = self.state.withLock {
            state -> Result<([NIOLoopBound<GatewayLoop>], GatewayCore), GatewayConfigurationError> in
            let running = state.core.configuration
            var problems: [String] = []
            if configuration.listen.address != running.listen.address {
                problems.append(
                    "listen.address: cannot change while running (from \(running.listen.address) to \(configuration.listen.address)); restart the gateway"
                )
            }
            if configuration.listen.admin != running.listen.admin {
                problems.append("listen.admin: cannot change while running; restart the gateway")
            }
            if configuration.listen.tls != running.listen.tls || configuration.listen.http2 != running.listen.http2
                || configuration.listen.maxConcurrentStreams != running.listen.maxConcurrentStreams
            {
                problems.append(
                    "listen.tls, listen.http2, listen.max_concurrent_streams: cannot change while running; restart the gateway"
                )
            }
            let effective = Self.discover(into: configuration, &state, problems: &problems)
            guard problems.isEmpty else { return .failure(GatewayConfigurationError(problems: problems)) }
            let core = GatewayCore(
                configuration: effective, statistics: self.statistics, random: self.random, logger: self.logger,
                authenticator: authenticator, clock: self.clock, tracer: self.tracer, previous: state.core)
            state.core = core
            // In lock order, so that two reloads reach every loop in the same order.
            for loop in state.loops {
                loop.eventLoop.execute { loop.value.install(core) }
            }
            return .success((state.loops, core))
        }
        let (loops, core): ([NIOLoopBound<GatewayLoop>], GatewayCore)
        switch outcome {
        case .failure(let error):
            self.reloadsRefused.add(1, ordering: .relaxed)
            throw error
        case .success(let value):
            (loops, core) = value
        }
        for loop in loops {
            try? await loop.eventLoop.submit {}.get()
        }
        self.startHealthCheckers(core)
        self.startDiscoveryWatchers()
        self.reloadsAccepted.add(1, ordering: .relaxed)
        self.logger.info(
            "configuration reloaded",
            metadata: [
                "aviary.routes": "\(configuration.routes.count)", "aviary.clusters": "\(configuration.clusters.count)",
            ])
    }

    /// Reads ``configurationFile`` again and reloads it (what SIGHUP and `POST /reload` do).
    ///
    /// - Throws: ``GatewayConfigurationError`` with one line per problem when the file is
    ///   unreadable or invalid, or there is no file; the running configuration stays.
    public func reloadFromFile() async throws(GatewayConfigurationError) {
        guard let path = self.configurationFile else {
            self.reloadsRefused.add(1, ordering: .relaxed)
            throw GatewayConfigurationError(problems: ["the gateway was not started from a configuration file"])
        }
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration(contentsOfFile: path)
        } catch {
            self.reloadsRefused.add(1, ordering: .relaxed)
            throw error
        }
        try await self.reload(configuration)
    }

    /// Polls ``configurationFile`` every `interval` (on the server's clock) and reloads it when
    /// its content changes; a refused reload is logged, one line per problem, and the running
    /// configuration stays. Stops with ``stop()``.
    ///
    /// ```swift
    /// server.watchConfigurationFile(every: .seconds(2))
    /// ```
    public func watchConfigurationFile(every interval: Duration) {
        guard let path = self.configurationFile else { return }
        let task = Task { [self] in
            var last = FileManager.default.contents(atPath: path)
            while !Task.isCancelled {
                do {
                    try await self.clock.sleep(for: interval)
                } catch {
                    return
                }
                let now = FileManager.default.contents(atPath: path)
                guard now != last else { continue }
                last = now
                do throws(GatewayConfigurationError) {
                    try await self.reloadFromFile()
                } catch {
                    self.logRefusedReload(error)
                }
            }
        }
        let previous = self.state.withLock { state -> Task<Void, Never>? in
            defer { state.watcher = task }
            return state.watcher
        }
        previous?.cancel()
    }

    // MARK: Health checks

    /// Starts a checker for each cluster of `core` with `health_check` that has none, and stops
    /// those of clusters `core` no longer has.
    func startHealthCheckers(_ core: GatewayCore) {
        let eventLoop = self.group.next()
        self.state.withLock { state in
            guard case .running = state.phase else { return }
            let wanted = Set(core.clusters.map { ObjectIdentifier($0) })
            for (key, task) in state.checkers where !wanted.contains(key) {
                task.cancel()
                state.checkers[key] = nil
            }
            for cluster in core.clusters {
                guard let check = cluster.cluster.healthCheck, state.checkers[ObjectIdentifier(cluster)] == nil else {
                    continue
                }
                let checker = HealthChecker(state: cluster, check: check, eventLoop: eventLoop, logger: self.logger)
                state.checkers[ObjectIdentifier(cluster)] = Task { await checker.run() }
            }
        }
    }

    // MARK: Admin views

    /// Every loop's counters, added up.
    func metricsSnapshot() async -> (MetricsSnapshot, [String: [String: PoolSnapshot]]) {
        let loops = self.state.withLock { $0.loops }
        var metrics = MetricsSnapshot()
        var pools: [String: [String: PoolSnapshot]] = [:]
        for loop in loops {
            guard
                let result = try? await loop.eventLoop.submit({
                    (loop.value.metrics.snapshot(), loop.value.poolSnapshot())
                }).get()
            else { continue }
            let (snapshot, loopPools) = result
            metrics.add(snapshot)
            for (cluster, endpoints) in loopPools {
                for (endpoint, pool) in endpoints {
                    pools[cluster, default: [:]][endpoint, default: PoolSnapshot()] =
                        pools[cluster, default: [:]][endpoint, default: PoolSnapshot()] + pool
                }
            }
        }
        return (metrics, pools)
    }
}

/// Why a ``GatewayServer`` could not start.
///
/// ```swift
/// do { try await server.start() } catch GatewayServerError.authenticationUnavailable(let why) { print(why) }
/// ```
public enum GatewayServerError: Error, Sendable, CustomStringConvertible {
    /// ``GatewayServer/start()`` was called twice.
    case alreadyStarted
    /// `auth.jwt` cannot be used (an unreadable or empty JWKS file, say); the message says why.
    case authenticationUnavailable(String)
    /// `listen.tls` cannot be used (a file that is not a PEM certificate or key, say); the
    /// message says why.
    case tlsUnavailable(String)
    /// Clusters use `discovery:` but there is no directory to ask, or the discovery file is
    /// unusable; the message says which and why.
    case discoveryUnavailable(String)

    public var description: String {
        switch self {
        case .alreadyStarted: "the gateway was started already"
        case .authenticationUnavailable(let message): message
        case .tlsUnavailable(let message): message
        case .discoveryUnavailable(let message): message
        }
    }
}
