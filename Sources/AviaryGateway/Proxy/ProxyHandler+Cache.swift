//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1

// The proxy's side of a route's `cache:`: answer fresh entries locally, collect cacheable GET
// responses while they stream to the client (abandoning any that outgrow the entry limit, so
// nothing is buffered without bound), and answer a stale entry when the upstream fails.

/// A cacheable request on its way through (a class, so that an exchange without caching carries
/// one nil reference, and collecting appends to the body in place).
final class CacheCapture {
    let route: RouteCache
    let key: String
    /// The client's request headers, for the response's `Vary`.
    let request: HTTPHeaders
    /// An entry past freshness that may answer if the upstream fails (`stale_if_error`).
    var stale: CachedResponse?
    /// Whether the response may be stored (a GET).
    let mayStore: Bool
    /// Whether the request carried `Authorization` (then only `public` or `s-maxage` answers are stored).
    let authorized: Bool
    /// The response being collected, once its head was found storable.
    var collecting: CachedResponse?

    init(route: RouteCache, key: String, request: HTTPHeaders, stale: CachedResponse?, mayStore: Bool, authorized: Bool)
    {
        self.route = route
        self.key = key
        self.request = request
        self.stale = stale
        self.mayStore = mayStore
        self.authorized = authorized
    }
}

enum CacheLookup {
    case hit(CachedResponse, now: MonotonicInstant)
    case miss(CacheCapture)
    case bypass
}

extension ProxyHandler {
    /// Looks `head` up in the route's cache. Unsafe methods remove the entry of their target.
    func cacheLookup(_ cache: RouteCache, head: HTTPRequestHead, hasBody: Bool) -> CacheLookup {
        guard head.method == .GET || head.method == .HEAD else {
            if head.method != .OPTIONS && head.method != .TRACE { cache.storage.remove(RouteCache.key(head)) }
            return .bypass
        }
        if hasBody { return .bypass }
        let values = head.headers["cache-control"]
        let control = values.isEmpty ? CacheControl() : CacheControl(values)
        if control.noStore { return .bypass }
        let key = RouteCache.key(head)
        var stale: CachedResponse?
        let now = cache.clock.now
        if let entry = cache.storage.lookup(key), entry.matches(head.headers) {
            if !control.noCache && entry.isFresh(at: now) { return .hit(entry, now: now) }
            stale = entry
        }
        return .miss(
            CacheCapture(
                route: cache, key: key, request: head.headers, stale: stale, mayStore: head.method == .GET,
                authorized: head.headers.contains(name: "authorization")))
    }

    /// Writes a cached response, with `Age` and `x-aviary-cache: hit` (or `stale` and a `Warning`).
    /// The route's `response_headers` apply to it as to a response from the upstream (the entry
    /// keeps the upstream's fields as they came).
    func answerFromCache(
        _ entry: CachedResponse, at now: MonotonicInstant, stale: Bool, headers extra: [(String, String)],
        rewrite: CompiledHeaderRewrite?, variables: HeaderVariables?, close: Bool, context: ChannelHandlerContext
    ) {
        self.endRecord(status: Int(entry.status.code))
        let close = close || self.drainRequested
        var headers = entry.headers
        headers.replaceOrAdd(name: "age", value: String(entry.age(at: now)))
        headers.replaceOrAdd(name: "content-length", value: String(entry.body.readableBytes))
        headers.replaceOrAdd(name: "x-aviary-cache", value: stale ? "stale" : "hit")
        if stale { headers.add(name: "warning", value: "110 - \"Response is Stale\"") }
        for (name, value) in extra { headers.replaceOrAdd(name: name, value: value) }
        rewrite?.apply(to: &headers, variables)
        headers.replaceOrAdd(name: "connection", value: close ? "close" : "keep-alive")
        let head = HTTPResponseHead(version: .http1_1, status: entry.status, headers: headers)
        self.emit(.head(head), context: context)
        if !self.answeringHead {
            self.emit(.body(.byteBuffer(entry.body)), context: context)
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

    /// At the upstream's response head: answers with the stale entry instead of a 5xx (returns
    /// true), or starts collecting a storable response.
    func cacheResponseHead(
        _ exchange: Exchange, _ upstream: HTTPResponseHead, context: ChannelHandlerContext
    ) -> Bool {
        guard let capture = exchange.cache else { return false }
        let now = capture.route.clock.now
        if upstream.status.code >= 500, let stale = capture.stale, capture.route.mayServeStale(stale, at: now) {
            let close = !exchange.keepAlive || !exchange.requestComplete
            self.finish(exchange, reuseUpstream: false)
            self.answerFromCache(
                stale, at: now, stale: true, headers: exchange.responseHeaders,
                rewrite: exchange.route.responseHeaderRewrite, variables: exchange.headerVariables, close: close,
                context: context)
            return true
        }
        exchange.cache = nil
        guard capture.mayStore, !exchange.isHead,
            let fresh = capture.route.freshness(of: upstream, authorized: capture.authorized)
        else {
            return false
        }
        let limit = capture.route.storage.maxEntryBytes
        if let length = upstream.headers.first(name: "content-length").flatMap(ProxyHeaders.digits), length > limit {
            return false
        }
        var headers = upstream.headers
        ProxyHeaders.removeHopByHop(&headers)
        headers.remove(name: "content-length")
        headers.remove(name: "age")
        var vary: [(name: String, value: String?)] = []
        for value in upstream.headers["vary"] {
            for name in value.split(separator: ",") {
                let lowered = name.trimmingWhitespace().lowercased()
                if !lowered.isEmpty { vary.append((lowered, capture.request.first(name: lowered))) }
            }
        }
        capture.collecting = CachedResponse(
            status: upstream.status, headers: headers, body: ByteBuffer(), storedAt: now, freshFor: fresh, vary: vary,
            cost: 0)
        exchange.cache = capture
        return false
    }

    /// A part of a response being collected; past the entry limit, collecting stops (the
    /// response still streams to the client).
    func cacheResponseBody(_ exchange: Exchange, _ buffer: ByteBuffer) {
        guard let collected = exchange.cache?.collecting?.body.readableBytes,
            let limit = exchange.cache?.route.storage.maxEntryBytes
        else { return }
        if collected + buffer.readableBytes > limit {
            exchange.cache = nil
            return
        }
        exchange.cache?.collecting?.body.writeImmutableBuffer(buffer)
    }

    /// The response ended: store it.
    func cacheResponseEnd(_ exchange: Exchange) {
        guard let capture = exchange.cache, var entry = capture.collecting else { return }
        exchange.cache = nil
        var headerBytes = 0
        for (name, value) in entry.headers { headerBytes += name.utf8.count + value.utf8.count + 4 }
        entry.cost = entry.body.readableBytes + headerBytes + capture.key.utf8.count
        capture.route.storage.store(capture.key, entry)
    }

    /// Answers a failed exchange (connect failure, reset, timeout, bad response) with its stale
    /// entry, if `stale_if_error` still allows it.
    func answerStale(_ exchange: Exchange, after reason: String, context: ChannelHandlerContext) -> Bool {
        switch reason {
        case "connect-failure", "reset", "timeout", "per-try-timeout", "bad-response": break
        default: return false
        }
        guard let capture = exchange.cache, let stale = capture.stale else { return false }
        let now = capture.route.clock.now
        guard capture.route.mayServeStale(stale, at: now) else { return false }
        let close = !exchange.keepAlive || !exchange.requestComplete
        self.finish(exchange, reuseUpstream: false)
        self.answerFromCache(
            stale, at: now, stale: true, headers: exchange.responseHeaders,
            rewrite: exchange.route.responseHeaderRewrite, variables: exchange.headerVariables, close: close,
            context: context)
        return true
    }
}

extension ProxyHandler {
    /// Answers a CORS preflight: `204` with the `Access-Control-*` headers, no body.
    func answerPreflight(_ extra: [(String, String)], close: Bool, context: ChannelHandlerContext) {
        self.endRecord(status: 204)
        let close = close || self.drainRequested
        var headers = HTTPHeaders(extra)
        headers.add(name: "connection", value: close ? "close" : "keep-alive")
        let head = HTTPResponseHead(version: .http1_1, status: .noContent, headers: headers)
        self.emit(.head(head), context: context)
        if close {
            self.discarding = true
            self.closeAfterWriting(.end(nil), context: context)
        } else {
            self.emit(.end(nil), context: context, flush: true)
            self.continueWithQueued(context: context)
            self.startIdleTimer(context: context)
        }
    }
}
