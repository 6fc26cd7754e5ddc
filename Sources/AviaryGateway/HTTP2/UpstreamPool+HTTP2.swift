//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization

// Clusters with `protocol: h2` (gRPC services): each pool keeps one HTTP/2 connection (h2c by
// prior knowledge) to its endpoint, and every exchange gets a stream of it. The stream channel
// carries `HTTP2FramePayloadToHTTP1ClientCodec` and the usual `UpstreamHandler`, so to
// `ProxyHandler` a stream is just an upstream connection used once: bodies stream with
// back-pressure (a stream that is not writable pauses the client's reads), trailers pass both
// ways as `.end(trailers)`, and a reset stream is a failed upstream connection (`502` before the
// response head, a cut stream after it). Streams are never pooled: `release` closes them.

/// One HTTP/2 connection to an upstream endpoint.
final class HTTP2UpstreamSession: Sendable {
    let channel: any Channel
    let multiplexer: NIOHTTP2Handler.StreamMultiplexer

    init(channel: any Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer) {
        self.channel = channel
        self.multiplexer = multiplexer
    }
}

extension UpstreamPool {
    /// A new stream on this pool's HTTP/2 connection (opened first when there is none).
    func connectStream() -> EventLoopFuture<UpstreamConnection> {
        let session: EventLoopFuture<HTTP2UpstreamSession>
        if let current = self.http2Session {
            session = current
        } else {
            session = self.openHTTP2Session()
            self.http2Session = session
        }
        return session.flatMap { session in
            session.multiplexer.createStreamChannel { stream in
                stream.eventLoop.makeCompletedFuture {
                    let upstream = UpstreamHandler(http1: false)
                    let handlers: [any ChannelHandler] = [
                        HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http),
                        GRPCRequestHeaders(),
                        HTTP2UpstreamResponseAdapter(upstream),
                        upstream,
                    ]
                    try stream.pipeline.syncOperations.addHandlers(handlers)
                }
            }
        }.assumeIsolated().flatMapThrowing { stream in
            let handler = try stream.pipeline.syncOperations.handler(type: UpstreamHandler.self)
            let connection = UpstreamConnection(channel: stream, handler: handler, pool: self)
            connection.exchanges = 1
            // Only while the handler is in its pipeline: its removal ends the cycle.
            if handler.context != nil { handler.connection = connection }
            return connection
        }.nonisolated()
    }

    /// Opens the HTTP/2 connection, within the cluster's `circuit_breaker.max_connections`.
    private func openHTTP2Session() -> EventLoopFuture<HTTP2UpstreamSession> {
        let shared = self.clusterState
        let limit = self.cluster.circuitBreaker.maxConnections
        if shared.connections.load(ordering: .relaxed) >= limit {
            shared.overflows.add(1, ordering: .relaxed)
            return self.eventLoop.makeFailedFuture(UpstreamOverflow(threshold: "max_connections", limit: limit))
        }
        let streams: NIOHTTP2Handler.StreamConfiguration = {
            var streams = NIOHTTP2Handler.StreamConfiguration()
            streams.outboundBufferSizeHighWatermark = GatewayServer.writeBufferWaterMark.high
            streams.outboundBufferSizeLowWatermark = GatewayServer.writeBufferWaterMark.low
            return streams
        }()
        let tls: UpstreamTLS?
        switch shared.tls {
        case nil: tls = nil
        case .success(let context): tls = context
        case .failure(let unavailable):
            self.metrics.connectErrors += 1
            self.state.connectErrors.add(1, ordering: .relaxed)
            return self.eventLoop.makeFailedFuture(unavailable)
        }
        let endpoint = self.endpoint
        var bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(TimeAmount(self.cluster.connectTimeout))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        if let tls {
            bootstrap = bootstrap.channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try tls.configure(channel.pipeline.syncOperations, endpoint: endpoint)
                }
            }
        }
        self.statistics.upstreamConnectionsOpened.add(1, ordering: .relaxed)
        let connected = bootstrap.connect(host: self.endpoint.host, port: self.endpoint.port)
        // Over TLS, HTTP/2 starts once the handshake (ALPN `h2`) completed.
        let ready = tls == nil ? connected : connected.flatMap { UpstreamTLS.handshake($0) }
        let opening = ready.flatMapThrowing {
            channel in
            let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                mode: .client, connectionConfiguration: .init(), streamConfiguration: streams
            ) { stream in stream.eventLoop.makeSucceededVoidFuture() }  // The upstream opens no streams.
            try channel.pipeline.syncOperations.addHandler(HTTP2CloseOnError())
            return HTTP2UpstreamSession(channel: channel, multiplexer: multiplexer)
        }
        opening.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let session):
                shared.connections.add(1, ordering: .relaxed)
                session.channel.closeFuture.assumeIsolated().whenComplete { _ in
                    shared.connections.subtract(1, ordering: .relaxed)
                    if self.http2Session === opening { self.http2Session = nil }
                }
            case .failure:
                self.metrics.connectErrors += 1
                self.state.connectErrors.add(1, ordering: .relaxed)
                if self.http2Session === opening { self.http2Session = nil }
            }
        }
        return opening
    }

    /// Closes the HTTP/2 connection, if any (streams still open on it fail).
    func closeHTTP2Session() {
        guard let session = self.http2Session else { return }
        self.http2Session = nil
        session.whenSuccess { $0.channel.close(promise: nil) }
    }
}

/// gRPC servers require `te: trailers`, which the proxy removed with the other hop-by-hop
/// headers: it is put back on gRPC requests going to an HTTP/2 upstream.
final class GRPCRequestHeaders: ChannelOutboundHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .head(var head) = self.unwrapOutboundIn(data),
            head.headers.first(name: "content-type")?.lowercased().hasPrefix("application/grpc") == true
        else {
            context.write(data, promise: promise)
            return
        }
        head.headers.replaceOrAdd(name: "te", value: "trailers")
        context.write(self.wrapOutboundOut(.head(head)), promise: promise)
    }
}

/// Sits after `NIOHTTP2Handler` on an upstream connection: a connection error (the upstream broke
/// the protocol) closes the connection once the read that caused it is over (when the GOAWAY has
/// been flushed), so that its streams fail (`502`, or a cut response) instead of waiting.
final class HTTP2CloseOnError: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private var failed = false

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failed = true
        context.fireErrorCaught(error)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        if self.failed { context.close(promise: nil) }
    }
}

/// Hands the response parts of an HTTP/2 upstream stream, as NIO's codec makes them, straight to
/// the stream's `UpstreamHandler` (which parses bytes itself on HTTP/1.x connections).
final class HTTP2UpstreamResponseAdapter: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let upstream: UpstreamHandler

    init(_ upstream: UpstreamHandler) {
        self.upstream = upstream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.upstream.deliver(.head(UpstreamResponseHead(head)))
        case .body(let buffer): self.upstream.deliver(.body(buffer))
        case .end(let trailers): self.upstream.deliver(.end(trailers))
        }
    }
}
