//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

// Hot path: hand-written NIO. Pools live on one event loop each (like Envoy's per-worker pools),
// so acquiring and releasing a connection takes no lock and allocates nothing when one is idle.

/// Keep-alive connections to one endpoint, owned by one event loop.
///
/// Not thread-safe by design: every method must be called on `eventLoop`.
final class UpstreamPool {
    let cluster: GatewayConfiguration.Cluster
    let endpoint: Endpoint
    let eventLoop: any EventLoop
    let statistics: GatewayStatistics
    /// The endpoint's state shared by every loop (health, ejection).
    let state: EndpointState
    /// The cluster's state shared by every loop (circuit-breaking counts).
    let clusterState: ClusterState
    /// This loop's counters of the endpoint.
    let metrics: EndpointCounters
    @exclusivity(unchecked) private var idle: [UpstreamConnection] = []
    /// Requests assigned to this endpoint on this loop and not finished (least-request balancing).
    @exclusivity(unchecked) var inFlight = 0
    /// Open connections of this pool (idle or in use).
    @exclusivity(unchecked) private(set) var openConnections = 0
    /// Set when a reload dropped or changed the cluster: connections are no longer kept.
    var retired = false
    /// With `protocol: h2`: the one HTTP/2 connection of this pool (opening or open), whose
    /// streams are the exchanges' "connections" (see `UpstreamPool+HTTP2.swift`).
    var http2Session: EventLoopFuture<HTTP2UpstreamSession>?

    init(
        cluster: GatewayConfiguration.Cluster, endpoint: Endpoint, eventLoop: any EventLoop,
        statistics: GatewayStatistics, state: EndpointState, clusterState: ClusterState, metrics: EndpointCounters
    ) {
        self.cluster = cluster
        self.endpoint = endpoint
        self.eventLoop = eventLoop
        self.statistics = statistics
        self.state = state
        self.clusterState = clusterState
        self.metrics = metrics
    }

    /// Idle pooled connections.
    var idleCount: Int { self.idle.count }

    /// An idle connection (the most recently used first), if any; no future, no allocation.
    func takeIdle() -> UpstreamConnection? {
        self.eventLoop.assertInEventLoop()
        while let connection = self.idle.popLast() {
            if connection.handler.isActive {
                self.statistics.upstreamConnectionsReused.add(1, ordering: .relaxed)
                connection.isIdle = false
                connection.exchanges += 1
                return connection
            }
        }
        return nil
    }

    /// A new connection, unless the cluster's `circuit_breaker.max_connections` connections are
    /// open or `max_pending` requests already wait for one: then it fails with
    /// ``UpstreamOverflow`` at once (there is no queue; Envoy's thresholds, as a fast refusal).
    func connect() -> EventLoopFuture<UpstreamConnection> {
        if self.cluster.upstreamProtocol == .h2 { return self.connectStream() }
        let thresholds = self.cluster.circuitBreaker
        let shared = self.clusterState
        if shared.connections.load(ordering: .relaxed) >= thresholds.maxConnections {
            shared.overflows.add(1, ordering: .relaxed)
            return self.eventLoop.makeFailedFuture(
                UpstreamOverflow(threshold: "max_connections", limit: thresholds.maxConnections))
        }
        guard shared.pending.add(1, ordering: .relaxed).newValue <= thresholds.maxPending else {
            shared.pending.subtract(1, ordering: .relaxed)
            shared.overflows.add(1, ordering: .relaxed)
            return self.eventLoop.makeFailedFuture(
                UpstreamOverflow(threshold: "max_pending", limit: thresholds.maxPending))
        }
        let tls: UpstreamTLS?
        switch shared.tls {
        case nil: tls = nil
        case .success(let context): tls = context
        case .failure(let unavailable):
            shared.pending.subtract(1, ordering: .relaxed)
            self.metrics.connectErrors += 1
            self.state.connectErrors.add(1, ordering: .relaxed)
            return self.eventLoop.makeFailedFuture(unavailable)
        }
        let endpoint = self.endpoint
        let timeout = self.cluster.connectTimeout
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(TimeAmount(timeout))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: GatewayServer.writeBufferWaterMark)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls?.configure(channel.pipeline.syncOperations, endpoint: endpoint)
                    // `UpstreamHandler` writes requests as bytes and parses responses itself (see
                    // HTTP1ResponseParser.swift): the proxy sets the framing headers, and every
                    // header it sends came through the request decoder or is its own.
                    try channel.pipeline.syncOperations.addHandler(UpstreamHandler(http1: true))
                }
            }
        self.statistics.upstreamConnectionsOpened.add(1, ordering: .relaxed)
        let connecting = bootstrap.connect(host: self.endpoint.host, port: self.endpoint.port).assumeIsolated()
        connecting.whenComplete { result in
            shared.pending.subtract(1, ordering: .relaxed)
            switch result {
            case .success(let channel):
                shared.connections.add(1, ordering: .relaxed)
                self.openConnections += 1
                guard let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamHandler.self) else {
                    channel.closeFuture.assumeIsolated().whenComplete { _ in self.connectionClosed() }
                    channel.close(promise: nil)
                    return
                }
                let connection = UpstreamConnection(channel: channel, handler: handler, pool: self)
                connection.exchanges = 1
                // Only while the handler is in its pipeline: its removal ends the cycle.
                if handler.context != nil { handler.connection = connection }
                // Counted against the pool that has the connection when it closes: a discovery
                // change can hand an idle connection to the next generation's pool.
                channel.closeFuture.assumeIsolated().whenComplete { _ in connection.pool.connectionClosed() }
            case .failure:
                self.metrics.connectErrors += 1
                self.state.connectErrors.add(1, ordering: .relaxed)
            }
        }
        // Over TLS the connection is handed over once its handshake completed: a failed handshake
        // is a failure to connect (retried as one, counted as a connect error), not a reset of a
        // request already sent.
        let ready =
            tls == nil
            ? connecting
            : connecting.flatMap { channel in
                let handshake = UpstreamTLS.handshake(channel)
                handshake.assumeIsolated().whenFailure { _ in
                    self.metrics.connectErrors += 1
                    self.state.connectErrors.add(1, ordering: .relaxed)
                }
                return handshake
            }
        return ready.flatMapThrowing { channel in
            guard let connection = try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self).connection
            else { throw ChannelError.ioOnClosedChannel }
            return connection
        }.nonisolated()
    }

    /// One of this pool's connections closed.
    private func connectionClosed() {
        self.clusterState.connections.subtract(1, ordering: .relaxed)
        self.openConnections -= 1
    }

    /// Takes over the idle connections of `previous`, the pool of the same endpoint in the
    /// generation of a discovered cluster that a change of its endpoints replaced, so that
    /// endpoints that stay keep their warm connections (as Envoy keeps a host's pool across EDS
    /// updates). What `previous` cannot hand over (none for HTTP/2, whose one session per pool
    /// is not moved, and none past this pool's idle limit) it closes.
    func adoptIdle(from previous: UpstreamPool) {
        self.eventLoop.assertInEventLoop()
        let moving = previous.idle
        previous.idle.removeAll()
        for connection in moving {
            guard connection.channel.isActive, self.cluster.upstreamProtocol == .http1,
                previous.cluster.upstreamProtocol == .http1, self.idle.count < self.cluster.maxIdleConnections
            else {
                connection.close()
                continue
            }
            previous.connectionClosed()
            connection.pool = self
            self.clusterState.connections.add(1, ordering: .relaxed)
            self.openConnections += 1
            self.idle.append(connection)
        }
    }

    /// Takes back a connection whose exchange finished cleanly, or closes it.
    func release(_ connection: UpstreamConnection) {
        self.eventLoop.assertInEventLoop()
        connection.handler.exchange = nil
        guard connection.handler.isActive, !self.retired, self.cluster.upstreamProtocol == .http1,
            self.idle.count < self.cluster.maxIdleConnections
        else {
            connection.close()
            return
        }
        connection.isIdle = true
        connection.handler.setReadsPaused(false)
        self.idle.append(connection)
    }

    /// Forgets an idle connection that closed.
    func remove(_ connection: UpstreamConnection) {
        if let index = self.idle.firstIndex(where: { $0 === connection }) {
            self.idle.remove(at: index)
        }
    }

    /// Closes every idle connection.
    func closeIdle() {
        let connections = self.idle
        self.idle.removeAll()
        for connection in connections { connection.close() }
        if self.inFlight == 0 { self.closeHTTP2Session() }
    }
}

/// A request refused because a circuit-breaking threshold of its cluster was reached.
struct UpstreamOverflow: Error, Sendable {
    /// The YAML key of the threshold (`max_connections`, `max_pending`).
    var threshold: String
    var limit: Int
}

/// One upstream connection: its channel, its handler and the pool it returns to.
final class UpstreamConnection {
    let channel: any Channel
    let handler: UpstreamHandler
    /// The pool the connection belongs to (it moves to the next generation's pool when a
    /// discovery change keeps its endpoint); kept alive by the connection until it closes.
    var pool: UpstreamPool
    var isIdle = false
    /// Exchanges this connection was used for, the current one included.
    var exchanges = 0

    init(channel: any Channel, handler: UpstreamHandler, pool: UpstreamPool) {
        self.channel = channel
        self.handler = handler
        self.pool = pool
    }

    func close() {
        self.handler.exchange = nil
        self.channel.close(promise: nil)
    }
}

/// What an upstream connection tells the exchange using it.
protocol UpstreamExchange: AnyObject {
    /// `consuming`: the part (a head's lines and fields) moves to the exchange, uncopied.
    func upstreamReceived(_ part: consuming UpstreamResponsePart)
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    func upstreamFailed(_ error: (any Error)?)
}

// Exclusivity: as `ProxyHandler`'s (see there), the hot properties of `UpstreamHandler`,
// `UpstreamPool` and the exchange are `@exclusivity(unchecked)`: confined to one event loop, and
// modified in place only by assignments and `Array`/`ByteBuffer`/parser steps that do not call
// back (the parts a parser step yields are delivered after its access ends).
/// The last handler of an upstream channel: parses the responses of an HTTP/1.x connection
/// (``HTTP1ResponseParser``; an HTTP/2 stream's parts come through
/// `HTTP2UpstreamResponseAdapter` instead), hands them to the exchange and withholds reads while
/// the client cannot take more (back-pressure from downstream to upstream).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// The connection this handler serves. Strong (the connection holds its handler too): the
    /// cycle ends when the channel closes and removes the handler. Not `weak`, because a weakly
    /// referenced object gets a side table and every retain and release of it the slow path,
    /// several per request for a pooled connection.
    @exclusivity(unchecked) var connection: UpstreamConnection?
    /// The exchange using this connection; `nil` while idle in the pool.
    @exclusivity(unchecked) var exchange: (any UpstreamExchange)?
    @exclusivity(unchecked) private(set) var context: ChannelHandlerContext?
    @exclusivity(unchecked) private var readsPaused = false
    @exclusivity(unchecked) private var readPending = false
    @exclusivity(unchecked) private var parser = HTTP1ResponseParser()
    /// Bytes of a response part that has not arrived whole yet.
    @exclusivity(unchecked) private var unparsed: ByteBuffer?
    @exclusivity(unchecked) private var inactive = false
    /// Whether the channel is still active, as its `isActive` would say for a connection that
    /// was handed out (connected, so `channelActive` came before): NIO fires `channelInactive`
    /// within the close itself, local or remote. Hot path: read here rather than through the
    /// channel (an existential call into NIO per pooled take and release), from the handler the
    /// exchange uses next anyway.
    var isActive: Bool { !self.inactive }
    /// Whether this handler writes HTTP/1.1 requests as bytes itself; on an HTTP/2 stream it
    /// writes parts for the stream's codec.
    private let http1: Bool
    /// Whether the request being written has a chunked body, which this handler frames.
    @exclusivity(unchecked) private var chunkedRequest = false
    /// Whether something was written since the last flush. Hot path: the proxy asks for a flush
    /// after a request's head, after its end and after each downstream read, and for a request
    /// without a body only the first finds anything to send; an empty flush is still a trip
    /// through the pipeline and the channel's pending writes, skipped here.
    @exclusivity(unchecked) private var unflushed = false

    init(http1: Bool) {
        self.http1 = http1
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.connection = nil
    }

    /// Writes a request part on this connection (no flush).
    func send(_ part: HTTPClientRequestPart) {
        guard let context = self.context else { return }
        guard self.http1 else {
            self.unflushed = true
            context.write(self.wrapOutboundOut(part), promise: nil)
            return
        }
        // Hot path: written as bytes here rather than by NIO's `HTTPRequestEncoder` (one
        // pipeline hop and one boxed part fewer per part).
        switch part {
        case .head(let head):
            self.parser.requestSent(isHead: head.method == .HEAD)
            var buffer = context.channel.allocator.buffer(capacity: 256)
            buffer.writeString(head.method.rawValue)
            buffer.writeStaticString(" ")
            buffer.writeString(head.uri)
            buffer.writeStaticString(head.version.minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
            let chunked = buffer.writeHTTPFields(head.headers)
            buffer.writeStaticString("\r\n")
            self.chunkedRequest = chunked
            self.unflushed = true
            context.write(NIOAny(buffer), promise: nil)
        case .body(let data):
            guard case .byteBuffer(let body) = data else {
                preconditionFailure("the proxy writes request bodies as byte buffers")
            }
            self.unflushed = true
            if self.chunkedRequest {
                HTTP1Chunks.write(body, context: context)
            } else {
                context.write(NIOAny(body), promise: nil)
            }
        case .end(let trailers):
            // Without chunked framing the end writes nothing (and needs no flush).
            guard self.chunkedRequest else { return }
            self.chunkedRequest = false
            self.unflushed = true
            context.write(
                NIOAny(HTTP1Chunks.last(trailers: trailers, allocator: context.channel.allocator)), promise: nil)
        }
    }

    /// Writes a request head already written as HTTP/1.1 bytes (whose body is not chunked), and
    /// flushes it with everything written before it when `flush` is set.
    func sendHead(_ bytes: ByteBuffer, isHead: Bool, flush: Bool = false) {
        guard let context = self.context else { return }
        precondition(self.http1, "a request head as bytes on an HTTP/2 stream")
        self.parser.requestSent(isHead: isHead)
        self.chunkedRequest = false
        if flush {
            // Hot path: a request without parts waiting goes out in one trip through the
            // pipeline, not a write and then a flush.
            self.unflushed = false
            context.writeAndFlush(NIOAny(bytes), promise: nil)
        } else {
            self.unflushed = true
            context.write(NIOAny(bytes), promise: nil)
        }
    }

    /// Flushes the writes so far, if there are any since the last flush.
    func flush() {
        guard self.unflushed, let context = self.context else { return }
        self.unflushed = false
        context.flush()
    }

    /// Stops or resumes reading from the upstream socket.
    func setReadsPaused(_ paused: Bool) {
        guard paused != self.readsPaused else { return }
        self.readsPaused = paused
        if !paused && self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if self.readsPaused {
            self.readPending = true
        } else {
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        bytes.resume(after: &self.unparsed)
        do {
            // Delivering a part can end the exchange and close the connection: then the rest
            // of this read is not for anyone.
            while !self.inactive, let part = try self.parser.next(&bytes) {
                guard let exchange = self.exchange else {
                    // An idle connection must not speak; drop it.
                    context.close(promise: nil)
                    return
                }
                exchange.upstreamReceived(part)
            }
        } catch {
            self.failed(error, context: context)
            return
        }
        if bytes.readableBytes > 0 && !self.inactive { self.unparsed = bytes }
    }

    /// Hands a part that came as NIO's HTTP/2 codec made it to the exchange.
    func deliver(_ part: UpstreamResponsePart) {
        self.exchange?.upstreamReceived(part)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.exchange?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.exchange?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.inactive = true
        if let connection = self.connection {
            connection.pool.remove(connection)
        }
        // The close ends a body that has no length; inside any other response it is an error.
        if self.exchange != nil {
            var rest = self.unparsed ?? ByteBuffer()
            self.unparsed = nil
            do {
                while let part = try self.parser.next(&rest), let exchange = self.exchange {
                    exchange.upstreamReceived(part)
                }
                if let end = try self.parser.finish(rest), let exchange = self.exchange {
                    exchange.upstreamReceived(end)
                }
            } catch {
                let exchange = self.exchange
                self.exchange = nil
                exchange?.upstreamFailed(error)
                return
            }
        }
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamFailed(nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failed(error, context: context)
    }

    private func failed(_ error: any Error, context: ChannelHandlerContext) {
        self.unparsed = nil
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamFailed(error)
        context.close(promise: nil)
    }
}
