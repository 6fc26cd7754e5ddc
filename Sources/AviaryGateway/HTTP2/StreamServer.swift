//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1
import NIOHTTP2

// Hot path: the streams of an HTTP/2 connection without a channel each. `NIOHTTP2Handler` runs
// without a multiplexer and hands every frame, with its stream ID, to `HTTP2StreamServer`, which
// keeps the open streams in a table and gives each its own `ProxyHandler`. The proxy writes
// response parts to its `HTTP2ServerStream`, which frames them (`HTTP2StreamCodec`) and writes
// the frames to the connection; the proxy's other downstream operations (read, close,
// writability) go to the stream too. An HTTP/1.1 connection's proxy keeps calling its channel
// handler context directly: the two differ by one `nil` check per operation.
//
// What NIOHTTP2's stream channels did and the server now does itself:
// - flow control of the request side: a stream's window is reopened (WINDOW_UPDATE) as its
//   proxy consumes request DATA, and stays closed while the proxy withholds reads (its upstream
//   is not writable), so a client cannot send more than the window ahead of a slow upstream;
//   the connection's window is reopened as DATA arrives, as NIOHTTP2's multiplexer does;
// - back-pressure of the response side: a stream counts the DATA bytes it handed to
//   `NIOHTTP2Handler` that the peer's flow-control window has not let out yet (the handler tells
//   its frame delegate what it writes); above 64 KiB, or while the connection's channel is not
//   writable, the stream is not writable and its proxy stops reading the upstream, until the
//   count is back under 32 KiB (the water marks of an HTTP/1.1 connection's write buffer);
// - the end of a stream: NIOHTTP2's `StreamClosedEvent` (END_STREAM both ways, RST_STREAM
//   either way, GOAWAY) ends the proxy's exchange as a closed connection does, so an upstream
//   connection in the middle of a response is closed, not pooled;
// - GOAWAY on a drain and the connection's idle timer (formerly `HTTP2ConnectionDrainer`).

/// Serves the streams of one HTTP/2 connection: sits after `NIOHTTP2Handler` (which has no
/// multiplexer and reports the frames it writes to this handler, its frame delegate).
final class HTTP2StreamServer: ChannelDuplexHandler, NIOHTTP2FrameDelegate, DrainableConnection {
    typealias InboundIn = HTTP2Frame
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// The inbound window kept open for the connection and for each stream: the initial window
    /// size the server announces.
    static let targetWindow = 65_535

    let loop: GatewayLoop
    let secure: Bool
    /// Who the client is, shared by the connection's streams.
    let peer = DownstreamPeer()
    private(set) var context: ChannelHandlerContext?
    private var streams: [HTTP2StreamID: HTTP2ServerStream] = [:]
    private var lastStreamID = HTTP2StreamID(0)
    private var draining = false
    /// Set by an error of the connection: the connection closes after this read.
    private var failed = false
    /// Request header blocks the streams' codecs refused on this connection. NIOHTTP2 counted its
    /// own refusals among a connection's "glitches" and closed the connection at 200 with
    /// ENHANCE_YOUR_CALM; with its header validation off, the server keeps that count.
    private var refusedBlocks = 0
    /// The refused header blocks after which the connection is closed (NIOHTTP2's default).
    static let maximumRefusedBlocks = 200
    /// `limits.idle_timeout`: a connection without open streams for that long is closed with
    /// GOAWAY, as an idle HTTP/1.1 connection is closed.
    private let idleTimeout: TimeAmount
    /// When the connection has been without open streams for `idleTimeout`. Moving it is all an
    /// idle period's start costs: the timer stays armed while streams come and go (a client with
    /// a few streams at a time runs out of open streams after every batch, and scheduling and
    /// cancelling a task each time cost a few allocations and the scheduler's heap each), and when
    /// it fires early it sleeps until its deadline or, with streams open, until they end.
    private var idleDeadline = NIODeadline.distantFuture
    private var idleTimer: GatewayTimer?
    /// The connection channel's writability, as last reported to the streams.
    private(set) var connectionWritable = true
    /// Upstream request head buffers lent to the streams' proxies: a stream's proxy lives for one
    /// request, so the buffers it would keep for the next one are kept here instead.
    var requestHeads = LentBuffers()
    /// The response head block the streams wrote last and its long strings, for the next one.
    var responseBlocks = HPACKBlockReuse()

    init(loop: GatewayLoop, secure: Bool, idleTimeout: Duration) {
        self.loop = loop
        self.secure = secure
        self.idleTimeout = TimeAmount(idleTimeout)
    }

    /// The number of open streams (for tests).
    var openStreams: Int { self.streams.count }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.connectionWritable = context.channel.isWritable
        self.loop.registerConnection(self)
        self.armIdleTimer(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.loop.unregisterConnection(self)
        self.closeAllStreams()
        self.context = nil
    }

    /// The connection has no open stream from now on: it is idle once `idleTimeout` has passed.
    private func armIdleTimer(_ context: ChannelHandlerContext) {
        self.idleDeadline = self.loop.timers.now + self.idleTimeout
        guard self.idleTimer == nil else { return }
        self.scheduleIdleTimer(context)
    }

    private func scheduleIdleTimer(_ context: ChannelHandlerContext) {
        // A strong capture: the timer is cancelled when the handler is removed, and until its
        // deadline it only keeps the server alive that long. A weak one would give the server a
        // side table, and every retain and release of it (several per stream) the slow path.
        self.idleTimer = self.loop.timers.schedule(at: self.idleDeadline, on: context.eventLoop) {
            self.idleTimerFired()
        }
    }

    private func idleTimerFired() {
        self.idleTimer = nil
        // With streams open the timer is armed again when the last one ends.
        guard let context = self.context, self.streams.isEmpty, !self.draining else { return }
        if self.loop.timers.now < self.idleDeadline {
            self.scheduleIdleTimer(context)
            return
        }
        self.drain()
    }

    // MARK: Frames and events from NIOHTTP2Handler

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        switch frame.payload {
        case .headers:
            if let stream = self.streams[frame.streamID] {
                stream.received(frame.payload)
            } else {
                self.open(frame.streamID, with: frame.payload, context: context)
            }
        case .data:
            self.streams[frame.streamID]?.received(frame.payload)
        default:
            // Connection frames have been acted on by `NIOHTTP2Handler`; a RST_STREAM is
            // followed by its `StreamClosedEvent`.
            break
        }
    }

    private func open(_ id: HTTP2StreamID, with payload: HTTP2Frame.FramePayload, context: ChannelHandlerContext) {
        let stream = HTTP2ServerStream(id: id, server: self)
        let proxy = ProxyHandler(loop: self.loop, secure: self.secure, stream: stream, peer: self.peer)
        stream.proxy = proxy
        proxy.attach(context)
        self.streams[id] = stream
        if id > self.lastStreamID { self.lastStreamID = id }
        stream.received(payload)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Ordered by how often they come: every stream opens and closes, and each failed cast
        // costs a dynamic cast of the `Any`.
        if event is NIOHTTP2StreamCreatedEvent {
            // Streams open with their first HEADERS frame.
            return
        } else if let event = event as? StreamClosedEvent {
            guard let stream = self.streams.removeValue(forKey: event.streamID) else { return }
            stream.closed()
            if self.streams.isEmpty {
                if self.draining {
                    context.close(promise: nil)
                } else {
                    self.armIdleTimer(context)
                }
            }
        } else if let event = event as? NIOHTTP2WindowUpdatedEvent {
            guard let window = event.inboundWindowSize else { return }
            if event.streamID == .rootStream {
                self.connectionWindowChanged(window, context: context)
            } else {
                self.streams[event.streamID]?.inboundWindowChanged(window)
            }
        } else if event is NIOHTTP2BulkStreamWindowChangeEvent {
            // The server never changes its settings.
            return
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Reopens the connection's window as DATA arrives (the streams' windows hold clients back).
    private func connectionWindowChanged(_ window: Int, context: ChannelHandlerContext) {
        guard window <= Self.targetWindow / 2 else { return }
        let update = HTTP2Frame(
            streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: Self.targetWindow - window))
        context.write(self.wrapOutboundOut(update), promise: nil)
        context.flush()
    }

    /// `NIOHTTP2Handler` wrote `frame` to the connection: a DATA frame's bytes have left the
    /// stream's flow-control window.
    func wroteFrame(_ frame: HTTP2Frame) {
        guard case .data(let data) = frame.payload else { return }
        self.streams[frame.streamID]?.sent(data.data.readableBytes)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        if writable != self.connectionWritable {
            self.connectionWritable = writable
            for stream in Array(self.streams.values) { stream.writabilityMayHaveChanged() }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closeAllStreams()
        context.fireChannelInactive()
    }

    private func closeAllStreams() {
        guard !self.streams.isEmpty else { return }
        let streams = self.streams.values
        self.streams.removeAll()
        for stream in streams { stream.closed() }
    }

    /// `NIOHTTP2Handler` reports a connection error (a header list above `max_header_bytes`, a
    /// frame it cannot parse, a protocol violation) after writing GOAWAY, but leaves the
    /// connection open: without a close here the client's streams would wait forever. The close
    /// waits for the end of the read, when `NIOHTTP2Handler` has flushed its GOAWAY. A stream
    /// error is that stream's alone: `NIOHTTP2Handler` has reset it, and its `StreamClosedEvent`
    /// follows.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOHTTP2Errors.StreamError { return }
        self.failed = true
        context.fireErrorCaught(error)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        if self.failed { context.close(promise: nil) }
    }

    /// A stream's codec refused its header block (the stream is reset): at
    /// ``maximumRefusedBlocks`` the connection sends GOAWAY (ENHANCE_YOUR_CALM) and closes after
    /// this read, as NIOHTTP2 does when a peer's stream errors add up.
    func refusedBlock() {
        self.refusedBlocks += 1
        guard self.refusedBlocks >= Self.maximumRefusedBlocks, !self.failed, let context = self.context else { return }
        self.failed = true
        let goAway = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: self.lastStreamID, errorCode: .enhanceYourCalm, opaqueData: nil))
        context.writeAndFlush(self.wrapOutboundOut(goAway), promise: nil)
    }

    // MARK: Draining

    /// Sends GOAWAY (no new streams; those open finish) and closes once no stream is open.
    func drain() {
        guard !self.draining, let context = self.context else { return }
        self.draining = true
        let goAway = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: self.lastStreamID, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(self.wrapOutboundOut(goAway), promise: nil)
        if self.streams.isEmpty { context.close(promise: nil) }
    }

    func closeNow() {
        self.context?.close(promise: nil)
    }
}

/// One open stream of an HTTP/2 connection: what its `ProxyHandler` has for a downstream
/// connection. Lives on the connection's event loop, like its server and its proxy.
final class HTTP2ServerStream {
    /// The water marks of the response bytes a stream may have waiting for flow-control window:
    /// those of an HTTP/1.1 connection's write buffer.
    /// (Plain integer constants: read per DATA frame, and a `static let` made from another
    /// static's struct would be a lazily initialised global, checked on every access.)
    static let highWaterMark = GatewayServer.writeBufferHighWaterMark
    static let lowWaterMark = GatewayServer.writeBufferLowWaterMark

    let id: HTTP2StreamID
    /// Strong, both ways: the server forgets a stream when it closes, and the stream its proxy.
    let server: HTTP2StreamServer
    var proxy: ProxyHandler?
    private var codec = HTTP2StreamCodec()
    private(set) var isClosed = false
    /// Whether the request's END_STREAM came: the stream's window no longer matters.
    private var requestEnded = false

    // Request side: the stream's inbound window as NIOHTTP2 last reported it, the DATA bytes
    // that arrived while the proxy withheld reads, and whether it reads.
    private var inboundWindow: Int?
    private var heldBytes = 0
    private var reading = true

    // Response side: DATA bytes handed to `NIOHTTP2Handler` and not written by it yet.
    private var unsent = 0
    private var belowHighWaterMark = true
    private var reportedWritable = true

    init(id: HTTP2StreamID, server: HTTP2StreamServer) {
        self.id = id
        self.server = server
    }

    /// Whether the proxy may write more of the response.
    var isWritable: Bool { self.belowHighWaterMark && self.server.connectionWritable }

    // MARK: Request

    /// A HEADERS or DATA frame of this stream.
    func received(_ payload: HTTP2Frame.FramePayload) {
        guard !self.isClosed, let proxy = self.proxy, let context = self.server.context else { return }
        var dataBytes = 0
        if case .data(let data) = payload {
            dataBytes = data.data.readableBytes
            if !self.reading { self.heldBytes += dataBytes }
        }
        let parts: (HTTPServerRequestPart?, HTTPServerRequestPart?)
        do {
            parts = try self.codec.received(payload)
        } catch {
            self.reset(.protocolError)
            self.server.refusedBlock()
            return
        }
        if let part = parts.0 { self.deliver(part, proxy, context) }
        if let part = parts.1 { self.deliver(part, proxy, context) }
        if dataBytes > 0 && !self.requestEnded && !self.isClosed {
            // As a stream channel reads on after each read: the proxy lets the read through (the
            // window reopens as NIOHTTP2 reports it) or withholds it (the bytes count as held).
            proxy.streamReadComplete()
            self.reading = false
            proxy.read(context: context)
        }
    }

    private func deliver(_ part: HTTPServerRequestPart, _ proxy: ProxyHandler, _ context: ChannelHandlerContext) {
        if case .end = part { self.requestEnded = true }
        guard !self.isClosed else { return }
        proxy.received(part, context: context)
    }

    /// NIOHTTP2's view of the stream's inbound window changed (DATA arrived, a WINDOW_UPDATE went out).
    func inboundWindowChanged(_ window: Int) {
        self.inboundWindow = window
        self.updateWindow()
    }

    /// The proxy reads on: what arrived while it did not is consumed now.
    func read() {
        guard !self.reading else { return }
        self.reading = true
        if self.heldBytes > 0 {
            self.heldBytes = 0
            self.updateWindow()
        }
    }

    /// Reopens the window by what was consumed once less than half of it is left (as NIOHTTP2's
    /// stream channels do); bytes held while the proxy does not read keep it closed.
    private func updateWindow() {
        guard !self.isClosed, !self.requestEnded, let window = self.inboundWindow, let context = self.server.context
        else { return }
        let target = HTTP2StreamServer.targetWindow
        let open = window + self.heldBytes
        guard open <= target / 2 else { return }
        let increment = target - open
        self.inboundWindow = window + increment
        let update = HTTP2Frame(streamID: self.id, payload: .windowUpdate(windowSizeIncrement: increment))
        context.write(self.server.wrapOutboundOut(update), promise: nil)
        context.flush()
    }

    // MARK: Response

    /// Writes a response part (the codec may hold its frame until the next part or a flush).
    func write(_ part: HTTPServerResponsePart, flush: Bool, promise: EventLoopPromise<Void>?) {
        guard !self.isClosed, let context = self.server.context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let (first, second) = self.codec.write(part, promise: promise)
        if let first { self.send(first, context) }
        if let second { self.send(second, context) }
        if flush { self.flush() }
    }

    /// Writes a forwarded response head from the upstream's header lines (see
    /// ``HTTP2StreamCodec/block(_:lines:)``); like a `.head` part, it is held for what follows.
    func writeHead(_ status: HTTPResponseStatus, lines: ByteBuffer) {
        guard !self.isClosed, let context = self.server.context else { return }
        let block = HTTP2StreamCodec.block(status, lines: lines, reusing: &self.server.responseBlocks)
        let (first, second) = self.codec.writeHead(block, status: status, promise: nil)
        if let first { self.send(first, context) }
        if let second { self.send(second, context) }
    }

    /// Passes the held frame on and flushes the connection. The flush happens also when the
    /// stream has just closed: a HEADERS frame with END_STREAM closes it as it is written (it
    /// needs no flow-control window), before the flush that sends it.
    func flush() {
        guard let context = self.server.context else { return }
        if !self.isClosed, let held = self.codec.takeHeld() { self.send(held, context) }
        context.flush()
    }

    private func send(_ frame: HTTP2StreamCodec.Outbound, _ context: ChannelHandlerContext) {
        if case .data(let data) = frame.payload {
            self.unsent += data.data.readableBytes
            if self.belowHighWaterMark && self.unsent > Self.highWaterMark {
                self.belowHighWaterMark = false
                self.writabilityMayHaveChanged()
            }
        }
        context.write(
            self.server.wrapOutboundOut(HTTP2Frame(streamID: self.id, payload: frame.payload)), promise: frame.promise)
        // `NIOHTTP2Handler` has encoded the block: its storage serves the next stream's block.
        if case .headers(let headers) = frame.payload { self.server.responseBlocks.keep(headers.headers) }
    }

    /// `NIOHTTP2Handler` wrote `count` bytes of this stream's DATA to the connection.
    func sent(_ count: Int) {
        self.unsent -= count
        if !self.belowHighWaterMark && self.unsent <= Self.lowWaterMark {
            self.belowHighWaterMark = true
            self.writabilityMayHaveChanged()
        }
    }

    /// Tells the proxy when its writability changed (the stream's own or the connection's).
    func writabilityMayHaveChanged() {
        let writable = self.isWritable
        guard writable != self.reportedWritable else { return }
        self.reportedWritable = writable
        self.proxy?.downstreamWritabilityChanged(writable)
    }

    // MARK: End

    /// Ends the stream with RST_STREAM (its `StreamClosedEvent` then closes it here).
    func reset(_ code: HTTP2ErrorCode) {
        guard !self.isClosed, let context = self.server.context else { return }
        if let held = self.codec.takeHeld() { held.promise?.fail(ChannelError.ioOnClosedChannel) }
        context.write(
            self.server.wrapOutboundOut(HTTP2Frame(streamID: self.id, payload: .rstStream(code))), promise: nil)
        context.flush()
    }

    /// The stream closed (both ends done, reset by either side, or the connection gone): the
    /// proxy's exchange ends as with a closed connection.
    func closed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        if let held = self.codec.takeHeld() { held.promise?.fail(ChannelError.ioOnClosedChannel) }
        let proxy = self.proxy
        self.proxy = nil
        proxy?.streamClosed()
    }
}
