//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1
import NIOSSL
import NIOTLS

// How a downstream connection's pipeline is built. HTTP/1.1 is one `ProxyHandler`. HTTP/2 is
// `HTTP2StreamServer` (our own frame layer), which gives each stream its own `ProxyHandler`
// without a channel per stream: streams share the loop's routes, policies and upstream pools
// exactly as HTTP/1.1 connections do, and each stream keeps the proxy's back-pressure (a stream
// whose upstream is slow stops reading, so its HTTP/2 flow-control window is not reopened; a
// stream whose client is slow is not writable, so its upstream stops being read).
//
// Which one a connection gets: with TLS, ALPN (`h2` or `http/1.1`); in plaintext with
// `listen.http2`, the first bytes (the HTTP/2 connection preface means h2c by prior knowledge).

/// Builds downstream pipelines for one listener configuration.
struct ConnectionPipeline {
    let loop: GatewayLoop
    let limits: GatewayConfiguration.Limits
    let http2: Bool
    let maxConcurrentStreams: Int
    let tls: NIOSSLContext?

    /// Makes the TLS context of `listen.tls`: ALPN offers `h2` (with `listen.http2`) and `http/1.1`;
    /// with `client_ca`, clients' certificates are asked for and verified against it.
    ///
    /// - Throws: ``GatewayServerError/tlsUnavailable(_:)`` when a file cannot be loaded.
    static func makeTLSContext(_ settings: GatewayConfiguration.Listen.TLS, http2: Bool) throws -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(settings.certificateFile)
            guard !chain.isEmpty else {
                throw GatewayServerError.tlsUnavailable(
                    "listen.tls.certificate: no certificate in \(settings.certificateFile)")
            }
            let key = try NIOSSLPrivateKey(file: settings.keyFile, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
            configuration.applicationProtocols = http2 ? ["h2", "http/1.1"] : ["http/1.1"]
            if let file = settings.clientCAFile, settings.clientCertificate != .none {
                let roots = try NIOSSLCertificate.fromPEMFile(file)
                guard !roots.isEmpty else {
                    throw GatewayServerError.tlsUnavailable("listen.tls.client_ca: no certificate in \(file)")
                }
                // Only these CAs sign clients' certificates (not the system's roots).
                configuration.trustRoots = .certificates(roots)
                configuration.certificateVerification =
                    settings.clientCertificate == .require ? .noHostnameVerification : .optionalVerification
            }
            return try NIOSSLContext(configuration: configuration)
        } catch let error as GatewayServerError {
            throw error
        } catch {
            throw GatewayServerError.tlsUnavailable(
                "listen.tls: cannot use \(settings.certificateFile) and \(settings.keyFile): \(error)")
        }
    }

    /// Sets up `channel` (a new downstream connection, on the loop's event loop).
    func configure(_ channel: any Channel) throws {
        let pipeline = channel.pipeline.syncOperations
        if let tls {
            try pipeline.addHandler(NIOSSLServerHandler(context: tls))
            let negotiationDeadline = self.closeUnlessNegotiated(channel)
            let builder = self
            try pipeline.addHandler(
                ApplicationProtocolNegotiationHandler { result, channel in
                    negotiationDeadline.cancel()
                    return channel.eventLoop.makeCompletedFuture {
                        if case .negotiated("h2") = result, builder.http2 {
                            try builder.addHTTP2(channel)
                        } else {
                            try builder.addHTTP1(channel, position: .last)
                        }
                    }
                })
        } else if self.http2 {
            try pipeline.addHandler(H2CPrefaceDetector(builder: self))
        } else {
            try self.addHTTP1(channel, position: .last)
        }
    }

    /// A client that never finishes its TLS handshake is closed after `limits.header_timeout`.
    private func closeUnlessNegotiated(_ channel: any Channel) -> GatewayTimer {
        self.loop.timers.schedule(in: TimeAmount(self.limits.headerTimeout), on: channel.eventLoop) {
            channel.close(promise: nil)
        }
    }

    /// The HTTP/1.1 pipeline: the proxy alone, which parses requests (heads limited to
    /// `max_header_bytes`) and writes responses as bytes itself.
    func addHTTP1(_ channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position) throws {
        let handlers: [any ChannelHandler] = [
            // The proxy parses requests itself (see HTTP1RequestParser.swift for why): an
            // unfinished head over max_header_bytes is refused (431).
            ProxyHandler(loop: self.loop, secure: self.tls != nil)
        ]
        try channel.pipeline.syncOperations.addHandlers(handlers, position: position)
    }

    /// The HTTP/2 pipeline: `HTTP2StreamServer` (the frame layer and the streams, StreamServer.swift)
    /// announcing `max_concurrent_streams` and a header list size of `max_header_bytes`, behind
    /// `FlushCoalescer`. The server sends GOAWAY when the gateway drains.
    func addHTTP2(_ channel: any Channel) throws {
        let server = HTTP2StreamServer(
            loop: self.loop, secure: self.tls != nil, idleTimeout: self.limits.idleTimeout,
            maxConcurrentStreams: self.maxConcurrentStreams, maxHeaderListSize: self.limits.maxHeaderBytes)
        let pipeline = channel.pipeline.syncOperations
        // In front of the server (between it and the socket or TLS): the streams' flushes of one
        // event loop iteration leave as one write.
        try pipeline.addHandler(FlushCoalescer())
        try pipeline.addHandler(server)
    }
}

/// Plaintext with `listen.http2`: reads until the first bytes show whether the client starts
/// with the HTTP/2 connection preface (h2c by prior knowledge) or not (HTTP/1.1), installs that
/// pipeline after itself, hands it what was read, and leaves.
final class H2CPrefaceDetector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// RFC 9113, section 3.4.
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private let builder: ConnectionPipeline
    private var buffered: ByteBuffer?
    /// Closes a connection that sends nothing within `limits.idle_timeout`.
    private var idleTimer: GatewayTimer?

    init(builder: ConnectionPipeline) {
        self.builder = builder
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        self.idleTimer = self.builder.loop.timers.schedule(
            in: TimeAmount(self.builder.limits.idleTimeout), on: context.eventLoop
        ) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.idleTimer?.cancel()
        self.idleTimer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = self.unwrapInboundIn(data)
        if var buffered = self.buffered {
            buffered.writeBuffer(&incoming)
            self.buffered = buffered
        } else {
            self.buffered = incoming
        }
        guard let buffered = self.buffered else { return }
        let count = min(buffered.readableBytes, Self.preface.count)
        let matches = buffered.readableBytesView.prefix(count).elementsEqual(Self.preface.prefix(count))
        if matches && count < Self.preface.count { return }  // Not enough bytes to tell yet.
        do {
            if matches {
                try self.builder.addHTTP2(context.channel)
            } else {
                try self.builder.addHTTP1(context.channel, position: .after(self))
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        self.buffered = nil
        // `addHTTP2` appends at the end, which is after this handler too.
        context.fireChannelRead(self.wrapInboundOut(buffered))
        context.fireChannelReadComplete()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// Turns the writes and flushes of one event loop iteration into one write and one flush, made
/// once the iteration's I/O has been handled.
///
/// An HTTP/2 connection's responses are finished by reads of many upstream connections: each
/// stream ends with a flush, and a read of the HTTP/2 connection coalesces only the flushes made
/// within it. Passed straight on, that is a `writev` per response (and a wake-up of the
/// client per response); HAProxy writes what an iteration produced at once. Nothing in NIO defers
/// a flush to the end of the iteration, hence this handler. The delay is the rest
/// of the current iteration (tasks run right after its I/O), so no write waits for more input.
///
/// Small writes are copied into one buffer of the iteration rather than passed on one by one.
/// `HTTP2StreamServer` encodes every frame (a DATA frame's 9-byte header, a HEADERS frame with its
/// HPACK block) into its one scratch buffer, which it clears before the next frame: while the
/// channel's pending writes still hold the previous frame, the clear has to allocate new storage
/// (two `malloc`s per frame, four per small response). Copied here, the frame's bytes are let go
/// of at once, the handler's buffer is reused, and a response's frames are one `iovec` of the
/// `writev` instead of four pending writes. The iteration's buffer itself is kept and written into
/// again once the socket has let go of it (`ByteBuffer.clear(minimumCapacity:)` allocates fresh
/// storage while anything still holds the old one, so bytes on their way out never change).
final class FlushCoalescer: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// Writes of up to this many bytes are copied into the iteration's buffer; larger ones (the
    /// DATA of bigger bodies) pass on as they are, after what was copied before them.
    static let copiedBytes = 2048
    /// Once the iteration's buffer holds this many bytes it is passed on (the channel's
    /// writability then counts them), and copying starts over in a new buffer.
    static let bufferLimit = 16384
    /// The initial capacity of the iteration's buffer: ten small responses' frames.
    static let bufferCapacity = 4096

    private var flushScheduled = false
    private var removed = false
    /// The copied writes of this iteration, not passed on yet, and the promise that completes
    /// when they are written (the others are cascaded from it).
    private var copied: ByteBuffer?
    private var copiedPromise: EventLoopPromise<Void>?
    /// The storage of the buffer passed on last, to copy into again.
    private var kept: ByteBuffer?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .byteBuffer(let bytes) = self.unwrapOutboundIn(data), bytes.readableBytes <= Self.copiedBytes else {
            self.passCopied(context)
            context.write(data, promise: promise)
            return
        }
        var buffer: ByteBuffer
        if let copied = self.copied.take() {
            buffer = copied
        } else if var kept = self.kept.take() {
            kept.clear(minimumCapacity: Self.bufferCapacity)
            buffer = kept
        } else {
            buffer = context.channel.allocator.buffer(capacity: Self.bufferCapacity)
        }
        buffer.writeImmutableBuffer(bytes)
        self.copied = buffer
        if let promise {
            if let first = self.copiedPromise {
                first.futureResult.cascade(to: promise)
            } else {
                self.copiedPromise = promise
            }
        }
        if buffer.readableBytes >= Self.bufferLimit { self.passCopied(context) }
    }

    /// Passes the copied writes on, as one buffer, keeping its storage for the next ones.
    private func passCopied(_ context: ChannelHandlerContext) {
        guard let buffer = self.copied.take() else { return }
        let promise = self.copiedPromise
        self.copiedPromise = nil
        self.kept = buffer.capacity <= Self.bufferLimit * 2 ? buffer : nil
        context.write(self.wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            guard !self.removed else { return }
            self.passCopied(context)
            context.flush()
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // What was written before a close (a GOAWAY, the end of a response) goes out before it:
        // neither the flush the handlers behind this one asked for nor writes whose flush is
        // still to come (a stream ends, and a draining connection may close, as the frame that
        // ended it is written, before its flush) are lost.
        self.passCopied(context)
        context.flush()
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A flush still scheduled goes out now: the handler's context is gone once it runs.
        if self.flushScheduled || self.copied != nil {
            self.removed = true
            self.passCopied(context)
            context.flush()
        }
    }
}

/// A connection the gateway's drain reaches besides its `ProxyHandler`s: an HTTP/2 connection.
protocol DrainableConnection: AnyObject {
    /// Stop taking new work and close when what runs is done.
    func drain()
    /// Close now.
    func closeNow()
}
