//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryResilience
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization

// Hot path: hand-written NIO for speed. One handler per downstream connection, alone in its
// pipeline: it parses requests (`HTTP1RequestParser`) and writes responses as bytes itself
// (ProxyHandler+Output.swift); on an HTTP/2 stream, `HTTP2ServerStream` hands it the request
// parts of the stream's frames and takes its response parts, and the handler's downstream
// operations (write, flush, read, close, writability) go to the stream instead of the channel
// handler context (whose loop, allocator and peer are the connection's). The upstream connection
// it uses lives on the same event loop, so both sides are driven without locks or hops, and
// bodies stream part by part with back-pressure both ways:
// - request body: downstream reads are withheld while the upstream channel is not writable (or
//   not connected yet); they resume on its writability change;
// - response body: upstream reads are withheld while the downstream channel is not writable.
// At most one read's worth of parts is ever held in the gateway itself, plus, for a request that
// a retry or a mirror may send again, a copy of its body up to `limits.request_buffer_bytes`
// (taken as the body streams through; see `keep(_:_:)`).

// Exclusivity: the handler's hot stored properties below are `@exclusivity(unchecked)`. Swift
// checks at run time that no access to a class's stored property overlaps a modifying one (a
// `swift_beginAccess`/`swift_endAccess` pair, a thread-local lookup, per access: about 50 pairs a
// proxied request, ~2% of its CPU). An overlap needs two accesses at once: the handler is confined
// to its event loop's thread (no concurrent access), and every modifying access to these
// properties is an assignment, a `take()`, an `Array`/`ByteBuffer`/`OutputBuffers` mutation or a
// parser step (`parser.nextPart`, `unparsed` resumed), none of which calls back into the handler, so
// no access can begin inside another. What needs the check is a property modified in place across
// a call that may re-enter (none here); keep it that way when adding one.
/// Proxies the requests of one downstream connection, one at a time (pipelined requests wait).
final class ProxyHandler: ChannelDuplexHandler, UpstreamExchange {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// One request on its way through.
    final class Exchange {
        @exclusivity(unchecked) private(set) var route: CompiledRoute
        @exclusivity(unchecked) private(set) var clusterIndex: Int
        @exclusivity(unchecked) private(set) var cluster: ClusterPools
        /// The cluster's name, for problems and logs (failure paths only).
        var clusterName: String { self.cluster.cluster.name }
        /// The endpoint of the current attempt.
        @exclusivity(unchecked) var pool: UpstreamPool
        /// The request head for the upstream: NIO's type, or already written as HTTP/1.1 bytes.
        @exclusivity(unchecked) private(set) var upstreamHead: UpstreamRequestHead
        @exclusivity(unchecked) private(set) var downstreamVersion: HTTPVersion
        @exclusivity(unchecked) private(set) var isHead: Bool
        @exclusivity(unchecked) var keepAlive: Bool
        @exclusivity(unchecked) var connection: UpstreamConnection?
        /// Parts received before the upstream connection was ready.
        @exclusivity(unchecked) var pending: [HTTPClientRequestPart] = []
        @exclusivity(unchecked) var requestComplete = false
        @exclusivity(unchecked) var responseHeadSent = false
        @exclusivity(unchecked) var upstreamReusable = false
        @exclusivity(unchecked) var bodyBytes = 0
        @exclusivity(unchecked) var timeout: GatewayTimer?
        /// Whether the request was sent again after a kept-alive connection turned out closed.
        @exclusivity(unchecked) var retried = false
        /// Whether the request may be sent twice: a safe method, or an `Idempotency-Key`.
        @exclusivity(unchecked) private(set) var isReplayable: Bool
        /// Whether the route's retry policy applies: an idempotent request (or one with an
        /// `Idempotency-Key`) without a body, or whose body is kept whole in `kept`. Turns false
        /// when the body outgrows `limits.request_buffer_bytes`.
        @exclusivity(unchecked) var mayRetry: Bool
        /// A copy of the request body received so far, for a retry or a mirror copy to send
        /// again; `nil` when nothing needs it or once the body outgrew `limits.request_buffer_bytes`.
        @exclusivity(unchecked) var kept: ByteBuffer?
        /// The trailers that ended a kept body.
        @exclusivity(unchecked) var keptTrailers: HTTPHeaders?
        /// A mirror copy drawn for a request with a body: sent once the body is complete (and
        /// dropped if the body outgrows the copy).
        @exclusivity(unchecked) var mirrorCopy: MirrorCopy?
        /// The current attempt, from 1.
        @exclusivity(unchecked) var attempt = 1
        @exclusivity(unchecked) var perTryTimeout: GatewayTimer?
        /// Whether the current attempt's response head arrived (its per-try time is over).
        @exclusivity(unchecked) var attemptAnswered = false
        /// Headers the route's policies add to the response (`RateLimit-*`).
        @exclusivity(unchecked) var responseHeaders: [(String, String)] = []
        /// A request the route may answer from its cache: the key, a stale entry for failures,
        /// the response being collected.
        @exclusivity(unchecked) var cache: CacheCapture?
        /// What `%{...}` in the route's response header rewrite stands for (when it uses any).
        @exclusivity(unchecked) var headerVariables: HeaderVariables?

        init(
            route: CompiledRoute, clusterIndex: Int, cluster: ClusterPools, pool: UpstreamPool,
            head: UpstreamRequestHead,
            downstream: RequestHead
        ) {
            self.route = route
            self.clusterIndex = clusterIndex
            self.cluster = cluster
            self.pool = pool
            self.upstreamHead = head
            self.downstreamVersion = downstream.version
            self.isHead = downstream.method == .HEAD
            self.keepAlive = downstream.isKeepAlive
            (self.isReplayable, self.mayRetry) = Self.replay(route, downstream)
        }

        /// Makes this exchange, whose request has ended, the next request's, exactly as `init`
        /// would make a new one: every stored property is set again (`ExchangeReuseTests` checks
        /// that a reused exchange and a new one agree property by property).
        func reuse(
            route: CompiledRoute, clusterIndex: Int, cluster: ClusterPools, pool: UpstreamPool,
            head: UpstreamRequestHead, downstream: RequestHead
        ) {
            // Compared first: reassigning the same object is a retain and a release for nothing.
            if self.route !== route { self.route = route }
            self.clusterIndex = clusterIndex
            if self.cluster !== cluster { self.cluster = cluster }
            if self.pool !== pool { self.pool = pool }
            self.upstreamHead = head
            self.downstreamVersion = downstream.version
            self.isHead = downstream.method == .HEAD
            self.keepAlive = downstream.isKeepAlive
            (self.isReplayable, self.mayRetry) = Self.replay(route, downstream)
            self.connection = nil
            if !self.pending.isEmpty { self.pending = [] }
            self.requestComplete = false
            self.responseHeadSent = false
            self.upstreamReusable = false
            self.bodyBytes = 0
            self.timeout = nil
            self.retried = false
            self.kept = nil
            self.keptTrailers = nil
            self.mirrorCopy = nil
            self.attempt = 1
            self.perTryTimeout = nil
            self.attemptAnswered = false
            if !self.responseHeaders.isEmpty { self.responseHeaders = [] }
            self.cache = nil
            self.headerVariables = nil
        }

        /// Lets go of the upstream request head's buffer while the exchange waits for reuse: the
        /// connection's ``OutputBuffers`` reuses that storage for the next head only once nothing
        /// else holds it.
        func park() {
            self.upstreamHead = Self.noHead
        }

        /// What a parked exchange holds as its upstream request head: no storage of its own.
        private static let noHead = UpstreamRequestHead.bytes(ByteBuffer(), isHead: false)

        /// Whether the request may be sent twice (a safe method, or an `Idempotency-Key`) and
        /// whether the route's retry policy applies to it.
        private static func replay(_ route: CompiledRoute, _ downstream: RequestHead) -> (Bool, Bool) {
            let hasKey = downstream.hasIdempotencyKey
            // Switches, not array literals: an array per request is an allocation per request.
            let safe: Bool
            let idempotent: Bool
            switch downstream.method {
            case .GET, .HEAD, .OPTIONS, .TRACE: (safe, idempotent) = (true, true)
            case .PUT, .DELETE: (safe, idempotent) = (false, true)
            default: (safe, idempotent) = (false, false)
            }
            // A body is kept (or the request is not retried): see `ProxyHandler.forward`.
            return (safe || hasKey, route.retry != nil && (idempotent || hasKey))
        }
    }

    /// The event loop's state; `upstreams` and `core` are its generation of the current request.
    let loop: GatewayLoop
    @exclusivity(unchecked) private(set) var upstreams: LoopUpstreams
    @exclusivity(unchecked) private(set) var core: GatewayCore
    /// The request being answered, for metrics, access log and tracing.
    @exclusivity(unchecked) var record = RequestRecord()
    /// Set by a drain: the connection closes after the current response.
    @exclusivity(unchecked) var drainRequested = false
    @exclusivity(unchecked) private(set) var context: ChannelHandlerContext?
    @exclusivity(unchecked) private var exchange: Exchange?
    /// The last request's exchange once it has ended, for the next request (see
    /// ``makeExchange(route:clusterIndex:cluster:pool:head:downstream:)``).
    @exclusivity(unchecked) private var spareExchange: Exchange?
    /// Parts of pipelined requests decoded while an exchange was still running.
    @exclusivity(unchecked) private var queued: [RequestPart] = []
    @exclusivity(unchecked) private var readPending = false
    /// After a local answer to an unfinished request: the rest of it is ignored and the
    /// connection closes once the answer is written.
    @exclusivity(unchecked) var discarding = false
    @exclusivity(unchecked) private(set) var closed = false
    /// Closes a connection that sends no request within `limits.idle_timeout`.
    @exclusivity(unchecked) private var idleTimer: GatewayTimer?
    @exclusivity(unchecked) private var idleDeadline = NIODeadline.distantFuture
    /// Whether the request being answered is a HEAD (local answers then carry no body).
    @exclusivity(unchecked) var answeringHead = false
    /// Whether the response being written to an HTTP/1.1 client is chunk-framed by the proxy.
    @exclusivity(unchecked) var chunkedResponse = false
    /// The storage of the last response head and upstream request head written, reused for the
    /// next ones once the socket has let go of them (see ``OutputBuffers``).
    @exclusivity(unchecked) var outputBuffers = OutputBuffers()
    /// A forwarded response head not written yet: the next output writes it first, and a small
    /// body that comes right after it is appended to it, so that head and body take one write
    /// (one trip through the pipeline and the socket's pending writes) instead of two; head and
    /// body stay held until the response's end, which writes and flushes them in one call, or
    /// until the end of the upstream read.
    /// Everything that writes or flushes goes through `ProxyHandler+Output.swift`, which writes
    /// a held head before anything else; a close drops it with whatever else was unwritten.
    @exclusivity(unchecked) var heldHead: ByteBuffer?
    /// Whether something was written to the client since the last flush.
    @exclusivity(unchecked) var outputUnflushed = false
    /// The request parser of an HTTP/1.x connection, and the bytes of a part not complete yet.
    @exclusivity(unchecked) private var parser: HTTP1RequestParser
    @exclusivity(unchecked) private var unparsed: ByteBuffer?
    /// Set once a request could not be parsed: what follows on the connection is not read.
    @exclusivity(unchecked) private var unparseable = false
    /// Answers `408` when a started request head is not complete within `limits.header_timeout`.
    @exclusivity(unchecked) private var headerTimer: GatewayTimer?
    /// The `X-Forwarded-*` and `Forwarded` lines of the last request of an HTTP/1.x connection
    /// and its `Host`, and the connection's `X-Forwarded-Client-Cert` value once asked: the
    /// same as the peer's, held here so that a request need not read the peer object.
    @exclusivity(unchecked) private var forwardedCache: (host: String?, lines: ByteBuffer)?
    @exclusivity(unchecked) private var certificateFieldCache: String??
    /// Whether a request head waits for its token's verification off the event loop: reads
    /// stop and what was read meanwhile waits in `queued`.
    @exclusivity(unchecked) var admitting = false

    /// `https` behind a TLS listener, `http` otherwise: what `X-Forwarded-Proto` and
    /// `Forwarded: proto=` say.
    let scheme: String
    /// The HTTP/2 stream this handler serves, if it serves one: its request head comes with the
    /// stream, so it has no idle period to time (the connection's streams come and go, the
    /// connection stays), and it is not in a pipeline of its own (`context` is the connection's
    /// `HTTP2StreamServer`'s).
    let stream: HTTP2ServerStream?
    /// Whether this handler serves one HTTP/2 stream.
    var isStream: Bool { self.stream != nil }
    /// Whether the stream's request has ended (its END_STREAM arrived): a stream answered after
    /// that closes by itself once the response's END_STREAM is written, with no close (and no
    /// RST_STREAM) from the proxy.
    private var streamRequestEnded = false
    /// Who the client is, shared by the streams of one HTTP/2 connection.
    let peer: DownstreamPeer

    init(
        loop: GatewayLoop, secure: Bool = false, stream: HTTP2ServerStream? = nil,
        peer: DownstreamPeer = DownstreamPeer()
    ) {
        self.parser = HTTP1RequestParser(maxHeadBytes: loop.current.core.configuration.limits.maxHeaderBytes)
        self.loop = loop
        self.scheme = secure ? "https" : "http"
        self.stream = stream
        self.peer = peer
        self.upstreams = loop.current
        self.core = loop.current.core
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Only HTTP/1.x connections are registered for draining: a stream's proxy is in no
        // pipeline (`HTTP2StreamServer` attaches it) and is drained with its connection (GOAWAY,
        // then the close once no stream is open).
        if !self.isStream { self.loop.register(self) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if !self.isStream { self.loop.unregister(self) }
        self.context = nil
    }

    /// A stream's proxy is in no pipeline: it uses the context of its connection's
    /// `HTTP2StreamServer` for the loop, the allocator and the peer's address.
    func attach(_ context: ChannelHandlerContext) {
        self.context = context
    }

    /// Closes the downstream connection, or resets the stream this handler serves.
    func closeDownstream(_ context: ChannelHandlerContext) {
        if let stream = self.stream {
            stream.reset(.cancel)
        } else {
            context.close(promise: nil)
        }
    }

    /// Closes the connection once the current response is written; at once when idle.
    func drain() {
        self.drainRequested = true
        if let exchange = self.exchange, !exchange.responseHeadSent { exchange.keepAlive = false }
        if self.exchange == nil && self.queued.isEmpty && !self.discarding, let context = self.context {
            self.closed = true
            self.cancelConnectionTimers()
            self.closeDownstream(context)
        }
    }

    /// Closes the connection now (the end of a drain).
    func closeNow() {
        if let context = self.context { self.closeDownstream(context) }
    }

    /// The client's IP address, if known.
    var clientAddress: String? { self.client.ip }

    // MARK: Downstream events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.unparseable else { return }
        var bytes = self.unwrapInboundIn(data)
        bytes.resume(after: &self.unparsed)
        do {
            // Parsed here rather than by a decoder in front: a handler and a boxed part fewer
            // per part. A body part is a slice of the read buffer.
            while !self.closed, let part = try self.parser.nextPart(&bytes) {
                self.received(part, context: context)
            }
        } catch {
            self.unparseable = true
            self.errorCaught(context: context, error: error)
            return
        }
        if bytes.readableBytes > 0 && !self.closed { self.unparsed = bytes }
    }

    /// A request part from an HTTP/2 stream's codec.
    func received(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        self.received(RequestPart(part), context: context)
    }

    /// A request part: parsed from the connection's bytes, or from an HTTP/2 stream's codec.
    ///
    /// Hot path: parts are `consuming` from the parser to ``requestHead(_:context:)``, so that a
    /// head (its target, `Host` and lines) is moved along rather than copied at each step (a
    /// retain and a release per reference in it, per step).
    private func received(_ part: consuming RequestPart, context: ChannelHandlerContext) {
        if self.isStream, case .end = part { self.streamRequestEnded = true }
        if self.discarding || self.closed { return }
        if self.admitting || self.exchange?.requestComplete == true {
            // A pipelined request: it waits until this response is done.
            self.queued.append(part)
            return
        }
        self.handle(part, context: context)
    }

    private func handle(_ part: consuming RequestPart, context: ChannelHandlerContext) {
        switch consume part {
        case .head(let head):
            self.requestHead(head, context: context)
        case .body(let buffer):
            guard let exchange = self.exchange else { return }
            exchange.bodyBytes += buffer.readableBytes
            if exchange.bodyBytes > self.core.configuration.limits.maxBodyBytes {
                self.abort(
                    exchange, status: 413, slug: "payload-too-large",
                    detail: "the request body is larger than \(self.core.configuration.limits.maxBodyBytes) bytes",
                    reason: nil, context: context)
                return
            }
            if exchange.kept != nil { self.keep(buffer, exchange) }
            self.sendUpstream(.body(.byteBuffer(buffer)), exchange)
        case .end(let trailers):
            guard let exchange = self.exchange else { return }
            exchange.requestComplete = true
            self.sendUpstream(.end(trailers), exchange)
            if let connection = exchange.connection { connection.handler.flush() }
            // A write that failed at once may have ended the exchange.
            guard self.exchange === exchange else { return }
            if exchange.kept != nil {
                exchange.keptTrailers = trailers
                if let copy = exchange.mirrorCopy {
                    // The body is complete: the copy goes now, with all of it.
                    exchange.mirrorCopy = nil
                    self.startMirror(copy, body: exchange.kept, trailers: trailers)
                }
                // Kept for a mirror copy only: no longer needed.
                if !exchange.mayRetry { exchange.kept = nil }
            }
            // The per-try time counts from the end of the request (as in Envoy): a slow upload
            // is not a slow upstream.
            if !exchange.attemptAnswered { self.armPerTryTimeout(exchange, context: context) }
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        // A stream's idle timer would be scheduled and cancelled per request for nothing.
        if !self.isStream { self.startIdleTimer(context: context) }
        context.fireChannelActive()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let connection = self.exchange?.connection {
            connection.handler.flush()
        } else if self.exchange == nil && self.headerTimer == nil && !self.discarding && !self.closed && !self.admitting
        {
            // Bytes arrived but no complete head yet: the client has header_timeout to finish it.
            self.idleTimer?.cancel()
            self.idleTimer = nil
            let limit = self.core.configuration.limits.headerTimeout
            self.headerTimer = self.loop.timers.schedule(in: TimeAmount(limit), on: context.eventLoop) {
                self.headerTimedOut()
            }
        }
        context.fireChannelReadComplete()
    }

    /// Arms the idle timer from now. Per request this only moves a deadline; the timer itself is
    /// scheduled at most once per idle period (rescheduling a task per request costs more).
    func startIdleTimer(context: ChannelHandlerContext) {
        guard self.exchange == nil, !self.closed, !self.discarding, !self.isStream else { return }
        if self.drainRequested && self.queued.isEmpty {
            self.closed = true
            self.cancelConnectionTimers()
            context.close(promise: nil)
            return
        }
        self.idleDeadline = self.loop.timers.now + self.core.idleTimeout
        if self.idleTimer == nil {
            self.idleTimer = self.loop.timers.schedule(at: self.idleDeadline, on: context.eventLoop) {
                self.idleTimedOut()
            }
        }
    }

    private func cancelConnectionTimers() {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.headerTimer?.cancel()
        self.headerTimer = nil
    }

    private func idleTimedOut() {
        self.idleTimer = nil
        // Busy now: the end of this exchange arms the timer again.
        guard self.exchange == nil, self.headerTimer == nil, !self.closed, !self.admitting, let context = self.context
        else { return }
        if self.loop.timers.now < self.idleDeadline {
            self.idleTimer = self.loop.timers.schedule(at: self.idleDeadline, on: context.eventLoop) {
                self.idleTimedOut()
            }
            return
        }
        self.core.statistics.idleTimeouts.add(1, ordering: .relaxed)
        self.closed = true
        self.closeDownstream(context)
    }

    private func headerTimedOut() {
        self.headerTimer = nil
        guard self.exchange == nil, !self.discarding, !self.admitting, let context = self.context else { return }
        self.core.statistics.headerTimeouts.add(1, ordering: .relaxed)
        self.answeringHead = false
        let limit = GatewayUnits.render(self.core.configuration.limits.headerTimeout)
        self.respondLocally(
            status: 408, slug: "request-timeout", detail: "the request head did not arrive within \(limit)",
            close: true,
            context: context)
    }

    func read(context: ChannelHandlerContext) {
        if !self.queued.isEmpty || self.admitting {
            // A pipelined request waits; read no further until it has its turn.
            self.readPending = true
            return
        }
        if let exchange = self.exchange, !exchange.requestComplete {
            // Reads stay on once the request is complete (a pipelined request is queued, then
            // reads stop): pausing them costs two epoll_ctl calls per request.
            guard let connection = exchange.connection else {
                self.readPending = true
                return
            }
            if !connection.channel.isWritable {
                if !self.readPending { self.core.statistics.requestBodyPauses.add(1, ordering: .relaxed) }
                self.readPending = true
                return
            }
        }
        if let stream = self.stream {
            stream.read()
        } else {
            context.read()
        }
    }

    private func resumeReading() {
        guard self.readPending, let context = self.context else { return }
        self.readPending = false
        self.read(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.downstreamWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    /// The client's connection (or stream) can take more of the response, or cannot.
    func downstreamWritabilityChanged(_ writable: Bool) {
        if let connection = self.exchange?.connection {
            if !writable { self.core.statistics.responseBodyPauses.add(1, ordering: .relaxed) }
            connection.handler.setReadsPaused(!writable)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.downstreamClosed()
        context.fireChannelInactive()
    }

    /// The client's connection closed (or its stream ended): what runs ends, and an upstream
    /// connection in use is closed rather than pooled.
    private func downstreamClosed() {
        self.closed = true
        self.cancelConnectionTimers()
        if let exchange = self.exchange {
            self.finish(exchange, reuseUpstream: false)
        }
        self.endRecord(status: self.record.status)
        self.queued.removeAll()
    }

    /// The stream this handler serves has closed (`StreamClosedEvent`).
    func streamClosed() {
        self.downstreamClosed()
        self.context = nil
    }

    /// A read of the stream's DATA has been handed over: the upstream gets it now.
    func streamReadComplete() {
        if let connection = self.exchange?.connection { connection.handler.flush() }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let status: Int
        let detail: String
        switch error {
        case HTTP1RequestError.headTooLarge:
            (status, detail) = (
                431, "the request head is larger than \(self.core.configuration.limits.maxHeaderBytes) bytes"
            )
        case let error as HTTP1RequestError:
            (status, detail) = (400, "malformed request: \(error)")
        default:
            self.closeDownstream(context)
            return
        }
        self.queued.removeAll()
        self.answeringHead = false
        if let exchange = self.exchange {
            if exchange.responseHeadSent {
                self.finish(exchange, reuseUpstream: false)
                self.closeDownstream(context)
                return
            }
            self.finish(exchange, reuseUpstream: false)
        }
        self.respondLocally(
            status: status, slug: status == 431 ? "header-too-large" : "bad-request", detail: detail,
            close: true, context: context)
    }

    // MARK: A new request

    private func requestHead(_ given: consuming RequestHead, context: ChannelHandlerContext) {
        var head = given
        self.headerTimer?.cancel()
        self.headerTimer = nil
        // A reload's configuration applies from the next request on; this one keeps its own.
        // Compared first: between reloads, reassigning would be two retains and two releases.
        let current = self.loop.current
        if current !== self.upstreams {
            self.upstreams = current
            self.core = current.core
        }
        // A span reads the trace context of the fields.
        if self.core.tracer != nil { head.materialize() }
        self.beginRecord(head)
        self.core.statistics.requests.add(1, ordering: .relaxed)
        self.answeringHead = head.method == .HEAD
        let limits = self.core.configuration.limits
        let inspection = head.inspection
        if let problem = inspection.framingProblem {
            self.respondLocally(
                status: 400, slug: "bad-request", detail: "malformed request: \(problem)", close: true, context: context
            )
            return
        }
        if inspection.headBytes > limits.maxHeaderBytes {
            self.respondLocally(
                status: 431, slug: "header-too-large",
                detail: "the request head is larger than \(limits.maxHeaderBytes) bytes", close: true, context: context)
            return
        }
        let hasBody = inspection.isChunked || (inspection.contentLength ?? 0) > 0
        if let contentLength = inspection.contentLength, contentLength > limits.maxBodyBytes {
            self.respondLocally(
                status: 413, slug: "payload-too-large",
                detail: "the request body is larger than \(limits.maxBodyBytes) bytes", close: true, context: context)
            return
        }
        // Fields are made only for tables with routes that match on them (`host`, `headers`).
        if self.core.routes.readsHeaders { head.materialize() }
        guard
            let route = self.core.routes.route(
                method: head.method, uri: head.uri, headers: head.isMaterialized ? head.nio.headers : HTTPHeaders())
        else {
            self.respondLocally(
                status: 404, slug: "no-route",
                detail: "no route for \(head.method.rawValue) \(RouteTable.path(of: head.uri))",
                close: hasBody || !head.isKeepAlive, context: context)
            return
        }
        self.recordRoute(route)
        if route.readsRequestFields || inspection.editsFields || self.record.span != nil {
            // Made once here for every feature of the route that reads or edits fields.
            head.materialize()
        }
        var corsHeaders: [(String, String)] = []
        if let cors = route.cors {
            switch cors.check(head.nio) {
            case .none:
                break
            case .preflight(let headers):
                self.answerPreflight(headers, close: hasBody || !head.isKeepAlive, context: context)
                return
            case .forbidden(let why):
                self.respondLocally(
                    status: 403, slug: "cors-forbidden", detail: "preflight refused: \(why)",
                    close: hasBody || !head.isKeepAlive, context: context)
                return
            case .actual(let headers):
                corsHeaders = headers
            }
        }
        if route.authUnavailable {
            // Fail closed: a route that asks for authentication is never served without it.
            self.respondLocally(
                status: 503, slug: "authentication-unavailable",
                detail: "routes[\(route.index)] requires a JWT, but this gateway has no verifier; not forwarded",
                extensions: ["reason": "auth-not-configured"],
                close: hasBody || !head.isKeepAlive, context: context)
            return
        }
        var outcome: PolicyOutcome?
        if let policies = route.policies {
            switch policies.admit(
                head.nio, clientIP: self.client.ip,
                clientCertificate: policies.needsClientCertificate ? self.clientCertificate : nil)
            {
            case .forward(let passed):
                outcome = passed
            case .reject(var rejection):
                rejection.headers += corsHeaders
                self.reject(rejection, close: hasBody || !head.isKeepAlive, context: context)
                return
            case .verifyLater(let token, var partial):
                partial.responseHeaders += corsHeaders
                self.verifyLater(
                    token, policies: policies, partial: partial, head: head, route: route, inspection: inspection,
                    hasBody: hasBody, context: context)
                return
            }
        }
        if !corsHeaders.isEmpty {
            if outcome == nil { outcome = PolicyOutcome() }
            outcome?.responseHeaders += corsHeaders
        }
        self.proceed(head, route: route, inspection: inspection, hasBody: hasBody, policy: outcome, context: context)
    }

    /// Applies the route's fault injection, then forwards.
    private func proceed(
        _ head: RequestHead, route: CompiledRoute, inspection: ProxyHeaders.RequestInspection, hasBody: Bool,
        policy: PolicyOutcome?, context: ChannelHandlerContext
    ) {
        if let fault = route.fault {
            if fault.shouldAbort(self.core.random) {
                self.respondLocally(
                    status: fault.status, slug: "fault-injected",
                    detail: "routes[\(route.index)] aborts a share of its requests (fault injection)",
                    extensions: ["reason": "fault"], headers: policy?.responseHeaders ?? [],
                    close: hasBody || !head.isKeepAlive, context: context)
                return
            }
            if fault.shouldDelay(self.core.random) {
                // Held like a request waiting for its token: reads stop, parts wait in `queued`.
                self.admitting = true
                _ = self.loop.timers.schedule(in: TimeAmount(fault.delay), on: context.eventLoop) {
                    self.admitting = false
                    guard !self.closed, !self.discarding, let context = self.context else { return }
                    self.forward(
                        head, route: route, inspection: inspection, hasBody: hasBody, policy: policy, context: context)
                    self.continueWithQueued(context: context)
                }
                return
            }
        }
        self.forward(head, route: route, inspection: inspection, hasBody: hasBody, policy: policy, context: context)
    }

    /// Verifies a token whose keys must be fetched: off the event loop, with reads stopped, then
    /// back on the loop to forward or answer the request.
    private func verifyLater(
        _ token: String, policies: RoutePolicies, partial: PolicyOutcome, head: RequestHead, route: CompiledRoute,
        inspection: ProxyHeaders.RequestInspection, hasBody: Bool, context: ChannelHandlerContext
    ) {
        guard let authenticator = policies.auth?.authenticator else { return }
        self.admitting = true
        let clientIP = self.client.ip
        let promise = context.eventLoop.makePromise(of: Result<Principal, AuthenticationError>.self)
        promise.completeWithTask {
            do throws(AuthenticationError) {
                return .success(try await authenticator.authenticate(token))
            } catch {
                return .failure(error)
            }
        }
        promise.futureResult.assumeIsolated().whenSuccess { result in
            self.admitting = false
            guard !self.closed, !self.discarding, let context = self.context else { return }
            let close = hasBody || !head.isKeepAlive
            switch policies.resume(result, head.nio, outcome: partial, clientIP: clientIP) {
            case .forward(let outcome):
                self.proceed(
                    head, route: route, inspection: inspection, hasBody: hasBody, policy: outcome, context: context)
                if !self.admitting { self.continueWithQueued(context: context) }
            case .reject(let rejection):
                self.reject(rejection, close: close, context: context)
            case .verifyLater:
                self.respondLocally(
                    status: 503, slug: "authentication-unavailable", detail: "the token could not be verified",
                    close: close, context: context)
            }
        }
    }

    private func reject(_ rejection: PolicyRejection, close: Bool, context: ChannelHandlerContext) {
        self.respondLocally(
            status: rejection.problem.status, slug: "", detail: rejection.problem.detail ?? "",
            problem: rejection.problem, headers: rejection.headers, close: close, context: context)
    }

    /// Sends an admitted request on to its cluster.
    private func forward(
        _ head: RequestHead, route: CompiledRoute, inspection: ProxyHeaders.RequestInspection, hasBody: Bool,
        policy: PolicyOutcome?, context: ChannelHandlerContext
    ) {
        if let answer = route.localAnswer {
            self.answerLocalRoute(
                answer, head: head.nio, route: route, headers: policy?.responseHeaders ?? [],
                close: hasBody || !head.isKeepAlive, context: context)
            return
        }
        if let compose = route.compose {
            self.compose(
                compose, head: head.nio, route: route, policy: policy, close: hasBody || !head.isKeepAlive,
                context: context)
            return
        }
        var capture: CacheCapture?
        if let cache = route.cache {
            switch self.cacheLookup(cache, head: head.nio, hasBody: hasBody) {
            case .hit(let entry, let now):
                let variables =
                    route.usesHeaderVariables ? HeaderVariables(clientIP: self.client.ip, request: head.nio) : nil
                self.answerFromCache(
                    entry, at: now, stale: false, headers: policy?.responseHeaders ?? [],
                    rewrite: route.responseHeaderRewrite, variables: variables, close: !head.isKeepAlive,
                    context: context)
                return
            case .miss(let missed):
                capture = missed
            case .bypass:
                break
            }
        }
        let clusterIndex = route.pickCluster(self.core.random)
        let cluster = self.upstreams.clusters[clusterIndex]
        // Only a ring hash reads a field (its key).
        guard let pool = cluster.pick(self.core.random, request: cluster.ring != nil ? head.nio.headers : HTTPHeaders())
        else {
            self.respondLocally(
                status: 503, slug: "no-upstream", detail: "cluster \(cluster.cluster.name) has no endpoints",
                extensions: ["cluster": cluster.cluster.name, "reason": "no-endpoints"],
                close: hasBody || !head.isKeepAlive, context: context)
            return
        }

        let shared = cluster.state
        let maxRequests = cluster.cluster.circuitBreaker.maxRequests
        guard shared.activeRequests.add(1, ordering: .relaxed).newValue <= maxRequests else {
            shared.activeRequests.subtract(1, ordering: .relaxed)
            cluster.state.overflows.add(1, ordering: .relaxed)
            self.core.statistics.circuitBreakerOverflows.add(1, ordering: .relaxed)
            self.respondLocally(
                status: 503, slug: "upstream-overflow",
                detail: "cluster \(cluster.cluster.name) has \(maxRequests) requests in flight already",
                extensions: ["cluster": cluster.cluster.name, "reason": "overflow"],
                close: hasBody || !head.isKeepAlive, context: context)
            return
        }
        let expectsContinue = hasBody && inspection.expectsContinue

        let variables = route.usesHeaderVariables ? HeaderVariables(clientIP: self.client.ip, request: head.nio) : nil
        let upstreamHead: UpstreamRequestHead
        if !inspection.hasHopByHop, !inspection.hasForwardedHeaders, !inspection.hasSubjectHeader,
            !inspection.hasClientCertificateHeader, !expectsContinue,
            route.requestHeaderRewrite == nil, route.mirror == nil, self.record.span == nil,
            cluster.cluster.upstreamProtocol == .http1
        {
            // The common case: the client's fields go out as they came, with the gateway's own
            // after them, written once as bytes (no copy of the fields to edit first).
            upstreamHead = .bytes(
                self.upstreamRequestBytes(head, uri: route.rewrite(uri: head.uri), inspection, policy, context),
                isHead: head.method == .HEAD)
        } else {
            upstreamHead = .parts(
                self.upstreamRequestHead(
                    head.nio, route: route, inspection: inspection, policy: policy, variables: variables,
                    expectsContinue: expectsContinue))
        }
        if expectsContinue {
            // The gateway reads the body itself, so it tells the client to go on now; the
            // upstream gets the body without the expectation (as nginx does).
            let proceed = HTTPResponseHead(version: head.version, status: .continue)
            self.emit(.head(proceed), context: context, flush: true)
        }

        let exchange = self.makeExchange(
            route: route, clusterIndex: clusterIndex, cluster: cluster, pool: pool, head: upstreamHead,
            downstream: head)
        self.exchange = exchange
        var mirrorCopy: MirrorCopy?
        if route.mirror != nil, case .parts(let parts) = upstreamHead {
            mirrorCopy = self.drawMirror(route, head: parts)
        }
        if hasBody && (exchange.mayRetry || mirrorCopy != nil) {
            // A retry or a mirror copy needs the body again: a copy is kept as it streams through,
            // up to `request_buffer_bytes`. A declared length over it is not kept at all.
            let limit = self.core.configuration.limits.requestBufferBytes
            if let length = inspection.contentLength, length > limit {
                self.core.statistics.requestBufferOverflows.add(1, ordering: .relaxed)
                exchange.mayRetry = false
            } else {
                exchange.kept = context.channel.allocator.buffer(capacity: inspection.contentLength ?? 0)
                exchange.mirrorCopy = mirrorCopy
            }
            mirrorCopy = nil
        }
        if let policy { exchange.responseHeaders = policy.responseHeaders }
        exchange.cache = capture
        exchange.headerVariables = variables
        pool.inFlight += 1
        if let timeout = route.route.timeout {
            exchange.timeout = self.loop.timers.schedule(in: TimeAmount(timeout), on: context.eventLoop) {
                self.timedOut(exchange)
            }
        }
        route.retry?.budget?.deposit()
        self.startAttempt(exchange, context: context)
        // A request without a body is copied at once, after the primary request started.
        if let mirrorCopy { self.startMirror(mirrorCopy, body: nil, trailers: nil) }
    }

    /// Adds a part of the request body to the exchange's copy, or drops the copy (and with it
    /// the retries and the mirror copy) when the body outgrows `limits.request_buffer_bytes`.
    private func keep(_ buffer: ByteBuffer, _ exchange: Exchange) {
        let limit = self.core.configuration.limits.requestBufferBytes
        if (exchange.kept?.readableBytes ?? 0) + buffer.readableBytes <= limit {
            // In place: the copy is not shared, except once with a retry's pending parts.
            exchange.kept?.writeImmutableBuffer(buffer)
            return
        }
        exchange.kept = nil
        exchange.mirrorCopy = nil
        exchange.mayRetry = false
        // Not retryable any more: no per-try limit either (the route's `timeout` still holds).
        exchange.perTryTimeout?.cancel()
        exchange.perTryTimeout = nil
        self.core.statistics.requestBufferOverflows.add(1, ordering: .relaxed)
    }

    /// The upstream request head as NIO's type, for whatever edits the client's fields: hop-by-hop
    /// fields to remove, earlier proxies' `Forwarded` fields to extend, header rewrites, trace
    /// context, a mirror, an HTTP/2 upstream.
    private func upstreamRequestHead(
        _ head: HTTPRequestHead, route: CompiledRoute, inspection: ProxyHeaders.RequestInspection,
        policy: PolicyOutcome?, variables: HeaderVariables?, expectsContinue: Bool
    ) -> HTTPRequestHead {
        var upstreamHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: route.rewrite(uri: head.uri))
        upstreamHead.headers = head.headers
        // One copy with room for what is added below, rather than a copy and then a regrowth.
        upstreamHead.headers.reserveCapacity(head.headers.count + 6)
        if inspection.hasHopByHop {
            ProxyHeaders.removeHopByHop(&upstreamHead.headers)
        }
        if inspection.isChunked {
            upstreamHead.headers.add(name: "transfer-encoding", value: "chunked")
        } else if inspection.contentLength == nil, head.method == .POST || head.method == .PUT || head.method == .PATCH
        {
            upstreamHead.headers.add(name: "content-length", value: "0")
        }
        self.addForwardedHeaders(&upstreamHead.headers, downstream: head, earlier: inspection.hasForwardedHeaders)
        if inspection.hasSubjectHeader {
            // Only the gateway says who the caller is.
            upstreamHead.headers.remove(name: subjectHeaderName)
        }
        if let subject = policy?.subject {
            upstreamHead.headers.add(name: subjectHeaderName, value: subject)
        }
        if inspection.hasClientCertificateHeader {
            // Only the gateway says which certificate the client presented.
            upstreamHead.headers.remove(name: clientCertificateHeaderName)
        }
        if let field = self.clientCertificateField {
            upstreamHead.headers.add(name: clientCertificateHeaderName, value: field)
        }
        route.requestHeaderRewrite?.apply(to: &upstreamHead.headers, variables)
        self.injectTrace(into: &upstreamHead.headers)
        if expectsContinue { upstreamHead.headers.remove(name: "expect") }
        return upstreamHead
    }

    /// The upstream request head as HTTP/1.1 bytes, when the client's fields need no edit: the
    /// request line with the rewritten target, the client's fields as parsed, then the gateway's
    /// (`Content-Length: 0` for a bodyless POST, PUT or PATCH, `X-Forwarded-*`, `Forwarded`, the
    /// subject of a verified token).
    private func upstreamRequestBytes(
        _ head: RequestHead, uri: String, _ inspection: ProxyHeaders.RequestInspection, _ policy: PolicyOutcome?,
        _ context: ChannelHandlerContext
    ) -> ByteBuffer {
        // A stream's proxy serves one request: it borrows its connection's buffers (returned
        // when the exchange ends) rather than keeping its own.
        var buffer =
            if let stream = self.stream {
                stream.server.requestHeads.take(capacity: 512, allocator: context.channel.allocator)
            } else {
                self.outputBuffers.takeRequest(capacity: 512, allocator: context.channel.allocator)
            }
        buffer.writeString(head.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(uri)
        buffer.writeStaticString(" HTTP/1.1\r\n")
        head.writeFields(into: &buffer)
        if inspection.contentLength == nil, head.method == .POST || head.method == .PUT || head.method == .PATCH {
            buffer.writeStaticString("content-length: 0\r\n")
        }
        buffer.writeImmutableBuffer(self.forwardedLines(host: head.host))
        if let subject = policy?.subject { buffer.writeHTTPField(subjectHeaderName, subject) }
        if let field = self.connectionCertificateField {
            buffer.writeHTTPField(clientCertificateHeaderName, field)
        }
        buffer.writeStaticString("\r\n")
        if self.stream == nil { self.outputBuffers.keepRequest(buffer) }
        return buffer
    }

    /// Sends the exchange to its current endpoint: an idle connection at once, or a new one.
    private func startAttempt(_ exchange: Exchange, context: ChannelHandlerContext) {
        exchange.attemptAnswered = false
        // Otherwise armed when the request ends.
        if exchange.requestComplete { self.armPerTryTimeout(exchange, context: context) }
        if let connection = exchange.pool.takeIdle() {
            self.connected(exchange, .success(connection))
        } else {
            exchange.pool.connect().assumeIsolated().whenComplete { result in
                self.connected(exchange, result)
            }
        }
    }

    /// Starts the current attempt's `per_try_timeout`, if the route has one and the request may
    /// be retried: from the end of the request (or from the attempt's start when it begins after
    /// that), until the attempt's response head.
    private func armPerTryTimeout(_ exchange: Exchange, context: ChannelHandlerContext) {
        guard exchange.mayRetry, exchange.perTryTimeout == nil, let limit = exchange.route.retry?.perTryTimeout
        else { return }
        exchange.perTryTimeout = self.loop.timers.schedule(in: TimeAmount(limit), on: context.eventLoop) {
            self.perTryTimedOut(exchange)
        }
    }

    /// Why an attempt failed, as far as the retry policy is concerned.
    private enum AttemptFailure {
        case connectFailure
        case reset
        /// Always retried while attempts are left: the per-try limit exists to try again.
        case perTryTimeout
        case status(UInt)

        var isPerTryTimeout: Bool {
            if case .perTryTimeout = self { return true }
            return false
        }
    }

    /// Starts the next attempt if the route's policy, the attempts left and the retry budget
    /// allow it; the failed attempt's connection is closed (never reused).
    private func retry(_ exchange: Exchange, after failure: AttemptFailure) -> Bool {
        // A request whose body was received in part or in whole goes again only with all of it.
        guard exchange.mayRetry, !exchange.responseHeadSent, let policy = exchange.route.retry,
            exchange.attempt < policy.attempts, exchange.kept != nil || exchange.bodyBytes == 0,
            let context = self.context
        else { return false }
        switch failure {
        case .connectFailure: guard policy.onConnectFailure else { return false }
        case .reset, .perTryTimeout: guard policy.onReset || failure.isPerTryTimeout else { return false }
        case .status(let code): guard policy.statuses.contains(code) else { return false }
        }
        if let budget = policy.budget, !budget.tryWithdraw() {
            self.core.statistics.retryBudgetExhausted.add(1, ordering: .relaxed)
            return false
        }
        self.core.statistics.retries.add(1, ordering: .relaxed)
        exchange.cluster.metrics.retries &+= 1
        exchange.attempt += 1
        exchange.perTryTimeout?.cancel()
        exchange.perTryTimeout = nil
        if let connection = exchange.connection {
            exchange.connection = nil
            connection.close()
        }
        exchange.pool.inFlight -= 1
        exchange.pool = exchange.cluster.pick(self.core.random) ?? exchange.pool
        exchange.pool.inFlight += 1
        // The next try gets the head, then the body kept so far, then the rest as it arrives
        // (downstream reads wait until its connection is up, and then on its writability).
        exchange.pending.removeAll()
        if let kept = exchange.kept, kept.readableBytes > 0 { exchange.pending.append(.body(.byteBuffer(kept))) }
        if exchange.requestComplete { exchange.pending.append(.end(exchange.keptTrailers)) }
        self.startAttempt(exchange, context: context)
        return true
    }

    private func perTryTimedOut(_ exchange: Exchange) {
        guard self.exchange === exchange, !exchange.responseHeadSent, let context = self.context else { return }
        exchange.perTryTimeout = nil
        self.recordUpstream(exchange, failure: .timeout)
        if self.retry(exchange, after: .perTryTimeout) { return }
        let limit = exchange.route.retry?.perTryTimeout.map { GatewayUnits.render($0) } ?? "?"
        self.abort(
            exchange, status: 504, slug: "upstream-timeout",
            detail:
                "cluster \(exchange.clusterName) at \(exchange.pool.endpoint) did not answer within \(limit) (per try)",
            reason: "per-try-timeout", context: context)
    }

    /// The client's address as `X-Forwarded-For` and `Forwarded` write it, looked up once per
    /// connection (once per HTTP/2 connection, not per stream).
    private var client: (ip: String?, forwardedFor: String) {
        if let client = self.peer.client { return client }
        let client = DownstreamPeer.describe(self.context?.channel.remoteAddress)
        self.peer.client = client
        return client
    }

    /// The client's address, the `Host` and this proxy's `Forwarded` element for `downstream`.
    private func forwardedFields(host: String?) -> (ip: String?, host: String?, element: String) {
        let client = self.client
        if let last = self.peer.lastForwarded, last.host == host {
            return (client.ip, host, last.element)
        }
        let element = Self.forwardedElement(client.forwardedFor, scheme: self.scheme, host: host)
        self.peer.lastForwarded = (host, element)
        return (client.ip, host, element)
    }

    /// The gateway's `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
    /// lines for a request naming `host`, as ``forwardedFields(host:)`` has them. Hot path: the requests of a
    /// connection almost always name the same `Host`, so the lines are written once per
    /// connection and `Host` and copied as one block into each upstream request head, rather
    /// than written as four fields per request.
    private func forwardedLines(host: String?) -> ByteBuffer {
        // An HTTP/1.x connection keeps the block in its handler, which the request has in cache
        // already; the peer object is read only for the first request (or a new `Host`).
        let last = self.stream == nil ? self.forwardedCache : self.peer.lastForwardedLines
        if let last, last.host == host { return last.lines }
        let (ip, _, element) = self.forwardedFields(host: host)
        var lines = ByteBuffer()
        if let ip { lines.writeHTTPField("x-forwarded-for", ip) }
        lines.writeHTTPField("x-forwarded-proto", self.scheme)
        if let host { lines.writeHTTPField("x-forwarded-host", host) }
        lines.writeHTTPField("forwarded", element)
        if self.stream == nil {
            self.forwardedCache = (host, lines)
        } else {
            self.peer.lastForwardedLines = (host, lines)
        }
        return lines
    }

    /// `X-Forwarded-Client-Cert` for this connection's client certificate, if any: asked of the
    /// peer once per HTTP/1.x connection, then kept in the handler (see ``forwardedLines(host:)``).
    private var connectionCertificateField: String? {
        if self.stream == nil, let known = self.certificateFieldCache { return known }
        let field = self.clientCertificateField
        if self.stream == nil { self.certificateFieldCache = .some(field) }
        return field
    }

    private func addForwardedHeaders(_ headers: inout HTTPHeaders, downstream: HTTPRequestHead, earlier: Bool) {
        let (ip, host, element) = self.forwardedFields(host: downstream.headers.first(name: "host"))
        guard earlier else {
            if let ip { headers.add(name: "x-forwarded-for", value: ip) }
            headers.add(name: "x-forwarded-proto", value: self.scheme)
            if let host { headers.add(name: "x-forwarded-host", value: host) }
            headers.add(name: "forwarded", value: element)
            return
        }
        if let ip {
            let existing = headers["x-forwarded-for"]
            headers.replaceOrAdd(
                name: "x-forwarded-for", value: existing.isEmpty ? ip : "\(existing.joined(separator: ", ")), \(ip)")
        }
        headers.replaceOrAdd(name: "x-forwarded-proto", value: self.scheme)
        if let host {
            headers.replaceOrAdd(name: "x-forwarded-host", value: host)
        }
        let forwarded = headers["forwarded"]
        headers.replaceOrAdd(
            name: "forwarded", value: forwarded.isEmpty ? element : "\(forwarded.joined(separator: ", ")), \(element)")
    }

    /// This proxy's `Forwarded` element (RFC 7239): one per proxy, appended to what earlier
    /// proxies wrote.
    private static func forwardedElement(_ forwardedFor: String, scheme: String, host: String?) -> String {
        var element = forwardedFor + "proto=" + scheme
        if let host {
            if host.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
                var escaped = ""
                for scalar in host.unicodeScalars {
                    if scalar == "\\" || scalar == "\"" { escaped.unicodeScalars.append("\\") }
                    escaped.unicodeScalars.append(scalar)
                }
                element += ";host=\"\(escaped)\""
            } else {
                element += ";host=\"\(host)\""
            }
        }
        return element
    }

    private func connected(_ exchange: Exchange, _ result: Result<UpstreamConnection, any Error>) {
        guard self.exchange === exchange, !self.closed, let context = self.context else {
            // The exchange ended (timeout, client gone) while connecting.
            if case .success(let connection) = result { exchange.pool.release(connection) }
            return
        }
        switch result {
        case .failure(let error as UpstreamOverflow):
            self.core.statistics.circuitBreakerOverflows.add(1, ordering: .relaxed)
            self.abort(
                exchange, status: 503, slug: "upstream-overflow",
                detail:
                    "cluster \(exchange.clusterName) has \(error.limit) \(error.threshold == "max_pending" ? "requests waiting for a connection" : "connections open") already (circuit_breaker.\(error.threshold))",
                reason: "overflow", context: context)
        case .failure(let error):
            self.recordUpstream(exchange, failure: .connect)
            if self.retry(exchange, after: .connectFailure) { return }
            self.abort(
                exchange, status: 502, slug: "upstream-connect-failure",
                detail:
                    "cannot connect to cluster \(exchange.clusterName) at \(exchange.pool.endpoint): \(Self.describe(error))",
                reason: "connect-failure", context: context)
        case .success(let connection):
            exchange.connection = connection
            connection.handler.exchange = self
            let writable = if let stream = self.stream { stream.isWritable } else { context.channel.isWritable }
            connection.handler.setReadsPaused(!writable)
            switch exchange.upstreamHead {
            case .parts(let head): connection.handler.send(.head(head))
            case .bytes(let bytes, let isHead):
                // Nothing waiting to follow it: written and flushed at once.
                connection.handler.sendHead(bytes, isHead: isHead, flush: exchange.pending.isEmpty)
            }
            for part in exchange.pending {
                connection.handler.send(part)
            }
            exchange.pending.removeAll()
            connection.handler.flush()
            self.resumeReading()
        }
    }

    private func sendUpstream(_ part: HTTPClientRequestPart, _ exchange: Exchange) {
        if let connection = exchange.connection {
            connection.handler.send(part)
        } else {
            exchange.pending.append(part)
        }
    }

    // MARK: Upstream events

    func upstreamReceived(_ part: consuming UpstreamResponsePart) {
        guard let exchange = self.exchange, let context = self.context else { return }
        switch consume part {
        case .head(let upstream):
            exchange.attemptAnswered = true
            exchange.perTryTimeout?.cancel()
            exchange.perTryTimeout = nil
            self.recordUpstream(exchange, status: upstream.status.code)
            if exchange.mayRetry, self.retry(exchange, after: .status(upstream.status.code)) { return }
            if self.drainRequested { exchange.keepAlive = false }
            if exchange.cache != nil,
                self.cacheResponseHead(
                    exchange,
                    HTTPResponseHead(version: upstream.version, status: upstream.status, headers: upstream.headers),
                    context: context)
            {
                return
            }
            self.record.status = Int(upstream.status.code)
            exchange.upstreamReusable =
                upstream.isKeepAlive
                && (upstream.isFramed || exchange.isHead || upstream.status == .noContent
                    || upstream.status == .notModified)
            // Framing is set here, not by an encoder: a response without a body (to HEAD, 204,
            // 304) keeps its Content-Length if it has one and gets nothing else; a body without a
            // length is re-chunked for HTTP/1.1 clients and ends with the connection for HTTP/1.0.
            let bodyless =
                exchange.isHead || upstream.status == .noContent || upstream.status == .notModified
                || upstream.status.code < 200
            exchange.responseHeadSent = true
            // The common case: nothing reads or edits the fields, so the upstream's lines go out
            // as they came, minus hop-by-hop ones (as HTTP/1.1 lines, or as a stream's HPACK block).
            if let lines = upstream.lines, !upstream.connectionNamesOthers, exchange.responseHeaders.isEmpty,
                exchange.route.responseHeaderRewrite == nil
            {
                if let stream = self.stream {
                    // The stream ends with the response (its frames delimit the body).
                    exchange.keepAlive = false
                    stream.writeHead(upstream.status, lines: lines)
                    self.outputUnflushed = true
                    return
                }
                let chunked = !bodyless && !upstream.hasContentLength && exchange.downstreamVersion.minor >= 1
                if !bodyless && !upstream.hasContentLength && !chunked { exchange.keepAlive = false }
                let connection: StaticString? =
                    !exchange.keepAlive ? "close" : exchange.downstreamVersion.minor == 0 ? "keep-alive" : nil
                self.emitForwardedHead(
                    upstream, version: exchange.downstreamVersion, chunked: chunked, connection: connection,
                    context: context)
                return
            }
            var head = HTTPResponseHead(
                version: exchange.downstreamVersion, status: upstream.status, headers: upstream.headers)
            ProxyHeaders.removeHopByHop(&head.headers)
            for (name, value) in exchange.responseHeaders {
                head.headers.replaceOrAdd(name: name, value: value)
            }
            exchange.route.responseHeaderRewrite?.apply(to: &head.headers, exchange.headerVariables)
            if self.isStream {
                // An HTTP/2 stream has neither chunking nor `Connection` (its frames delimit the
                // body, and the stream ends with the response): nothing is added for the codec to
                // take out again.
                exchange.keepAlive = false
            } else {
                if !bodyless && !head.headers.contains(name: "content-length") {
                    if exchange.downstreamVersion.minor >= 1 {
                        head.headers.add(name: "transfer-encoding", value: "chunked")
                    } else {
                        exchange.keepAlive = false
                    }
                }
                if !exchange.keepAlive {
                    head.headers.add(name: "connection", value: "close")
                } else if exchange.downstreamVersion.minor == 0 {
                    head.headers.add(name: "connection", value: "keep-alive")
                }
            }
            self.emit(.head(head), context: context)
        case .body(let buffer):
            if exchange.cache?.collecting != nil { self.cacheResponseBody(exchange, buffer) }
            self.emitBody(buffer, context: context)
        case .end(let trailers):
            if exchange.cache?.collecting != nil { self.cacheResponseEnd(exchange) }
            let reuse = exchange.upstreamReusable && exchange.requestComplete
            if !exchange.requestComplete {
                // The upstream answered before the request body ended; the rest cannot be sent
                // anywhere, so this connection closes after the answer.
                exchange.keepAlive = false
                self.discarding = true
            }
            self.finish(exchange, reuseUpstream: reuse)
            self.endRecord(status: self.record.status)
            if exchange.keepAlive {
                self.emit(.end(trailers), context: context, flush: true)
                self.continueWithQueued(context: context)
                self.startIdleTimer(context: context)
            } else {
                self.closeAfterWriting(.end(trailers), context: context)
            }
        }
    }

    func upstreamReadComplete() {
        guard let context = self.context else { return }
        self.flushOutput(context: context)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { self.resumeReading() }
    }

    func upstreamFailed(_ error: (any Error)?) {
        guard let exchange = self.exchange, let context = self.context else { return }
        if exchange.responseHeadSent {
            // Half a response went out already: all the client can learn is a cut connection.
            self.finish(exchange, reuseUpstream: false)
            self.closeDownstream(context)
            return
        }
        if let error, error is HTTP1ResponseError || error is HTTPParserError {
            // Not HTTP, or not valid HTTP: never retried, the upstream is broken.
            self.abort(
                exchange, status: 502, slug: "upstream-bad-response",
                detail:
                    "cluster \(exchange.clusterName) at \(exchange.pool.endpoint) sent an invalid response: \(error)",
                reason: "bad-response", context: context)
            return
        }
        if let connection = exchange.connection, connection.exchanges > 1, exchange.isReplayable,
            exchange.bodyBytes == 0, !exchange.retried
        {
            // A kept-alive connection the upstream closed, most likely while it was idle: nothing
            // but the head went out and the request is safe to repeat, so it goes again on a new
            // connection, once (as Go's transport does).
            exchange.retried = true
            exchange.connection = nil
            connection.close()
            self.core.statistics.upstreamStaleRetries.add(1, ordering: .relaxed)
            if exchange.requestComplete { exchange.pending.append(.end(nil)) }
            exchange.pool.connect().assumeIsolated().whenComplete { result in
                self.connected(exchange, result)
            }
            return
        }
        self.recordUpstream(exchange, failure: .reset)
        if self.retry(exchange, after: .reset) { return }
        let why = error.map { Self.describe($0) } ?? "the connection closed before a complete response"
        self.abort(
            exchange, status: 502, slug: "upstream-reset",
            detail: "cluster \(exchange.clusterName) at \(exchange.pool.endpoint) failed: \(why)",
            reason: "reset", context: context)
    }

    private func timedOut(_ exchange: Exchange) {
        guard self.exchange === exchange, let context = self.context else { return }
        exchange.timeout = nil
        let limit = exchange.route.route.timeout.map { GatewayUnits.render($0) } ?? "?"
        if !exchange.responseHeadSent { self.recordUpstream(exchange, failure: .timeout) }
        if exchange.responseHeadSent {
            self.finish(exchange, reuseUpstream: false)
            self.closeDownstream(context)
            return
        }
        self.abort(
            exchange, status: 504, slug: "upstream-timeout",
            detail: "cluster \(exchange.clusterName) at \(exchange.pool.endpoint) did not answer within \(limit)",
            reason: "timeout", context: context)
    }

    // MARK: Ending exchanges

    /// Ends `exchange` with a local problem response (before any response head went out).
    private func abort(
        _ exchange: Exchange, status: Int, slug: String, detail: String, reason: String?,
        context: ChannelHandlerContext
    ) {
        if let reason, !exchange.responseHeadSent, exchange.cache?.stale != nil,
            self.answerStale(exchange, after: reason, context: context)
        {
            return
        }
        let requestComplete = exchange.requestComplete
        self.finish(exchange, reuseUpstream: false)
        var extensions = ["cluster": exchange.clusterName, "endpoint": exchange.pool.endpoint.description]
        if let reason { extensions["reason"] = reason }
        if exchange.responseHeadSent {
            self.closeDownstream(context)
            return
        }
        self.respondLocally(
            status: status, slug: slug, detail: detail, extensions: extensions,
            close: !requestComplete || !exchange.keepAlive, context: context)
    }

    /// Forgets `exchange`: its timer, its in-flight count and its upstream connection, which goes
    /// back to the pool when it is clean and closes otherwise.
    func finish(_ exchange: Exchange, reuseUpstream: Bool) {
        guard self.exchange === exchange else { return }
        self.exchange = nil
        exchange.timeout?.cancel()
        exchange.timeout = nil
        exchange.perTryTimeout?.cancel()
        exchange.perTryTimeout = nil
        exchange.pool.inFlight -= 1
        exchange.cluster.state.activeRequests.subtract(1, ordering: .relaxed)
        if let connection = exchange.connection {
            exchange.connection = nil
            connection.handler.exchange = nil
            if reuseUpstream {
                exchange.pool.release(connection)
            } else {
                connection.close()
            }
        }
        exchange.pending.removeAll()
        if let stream = self.stream, case .bytes(let head, _) = exchange.upstreamHead {
            // Sent long ago; the exchange ends: the buffer goes back to the connection's streams.
            stream.server.requestHeads.giveBack(head)
        }
        // Kept for the next request unless it holds a body copy or a cache capture (an idle
        // connection holds no more than the object); reused only if nothing else holds it then.
        if exchange.kept == nil && exchange.cache == nil {
            exchange.park()
            if let server = self.stream?.server {
                if server.spareExchanges.count < LentBuffers.keptCount { server.spareExchanges.append(exchange) }
            } else {
                self.spareExchange = exchange
            }
        }
    }

    /// The exchange for a new request: the last one's object when nothing but this handler
    /// holds it any more (on an HTTP/2 stream, one its connection kept from an ended stream),
    /// otherwise a new one.
    ///
    /// Hot path: the exchange was the one allocation left per proxied request (a `malloc`, and
    /// an object's worth of retains on creation and releases on its end). Reuse is invisible by
    /// construction: `isKnownUniquelyReferenced` is true only when no timer, connect callback,
    /// retry or caller frame up the stack holds the old exchange (each of those holds a strong
    /// reference), so nothing that compares exchanges by identity (`self.exchange === exchange`)
    /// can see the object come back as another request's.
    private func makeExchange(
        route: CompiledRoute, clusterIndex: Int, cluster: ClusterPools, pool: UpstreamPool,
        head: UpstreamRequestHead, downstream: RequestHead
    ) -> Exchange {
        // Moved out of `kept` (`take()`), not copied: a second reference fails the check.
        var kept =
            if let server = self.stream?.server { server.spareExchanges.popLast() } else { self.spareExchange.take() }
        if var spare = kept.take(), isKnownUniquelyReferenced(&spare) {
            spare.reuse(
                route: route, clusterIndex: clusterIndex, cluster: cluster, pool: pool, head: head,
                downstream: downstream)
            return spare
        }
        self.loop.metrics.exchangesMade &+= 1
        return Exchange(
            route: route, clusterIndex: clusterIndex, cluster: cluster, pool: pool, head: head, downstream: downstream)
    }

    /// Replays pipelined parts that arrived during the last exchange, then reads on.
    func continueWithQueued(context: ChannelHandlerContext) {
        while !self.queued.isEmpty && !self.closed && !self.discarding {
            // A request waiting for its admission (token, injected delay) takes the rest later.
            if self.admitting { return }
            if let exchange = self.exchange, exchange.requestComplete { return }
            let part = self.queued.removeFirst()
            self.handle(part, context: context)
        }
        self.resumeReading()
    }

    /// Writes a problem+json response of the gateway's own.
    private func respondLocally(
        status: Int, slug: String, detail: String, extensions: [String: String] = [:],
        problem given: ProblemDetails? = nil, headers extra: [(String, String)] = [], close: Bool,
        context: ChannelHandlerContext
    ) {
        self.core.statistics.localResponses.add(1, ordering: .relaxed)
        self.endRecord(status: status)
        let close = close || self.drainRequested
        var problem = given ?? ProblemDetails(status: status, detail: detail, slug: slug, extensions: extensions)
        problem.instance = nil
        let body = (try? problem.jsonData()).map { ByteBuffer(bytes: $0) } ?? ByteBuffer(string: "{}")
        var headers = HTTPHeaders(extra)
        headers.add(name: "content-type", value: ProblemDetails.mediaType)
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "connection", value: close ? "close" : "keep-alive")
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        self.emit(.head(head), context: context)
        if !self.answeringHead {  // a response to HEAD has the length but not the body
            self.emit(.body(.byteBuffer(body)), context: context)
        }
        if close {
            self.discarding = true
            self.closeAfterWriting(.end(nil), context: context)
        } else {
            self.emit(.end(nil), context: context, flush: true)
            self.continueWithQueued(context: context)
            self.startIdleTimer(context: context)
        }
    }

    func closeAfterWriting(_ part: HTTPServerResponsePart, context: ChannelHandlerContext) {
        self.queued.removeAll()
        if let stream = self.stream {
            if self.streamRequestEnded {
                // Both ends of the stream are (about to be) closed: the server ends it when the
                // END_STREAM of this part is written. Resetting it as well would cost a promise
                // and a callback per request for nothing.
                self.emit(part, context: context, flush: true)
                return
            }
            // The rest of the request is not wanted: once the response has gone out, RST_STREAM
            // with NO_ERROR asks the client to stop sending it (RFC 9113, section 8.1).
            let promise = context.eventLoop.makePromise(of: Void.self)
            self.emit(part, context: context, flush: true, promise: promise)
            promise.futureResult.assumeIsolated().whenComplete { _ in stream.reset(.noError) }
            return
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.emit(part, context: context, flush: true, promise: promise)
        let channel = context.channel
        promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case let error as ChannelError:
            switch error {
            case .connectTimeout(let amount): return "connect timed out after \(amount.nanoseconds / 1_000_000)ms"
            case .eof: return "the connection closed"
            default: return "\(error)"
            }
        case let error as IOError:
            return error.description
        case let error as NIOConnectionError:
            return error.connectionErrors.first.map { "\($0.error)" } ?? "\(error)"
        default:
            return "\(error)"
        }
    }
}

/// What the proxy derives from a downstream connection's peer, once per connection: an HTTP/1.1
/// connection's `ProxyHandler` has its own, the streams of an HTTP/2 connection share one.
///
/// Not thread-safe by design: used on the connection's event loop only.
final class DownstreamPeer {
    /// The client's IP address and its `Forwarded` `for=` element; `nil` until first asked.
    var client: (ip: String?, forwardedFor: String)?
    /// The last `Forwarded` element built and the `Host` it was built for: the requests of a
    /// connection almost always name the same host, so the string is built once.
    var lastForwarded: (host: String?, element: String)?
    /// The last block of `X-Forwarded-*` and `Forwarded` lines written and the `Host` it was
    /// written for (the scheme is the connection's).
    var lastForwardedLines: (host: String?, lines: ByteBuffer)?
    /// The connection's verified client certificate (`.some(nil)`: none); `nil` until first asked.
    var clientCertificate: ClientCertificateIdentity??

    static func describe(_ address: SocketAddress?) -> (ip: String?, forwardedFor: String) {
        guard let ip = address?.ipAddress else { return (nil, "") }
        return (ip, ip.utf8.contains(UInt8(ascii: ":")) ? "for=\"[\(ip)]\";" : "for=\(ip);")
    }
}

/// The head of the request an exchange sends upstream (again on a retry).
enum UpstreamRequestHead {
    case parts(HTTPRequestHead)
    /// Written as HTTP/1.1 bytes already; `isHead` tells the response parser the answer has no body.
    case bytes(ByteBuffer, isHead: Bool)
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

extension GatewayUnits {
    /// A duration as written in YAML: `2s`, `500ms`.
    static func render(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000)s" : "\(milliseconds)ms"
    }
}
