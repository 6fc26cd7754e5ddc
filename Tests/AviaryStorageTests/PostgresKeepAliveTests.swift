//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTestSupport
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PostgresNIO
import Testing

@testable import AviaryStorage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The store's connections carry TCP keep-alive (``PostgresStore/Options/keepAliveFrequency``)
/// instead of postgres-nio's query keep-alive, and its own connection factory keeps TLS modes,
/// limits and the replacement of closed connections working.
@Suite("PostgresStore keep-alive", .timeLimit(.minutes(5)))
struct PostgresKeepAliveTests {
    /// The pid of the backend of the pooled connection `withConnection` leases.
    static func backendPID(_ store: PostgresStore) async throws -> Int32 {
        try await store.withConnection { connection in
            try await connection.query("SELECT pg_backend_pid()", logger: store.logger).decode(Int32.self)
                .reduce(0) { $1 + $0 }
        }
    }

    /// The client port of the pooled connection `withConnection` leases, as the server sees it.
    static func clientPort(_ store: PostgresStore) async throws -> Int {
        try await store.withConnection { connection in
            try await connection.query("SELECT inet_client_port()", logger: store.logger).decode(Int32.self)
                .reduce(0) { Int($1) + $0 }
        }
    }

    #if os(Linux)
    /// The kernel's timer on the socket from local port `local` to remote port `remote`, from
    /// /proc/net/tcp and tcp6: its kind (`2` is the keep-alive timer, `0` none) and the clock ticks
    /// until it fires.
    static func socketTimer(local: Int, remote: Int) throws -> (kind: Int, ticks: Int)? {
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard let text = Self.read(file) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                // sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
                let fields = line.split(separator: " ")
                guard fields.count > 5,
                    let localPort = fields[1].split(separator: ":").last.flatMap({ Int($0, radix: 16) }),
                    let remotePort = fields[2].split(separator: ":").last.flatMap({ Int($0, radix: 16) }),
                    localPort == local, remotePort == remote
                else { continue }
                let timer = fields[5].split(separator: ":")
                guard timer.count == 2, let kind = Int(timer[0], radix: 16), let ticks = Int(timer[1], radix: 16)
                else { continue }
                return (kind, ticks)
            }
        }
        return nil
    }

    /// The whole of a /proc file (whose size reads as 0, so it is read to its end in chunks).
    static func read(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Polls the pooled socket's timer until it is `kind` or 10 s passed (the timer briefly shows
    /// a retransmission timer while a query is unacknowledged).
    static func pooledSocketTimer(
        _ store: PostgresStore, serverPort: Int, until kind: Int
    ) async throws -> (kind: Int, ticks: Int)? {
        let deadline = ContinuousClock.now + .seconds(10)
        var timer: (kind: Int, ticks: Int)?
        repeat {
            let port = try await Self.clientPort(store)
            timer = try Self.socketTimer(local: port, remote: serverPort)
            if timer?.kind == kind { return timer }
            await Task.yield()
        } while ContinuousClock.now < deadline
        return timer
    }

    @Test("a pooled socket runs the kernel's keep-alive timer at the configured idle time; without keep-alive, none")
    func pooledSocketsHaveKeepAlive() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        let ticksPerSecond = Int(sysconf(Int32(_SC_CLK_TCK)))
        let withKeepAlive = try await PostgresStore.withStore(
            url: url, options: .init(maximumConnections: 1, keepAliveFrequency: .seconds(77))
        ) { store in
            try await Self.pooledSocketTimer(store, serverPort: server.address.port, until: 2)
        }
        // The keep-alive timer (kind 2), due within TCP_KEEPIDLE: 77 s. Without SO_KEEPALIVE the
        // idle socket has no timer at all.
        #expect(withKeepAlive?.kind == 2, "\(String(describing: withKeepAlive))")
        #expect((1...77 * ticksPerSecond).contains(withKeepAlive?.ticks ?? 0), "\(String(describing: withKeepAlive))")
        #expect((withKeepAlive?.ticks ?? 0) > 60 * ticksPerSecond, "\(String(describing: withKeepAlive))")

        let without = try await PostgresStore.withStore(
            url: url, options: .init(maximumConnections: 1, keepAliveFrequency: nil)
        ) { store in
            try await Self.pooledSocketTimer(store, serverPort: server.address.port, until: 0)
        }
        #expect(without?.kind == 0, "\(String(describing: without))")
    }
    #endif

    #if os(Linux)
    @Test("the store's sockets read back SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT")
    func socketOptionsReadBack() async throws {
        let server = try await PostgresTestServer.shared()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        func options(_ keepAlive: PostgresStore.TCPKeepAlive?) async throws -> [Int] {
            let channel = try await PostgresStore.ConnectionSetup.makeChannel(
                host: server.address.host, port: server.address.port, on: loop, connectTimeout: .seconds(10),
                keepAlive: keepAlive)
            defer { channel.close(promise: nil) }
            let setup = PostgresStore.ConnectionSetup.self
            return [
                try await channel.getOption(ChannelOptions.socketOption(.so_keepalive)).get(),
                try await channel.getOption(setup.tcpOption(setup.keepIdle)).get(),
                try await channel.getOption(setup.tcpOption(TCP_KEEPINTVL)).get(),
                try await channel.getOption(setup.tcpOption(TCP_KEEPCNT)).get(),
                try await channel.getOption(setup.tcpOption(TCP_USER_TIMEOUT)).get(),
            ]
        }
        // TCP_USER_TIMEOUT is the idle time and three probes, in milliseconds (0: the kernel's default).
        #expect(try await options(PostgresStore.TCPKeepAlive(idle: .seconds(30))) == [1, 30, 10, 3, 60_000])
        #expect(try await options(PostgresStore.TCPKeepAlive(idle: .milliseconds(1500))) == [1, 1, 1, 3, 4_000])
        let without = try await options(nil)
        #expect(without[0] == 0)
        #expect(without[4] == 0)
    }
    #endif

    @Test("sslmode=prefer falls back to plain text on a server without TLS; sslmode=require refuses it")
    func tlsModes() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        let prefer = try StoreURL(
            parsing: url.description + (url.description.contains("?") ? "&" : "?") + "sslmode=prefer")
        let answer = try await PostgresStore.withStore(url: prefer) { store in
            try await store.withConnection { connection in
                try await connection.query("SELECT 1", logger: store.logger).decode(Int.self).reduce(0, +)
            }
        }
        #expect(answer == 1)
        let require = try StoreURL(
            parsing: url.description + (url.description.contains("?") ? "&" : "?") + "sslmode=require")
        let store = try PostgresStore(url: require)
        do {
            let connection = try await store.connect()
            try? await connection.close()
            Issue.record("sslmode=require connected to a server without TLS")
        } catch {
            #expect(
                "\(PostgresStore.describe(error))".localizedCaseInsensitiveContains("ssl")
                    || "\(PostgresStore.describe(error))".localizedCaseInsensitiveContains("tls"),
                "\(PostgresStore.describe(error))")
        }
    }

    #if os(Linux)
    @Test(
        "a call whose bytes the peer stops taking fails after TCP_USER_TIMEOUT, not never; the pool then connects again"
    )
    func stalledPeerTimesOut() async throws {
        let server = try await PostgresTestServer.shared()
        guard case .postgres(let direct) = try await server.makeDatabase().kind,
            var components = URLComponents(string: direct)
        else { throw AviaryError(.internal, "the test server's URL is not a postgres URL") }
        let relay = try await StallingRelay.start(to: server.address.host, port: server.address.port)
        defer { relay.close() }
        components.port = relay.port
        let url = try StoreURL(parsing: try #require(components.string))
        // Keep-alive after 1.5 s idle: probes every second, three of them, so TCP_USER_TIMEOUT is 4 s.
        let options = PostgresStore.Options(
            maximumConnections: 1, connectTimeout: .seconds(30), keepAliveFrequency: .milliseconds(1500))
        try await PostgresStore.withStore(url: url, options: options) { store in
            try await store.ping()
            // The relay stops reading from the store's connection: a query larger than both
            // sockets' buffers fills them, the relay's side announces a zero window, and nothing
            // the store sends is taken any more (a server stuck, or a path gone, mid-call).
            relay.stall()
            let large = String(repeating: "x", count: 64 << 20)
            let start = ContinuousClock.now
            let outcome = await Self.answer(within: .seconds(60)) {
                try await store.withConnection { connection in
                    try await connection.query("SELECT length(\(large))", logger: store.logger)
                        .decode(Int.self).reduce(0, +)
                }
            }
            // Without TCP_USER_TIMEOUT the call would wait for the kernel's own limit on zero-window
            // probes, which does not come: a minute tells the two apart. Closing the relay then
            // lets the call end, if it can, after the test.
            if outcome == nil { relay.close() }
            let waited = ContinuousClock.now - start
            switch outcome {
            case nil: Issue.record("the call was still waiting after a minute")
            case .success(let length): Issue.record("the stalled call answered \(length)")
            case .failure: break  // postgres-nio's connection error, or the store's `unavailable`
            }
            // Not before the timeout (about 4 s), well before the minute.
            #expect(waited >= .seconds(3) && waited < .seconds(45), "\(waited)")
            // The pool drops the timed-out connection; the next call connects anew (the relay
            // relays new connections) and succeeds.
            let deadline = ContinuousClock.now + .seconds(30)
            var pinged = false
            while !pinged, ContinuousClock.now < deadline {
                pinged = (try? await store.ping()) != nil
                if !pinged { await Task.yield() }
            }
            #expect(pinged)
        }
    }
    #endif

    @Test("a pooled connection the server terminates is replaced: later calls succeed on a new backend")
    func terminatedConnectionIsReplaced() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        let application = "aviary-keepalive-\(UInt32.random(in: 0...UInt32.max))"
        try await PostgresStore.withStore(
            url: url, options: .init(maximumConnections: 1, applicationName: application)
        ) { store in
            @Sendable func backend() async throws -> Int32 { try await Self.backendPID(store) }
            try await Self.expectReplacedAfterTermination(server, backend)
        }
    }

    @Test(
        "a call that the server ends with a FATAL error closes its connection: the next call runs on a new backend at once, not on the dying one"
    )
    func fatalErrorClosesTheConnection() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        try await PostgresStore.withStore(url: url, options: .init(maximumConnections: 1)) { store in
            // The backend sends its FATAL error, then cleans up and exits: its socket closes a
            // little later. Handed back to the pool in between, the connection would be the
            // next call's (the pool has one), which would then fail. Several rounds, so that a
            // lucky close before the next call cannot hide that.
            for _ in 0..<10 {
                let first = try await Self.backendPID(store)
                do {
                    try await store.withConnection { connection in
                        _ = try await connection.query(
                            "SELECT pg_terminate_backend(pg_backend_pid())", logger: store.logger
                        )
                        .decode(Bool.self).reduce(false) { $0 || $1 }
                    }
                    Issue.record("a backend that terminated itself answered")
                } catch {
                    #expect(PostgresStore.endsConnection(error), "\(String(reflecting: error))")
                }
                let second = try await Self.backendPID(store)
                #expect(second != first)
            }
        }
    }

    /// Terminates the backend `backend()` names, then calls `backend()` until it names another:
    /// the pool learns of the close from the channel, and until then a call may fail. Every call
    /// must return: each is given 10 s, so that one that does not fails the test instead of
    /// holding the run.
    static func expectReplacedAfterTermination(
        _ server: PostgresTestServer, _ backend: @escaping @Sendable () async throws -> Int32
    ) async throws {
        let first = try await backend()
        let terminated = try await server.withAdminConnection { connection, logger in
            try await connection.query("SELECT pg_terminate_backend(\(first))", logger: logger).decode(Bool.self)
                .reduce(false) { $0 || $1 }
        }
        #expect(terminated)
        let deadline = ContinuousClock.now + .seconds(60)
        var second: Int32?
        var stuck = 0
        while second == nil, ContinuousClock.now < deadline {
            switch await Self.answer(within: .seconds(10), backend) {
            case .success(let pid): second = pid
            case .failure: break
            case nil: stuck += 1
            }
        }
        #expect(second != nil && second != first)
        #expect(stuck == 0, "\(stuck) call(s) on the terminated connection never returned")
    }

    @Test(
        "a query sent on a connection that closed during the call fails the call as unavailable instead of waiting forever"
    )
    func queryOnAConnectionClosedDuringTheCall() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        try await PostgresStore.withStore(url: url, options: .init(maximumConnections: 1)) { store in
            @Sendable func backend() async throws -> Int32 { try await Self.backendPID(store) }
            let first = try await backend()
            await Self.expectAnsweredAsClosed {
                try await store.withConnection { try await Self.closeThenQuery($0, store) }
            }
            // The one connection the pool may open was replaced, although the stuck query's task
            // still holds its lease.
            let second = await Self.answer(within: .seconds(20), backend)
            #expect(second != nil)
            #expect((try? second?.get()) != first)
            #expect(store.calls.count == 1)
        }
    }

    @Test("a dedicated connection that closes during its call fails the call as unavailable instead of waiting forever")
    func dedicatedConnectionClosedDuringTheCall() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url) { store in
            await Self.expectAnsweredAsClosed {
                try await store.withDedicatedConnection { try await Self.closeThenQuery($0, store) }
            }
            // A dedicated call that ends normally is not answered by its connection's close after it.
            let value = try await store.withDedicatedConnection { connection in
                try await connection.query("SELECT 7", logger: store.logger).decode(Int32.self).reduce(0) { $1 + $0 }
            }
            #expect(value == 7)
        }
    }

    /// Closes `connection`, then queries on it. Once `close()` returns, the channel's handlers are
    /// gone: postgres-nio's write of the query is dropped by the channel, and nothing answers the
    /// query itself.
    static func closeThenQuery(_ connection: PostgresConnection, _ store: PostgresStore) async throws -> Int32 {
        try await connection.close()
        return try await connection.query("SELECT 1", logger: store.logger).decode(Int32.self).reduce(0) { $1 + $0 }
    }

    /// Expects `call` (a ``closeThenQuery(_:_:)`` through the store) to fail within 20 s as
    /// `unavailable`, answered by its connection's close.
    static func expectAnsweredAsClosed(
        sourceLocation: SourceLocation = #_sourceLocation, _ call: @escaping @Sendable () async throws -> Int32
    ) async {
        switch await Self.answer(within: .seconds(20), call) {
        case nil: Issue.record("the call on the closed connection never returned", sourceLocation: sourceLocation)
        case .success(let value):
            Issue.record("a query on a closed connection answered \(value)", sourceLocation: sourceLocation)
        case .failure(let error):
            #expect(
                (error as? AviaryError)?.code == .unavailable, "\(PostgresStore.describe(error))",
                sourceLocation: sourceLocation)
            #expect("\(error)".contains("closed during the call"), "\(error)", sourceLocation: sourceLocation)
        }
    }

    /// Runs `call` in a task of its own and returns its result as soon as it comes, or `nil` when
    /// none came within `limit` (the task is left behind, so a call that never returns cannot hold
    /// the test run). No polling and no sleep: the call's result and the deadline's timer (an
    /// event loop's scheduled task) each offer an answer, and the first one is taken.
    static func answer<T: Sendable>(
        within limit: Duration, _ call: @escaping @Sendable () async throws -> T
    ) async -> Result<T, any Error>? {
        let (answers, answering) = AsyncStream.makeStream(
            of: Result<T, any Error>?.self, bufferingPolicy: .bufferingOldest(1))
        Task {
            let result: Result<T, any Error>
            do { result = .success(try await call()) } catch { result = .failure(error) }
            answering.yield(result)
        }
        let deadline = MultiThreadedEventLoopGroup.singleton.next().scheduleTask(
            in: .nanoseconds(Int64(limit / .nanoseconds(1)))
        ) {
            answering.yield(nil)
        }
        defer { deadline.cancel() }
        for await first in answers { return first }
        return nil
    }
}

/// A TCP relay on 127.0.0.1 to a server, for the store's connections, that can stop reading from
/// the connections it has accepted (``stall()``): the store's bytes then fill the sockets' buffers
/// and are no longer taken, as when a peer is stuck or gone mid-call. Connections accepted later
/// relay normally.
final class StallingRelay: Sendable {
    let port: Int
    private let listener: any Channel
    private let accepted: NIOLockedValueBox<[any Channel]>

    private init(port: Int, listener: any Channel, accepted: NIOLockedValueBox<[any Channel]>) {
        self.port = port
        self.listener = listener
        self.accepted = accepted
    }

    static func start(to host: String, port: Int) async throws -> StallingRelay {
        let accepted = NIOLockedValueBox<[any Channel]>([])
        let group = MultiThreadedEventLoopGroup.singleton
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelInitializer { client in
                accepted.withLockedValue { $0.append(client) }
                return ClientBootstrap(group: client.eventLoop)
                    .connect(host: host, port: port)
                    .flatMap { upstream in
                        let toUpstream = Forward(to: upstream)
                        let toClient = Forward(to: client)
                        return client.pipeline.addHandler(toUpstream).flatMap {
                            upstream.pipeline.addHandler(toClient)
                        }.flatMap {
                            // Reading starts once both directions are in place.
                            client.setOption(ChannelOptions.autoRead, value: true)
                        }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return StallingRelay(port: listener.localAddress?.port ?? 0, listener: listener, accepted: accepted)
    }

    /// Stops reading from every connection accepted so far.
    func stall() {
        for channel in self.accepted.withLockedValue({ $0 }) {
            channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
    }

    func close() {
        self.listener.close(promise: nil)
        for channel in self.accepted.withLockedValue({ $0 }) { channel.close(promise: nil) }
    }

    /// Writes what one side reads to the other, and closes the other when it closes.
    private final class Forward: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let peer: any Channel

        init(to peer: any Channel) { self.peer = peer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.peer.writeAndFlush(self.unwrapInboundIn(data), promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.peer.close(promise: nil)
            context.fireChannelInactive()
        }
    }
}
