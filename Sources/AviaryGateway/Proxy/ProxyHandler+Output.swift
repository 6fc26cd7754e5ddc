//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1

// Hot path: the proxy writes HTTP/1.x responses as bytes itself. NIO's `HTTPResponseEncoder`
// would take each part boxed in a `NIOAny` and write an `HTTPHeaders` out field by field; here a
// forwarded head is the upstream's header lines copied into one buffer with the status line in
// front, and body bytes go to the socket as they came (chunk-framed when the response is
// re-chunked). An HTTP/2 stream still takes parts: its `HTTP2ServerStream` makes frames of them.

extension ProxyHandler {
    /// Writes a response part to the client: as bytes on an HTTP/1.x connection, as a part to an
    /// HTTP/2 stream (which frames it).
    ///
    /// ```swift
    /// self.emit(.head(head), context: context)
    /// self.emit(.body(.byteBuffer(body)), context: context)
    /// self.emit(.end(nil), context: context, flush: true)
    /// ```
    func emit(
        _ part: HTTPServerResponsePart, context: ChannelHandlerContext, flush: Bool = false,
        promise: EventLoopPromise<Void>? = nil
    ) {
        if let stream = self.stream {
            stream.write(part, flush: flush, promise: promise)
            self.outputUnflushed = !flush
            return
        }
        if case .end = part, !self.chunkedResponse, let held = self.heldHead.take() {
            // The response's end with its head (and small body) still held: one write, flushed
            // in the same trip through the pipeline, instead of a write and then a flush.
            self.outputBuffers.keepResponse(held)
            self.write(held, context: context, flush: flush, promise: promise)
            return
        }
        self.releaseHeldHead(context: context)
        switch part {
        case .head(let head):
            var buffer = self.outputBuffers.takeResponse(capacity: 256, allocator: context.channel.allocator)
            Self.writeStatusLine(version: head.version, status: head.status, into: &buffer)
            let chunked = buffer.writeHTTPFields(head.headers)
            buffer.writeStaticString("\r\n")
            // An interim response (`100 Continue`) does not frame the final one's body.
            if head.status.code >= 200 { self.chunkedResponse = chunked }
            self.outputBuffers.keepResponse(buffer)
            self.write(buffer, context: context, flush: flush, promise: promise)
        case .body(let data):
            guard case .byteBuffer(let body) = data else {
                // The proxy only ever writes buffers; a file region would be a bug.
                preconditionFailure("the proxy writes response bodies as byte buffers")
            }
            self.emitBody(body, context: context, flush: flush, promise: promise)
        case .end(let trailers):
            guard self.chunkedResponse else {
                if promise != nil {
                    // Nothing to write, but the promise marks when the response has gone out.
                    self.write(
                        context.channel.allocator.buffer(capacity: 0), context: context, flush: flush, promise: promise)
                } else if flush {
                    context.flush()
                    self.outputUnflushed = false
                }
                return
            }
            self.chunkedResponse = false
            let buffer = HTTP1Chunks.last(trailers: trailers, allocator: context.channel.allocator)
            self.write(buffer, context: context, flush: flush, promise: promise)
        }
    }

    /// Writes body bytes of the current response: unchanged, or as one chunk of a re-chunked body.
    func emitBody(
        _ body: ByteBuffer, context: ChannelHandlerContext, flush: Bool = false, promise: EventLoopPromise<Void>? = nil
    ) {
        if let stream = self.stream {
            stream.write(.body(.byteBuffer(body)), flush: flush, promise: promise)
            self.outputUnflushed = !flush
            return
        }
        if var head = self.heldHead.take() {
            if !self.chunkedResponse && body.readableBytes <= Self.coalescedBodyBytes {
                // A small body goes out in one write with its head.
                head.writeImmutableBuffer(body)
                if !flush && promise == nil && head.readableBytes <= OutputBuffers.keptCapacity {
                    // Held on: the response's end, mostly parsed from the same read, writes and
                    // flushes it in one call. At most `keptCapacity` bytes are held, and only
                    // until the end of the upstream read (`flushOutput`).
                    self.heldHead = head
                    return
                }
                self.outputBuffers.keepResponse(head)
                self.write(head, context: context, flush: flush, promise: promise)
                return
            }
            self.outputBuffers.keepResponse(head)
            self.write(head, context: context, flush: false, promise: nil)
        }
        guard self.chunkedResponse else {
            self.write(body, context: context, flush: flush, promise: promise)
            return
        }
        HTTP1Chunks.write(body, context: context, promise: promise)
        if flush { context.flush() }
        self.outputUnflushed = !flush
    }

    /// The largest body written in one buffer with its response head (see ``heldHead``).
    static let coalescedBodyBytes = 2048

    /// Writes the forwarded response head held back for its body, if one is.
    func releaseHeldHead(context: ChannelHandlerContext) {
        guard let head = self.heldHead.take() else { return }
        self.outputBuffers.keepResponse(head)
        self.write(head, context: context, flush: false, promise: nil)
    }

    /// Flushes what the response wrote since its last flush, if anything, to the connection or
    /// the HTTP/2 stream: after the reads of an upstream connection, which mostly come after the
    /// response's end was written and flushed.
    func flushOutput(context: ChannelHandlerContext) {
        self.releaseHeldHead(context: context)
        guard self.outputUnflushed else { return }
        self.outputUnflushed = false
        if let stream = self.stream {
            stream.flush()
        } else {
            context.flush()
        }
    }

    /// Writes the head of an upstream's response with its header lines as received, minus the
    /// hop-by-hop ones, plus what the proxy adds for the client's hop (`transfer-encoding` when
    /// it re-chunks a body without length, `connection`). Only for HTTP/1.x clients and heads
    /// with ``UpstreamResponseHead/lines``.
    func emitForwardedHead(
        _ upstream: UpstreamResponseHead, version: HTTPVersion, chunked: Bool, connection: StaticString?,
        context: ChannelHandlerContext
    ) {
        var buffer = self.outputBuffers.takeResponse(
            capacity: (upstream.lines?.readableBytes ?? 0) + 96, allocator: context.channel.allocator)
        Self.writeStatusLine(version: version, status: upstream.status, into: &buffer)
        upstream.writeEndToEndLines(into: &buffer)
        if chunked { buffer.writeStaticString("transfer-encoding: chunked\r\n") }
        if let connection {
            buffer.writeStaticString("connection: ")
            buffer.writeStaticString(connection)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        self.chunkedResponse = chunked
        // Held until the next output: a small body that follows at once joins it in one write.
        self.heldHead = buffer
    }

    private func write(
        _ buffer: ByteBuffer, context: ChannelHandlerContext, flush: Bool, promise: EventLoopPromise<Void>?
    ) {
        if flush {
            context.writeAndFlush(NIOAny(buffer), promise: promise)
        } else {
            context.write(NIOAny(buffer), promise: promise)
        }
        self.outputUnflushed = !flush
    }

    /// `HTTP/1.1 200 OK` CRLF.
    static func writeStatusLine(version: HTTPVersion, status: HTTPResponseStatus, into buffer: inout ByteBuffer) {
        if version.major == 1 && version.minor == 0 {
            buffer.writeStaticString("HTTP/1.0 ")
        } else {
            buffer.writeStaticString("HTTP/1.1 ")
        }
        let code = status.code
        if code == 200 && status == .ok {
            buffer.writeStaticString("200 OK\r\n")
            return
        }
        buffer.writeInteger(UInt8(truncatingIfNeeded: 0x30 + code / 100 % 10))
        buffer.writeInteger(UInt8(truncatingIfNeeded: 0x30 + code / 10 % 10))
        buffer.writeInteger(UInt8(truncatingIfNeeded: 0x30 + code % 10))
        buffer.writeStaticString(" ")
        buffer.writeString(status.reasonPhrase)
        buffer.writeStaticString("\r\n")
    }
}

/// The storage of the last response head and upstream request head a connection's proxy wrote,
/// kept to write the next ones into.
///
/// Hot path: a head written as bytes costs two allocations (the buffer's object and its bytes),
/// two of the seven a proxied request made. A kept buffer is shared with the socket's pending
/// writes (and with the exchange, for a request head a retry may send again) until they let go,
/// normally when the response's flush has written it; the next head then finds the storage
/// uniquely referenced and `ByteBuffer.clear(minimumCapacity:)` reuses it. If something still
/// holds it, `clear` allocates fresh storage instead (copy on write), so reuse never changes
/// bytes another holder sees. Buffers that grew past ``keptCapacity`` are let go, so an idle
/// connection holds at most that much per kind.
///
/// ```swift
/// var buffer = self.outputBuffers.takeResponse(capacity: 256, allocator: context.channel.allocator)
/// buffer.writeStaticString("HTTP/1.1 204 No Content\r\n\r\n")
/// self.outputBuffers.keepResponse(buffer)
/// context.write(NIOAny(buffer), promise: nil)
/// ```
struct OutputBuffers {
    /// The largest buffer kept between requests.
    static let keptCapacity = 4096

    private var response: ByteBuffer?
    private var request: ByteBuffer?

    /// An empty buffer of at least `capacity` bytes for a response head: the kept one's storage
    /// when nothing else holds it any more, otherwise a new one.
    mutating func takeResponse(capacity: Int, allocator: @autoclosure () -> ByteBufferAllocator) -> ByteBuffer {
        Self.take(&self.response, capacity: capacity, allocator: allocator)
    }

    /// Keeps a written response head's buffer for the next one.
    mutating func keepResponse(_ buffer: ByteBuffer) {
        self.response = buffer.capacity <= Self.keptCapacity ? buffer : nil
    }

    /// An empty buffer of at least `capacity` bytes for an upstream request head.
    mutating func takeRequest(capacity: Int, allocator: @autoclosure () -> ByteBufferAllocator) -> ByteBuffer {
        Self.take(&self.request, capacity: capacity, allocator: allocator)
    }

    /// Keeps a written upstream request head's buffer for the next one.
    mutating func keepRequest(_ buffer: ByteBuffer) {
        self.request = buffer.capacity <= Self.keptCapacity ? buffer : nil
    }

    /// `allocator` is only evaluated when nothing is kept: `context.channel.allocator` costs a
    /// retain, a release and an exclusivity check of NIO's channel per call, and a kept buffer
    /// needs none of it.
    private static func take(
        _ slot: inout ByteBuffer?, capacity: Int, allocator: () -> ByteBufferAllocator
    ) -> ByteBuffer {
        guard var buffer = slot.take() else { return allocator().buffer(capacity: capacity) }
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }
}

/// Head buffers an HTTP/2 connection lends to the proxies of its streams.
///
/// Hot path: a stream's `ProxyHandler` lives for one request, so the buffer its
/// ``OutputBuffers`` would keep for the next head is gone with it, and every stream allocated its
/// upstream request head anew (two `malloc`s). The connection keeps them instead: a proxy takes
/// one for its upstream request head and gives it back when its exchange ends (the head went out
/// long before the response came back). Streams run concurrently, so several buffers are kept, up
/// to ``keptCount``. As with ``OutputBuffers``, `ByteBuffer.clear(minimumCapacity:)` on take
/// reuses the storage only when nothing else holds it any more and allocates new storage
/// otherwise, so a buffer given back while something still reads it (a retry in flight, a write
/// not done) is never written over.
///
/// ```swift
/// var buffer = server.requestHeads.take(capacity: 512, allocator: context.channel.allocator)
/// buffer.writeStaticString("GET / HTTP/1.1\r\nhost: a\r\n\r\n")
/// upstream.sendHead(buffer)
/// // ... when the exchange has ended:
/// server.requestHeads.giveBack(buffer)
/// ```
struct LentBuffers {
    /// The most buffers kept at once.
    static let keptCount = 32

    private var free: [ByteBuffer] = []

    /// The number of buffers kept (for tests).
    var count: Int { self.free.count }

    /// An empty buffer of at least `capacity` bytes: a kept one's storage when nothing else holds
    /// it any more, otherwise a new one.
    mutating func take(capacity: Int, allocator: @autoclosure () -> ByteBufferAllocator) -> ByteBuffer {
        guard var buffer = self.free.popLast() else { return allocator().buffer(capacity: capacity) }
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Keeps a buffer whose bytes its borrower no longer needs, for the next borrower.
    mutating func giveBack(_ buffer: ByteBuffer) {
        guard self.free.count < Self.keptCount, buffer.capacity <= OutputBuffers.keptCapacity else { return }
        self.free.append(buffer)
    }
}
