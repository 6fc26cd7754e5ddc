//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

@testable import AviaryGateway

/// Response caching over real sockets, with a `ManualClock` in the gateway for freshness.
@Suite("Gateway response cache", .timeLimit(.minutes(2)))
struct GatewayCacheTests {
    static func yaml(origin: Int, cache: String = "{ttl: 30s, stale_if_error: 5m}", timeout: String = "10s") -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters: {a: {endpoints: [127.0.0.1:\(origin)]}}
        routes:
          - {match: {path_prefix: /c}, cluster: a, cache: \(cache), timeout: \(timeout)}
          - {match: {path_prefix: /}, cluster: a}
        """
    }

    @Test("a GET is answered from the cache while fresh, with Age; after the ttl it goes upstream again")
    func freshness() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let requests = { origins[0].state.requests.load(ordering: .relaxed) }
            try await withGateway(Self.yaml(origin: origins[0].port), clock: clock) { gateway async throws in
                let first = try await gateway.get("/c/1")
                #expect(first.status == 200)
                #expect(first.header("x-aviary-cache") == nil)
                #expect(requests() == 1)
                let second = try await gateway.get("/c/1")
                #expect(second.status == 200)
                #expect(second.header("x-aviary-cache") == "hit")
                #expect(second.header("age") == "0")
                #expect(second.text == first.text)
                #expect(requests() == 1)
                let head = try await gateway.request(
                    "HEAD /c/1 HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n", isHead: true)
                #expect(head.status == 200)
                #expect(head.header("content-length") == String(first.body.count))
                #expect(head.body.isEmpty)

                clock.advance(by: .seconds(29))
                let aged = try await gateway.get("/c/1")
                #expect(aged.header("age") == "29")
                #expect(requests() == 1)
                // Another target is another entry; an uncached route is never cached.
                _ = try await gateway.get("/c/2")
                _ = try await gateway.get("/open")
                _ = try await gateway.get("/open")
                #expect(requests() == 4)

                clock.advance(by: .seconds(1))
                let expired = try await gateway.get("/c/1")
                #expect(expired.header("x-aviary-cache") == nil)
                #expect(requests() == 5)
            }
        }
    }

    @Test("Cache-Control and Vary: no-store, private and max-age on responses; no-cache on requests; variants")
    func cacheControl() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let requests = { origins[0].state.requests.load(ordering: .relaxed) }
            try await withGateway(Self.yaml(origin: origins[0].port), clock: clock) { gateway async throws in
                for directive in ["no-store", "private"] {
                    _ = try await gateway.get("/c/\(directive)?h-cache-control=\(directive)")
                    let again = try await gateway.get("/c/\(directive)?h-cache-control=\(directive)")
                    #expect(again.header("x-aviary-cache") == nil, "\(directive)")
                }
                #expect(requests() == 4)

                // max-age beats the route's ttl.
                _ = try await gateway.get("/c/short?h-cache-control=max-age=5")
                #expect(try await gateway.get("/c/short?h-cache-control=max-age=5").header("x-aviary-cache") == "hit")
                clock.advance(by: .seconds(5))
                #expect(try await gateway.get("/c/short?h-cache-control=max-age=5").header("x-aviary-cache") == nil)
                #expect(requests() == 6)

                // A request's no-cache goes upstream (and refreshes the entry).
                _ = try await gateway.get("/c/n")
                let bypass = try await gateway.get("/c/n", headers: "Cache-Control: no-cache\r\n")
                #expect(bypass.header("x-aviary-cache") == nil)
                #expect(requests() == 8)

                // Vary: a stored variant answers only requests with the same header value.
                _ = try await gateway.get("/c/v?h-vary=x-lang", headers: "X-Lang: en\r\n")
                let en = try await gateway.get("/c/v?h-vary=x-lang", headers: "X-Lang: en\r\n")
                #expect(en.header("x-aviary-cache") == "hit")
                let fr = try await gateway.get("/c/v?h-vary=x-lang", headers: "X-Lang: fr\r\n")
                #expect(fr.header("x-aviary-cache") == nil)
                #expect(fr.text.contains("x-lang: fr"))
                #expect(requests() == 10)

                // An answer to a request with Authorization is stored only when it says public.
                _ = try await gateway.get("/c/auth", headers: "Authorization: Bearer x\r\n")
                _ = try await gateway.get("/c/auth", headers: "Authorization: Bearer x\r\n")
                #expect(requests() == 12)
                _ = try await gateway.get("/c/pub?h-cache-control=public", headers: "Authorization: Bearer x\r\n")
                let shared = try await gateway.get(
                    "/c/pub?h-cache-control=public", headers: "Authorization: Bearer x\r\n")
                #expect(shared.header("x-aviary-cache") == "hit")
                #expect(requests() == 13)
            }
        }
    }

    @Test("stale-if-error: a 5xx or a timeout is answered with the stale entry within the window, not after")
    func staleIfError() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let yaml = Self.yaml(origin: origins[0].port, cache: "{ttl: 10s, stale_if_error: 1m}", timeout: "4s")
            // The route's timeout runs on real time: 4 s lets a loaded machine (load 9 to 12 on two
            // cores once made 1 s too short for the first answer) still answer in time, at the cost
            // of 4 s for the hung request below.
            try await withGateway(yaml, clock: clock) { gateway async throws in
                let fresh = try await gateway.get("/c/s")
                #expect(fresh.status == 200)
                clock.advance(by: .seconds(30))

                origins[0].state.failure.store(1, ordering: .relaxed)
                let stale = try await gateway.get("/c/s")
                #expect(stale.status == 200)
                #expect(stale.header("x-aviary-cache") == "stale")
                #expect(stale.header("warning")?.hasPrefix("110") == true)
                #expect(stale.header("age") == "30")
                #expect(stale.text == fresh.text)

                origins[0].state.failure.store(2, ordering: .relaxed)
                let hung = try await gateway.get("/c/s")
                #expect(hung.status == 200)
                #expect(hung.header("x-aviary-cache") == "stale")

                // Without an entry the failure shows.
                origins[0].state.failure.store(1, ordering: .relaxed)
                // (The origin's 503, or the route's 4 s timeout on a machine too loaded to answer in time:
                // either way the failure, never a cached 200.)
                let uncached = try await gateway.get("/c/other")
                #expect([503, 504].contains(uncached.status))
                #expect(uncached.header("x-aviary-cache") == nil)

                // Past freshness plus the window, the error shows too (the 503, or the 4 s timeout
                // on a loaded machine), never the stale entry.
                clock.advance(by: .seconds(41))
                let expired = try await gateway.get("/c/s")
                #expect([503, 504].contains(expired.status), "got \(expired.status)")
                #expect(expired.header("x-aviary-cache") == nil)
            }
        }
    }

    @Test("the route's response_headers apply to fresh and stale cached answers as to the upstream's")
    func responseRewritesOnCachedAnswers() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path_prefix: /c}
                    cluster: a
                    cache: {ttl: 10s, stale_if_error: 1m}
                    response_headers: {remove: [x-internal], set: {x-served: "%{method} via gateway"}}
                """
            try await withGateway(yaml, clock: clock) { gateway async throws in
                let target = "/c/r?h-x-internal=secret"
                let fresh = try await gateway.get(target)
                #expect(fresh.header("x-aviary-cache") == nil)
                let hit = try await gateway.get(target)
                #expect(hit.header("x-aviary-cache") == "hit")
                clock.advance(by: .seconds(30))
                origins[0].state.failure.store(1, ordering: .relaxed)
                let stale = try await gateway.get(target)
                #expect(stale.header("x-aviary-cache") == "stale")
                for (name, answer) in [("upstream", fresh), ("hit", hit), ("stale", stale)] {
                    #expect(answer.status == 200, "\(name)")
                    #expect(answer.header("x-internal") == nil, "\(name)")
                    #expect(answer.header("x-served") == "GET via gateway", "\(name)")
                }
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("a response larger than the entry limit streams through whole and is not stored; a small one is")
    func tooLarge() async throws {
        try await withOrigins(["a"]) { origins async throws in
            let requests = { origins[0].state.requests.load(ordering: .relaxed) }
            // 64 KiB of cache: entries up to 8 KiB.
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - {match: {path_prefix: /get}, rewrite: {path_prefix: /download}, cluster: a,
                     cache: {ttl: 30s, max_bytes: 64KiB}}
                  - {match: {path_prefix: /stream}, rewrite: {path_prefix: /chunked}, cluster: a,
                     cache: {ttl: 30s, max_bytes: 64KiB}}
                """
            try await withGateway(yaml, clock: ManualClock()) { gateway async throws in
                for expected in [1, 2] {
                    let big = try await gateway.get("/get?bytes=100000")
                    #expect(big.status == 200)
                    #expect(big.body.count == 100_000)
                    #expect(big.header("x-aviary-cache") == nil)
                    #expect(requests() == expected)
                }
                let small = try await gateway.get("/get?bytes=4000")
                let cached = try await gateway.get("/get?bytes=4000")
                #expect(cached.header("x-aviary-cache") == "hit")
                #expect(cached.body == small.body)
                #expect(cached.body.count == 4000)
                #expect(requests() == 3)

                // Without a length: collected until it outgrows the entry limit, then only streamed.
                for expected in [4, 5] {
                    let unknown = try await gateway.get("/stream?bytes=20000")
                    #expect(unknown.status == 200)
                    #expect(unknown.body.count == 20_000)
                    #expect(unknown.header("x-aviary-cache") == nil)
                    #expect(requests() == expected)
                }
                _ = try await gateway.get("/stream?bytes=3000")
                let chunkedHit = try await gateway.get("/stream?bytes=3000")
                #expect(chunkedHit.header("x-aviary-cache") == "hit")
                #expect(chunkedHit.header("content-length") == "3000")
                #expect(chunkedHit.body.count == 3000)
                #expect(requests() == 6)
            }
        }
    }

    @Test("the store is bounded by bytes and evicts the least recently used entry first")
    func lruByBytes() {
        let cache = ResponseCache(maxBytes: 800)
        func entry(_ bytes: Int) -> CachedResponse {
            CachedResponse(
                status: .ok, headers: [:], body: ByteBuffer(repeating: 0, count: bytes),
                storedAt: MonotonicInstant(offset: .zero), freshFor: .seconds(1), vary: [], cost: bytes)
        }
        cache.store("a", entry(100))
        cache.store("b", entry(100))
        cache.store("too-big", entry(101))  // over 800 / 8
        #expect(cache.lookup("too-big") == nil)
        for index in 0..<6 { cache.store("x\(index)", entry(100)) }
        #expect(cache.bytes == 800)
        _ = cache.lookup("a")  // a is now the most recently used
        cache.store("y", entry(100))
        #expect(cache.lookup("b") == nil)
        #expect(cache.lookup("a") != nil)
        #expect(cache.bytes == 800)
        cache.remove("a")
        #expect(cache.bytes == 700)
    }
}
