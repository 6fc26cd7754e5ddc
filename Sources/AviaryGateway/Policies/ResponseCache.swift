//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import Synchronization

// A route's response cache: complete GET responses, bounded by bytes, least recently used out
// first, shared by every event loop behind one lock (held for a dictionary lookup and a few
// pointer moves; bodies are `ByteBuffer`s, shared copy-on-write, never copied under the lock).
//
// Written here rather than reusing AviaryResilience's `LRUTable`: that one is internal to its
// module and bounded by entry count, and a cache must be bounded by bytes.

/// What `Cache-Control` says, as far as a shared cache cares (RFC 9111).
struct CacheControl: Equatable {
    var noStore = false
    var noCache = false
    var isPrivate = false
    var isPublic = false
    var maxAge: Int?
    var sharedMaxAge: Int?

    init() {}

    /// Parses every `Cache-Control` header value (directives are case-insensitive).
    init(_ values: [String]) {
        for value in values {
            for directive in value.split(separator: ",") {
                let trimmed = directive.trimmingWhitespace()
                let parts = trimmed.split(separator: "=", maxSplits: 1)
                guard let name = parts.first?.lowercased() else { continue }
                let argument = parts.count > 1 ? parts[1].trimmingWhitespace().trimmingQuotes() : nil
                switch name {
                case "no-store": self.noStore = true
                case "no-cache": self.noCache = true
                case "private": self.isPrivate = true
                case "public": self.isPublic = true
                case "max-age": self.maxAge = argument.flatMap { Int($0) }
                case "s-maxage": self.sharedMaxAge = argument.flatMap { Int($0) }
                default: break
                }
            }
        }
    }
}

/// One stored response.
struct CachedResponse: Sendable {
    var status: HTTPResponseStatus
    /// End-to-end headers as the upstream sent them (no hop-by-hop, no framing).
    var headers: HTTPHeaders
    var body: ByteBuffer
    var storedAt: MonotonicInstant
    /// How long it is fresh from `storedAt`.
    var freshFor: Duration
    /// The request headers `Vary` names (lower-cased) and their values when it was stored.
    var vary: [(name: String, value: String?)]
    /// What the entry costs against `max_bytes`.
    var cost: Int

    /// How old it is at `now`, in whole seconds (the `Age` header).
    func age(at now: MonotonicInstant) -> Int64 {
        max(0, self.storedAt.duration(to: now).components.seconds)
    }

    /// Whether it is fresh at `now`.
    func isFresh(at now: MonotonicInstant) -> Bool {
        self.storedAt.duration(to: now) < self.freshFor
    }

    /// Whether the request's headers select this variant.
    func matches(_ request: HTTPHeaders) -> Bool {
        self.vary.allSatisfy { request.first(name: $0.name) == $0.value }
    }
}

/// A byte-bounded LRU map from cache keys to responses.
final class ResponseCache: Sendable {
    private final class Node {
        let key: String
        var response: CachedResponse
        var newer: Node?
        weak var older: Node?

        init(key: String, response: CachedResponse) {
            self.key = key
            self.response = response
        }
    }

    private struct State {
        var nodes: [String: Node] = [:]
        /// The most recently used node; it holds the chain towards the oldest.
        var newest: Node?
        /// The least recently used node.
        var oldest: Node?
        var bytes = 0
    }

    let maxBytes: Int
    /// The largest single entry: an eighth of the cache, so one response cannot flush the rest.
    let maxEntryBytes: Int
    // Mutex<State> holds class nodes; they never leave the lock, so no reference is shared.
    private let state = Mutex(State())

    init(maxBytes: Int) {
        self.maxBytes = maxBytes
        self.maxEntryBytes = max(1, maxBytes / 8)
    }

    /// Bytes held now.
    var bytes: Int { self.state.withLock { $0.bytes } }

    /// The stored response for `key`, marked as used.
    func lookup(_ key: String) -> CachedResponse? {
        self.state.withLock { state in
            guard let node = state.nodes[key] else { return nil }
            Self.unlink(node, &state)
            Self.pushNewest(node, &state)
            return node.response
        }
    }

    /// Stores `response` under `key`, evicting the least recently used entries to stay under
    /// `maxBytes`; an entry over `maxEntryBytes` is not stored.
    func store(_ key: String, _ response: CachedResponse) {
        guard response.cost <= self.maxEntryBytes else { return }
        self.state.withLock { state in
            if let old = state.nodes.removeValue(forKey: key) {
                Self.unlink(old, &state)
                state.bytes -= old.response.cost
            }
            while state.bytes + response.cost > self.maxBytes, let oldest = state.oldest {
                Self.unlink(oldest, &state)
                state.nodes[oldest.key] = nil
                state.bytes -= oldest.response.cost
            }
            let node = Node(key: key, response: response)
            state.nodes[key] = node
            state.bytes += response.cost
            Self.pushNewest(node, &state)
        }
    }

    /// Removes `key` (an unsafe method went through, say).
    func remove(_ key: String) {
        self.state.withLock { state in
            guard let node = state.nodes.removeValue(forKey: key) else { return }
            Self.unlink(node, &state)
            state.bytes -= node.response.cost
        }
    }

    private static func unlink(_ node: Node, _ state: inout State) {
        let newer = node.newer
        let older = node.older
        if let newer { newer.older = older } else { state.newest = older }
        if let older { older.newer = newer } else { state.oldest = newer }
        node.newer = nil
        node.older = nil
    }

    private static func pushNewest(_ node: Node, _ state: inout State) {
        node.older = state.newest
        node.newer = nil
        // The newer link is strong, the older weak: the chain from the oldest keeps every node,
        // and the dictionary keeps them too.
        state.newest?.newer = node
        state.newest = node
        if state.oldest == nil { state.oldest = node }
    }
}

extension Substring {
    func trimmingQuotes() -> Substring {
        guard self.count >= 2, self.first == "\"", self.last == "\"" else { return self }
        return self.dropFirst().dropLast()
    }
}

/// A route's `cache:` policy, ready for the data plane.
final class RouteCache: Sendable {
    let storage: ResponseCache
    /// Freshness when the response says nothing (`ttl`).
    let ttl: Duration
    /// How long past freshness an entry may answer when the upstream fails (`stale_if_error`).
    let staleIfError: Duration
    let clock: any MonotonicClock

    init(_ configuration: GatewayConfiguration.Cache, clock: any MonotonicClock) {
        self.storage = ResponseCache(maxBytes: configuration.maxBytes)
        self.ttl = configuration.ttl
        self.staleIfError = configuration.staleIfError ?? .zero
        self.clock = clock
    }

    /// The key of a request: its `Host` and target, as the client sent them.
    static func key(_ head: HTTPRequestHead) -> String {
        (head.headers.first(name: "host") ?? "") + " " + head.uri
    }

    /// Whether `entry` may still answer when the upstream fails, at `now`.
    func mayServeStale(_ entry: CachedResponse, at now: MonotonicInstant) -> Bool {
        self.staleIfError > .zero && entry.storedAt.duration(to: now) < entry.freshFor + self.staleIfError
    }

    /// Statuses stored without explicit freshness (RFC 9111 section 4.2.2's heuristically cacheable ones that
    /// a gateway sees).
    static func isCacheable(_ status: HTTPResponseStatus) -> Bool {
        switch status.code {
        case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501: true
        default: false
        }
    }

    /// How long a response may be stored, or nil when it must not be: `no-store`, `private`,
    /// `no-cache`, `Vary: *`, `Set-Cookie`, a status that is not cacheable, zero freshness, or an
    /// answer to a request with `Authorization` without `public` or `s-maxage` (RFC 9111
    /// section 3.5).
    func freshness(of head: HTTPResponseHead, authorized: Bool) -> Duration? {
        guard Self.isCacheable(head.status) else { return nil }
        let values = head.headers["cache-control"]
        let control = values.isEmpty ? CacheControl() : CacheControl(values)
        if control.noStore || control.isPrivate || control.noCache { return nil }
        if authorized && !control.isPublic && control.sharedMaxAge == nil { return nil }
        if head.headers.contains(name: "set-cookie") { return nil }
        if head.headers["vary"].contains(where: { $0.contains("*") }) { return nil }
        let seconds = control.sharedMaxAge ?? control.maxAge
        let fresh = seconds.map { Duration.seconds($0) } ?? self.ttl
        return fresh > .zero ? fresh : nil
    }
}
