//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import _ConnectionPoolModule

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Why the store runs postgres-nio's `ConnectionPool` itself instead of a `PostgresClient`:
//
// `PostgresClient` is that same pool with a connection factory that opens its sockets through
// postgres-nio's own bootstrap, which takes no channel options, and it offers only a query-based
// keep-alive: a `SELECT 1` after an idle period, for which the pool arms a timer (a child task
// sleeping on a dispatch timer) every time a connection goes back to the pool and cancels it at
// the next lease. For one publish per transaction that timer was about a third of the client's CPU
// time (203 µs per publish with it, 129 µs without, on the store's event loop). TCP keep-alive
// does the same job in the kernel, as libpq does: no timer per lease, and it finds a peer that
// vanished without a FIN while the connection sits idle. So the store keeps postgres-nio's pool
// (its state machine handles the limits, the waiters, cancellation, replacing closed connections
// and shutdown; a pool of our own would redo all of it) and gives it a factory that connects the
// channel itself, with the keep-alive socket options, and starts postgres-nio's protocol on it
// through `PostgresConnection.Configuration(establishedChannel:tls:...)`.
//
// The pool is the `_ConnectionPoolModule` product of postgres-nio: public, but underscored, so a
// minor release of postgres-nio may change it; Package.resolved pins the version, and an update
// that breaks it breaks the build here, not the behaviour.

extension PostgresStore {
    /// postgres-nio's pool, as `PostgresClient` instantiates it, without its query keep-alive and
    /// with the store's own request type (``LeaseRequest``).
    typealias Pool = ConnectionPool<
        PostgresConnection,
        PostgresConnection.ID,
        _ConnectionPoolModule.ConnectionIDGenerator,
        LeaseRequest,
        LeaseRequest.ID,
        NoOpKeepAliveBehavior<PostgresConnection>,
        PoolLog,
        ContinuousClock
    >

    /// TCP keep-alive as the store sets it on its sockets: probes start after `idle` without
    /// traffic, repeat every `interval`, and after `count` unanswered ones the kernel resets the
    /// connection, which closes the channel and takes the connection out of the pool.
    struct TCPKeepAlive: Sendable, Equatable {
        var idle: Duration
        var interval: Duration
        var count: Int

        /// Probes after `idle`, then every third of it (at least a second), three times: a
        /// connection whose peer vanished is closed within about twice `idle` of its last traffic.
        init(idle: Duration) {
            self.idle = max(idle, .seconds(1))
            self.interval = max(self.idle / 3, .seconds(1))
            self.count = 3
        }

        /// Whole seconds, as the socket options take them (at least 1).
        static func seconds(_ duration: Duration) -> Int {
            Int(clamping: max(1, duration.components.seconds))
        }

        /// TCP_USER_TIMEOUT's milliseconds: the idle time and every probe, the time in which the
        /// probes find a vanished peer, so that a connection with unacknowledged bytes (a call
        /// sent to a host that vanished) is given up after the same time as an idle one.
        var userTimeoutMilliseconds: Int {
            (Self.seconds(self.idle) + Self.seconds(self.interval) * self.count) * 1000
        }
    }

    /// What opening a connection needs, apart from the store (the pool's factory is made before
    /// the store is).
    struct ConnectionSetup: Sendable {
        var address: PostgresAddress
        var tls: Result<PostgresConnection.Configuration.TLS, AviaryError>
        var connectTimeout: TimeAmount
        var applicationName: String
        var keepAlive: TCPKeepAlive?
        var logger: Logger

        /// Opens a connection on `eventLoop`: the TCP channel with keep-alive set, then
        /// postgres-nio's startup (TLS, authentication) over it.
        func connect(on eventLoop: any EventLoop, id: PostgresConnection.ID) async throws -> PostgresConnection {
            let tls = try self.tls.get()
            let channel = try await Self.makeChannel(
                host: self.address.host, port: self.address.port, on: eventLoop, connectTimeout: self.connectTimeout,
                keepAlive: self.keepAlive)
            var configuration = PostgresConnection.Configuration(
                establishedChannel: channel, tls: tls, username: self.address.username,
                password: self.address.password, database: self.address.database)
            configuration.options.connectTimeout = self.connectTimeout
            configuration.options.additionalStartupParameters = [("application_name", self.applicationName)]
            // TLS over an established channel sends this name (SNI), as postgres-nio does with the
            // host name when it connects itself; an IP address is not a valid SNI name.
            if (try? SocketAddress(ipAddress: self.address.host, port: 0)) == nil {
                configuration.options.tlsServerName = self.address.host
            }
            do {
                return try await PostgresConnection.connect(
                    on: eventLoop, configuration: configuration, id: id, logger: self.logger)
            } catch {
                try? await channel.close()
                throw error
            }
        }

        /// A connected TCP channel to `host`:`port` on `eventLoop` with `keepAlive`'s socket
        /// options (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and, on Linux,
        /// TCP_USER_TIMEOUT), or none when it is `nil`.
        static func makeChannel(
            host: String, port: Int, on eventLoop: any EventLoop, connectTimeout: TimeAmount, keepAlive: TCPKeepAlive?
        ) async throws -> any Channel {
            guard var bootstrap = ClientBootstrap(validatingGroup: eventLoop) else {
                throw AviaryError(.internal, "PostgresStore needs a SwiftNIO (NIOPosix) event loop, not \(eventLoop)")
            }
            bootstrap = bootstrap.connectTimeout(connectTimeout)
            if let keepAlive {
                bootstrap =
                    bootstrap
                    .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
                    .channelOption(Self.tcpOption(Self.keepIdle), value: TCPKeepAlive.seconds(keepAlive.idle))
                    .channelOption(Self.tcpOption(TCP_KEEPINTVL), value: TCPKeepAlive.seconds(keepAlive.interval))
                    .channelOption(Self.tcpOption(TCP_KEEPCNT), value: keepAlive.count)
                #if os(Linux)
                // Keep-alive probes only run while nothing is unacknowledged. Without this, a call
                // whose bytes the peer never acknowledges (its host went away mid-call) waits for
                // the kernel's retransmissions to give up, about 15 minutes with Linux's defaults.
                bootstrap = bootstrap.channelOption(
                    Self.tcpOption(TCP_USER_TIMEOUT), value: keepAlive.userTimeoutMilliseconds)
                #endif
            }
            return try await bootstrap.connect(host: host, port: port).get()
        }

        static func tcpOption(_ name: Int32) -> ChannelOptions.Types.SocketOption {
            ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: name))
        }

        /// The idle time's option: TCP_KEEPIDLE on Linux, TCP_KEEPALIVE on Darwin.
        static var keepIdle: Int32 {
            #if canImport(Darwin)
            TCP_KEEPALIVE
            #else
            TCP_KEEPIDLE
            #endif
        }
    }

    /// The pool's background events in the store's log, as `PostgresClient` logs them.
    struct PoolLog: ConnectionPoolObservabilityDelegate {
        typealias ConnectionID = PostgresConnection.ID
        let logger: Logger

        func startedConnecting(id: ConnectionID) {
            self.logger.debug("connecting", metadata: ["psql_connection_id": "\(id)"])
        }

        func connectFailed(id: ConnectionID, error: any Error) {
            self.logger.info(
                "connection failed",
                metadata: ["psql_connection_id": "\(id)", "error.message": "\(PostgresStore.describe(error))"])
        }

        func connectSucceeded(id: ConnectionID, streamCapacity: UInt16) {
            self.logger.debug("connected", metadata: ["psql_connection_id": "\(id)"])
        }

        func connectionUtilizationChanged(id: ConnectionID, streamsUsed: UInt16, streamCapacity: UInt16) {}
        func keepAliveTriggered(id: ConnectionID) {}
        func keepAliveSucceeded(id: ConnectionID) {}
        func keepAliveFailed(id: ConnectionID, error: any Error) {}
        func connectionClosing(id: ConnectionID) {}

        func connectionClosed(id: ConnectionID, error: (any Error)?) {
            self.logger.debug("connection closed", metadata: ["psql_connection_id": "\(id)"])
        }

        func requestQueueDepthChanged(_ newDepth: Int) {}
    }

    /// The pool for `options`, whose connections `setup` opens and `calls` watches.
    static func makePool(options: Options, setup: ConnectionSetup, calls: ConnectionCalls) -> Pool {
        var configuration = ConnectionPoolConfiguration()
        configuration.minimumConnectionCount = options.minimumConnections
        configuration.maximumConnectionSoftLimit = options.maximumConnections
        configuration.maximumConnectionHardLimit = options.maximumConnections
        let group: any EventLoopGroup =
            options.eventLoop.map { $0 as any EventLoopGroup }
            ?? PostgresConnection.defaultEventLoopGroup
        return Pool(
            configuration: configuration,
            idGenerator: _ConnectionPoolModule.ConnectionIDGenerator(),
            requestType: LeaseRequest.self,
            keepAliveBehavior: NoOpKeepAliveBehavior(connectionType: PostgresConnection.self),
            observabilityDelegate: PoolLog(logger: setup.logger),
            clock: ContinuousClock()
        ) { id, _ in
            let connection = try await setup.connect(on: group.any(), id: id)
            calls.opened(connection)
            return ConnectionAndMetadata(connection: connection, maximalStreamsOnConnection: 1)
        }
    }
}
