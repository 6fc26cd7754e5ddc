//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
public import AviaryCore
public import Logging
public import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What every event loop of a gateway shares: the configuration, compiled routes, counters.
final class GatewayCore: Sendable {
    let configuration: GatewayConfiguration
    let routes: RouteTable
    let statistics: GatewayStatistics
    let random: GatewayRandom
    let logger: Logger
    /// Open downstream connections.
    let connections = Atomic<Int>(0)
    /// Requests in flight per cluster (index as in `configuration.clusters`), across all loops.
    let activeRequests: [ClusterCounter]

    init(
        configuration: GatewayConfiguration, statistics: GatewayStatistics, random: GatewayRandom, logger: Logger,
        authenticator: JWTAuthenticator? = nil, clock: any MonotonicClock = SystemClock()
    ) {
        self.configuration = configuration
        self.routes = RouteTable(configuration, authenticator: authenticator, clock: clock)
        self.statistics = statistics
        self.random = random
        self.logger = logger
        self.activeRequests = configuration.clusters.map { _ in ClusterCounter() }
    }
}

/// A counter shared by every event loop.
final class ClusterCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// An HTTP/1.1 API gateway: routes requests to upstream clusters over pooled keep-alive
/// connections, streaming bodies both ways with back-pressure.
///
/// ```swift
/// let configuration = try GatewayConfiguration(contentsOfFile: "gateway.yaml")
/// let server = GatewayServer(configuration: configuration, logger: Logger(label: "aviary.gateway"))
/// let address = try await server.start()
/// print("listening on \(address)")
/// // ...
/// try await server.stop()
/// ```
///
/// Each event loop of the group has its own connection pools and balancer state; a downstream
/// connection and the upstream connections it uses share one loop.
public final class GatewayServer: Sendable {
    /// The configuration being served.
    public let configuration: GatewayConfiguration
    /// What the gateway did so far.
    public let statistics: GatewayStatistics
    private let random: GatewayRandom
    private let logger: Logger
    private let clock: any MonotonicClock
    private let group: any EventLoopGroup
    private let state = Mutex<State>(.idle)

    private enum State {
        case idle
        case running(channel: any Channel, loops: [NIOLoopBound<LoopUpstreams>])
        case stopped
    }

    /// The write buffer bounds of both sides; reading the other side stops above `high`.
    static let writeBufferWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)

    /// Creates a gateway; nothing listens until ``start()``.
    ///
    /// - Parameters:
    ///   - configuration: a valid configuration (from ``GatewayConfiguration/init(yaml:file:)``).
    ///   - eventLoopGroup: the loops serving connections; the shared singleton by default.
    ///   - logger: where the gateway logs (label it `aviary.gateway`).
    ///   - random: the random source of splits and power-of-two choices.
    ///   - clock: the clock of rate limits and of the JWKS cache (a `ManualClock` in tests).
    public init(
        configuration: GatewayConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "aviary.gateway"),
        random: GatewayRandom = .system,
        clock: any MonotonicClock = SystemClock()
    ) {
        self.configuration = configuration
        self.statistics = GatewayStatistics()
        self.random = random
        self.logger = logger
        self.clock = clock
        self.group = eventLoopGroup
    }

    /// Binds `listen.address` and starts serving.
    ///
    /// - Returns: the bound address (useful with port 0).
    /// - Throws: when the address cannot be bound, the server was started before, or `auth.jwt`
    ///   names an unusable JWKS file (``GatewayServerError/authenticationUnavailable(_:)``).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let authenticator = try await GatewayAuthentication.authenticator(
            self.configuration.auth, clock: self.clock, logger: self.logger)
        let core = GatewayCore(
            configuration: self.configuration, statistics: self.statistics, random: self.random, logger: self.logger,
            authenticator: authenticator, clock: self.clock)
        var loops: [NIOLoopBound<LoopUpstreams>] = []
        for loop in self.group.makeIterator() {
            loops.append(
                try await loop.submit { NIOLoopBound(LoopUpstreams(eventLoop: loop, core: core), eventLoop: loop) }
                    .get())
        }
        let byLoop = Dictionary(loops.map { (ObjectIdentifier($0.eventLoop), $0) }, uniquingKeysWith: { a, _ in a })
        let limits = self.configuration.limits
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: Self.writeBufferWaterMark)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                let open = core.connections.add(1, ordering: .relaxed).newValue
                channel.closeFuture.whenComplete { _ in core.connections.subtract(1, ordering: .relaxed) }
                guard open <= limits.maxConnections, let upstreams = byLoop[ObjectIdentifier(channel.eventLoop)] else {
                    core.statistics.connectionsRejected.add(1, ordering: .relaxed)
                    return channel.close()
                }
                core.statistics.connectionsAccepted.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    // The proxy sets framing headers itself (it knows HEAD and upstream framing).
                    var encoder = HTTPResponseEncoder.Configuration()
                    encoder.automaticallySetFramingHeaders = false
                    try pipeline.addHandler(HTTPResponseEncoder(configuration: encoder))
                    var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                    decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
                    decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
                    try pipeline.addHandler(
                        ByteToMessageHandler(
                            HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: decoderLimits),
                            maximumBufferSize: limits.maxHeaderBytes))
                    try pipeline.addHandler(ProxyHandler(upstreams: upstreams.value))
                }
            }
        let address = self.configuration.listen.address
        let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        let started = self.state.withLock { state -> Bool in
            guard case .idle = state else { return false }
            state = .running(channel: channel, loops: loops)
            return true
        }
        guard started else {
            try? await channel.close()
            throw GatewayServerError.alreadyStarted
        }
        guard let local = channel.localAddress else { throw GatewayServerError.alreadyStarted }
        core.logger.info(
            "gateway listening",
            metadata: [
                "server.address": "\(local)", "aviary.routes": "\(self.configuration.routes.count)",
                "aviary.clusters": "\(self.configuration.clusters.count)",
            ])
        return local
    }

    /// The bound address while running.
    public var localAddress: SocketAddress? {
        self.state.withLock { state in
            if case .running(let channel, _) = state { return channel.localAddress }
            return nil
        }
    }

    /// Stops accepting connections and closes idle upstream connections. Connections in use
    /// close when their exchanges end.
    public func stop() async throws {
        let running = self.state.withLock { state -> (any Channel, [NIOLoopBound<LoopUpstreams>])? in
            guard case .running(let channel, let loops) = state else { return nil }
            state = .stopped
            return (channel, loops)
        }
        guard let (channel, loops) = running else { return }
        try? await channel.close()
        for loop in loops {
            try await loop.eventLoop.submit { loop.value.closeIdle() }.get()
        }
    }
}

/// Why a ``GatewayServer`` could not start.
public enum GatewayServerError: Error, Sendable {
    /// ``GatewayServer/start()`` was called twice.
    case alreadyStarted
    /// `auth.jwt` cannot be used (an unreadable or empty JWKS file, say); the message says why.
    case authenticationUnavailable(String)
}
