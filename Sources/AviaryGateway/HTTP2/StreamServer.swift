//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

// Hot path: an HTTP/2 connection's frames and its streams, without a channel per stream and
// without `NIOHTTP2Handler`: `HTTP2StreamServer` reads the connection's bytes itself (frame
// headers, HPACK through NIOHPACK's decoder, the connection's and each stream's state and
// flow-control windows, RFC 9113) and gives each stream its own `ProxyHandler`. The proxy writes
// response parts to its `HTTP2ServerStream`, which frames them (`HTTP2StreamCodec`) and hands the
// frames to the server, which encodes them (HPACK through NIOHPACK's encoder) into the writes of
// the connection. `FlushCoalescer` in front of it turns an event loop iteration's writes and
// flushes into one. An HTTP/1.1 connection's proxy keeps calling its channel handler context
// directly: the two differ by one `nil` check per operation.
//
// What the server does per stream besides passing request and response parts:
// - flow control of the request side: a stream's window is reopened (WINDOW_UPDATE) as its proxy
//   consumes request DATA, and stays closed while the proxy withholds reads (its upstream is not
//   writable), so a client cannot send more than the window ahead of a slow upstream; the
//   connection's window is reopened as DATA arrives; DATA beyond a window is an error;
// - flow control of the response side: DATA leaves while the client's windows (the stream's and
//   the connection's) allow it and waits in the stream, behind frames written before it, until a
//   WINDOW_UPDATE opens them; a stream counts the DATA bytes handed to the server that have not
//   left yet, and above 64 KiB, or while the connection's channel is not writable, the stream is
//   not writable and its proxy stops reading the upstream, until the count is back under 32 KiB
//   (the water marks of an HTTP/1.1 connection's write buffer);
// - the end of a stream: END_STREAM both ways, RST_STREAM either way, or the connection's close
//   ends the proxy's exchange as a closed connection does, so an upstream connection in the
//   middle of a response is closed, not pooled. An end that the proxy's own write caused (its
//   response's END_STREAM, its reset) is told to the proxy after that write has returned, at the
//   end of the event loop iteration, never from inside it;
// - the limits: `max_concurrent_streams` (a stream beyond it is refused with REFUSED_STREAM),
//   `max_header_bytes` as the decoded header list's limit, a request's `content-length` against
//   its DATA, the count of refused header blocks and of the client's resets (200 each, then
//   GOAWAY ENHANCE_YOUR_CALM, as NIOHTTP2 bounds a peer's stream errors and rapid resets);
// - GOAWAY on a drain and the connection's idle timer.

/// Serves one HTTP/2 connection: its frames (read from and written to the channel as bytes) and
/// its streams.
final class HTTP2StreamServer: ChannelDuplexHandler, DrainableConnection {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// The inbound window kept open for the connection and for each stream: the initial window
    /// size the server announces.
    static let targetWindow = 65_535
    /// The refused header blocks that close a connection when they come within ``errorPeriod``
    /// (the last of them closes it: a NIOHTTP2 client closes the connection itself at the 201st
    /// stream error within its 30 s, so the server's GOAWAY must come first).
    static let maximumRefusedBlocks = 200
    /// The client's resets of open streams a connection may have within ``errorPeriod``: one more
    /// and it is closed (NIOHTTP2's defaults; a defence against "rapid reset" floods,
    /// CVE-2023-44487).
    static let maximumResets = 200
    static let errorPeriod = TimeAmount.seconds(30)
    /// The open streams a client may have before it acknowledged the server's SETTINGS (when
    /// `max_concurrent_streams` is lower).
    static let unacknowledgedStreams = 1000

    let loop: GatewayLoop
    let secure: Bool
    /// Who the client is, shared by the connection's streams.
    let peer = DownstreamPeer()
    private(set) var context: ChannelHandlerContext?
    private var streams: [HTTP2StreamID: HTTP2ServerStream] = [:]
    /// The highest stream ID the client used (opened or refused): a new stream's must be higher.
    private var lastStreamID = HTTP2StreamID(0)
    /// The highest stream ID the server opened: GOAWAY's last stream ID.
    private var lastServedID = HTTP2StreamID(0)
    private var draining = false
    /// The client sent GOAWAY: the connection closes once its streams are done.
    private var peerWentAway = false
    /// Set by an error of the connection: GOAWAY has been written, the connection closes after
    /// this read and reads nothing more.
    private var failed = false
    /// When the streams' codecs refused request header blocks of this connection lately.
    private var refusedBlocks = EventWindow()
    /// When the client reset open streams lately.
    private var resets = EventWindow()
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
    /// The exchanges of the streams' ended requests, for the next streams' requests: an HTTP/1.x
    /// connection's proxy keeps its last exchange for its next request, a stream's proxy serves
    /// one, so its exchange is kept here instead (see `ProxyHandler.makeExchange`), up to
    /// `LentBuffers.keptCount` of them.
    var spareExchanges: [ProxyHandler.Exchange] = []

    // MARK: Frame layer state

    private let maxConcurrentStreams: Int
    private let maxHeaderListSize: Int
    private var decoder: HPACKDecoder
    private var encoder: HPACKEncoder
    /// The start of a frame whose rest has not arrived yet.
    private var unread: ByteBuffer?
    private var sawPreface = false
    private var sawSettings = false
    /// Whether the client acknowledged the server's SETTINGS: until then it may open streams
    /// beyond `max_concurrent_streams` (section 6.5.3: a setting holds once acknowledged), up to
    /// ``unacknowledgedStreams``.
    private var settingsAcknowledged = false
    private var sentPreface = false
    /// A header block whose CONTINUATION frames are still to come.
    private var continuation: (stream: HTTP2StreamID, endStream: Bool, block: ByteBuffer)?
    /// The connection's flow-control windows: what the client may still send, what the server
    /// may still send.
    private var inboundWindow = H2Wire.defaultWindow
    private var outboundWindow = H2Wire.defaultWindow
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    private(set) var peerInitialWindow = H2Wire.defaultWindow
    private var peerMaxFrameSize = H2Wire.defaultMaxFrameSize
    /// Streams with frames waiting for flow-control window, in the order they began to wait.
    private var waiting: [HTTP2ServerStream] = []
    /// Streams the server reset lately: frames the client sent before it saw the reset are ignored.
    private var recentlyReset = RecentStreamIDs()
    /// Streams that ended by the proxy's own write, whose proxies are told at the end of the
    /// event loop iteration.
    private var ending: [HTTP2ServerStream] = []
    private var endingScheduled = false
    /// Whether this read wrote something that the end of the read flushes.
    private var needsFlush = false
    /// The buffer each frame is encoded into: `FlushCoalescer` copies small writes at once, so
    /// the same storage serves the next frame.
    private var scratch = ByteBuffer()

    init(loop: GatewayLoop, secure: Bool, idleTimeout: Duration, maxConcurrentStreams: Int, maxHeaderListSize: Int) {
        self.loop = loop
        self.secure = secure
        self.idleTimeout = TimeAmount(idleTimeout)
        self.maxConcurrentStreams = maxConcurrentStreams
        self.maxHeaderListSize = maxHeaderListSize
        let allocator = ByteBufferAllocator()
        self.decoder = HPACKDecoder(
            allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize,
            maxHeaderListSize: maxHeaderListSize)
        self.encoder = HPACKEncoder(allocator: allocator)
        self.scratch = allocator.buffer(capacity: 256)
    }

    /// The number of open streams (for tests).
    var openStreams: Int { self.streams.count }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.connectionWritable = context.channel.isWritable
        self.loop.registerConnection(self)
        self.armIdleTimer(context)
        if context.channel.isActive { self.sendPreface(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.sendPreface(context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.loop.unregisterConnection(self)
        self.closeAllStreams()
        self.context = nil
    }

    /// The server's connection preface: its SETTINGS (section 3.4).
    private func sendPreface(_ context: ChannelHandlerContext) {
        guard !self.sentPreface else { return }
        self.sentPreface = true
        self.scratch.clear()
        self.scratch.writeH2Settings([
            (H2Wire.Setting.maxConcurrentStreams, self.maxConcurrentStreams),
            (H2Wire.Setting.maxHeaderListSize, self.maxHeaderListSize),
            (H2Wire.Setting.initialWindowSize, Self.targetWindow),
        ])
        context.write(self.wrapOutboundOut(.byteBuffer(self.scratch)), promise: nil)
        context.flush()
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

    // MARK: Reading frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.failed else { return }
        var bytes = self.unwrapInboundIn(data)
        if var unread = self.unread.take() {
            unread.writeBuffer(&bytes)
            bytes = unread
        }
        do {
            try self.readFrames(&bytes, context)
            if bytes.readableBytes > 0 { self.unread = bytes }
        } catch {
            self.connectionError(error, context)
        }
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        if self.failed { context.close(promise: nil) }
    }

    private func readFrames(_ bytes: inout ByteBuffer, _ context: ChannelHandlerContext) throws(H2ConnectionError) {
        if !self.sawPreface {
            let count = min(bytes.readableBytes, H2Wire.preface.count)
            guard bytes.readableBytesView.prefix(count).elementsEqual(H2Wire.preface.prefix(count)) else {
                throw H2ConnectionError(.protocolError, "no HTTP/2 connection preface")
            }
            guard count == H2Wire.preface.count else { return }
            bytes.moveReaderIndex(forwardBy: count)
            self.sawPreface = true
        }
        while let header = H2FrameHeader.peek(bytes) {
            guard header.length <= H2Wire.defaultMaxFrameSize else {
                throw H2ConnectionError(.frameSizeError, "a frame of \(header.length) bytes")
            }
            guard bytes.readableBytes >= H2Wire.frameHeaderLength + header.length else { return }
            bytes.moveReaderIndex(forwardBy: H2Wire.frameHeaderLength)
            // A view of the read's bytes: DATA reaches the proxy without a copy.
            var payload = bytes.readSlice(length: header.length)!
            try self.read(header, &payload, context)
            if self.failed { return }
        }
    }

    private func read(
        _ header: H2FrameHeader, _ payload: inout ByteBuffer, _ context: ChannelHandlerContext
    )
        throws(H2ConnectionError)
    {
        if let continuation = self.continuation {
            guard header.type == H2Wire.FrameType.continuation, header.streamID == continuation.stream else {
                throw H2ConnectionError(.protocolError, "a frame other than CONTINUATION inside a header block")
            }
        } else if !self.sawSettings {
            guard header.type == H2Wire.FrameType.settings, !header.has(H2Wire.Flag.ack) else {
                throw H2ConnectionError(.protocolError, "the client's preface does not begin with SETTINGS")
            }
        }
        switch header.type {
        case H2Wire.FrameType.data: try self.readData(header, &payload, context)
        case H2Wire.FrameType.headers: try self.readHeaders(header, &payload, context)
        case H2Wire.FrameType.continuation: try self.readContinuation(header, &payload, context)
        case H2Wire.FrameType.priority:
            guard header.streamID != .rootStream else {
                throw H2ConnectionError(.protocolError, "PRIORITY on stream 0")
            }
            if header.length != 5, let stream = self.streams[header.streamID] {
                self.resetStream(stream, .frameSizeError, notifyLater: false)
            }
        case H2Wire.FrameType.rstStream: try self.readReset(header, &payload)
        case H2Wire.FrameType.settings: try self.readSettings(header, &payload, context)
        case H2Wire.FrameType.pushPromise: throw H2ConnectionError(.protocolError, "PUSH_PROMISE from a client")
        case H2Wire.FrameType.ping:
            guard header.streamID == .rootStream else { throw H2ConnectionError(.protocolError, "PING on a stream") }
            guard header.length == 8 else { throw H2ConnectionError(.frameSizeError, "PING of \(header.length) bytes") }
            guard !header.has(H2Wire.Flag.ack), let opaque = payload.readInteger(as: UInt64.self) else { return }
            self.writeControl { $0.writeH2PingAck(opaque) }
        case H2Wire.FrameType.goAway:
            guard header.streamID == .rootStream else { throw H2ConnectionError(.protocolError, "GOAWAY on a stream") }
            guard header.length >= 8 else {
                throw H2ConnectionError(.frameSizeError, "GOAWAY of \(header.length) bytes")
            }
            self.peerWentAway = true
            if self.streams.isEmpty && self.ending.isEmpty { self.failed = true }  // Closes after this read.
        case H2Wire.FrameType.windowUpdate: try self.readWindowUpdate(header, &payload)
        default:
            break  // Unknown frame types are ignored (section 4.1).
        }
    }

    private func readHeaders(
        _ header: H2FrameHeader, _ payload: inout ByteBuffer, _ context: ChannelHandlerContext
    )
        throws(H2ConnectionError)
    {
        guard header.streamID != .rootStream else { throw H2ConnectionError(.protocolError, "HEADERS on stream 0") }
        var padding = 0
        if header.has(H2Wire.Flag.padded) {
            guard let length = payload.readInteger(as: UInt8.self) else {
                throw H2ConnectionError(.frameSizeError, "HEADERS too short for its padding")
            }
            padding = Int(length)
        }
        if header.has(H2Wire.Flag.priority) {
            guard payload.readableBytes >= 5 else {
                throw H2ConnectionError(.frameSizeError, "HEADERS too short for its priority")
            }
            payload.moveReaderIndex(forwardBy: 5)
        }
        guard padding <= payload.readableBytes else {
            throw H2ConnectionError(.protocolError, "HEADERS padding longer than the frame")
        }
        var block = payload.readSlice(length: payload.readableBytes - padding)!
        let endStream = header.has(H2Wire.Flag.endStream)
        if header.has(H2Wire.Flag.endHeaders) {
            try self.headerBlock(header.streamID, endStream: endStream, &block, context)
        } else {
            self.continuation = (header.streamID, endStream, block)
        }
    }

    private func readContinuation(
        _ header: H2FrameHeader, _ payload: inout ByteBuffer, _ context: ChannelHandlerContext
    )
        throws(H2ConnectionError)
    {
        guard var continuation = self.continuation.take() else {
            throw H2ConnectionError(.protocolError, "CONTINUATION without a header block")
        }
        // Compressed, a block is rarely larger than its list; this bounds what a client can make
        // the server hold with CONTINUATION frames that never end.
        guard continuation.block.readableBytes + payload.readableBytes <= 2 * self.maxHeaderListSize + 16_384 else {
            throw H2ConnectionError(.enhanceYourCalm, "a header block larger than max_header_bytes allows")
        }
        continuation.block.writeBuffer(&payload)
        if header.has(H2Wire.Flag.endHeaders) {
            try self.headerBlock(continuation.stream, endStream: continuation.endStream, &continuation.block, context)
        } else {
            self.continuation = continuation
        }
    }

    /// A complete header block: a new stream's request head, or an open stream's trailers.
    private func headerBlock(
        _ id: HTTP2StreamID, endStream: Bool, _ block: inout ByteBuffer, _ context: ChannelHandlerContext
    ) throws(H2ConnectionError) {
        // Decoded whatever becomes of it: the HPACK table is the connection's.
        let headers: HPACKHeaders
        do {
            headers = try self.decoder.decodeHeaders(from: &block)
        } catch {
            throw H2ConnectionError(.compressionError, "a header block that cannot be decoded (\(error))")
        }
        if let stream = self.streams[id] {
            // Trailers: they end the request (section 8.1).
            guard !stream.remoteClosed else { return self.resetStream(stream, .streamClosed, notifyLater: false) }
            guard endStream else { return self.resetStream(stream, .protocolError, notifyLater: false) }
            stream.remoteClosed = true
            stream.received(.headers(headers, endStream: true))
            self.endIfDone(stream)
            return
        }
        if id <= self.lastStreamID {
            if self.recentlyReset.contains(id) { return }
            throw H2ConnectionError(.protocolError, "HEADERS on closed stream \(id)")
        }
        guard Int32(id) % 2 == 1 else { throw H2ConnectionError(.protocolError, "a client's stream ID \(id) is even") }
        self.lastStreamID = id
        let limit =
            self.settingsAcknowledged
            ? self.maxConcurrentStreams : max(self.maxConcurrentStreams, Self.unacknowledgedStreams)
        guard !self.draining, self.streams.count < limit else {
            self.writeReset(id, .refusedStream)
            return
        }
        let stream = HTTP2ServerStream(id: id, server: self, outboundWindow: self.peerInitialWindow)
        let proxy = ProxyHandler(loop: self.loop, secure: self.secure, stream: stream, peer: self.peer)
        stream.proxy = proxy
        proxy.attach(context)
        self.streams[id] = stream
        self.lastServedID = id
        stream.remoteClosed = endStream
        stream.received(.headers(headers, endStream: endStream))
        self.endIfDone(stream)
    }

    private func readData(
        _ header: H2FrameHeader, _ payload: inout ByteBuffer, _ context: ChannelHandlerContext
    )
        throws(H2ConnectionError)
    {
        guard header.streamID != .rootStream else { throw H2ConnectionError(.protocolError, "DATA on stream 0") }
        // The whole frame counts against the windows, padding included (section 6.9.1).
        let length = header.length
        guard length <= self.inboundWindow else {
            throw H2ConnectionError(.flowControlError, "DATA beyond the connection's window")
        }
        self.inboundWindow -= length
        if header.has(H2Wire.Flag.padded) {
            guard let padding = payload.readInteger(as: UInt8.self), Int(padding) <= payload.readableBytes else {
                throw H2ConnectionError(.protocolError, "DATA padding longer than the frame")
            }
            payload = payload.readSlice(length: payload.readableBytes - Int(padding))!
        }
        if let stream = self.streams[header.streamID] {
            if stream.remoteClosed {
                self.resetStream(stream, .streamClosed, notifyLater: false)
            } else if length > stream.inboundWindow {
                self.resetStream(stream, .flowControlError, notifyLater: false)
            } else {
                stream.inboundWindow -= length
                let endStream = header.has(H2Wire.Flag.endStream)
                if endStream { stream.remoteClosed = true }
                stream.received(.data(payload, endStream: endStream))
                stream.updateWindow()
                self.endIfDone(stream)
            }
        } else if header.streamID > self.lastStreamID {
            throw H2ConnectionError(.protocolError, "DATA on idle stream \(header.streamID)")
        }
        // DATA of a closed stream is dropped; its bytes count against the connection all the same.
        if self.inboundWindow <= Self.targetWindow / 2 {
            let increment = Self.targetWindow - self.inboundWindow
            self.inboundWindow = Self.targetWindow
            self.writeControl { $0.writeH2WindowUpdate(.rootStream, increment: increment) }
        }
    }

    private func readReset(_ header: H2FrameHeader, _ payload: inout ByteBuffer) throws(H2ConnectionError) {
        guard header.length == 4 else {
            throw H2ConnectionError(.frameSizeError, "RST_STREAM of \(header.length) bytes")
        }
        guard header.streamID != .rootStream else { throw H2ConnectionError(.protocolError, "RST_STREAM on stream 0") }
        if let stream = self.streams[header.streamID] {
            guard self.resets.record(at: self.loop.timers.now, limit: Self.maximumResets, period: Self.errorPeriod)
            else {
                throw H2ConnectionError(.enhanceYourCalm, "more than \(Self.maximumResets) resets within 30 s")
            }
            self.endStream(stream, notifyLater: false)
        } else if header.streamID > self.lastStreamID {
            throw H2ConnectionError(.protocolError, "RST_STREAM on idle stream \(header.streamID)")
        }
    }

    private func readSettings(
        _ header: H2FrameHeader, _ payload: inout ByteBuffer, _ context: ChannelHandlerContext
    )
        throws(H2ConnectionError)
    {
        guard header.streamID == .rootStream else { throw H2ConnectionError(.protocolError, "SETTINGS on a stream") }
        if header.has(H2Wire.Flag.ack) {
            guard header.length == 0 else { throw H2ConnectionError(.frameSizeError, "SETTINGS ACK with a payload") }
            self.settingsAcknowledged = true
            return
        }
        guard header.length % 6 == 0 else {
            throw H2ConnectionError(.frameSizeError, "SETTINGS of \(header.length) bytes")
        }
        var windowGrew = false
        while let identifier = payload.readInteger(as: UInt16.self), let value = payload.readInteger(as: UInt32.self) {
            let value = Int(value)
            switch identifier {
            case H2Wire.Setting.headerTableSize:
                // The encoder's table may be anything up to what the client allows.
                try? self.encoder.setDynamicTableSize(min(value, HPACKEncoder.defaultDynamicTableSize))
            case H2Wire.Setting.enablePush:
                guard value <= 1 else { throw H2ConnectionError(.protocolError, "SETTINGS_ENABLE_PUSH \(value)") }
            case H2Wire.Setting.initialWindowSize:
                guard value <= H2Wire.maxWindow else {
                    throw H2ConnectionError(.flowControlError, "SETTINGS_INITIAL_WINDOW_SIZE \(value)")
                }
                let delta = value - self.peerInitialWindow
                self.peerInitialWindow = value
                for stream in self.streams.values {
                    stream.outboundWindow += delta
                    guard stream.outboundWindow <= H2Wire.maxWindow else {
                        throw H2ConnectionError(.flowControlError, "a stream's window beyond 2^31-1")
                    }
                }
                windowGrew = windowGrew || delta > 0
            case H2Wire.Setting.maxFrameSize:
                guard value >= H2Wire.defaultMaxFrameSize, value <= H2Wire.largestMaxFrameSize else {
                    throw H2ConnectionError(.protocolError, "SETTINGS_MAX_FRAME_SIZE \(value)")
                }
                self.peerMaxFrameSize = value
            default:
                break  // MAX_CONCURRENT_STREAMS (the server opens none), MAX_HEADER_LIST_SIZE, unknown ones.
            }
        }
        self.sawSettings = true
        self.writeControl { $0.writeH2SettingsAck() }
        if windowGrew { self.sendWaiting() }
    }

    private func readWindowUpdate(_ header: H2FrameHeader, _ payload: inout ByteBuffer) throws(H2ConnectionError) {
        guard header.length == 4, let raw = payload.readInteger(as: UInt32.self) else {
            throw H2ConnectionError(.frameSizeError, "WINDOW_UPDATE of \(header.length) bytes")
        }
        let increment = Int(raw & 0x7fff_ffff)
        if header.streamID == .rootStream {
            guard increment > 0 else { throw H2ConnectionError(.protocolError, "WINDOW_UPDATE of 0 on the connection") }
            guard self.outboundWindow + increment <= H2Wire.maxWindow else {
                throw H2ConnectionError(.flowControlError, "the connection's window beyond 2^31-1")
            }
            self.outboundWindow += increment
            self.sendWaiting()
        } else if let stream = self.streams[header.streamID] {
            guard increment > 0 else { return self.resetStream(stream, .protocolError, notifyLater: false) }
            guard stream.outboundWindow + increment <= H2Wire.maxWindow else {
                return self.resetStream(stream, .flowControlError, notifyLater: false)
            }
            stream.outboundWindow += increment
            if !stream.pending.isEmpty { self.sendPending(stream) }
        } else if header.streamID > self.lastStreamID {
            throw H2ConnectionError(.protocolError, "WINDOW_UPDATE on idle stream \(header.streamID)")
        }
    }

    /// Ends the connection for a protocol violation: GOAWAY with its code, then the close after
    /// this read.
    private func connectionError(_ error: H2ConnectionError, _ context: ChannelHandlerContext) {
        guard !self.failed else { return }
        self.failed = true
        self.unread = nil
        self.writeControl { $0.writeH2GoAway(lastStreamID: self.lastServedID, code: error.code) }
    }

    // MARK: Writing frames

    /// Writes a control frame encoded by `encode` into the scratch buffer; the end of the read or
    /// the caller flushes.
    private func writeControl(_ encode: (inout ByteBuffer) -> Void) {
        guard let context = self.context else { return }
        self.scratch.clear()
        encode(&self.scratch)
        context.write(self.wrapOutboundOut(.byteBuffer(self.scratch)), promise: nil)
        self.needsFlush = true
    }

    /// Writes RST_STREAM for stream `id` (refused, or ended by the server) and remembers it as
    /// reset lately, so that what the client sent before it saw the reset is ignored.
    private func writeReset(_ id: HTTP2StreamID, _ code: HTTP2ErrorCode) {
        self.recentlyReset.add(id)
        self.writeControl { $0.writeH2RstStream(id, code: code) }
    }

    /// A stream's WINDOW_UPDATE.
    func writeWindowUpdate(_ stream: HTTP2ServerStream, increment: Int) {
        self.writeControl { $0.writeH2WindowUpdate(stream.id, increment: increment) }
    }

    /// A response frame of `stream` (HEADERS, trailers or DATA): sent now, DATA as far as the
    /// windows let it go, or queued behind what already waits in the stream for window.
    func write(_ stream: HTTP2ServerStream, _ frame: HTTP2ServerStream.Pending) {
        let (endStream, promise) =
            switch frame {
            case .data(_, let endStream, let promise), .headers(_, let endStream, let promise): (endStream, promise)
            }
        guard self.streams[stream.id] === stream, !stream.localClosed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if endStream { stream.localClosed = true }
        guard stream.pending.isEmpty else {
            stream.pending.append(frame)
            return
        }
        switch frame {
        case .data(let data, let endStream, let promise):
            self.sendData(stream, data, endStream: endStream, promise: promise)
        case .headers(let block, let endStream, let promise):
            self.encodeHeaders(stream, block, endStream: endStream, promise: promise)
        }
    }

    private func encodeHeaders(
        _ stream: HTTP2ServerStream, _ block: HPACKHeaders, endStream: Bool, promise: EventLoopPromise<Void>?
    ) {
        guard let context = self.context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        self.scratch.clear()
        self.scratch.writeRepeatingByte(0, count: H2Wire.frameHeaderLength)
        do {
            try self.encoder.encode(headers: block, to: &self.scratch)
        } catch {
            // Only an encoder in the middle of another block throws; the server never leaves one so.
            promise?.fail(error)
            return
        }
        let length = self.scratch.readableBytes - H2Wire.frameHeaderLength
        let flags = endStream ? H2Wire.Flag.endStream : 0
        if length <= self.peerMaxFrameSize {
            self.scratch.setInteger(UInt32(length) << 8 | UInt32(H2Wire.FrameType.headers), at: 0)
            self.scratch.setInteger(flags | H2Wire.Flag.endHeaders, at: 4)
            self.scratch.setInteger(UInt32(Int32(stream.id)), at: 5)
            context.write(self.wrapOutboundOut(.byteBuffer(self.scratch)), promise: promise)
        } else {
            // A block larger than a frame: HEADERS and CONTINUATION frames, one write.
            var block = self.scratch.getSlice(at: H2Wire.frameHeaderLength, length: length)!
            var frames = context.channel.allocator.buffer(
                capacity: length + (length / self.peerMaxFrameSize + 1) * H2Wire.frameHeaderLength)
            var type = H2Wire.FrameType.headers
            var frameFlags = flags
            while block.readableBytes > 0 {
                var part = block.readSlice(length: min(block.readableBytes, self.peerMaxFrameSize))!
                let last = block.readableBytes == 0
                frames.writeH2FrameHeader(
                    length: part.readableBytes, type: type, flags: frameFlags | (last ? H2Wire.Flag.endHeaders : 0),
                    stream: stream.id)
                frames.writeBuffer(&part)
                type = H2Wire.FrameType.continuation
                frameFlags = 0
            }
            context.write(self.wrapOutboundOut(.byteBuffer(frames)), promise: promise)
        }
        if endStream { self.endIfDone(stream, notifyLater: true) }
    }

    /// Sends `data` as far as the windows allow; the rest waits in the stream, first in line.
    /// Returns whether all of it went.
    @discardableResult
    private func sendData(
        _ stream: HTTP2ServerStream, _ data: ByteBuffer, endStream: Bool, promise: EventLoopPromise<Void>?
    ) -> Bool {
        guard let context = self.context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return true
        }
        var data = data
        var written = 0
        // The stream hears of what left once its waiting frames are in order: telling it may let
        // its proxy write more at once.
        defer { if written > 0 { stream.sent(written) } }
        while true {
            let allowed = min(stream.outboundWindow, self.outboundWindow, self.peerMaxFrameSize)
            let count = data.readableBytes
            if count <= allowed {
                self.writeDataFrame(stream, data, endStream: endStream, promise: promise, context)
                written += count
                if endStream { self.endIfDone(stream, notifyLater: true) }
                return true
            }
            guard allowed > 0 else {
                stream.pending.insert(.data(data, endStream: endStream, promise), at: 0)
                if !stream.isWaiting {
                    stream.isWaiting = true
                    self.waiting.append(stream)
                }
                return false
            }
            self.writeDataFrame(stream, data.readSlice(length: allowed)!, endStream: false, promise: nil, context)
            written += allowed
        }
    }

    private func writeDataFrame(
        _ stream: HTTP2ServerStream, _ data: ByteBuffer, endStream: Bool, promise: EventLoopPromise<Void>?,
        _ context: ChannelHandlerContext
    ) {
        let count = data.readableBytes
        stream.outboundWindow -= count
        self.outboundWindow -= count
        self.scratch.clear()
        self.scratch.writeH2FrameHeader(
            length: count, type: H2Wire.FrameType.data, flags: endStream ? H2Wire.Flag.endStream : 0, stream: stream.id)
        if count <= Self.copiedData {
            self.scratch.writeImmutableBuffer(data)
            context.write(self.wrapOutboundOut(.byteBuffer(self.scratch)), promise: promise)
        } else {
            context.write(self.wrapOutboundOut(.byteBuffer(self.scratch)), promise: nil)
            context.write(self.wrapOutboundOut(.byteBuffer(data)), promise: promise)
        }
    }

    /// DATA payloads up to this size are written with their frame header as one buffer.
    static let copiedData = 1024

    /// Sends what waits in `stream` as far as the windows allow.
    private func sendPending(_ stream: HTTP2ServerStream) {
        self.needsFlush = true
        while !stream.pending.isEmpty, self.streams[stream.id] === stream {
            switch stream.pending.removeFirst() {
            case .data(let data, let endStream, let promise):
                guard self.sendData(stream, data, endStream: endStream, promise: promise) else { return }
            case .headers(let block, let endStream, let promise):
                self.encodeHeaders(stream, block, endStream: endStream, promise: promise)
            }
        }
    }

    /// Window opened for the connection (or every stream): the waiting streams send, in order.
    private func sendWaiting() {
        guard !self.waiting.isEmpty else { return }
        let waiting = self.waiting
        self.waiting.removeAll(keepingCapacity: true)
        for stream in waiting {
            stream.isWaiting = false
            self.sendPending(stream)
        }
    }

    // MARK: Ending streams

    /// Ends `stream` once both sides have ended it.
    private func endIfDone(_ stream: HTTP2ServerStream, notifyLater: Bool = false) {
        guard stream.remoteClosed, stream.localClosed, stream.pending.isEmpty else { return }
        self.endStream(stream, notifyLater: notifyLater)
    }

    /// Resets `stream` (RST_STREAM with `code`) and ends it.
    func resetStream(_ stream: HTTP2ServerStream, _ code: HTTP2ErrorCode, notifyLater: Bool) {
        guard self.streams[stream.id] === stream else { return }
        self.writeReset(stream.id, code)
        self.endStream(stream, notifyLater: notifyLater)
        if notifyLater { self.context?.flush() }
    }

    /// Forgets `stream` and tells its proxy, now or (when the proxy's own write ended it) at the
    /// end of the iteration.
    private func endStream(_ stream: HTTP2ServerStream, notifyLater: Bool) {
        guard self.streams.removeValue(forKey: stream.id) != nil else { return }
        if stream.isWaiting {
            // Rare (a reset while the client's window is shut): no waiting list keeps it.
            stream.isWaiting = false
            self.waiting.removeAll { $0 === stream }
        }
        stream.markClosed()
        if notifyLater {
            self.ending.append(stream)
            if !self.endingScheduled, let context = self.context {
                self.endingScheduled = true
                context.eventLoop.assumeIsolated().execute { self.notifyEnded() }
            }
        } else {
            stream.notifyClosed()
            self.lastStreamEnded()
        }
    }

    private func notifyEnded() {
        self.endingScheduled = false
        guard !self.ending.isEmpty else { return }
        let ending = self.ending
        self.ending.removeAll(keepingCapacity: true)
        for stream in ending { stream.notifyClosed() }
        self.lastStreamEnded()
    }

    /// After a stream ended: with none left, a draining connection (or one the client went away
    /// from) closes, any other starts its idle period.
    private func lastStreamEnded() {
        guard self.streams.isEmpty, self.ending.isEmpty, let context = self.context else { return }
        if self.draining || self.peerWentAway {
            context.close(promise: nil)
        } else {
            self.armIdleTimer(context)
        }
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
        self.waiting.removeAll()
        let ending = self.ending
        self.ending.removeAll()
        let streams = self.streams.values
        self.streams.removeAll()
        for stream in streams { stream.markClosed() }
        for stream in ending { stream.notifyClosed() }
        for stream in streams { stream.notifyClosed() }
    }

    /// A stream's codec refused its header block (the stream is reset): the
    /// ``maximumRefusedBlocks``th within ``errorPeriod`` makes the connection send GOAWAY
    /// (ENHANCE_YOUR_CALM) and close after this read, as NIOHTTP2 does when a peer's stream
    /// errors add up.
    func refusedBlock() {
        guard
            !self.refusedBlocks.record(
                at: self.loop.timers.now, limit: Self.maximumRefusedBlocks - 1, period: Self.errorPeriod),
            let context = self.context
        else { return }
        self.connectionError(H2ConnectionError(.enhanceYourCalm, "too many refused header blocks"), context)
    }

    // MARK: Draining

    /// Sends GOAWAY (no new streams; those open finish) and closes once no stream is open.
    func drain() {
        guard !self.draining, let context = self.context else { return }
        self.draining = true
        self.writeControl { $0.writeH2GoAway(lastStreamID: self.lastServedID, code: .noError) }
        context.flush()
        if self.streams.isEmpty && self.ending.isEmpty { context.close(promise: nil) }
    }

    func closeNow() {
        self.context?.close(promise: nil)
    }
}

/// A sliding window over events (a client's resets, its refused header blocks): whether more than
/// a limit of them fell within a period. It keeps the times of the last `limit` events (in a ring,
/// allocated at the first event), so a burst that straddles the start of a period counts whole.
struct EventWindow {
    private var times: [NIODeadline] = []
    private var oldest = 0

    /// Records an event at `now`: `false` when it is more than `limit` within `period`.
    mutating func record(at now: NIODeadline, limit: Int, period: TimeAmount) -> Bool {
        if self.times.count < limit {
            self.times.append(now)
            return true
        }
        guard now - self.times[self.oldest] >= period else { return false }
        self.times[self.oldest] = now
        self.oldest = (self.oldest + 1) % limit
        return true
    }
}

/// The last stream IDs the server reset, to ignore what the client sent before it saw the reset.
struct RecentStreamIDs {
    private var ids: [HTTP2StreamID] = []
    private var next = 0
    static let kept = 32

    mutating func add(_ id: HTTP2StreamID) {
        if self.ids.count < Self.kept {
            self.ids.append(id)
        } else {
            self.ids[self.next] = id
            self.next = (self.next + 1) % Self.kept
        }
    }

    func contains(_ id: HTTP2StreamID) -> Bool { self.ids.contains(id) }
}

/// One open stream of an HTTP/2 connection: what its `ProxyHandler` has for a downstream
/// connection, and the stream's protocol state for its server. Lives on the connection's event
/// loop, like its server and its proxy.
final class HTTP2ServerStream {
    /// The water marks of the response bytes a stream may have waiting for flow-control window:
    /// those of an HTTP/1.1 connection's write buffer.
    /// (Plain integer constants: read per DATA frame, and a `static let` made from another
    /// static's struct would be a lazily initialised global, checked on every access.)
    static let highWaterMark = GatewayServer.writeBufferHighWaterMark
    static let lowWaterMark = GatewayServer.writeBufferLowWaterMark

    /// A response frame waiting for flow-control window (or behind one that does).
    enum Pending {
        case data(ByteBuffer, endStream: Bool, EventLoopPromise<Void>?)
        case headers(HPACKHeaders, endStream: Bool, EventLoopPromise<Void>?)
    }

    let id: HTTP2StreamID
    /// Strong, both ways: the server forgets a stream when it closes, and the stream its proxy.
    let server: HTTP2StreamServer
    var proxy: ProxyHandler?
    private var codec = HTTP2StreamCodec()
    private(set) var isClosed = false
    /// Whether the request's END_STREAM came: the stream's window no longer matters.
    private var requestEnded = false

    // Protocol state, the server's: END_STREAM received and sent (or handed to the server),
    // the flow-control windows, the frames waiting for window.
    var remoteClosed = false
    var localClosed = false
    var inboundWindow = HTTP2StreamServer.targetWindow
    var outboundWindow: Int
    var pending: [Pending] = []
    var isWaiting = false

    // Request side: the DATA bytes that arrived while the proxy withheld reads, and whether it
    // reads.
    private var heldBytes = 0
    private var reading = true

    // Response side: DATA bytes handed to the server and not written by it yet.
    private var unsent = 0
    private var belowHighWaterMark = true
    private var reportedWritable = true

    init(id: HTTP2StreamID, server: HTTP2StreamServer, outboundWindow: Int) {
        self.id = id
        self.server = server
        self.outboundWindow = outboundWindow
    }

    /// Whether the proxy may write more of the response.
    var isWritable: Bool { self.belowHighWaterMark && self.server.connectionWritable }

    // MARK: Request

    /// A HEADERS or DATA frame of this stream.
    func received(_ frame: HTTP2StreamCodec.Frame) {
        guard !self.isClosed, let proxy = self.proxy, let context = self.server.context else { return }
        var dataBytes = 0
        if case .data(let data, _) = frame {
            dataBytes = data.readableBytes
            if !self.reading { self.heldBytes += dataBytes }
        }
        let parts: (HTTPServerRequestPart?, HTTPServerRequestPart?)
        do {
            parts = try self.codec.received(frame)
        } catch {
            self.server.resetStream(self, .protocolError, notifyLater: false)
            self.server.refusedBlock()
            return
        }
        if let part = parts.0 { self.deliver(part, proxy, context) }
        if let part = parts.1 { self.deliver(part, proxy, context) }
        if dataBytes > 0 && !self.requestEnded && !self.isClosed {
            // As a stream channel reads on after each read: the proxy lets the read through (the
            // window reopens as the server asks) or withholds it (the bytes count as held).
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
    func updateWindow() {
        guard !self.isClosed, !self.requestEnded else { return }
        let target = HTTP2StreamServer.targetWindow
        let open = self.inboundWindow + self.heldBytes
        guard open <= target / 2 else { return }
        let increment = target - open
        self.inboundWindow += increment
        self.server.writeWindowUpdate(self, increment: increment)
        self.server.context?.flush()
    }

    // MARK: Response

    /// Writes a response part (the codec may hold its frame until the next part or a flush).
    func write(_ part: HTTPServerResponsePart, flush: Bool, promise: EventLoopPromise<Void>?) {
        guard !self.isClosed, self.server.context != nil else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let (first, second) = self.codec.write(part, promise: promise)
        if let first { self.send(first) }
        if let second { self.send(second) }
        if flush { self.flush() }
    }

    /// Writes a forwarded response head from the upstream's header lines (see
    /// ``HTTP2StreamCodec/block(_:lines:)``); like a `.head` part, it is held for what follows.
    func writeHead(_ status: HTTPResponseStatus, lines: ByteBuffer) {
        guard !self.isClosed, self.server.context != nil else { return }
        let block = HTTP2StreamCodec.block(status, lines: lines, reusing: &self.server.responseBlocks)
        let (first, second) = self.codec.writeHead(block, status: status, promise: nil)
        if let first { self.send(first) }
        if let second { self.send(second) }
    }

    /// Passes the held frame on and flushes the connection. The flush happens also when the
    /// stream has just closed: a frame with END_STREAM ends it as it is written, before the flush
    /// that sends it.
    func flush() {
        guard let context = self.server.context else { return }
        if !self.isClosed, let held = self.codec.takeHeld() { self.send(held) }
        context.flush()
    }

    private func send(_ outbound: HTTP2StreamCodec.Outbound) {
        switch outbound.frame {
        case .data(let buffer, let endStream):
            self.unsent += buffer.readableBytes
            if self.belowHighWaterMark && self.unsent > Self.highWaterMark {
                self.belowHighWaterMark = false
                self.writabilityMayHaveChanged()
            }
            self.server.write(self, .data(buffer, endStream: endStream, outbound.promise))
        case .headers(let block, let endStream):
            self.server.write(self, .headers(block, endStream: endStream, outbound.promise))
            // The server has encoded the block (or holds it): its storage serves the next
            // stream's block once nothing holds it.
            self.server.responseBlocks.keep(block)
        }
    }

    /// The server wrote `count` bytes of this stream's DATA to the connection.
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

    /// Ends the stream with RST_STREAM (the proxy hears of the end after its call returns).
    func reset(_ code: HTTP2ErrorCode) {
        guard !self.isClosed else { return }
        self.server.resetStream(self, code, notifyLater: true)
    }

    /// The stream ended (both ends done, reset by either side, or the connection gone): nothing
    /// more is written; what waits fails.
    func markClosed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        if let held = self.codec.takeHeld() { held.promise?.fail(ChannelError.ioOnClosedChannel) }
        let pending = self.pending
        self.pending.removeAll()
        for frame in pending {
            switch frame {
            case .data(_, _, let promise), .headers(_, _, let promise): promise?.fail(ChannelError.ioOnClosedChannel)
            }
        }
    }

    /// Tells the proxy the stream ended: its exchange ends as with a closed connection.
    func notifyClosed() {
        let proxy = self.proxy
        self.proxy = nil
        proxy?.streamClosed()
    }
}
