//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOHTTP1
import Synchronization

/// The header that marks a mirrored request, so the shadow cluster can tell copies apart (and,
/// for example, not charge a card twice).
let shadowHeaderName = "x-aviary-shadow"

/// How long a mirrored request may take before its connection is closed: the copy must not
/// hold connections forever when the shadow cluster hangs.
let mirrorTimeout = TimeAmount.seconds(10)

/// A mirror copy drawn for a request: the shadow endpoint's pool and the head it gets. A request
/// with a body keeps it until the body is complete (see `ProxyHandler.Exchange.mirrorCopy`).
struct MirrorCopy {
    let pool: UpstreamPool
    let head: HTTPRequestHead
}

extension ProxyHandler {
    /// Draws whether a request is copied to the route's mirror cluster, and picks the endpoint.
    func drawMirror(_ route: CompiledRoute, head upstreamHead: HTTPRequestHead) -> MirrorCopy? {
        guard let mirror = route.mirror,
            mirror.threshold >= 1_000_000 || self.core.random.next(below: 1_000_000) < mirror.threshold
        else { return nil }
        let cluster = self.upstreams.clusters[mirror.cluster]
        guard let pool = cluster.pick(self.core.random, request: upstreamHead.headers) else { return nil }
        var head = upstreamHead
        head.headers.replaceOrAdd(name: shadowHeaderName, value: "true")
        return MirrorCopy(pool: pool, head: head)
    }

    /// Sends a drawn copy, with the request's whole body if it has one. The copy runs on its own
    /// connection from the loop's pool and nothing about it reaches the client: not its status,
    /// not its failure, not its time (its body, at most `limits.request_buffer_bytes`, is written
    /// at once and waits in the copy's socket buffers, never in the client's path).
    func startMirror(_ copy: MirrorCopy, body: ByteBuffer?, trailers: HTTPHeaders?) {
        self.core.statistics.mirroredRequests.add(1, ordering: .relaxed)
        MirrorExchange(pool: copy.pool, head: copy.head, body: body, trailers: trailers, timers: self.loop.timers)
            .start()
    }
}

/// One mirrored request: sends the head (and the body), reads the response to its end and discards it, then
/// gives the connection back to the pool (or closes it). Lives on the pool's event loop; the
/// upstream handler's reference keeps it alive while the connection is busy.
final class MirrorExchange: UpstreamExchange {
    let pool: UpstreamPool
    let head: HTTPRequestHead
    let body: ByteBuffer?
    let trailers: HTTPHeaders?
    private var connection: UpstreamConnection?
    private var reusable = false
    private let timers: any GatewayTimers
    private var timer: GatewayTimer?
    private var done = false

    init(
        pool: UpstreamPool, head: HTTPRequestHead, body: ByteBuffer? = nil, trailers: HTTPHeaders? = nil,
        timers: any GatewayTimers
    ) {
        self.pool = pool
        self.head = head
        self.body = body
        self.trailers = trailers
        self.timers = timers
    }

    func start() {
        self.pool.inFlight += 1
        self.timer = self.timers.schedule(in: mirrorTimeout, on: self.pool.eventLoop) {
            self.end(reuse: false)
        }
        if let connection = self.pool.takeIdle() {
            self.send(on: connection)
        } else {
            self.pool.connect().assumeIsolated().whenComplete { result in
                switch result {
                case .success(let connection): self.send(on: connection)
                case .failure: self.end(reuse: false)
                }
            }
        }
    }

    private func send(on connection: UpstreamConnection) {
        guard !self.done else {
            self.pool.release(connection)
            return
        }
        self.connection = connection
        connection.handler.exchange = self
        connection.handler.setReadsPaused(false)
        connection.handler.send(.head(self.head))
        if let body = self.body, body.readableBytes > 0 { connection.handler.send(.body(.byteBuffer(body))) }
        connection.handler.send(.end(self.trailers))
        connection.handler.flush()
    }

    func upstreamReceived(_ part: consuming UpstreamResponsePart) {
        switch part {
        case .head(let response):
            let framed =
                response.isFramed || self.head.method == .HEAD || response.status == .noContent
                || response.status == .notModified
            self.reusable = response.isKeepAlive && framed
        case .body:
            break
        case .end:
            self.end(reuse: self.reusable)
        }
    }

    func upstreamReadComplete() {}

    func upstreamWritabilityChanged(isWritable: Bool) {}

    func upstreamFailed(_ error: (any Error)?) {
        self.end(reuse: false)
    }

    private func end(reuse: Bool) {
        guard !self.done else { return }
        self.done = true
        self.timer?.cancel()
        self.timer = nil
        self.pool.inFlight -= 1
        guard let connection = self.connection else { return }
        self.connection = nil
        connection.handler.exchange = nil
        if reuse { self.pool.release(connection) } else { connection.close() }
    }
}
