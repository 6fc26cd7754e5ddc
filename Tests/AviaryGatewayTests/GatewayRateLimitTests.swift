//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryTestSupport
import Synchronization
import Testing

@testable import AviaryGateway

/// Rate limits over real sockets, with a `ManualClock` in the gateway: the bucket refills only
/// when the test advances the clock, so no test waits for time to pass.
@Suite("Gateway rate limiting", .timeLimit(.minutes(2)))
struct GatewayRateLimitTests {
    static func yaml(origin: Int, rateLimit: String, extra: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters: {a: {endpoints: [127.0.0.1:\(origin)]}}
        \(extra)
        routes:
          - {match: {path_prefix: /limited}, cluster: a, rate_limit: \(rateLimit)}
          - {match: {path_prefix: /}, cluster: a}
        """
    }

    @Test("per client address: the burst passes with RateLimit-* headers, then 429 with Retry-After until refilled")
    func perClientAddress() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let yaml = Self.yaml(origin: origins[0].port, rateLimit: "{key: client_ip, rate: 2/s, burst: 3}")
            try await withGateway(yaml, clock: clock) { gateway async throws in
                for remaining in [2, 1, 0] {
                    let response = try await gateway.get("/limited/x")
                    #expect(response.status == 200)
                    #expect(response.header("ratelimit-limit") == "3")
                    #expect(response.header("ratelimit-remaining") == "\(remaining)")
                }
                let refused = try await gateway.get("/limited/x")
                #expect(refused.status == 429)
                #expect(refused.header("retry-after") == "1")
                #expect(refused.header("ratelimit-remaining") == "0")
                #expect(refused.header("ratelimit-reset") == "2")
                #expect(refused.header("content-type") == "application/problem+json")
                #expect(refused.text.contains("rate-limited"))
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 3)
                // Other routes are not limited.
                #expect(try await gateway.get("/free").status == 200)

                // 2/s: one request's worth after 500 ms, not before.
                clock.advance(by: .milliseconds(499))
                #expect(try await gateway.get("/limited/x").status == 429)
                clock.advance(by: .milliseconds(1))
                #expect(try await gateway.get("/limited/x").status == 200)
                #expect(try await gateway.get("/limited/x").status == 429)
            }
        }
    }

    @Test("per header: each key has its own quota; requests without it share one")
    func perHeader() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let yaml = Self.yaml(origin: origins[0].port, rateLimit: "{key: header.x-api-key, rate: 1/m, burst: 1}")
            try await withGateway(yaml, clock: clock) { gateway async throws in
                #expect(try await gateway.get("/limited", headers: "X-Api-Key: one\r\n").status == 200)
                #expect(try await gateway.get("/limited", headers: "X-Api-Key: one\r\n").status == 429)
                #expect(try await gateway.get("/limited", headers: "X-Api-Key: two\r\n").status == 200)
                #expect(try await gateway.get("/limited").status == 200)
                let refused = try await gateway.get("/limited")
                #expect(refused.status == 429)
                #expect(refused.header("retry-after") == "60")
            }
        }
    }

    @Test("per JWT claim: the limit is kept per verified subject, after authentication")
    func perSubject() async throws {
        let issuer = try await JWTIssuer(keyID: "k1", issuer: "shop-users", audience: "shop")
        let alice = try await issuer.issue(subject: "alice")
        let bob = try await issuer.issue(subject: "bob")
        let server = JWKSServer(jwks: issuer.jwks)
        try await server.run { url in
            try await withOrigins(["a"]) { origins async throws in
                let yaml = """
                    listen: {address: 127.0.0.1:0}
                    clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                    auth: {jwt: {issuer: shop-users, audiences: [shop], jwks_url: "\(url)"}}
                    routes:
                      - match: {path_prefix: /}
                        cluster: a
                        auth: {require: jwt}
                        rate_limit: {key: jwt.sub, rate: 1/s, burst: 2}
                    """
                try await withGateway(yaml, clock: ManualClock()) { gateway async throws in
                    let asAlice = "Authorization: Bearer \(alice)\r\n"
                    let asBob = "Authorization: Bearer \(bob)\r\n"
                    #expect(try await gateway.get("/x", headers: asAlice).status == 200)
                    #expect(try await gateway.get("/x", headers: asAlice).status == 200)
                    #expect(try await gateway.get("/x", headers: asAlice).status == 429)
                    #expect(try await gateway.get("/x", headers: asBob).status == 200)
                    // Unauthenticated requests are refused before the limit: they take no permit.
                    #expect(try await gateway.get("/x").status == 401)
                    #expect(try await gateway.get("/x", headers: asBob).status == 200)
                    #expect(try await gateway.get("/x", headers: asBob).status == 429)
                }
            }
        }
    }

    @Test("one quota across event loops: of many concurrent requests on two loops, exactly the burst passes")
    func sharedAcrossLoops() async throws {
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins async throws in
            let yaml = Self.yaml(origin: origins[0].port, rateLimit: "{key: client_address, rate: 1/h, burst: 10}")
            try await withGateway(yaml, clock: clock, loops: 2) { gateway async throws in
                let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<40 {
                        group.addTask { try await gateway.get("/limited").status }
                    }
                    var all: [Int] = []
                    for try await status in group { all.append(status) }
                    return all
                }
                #expect(statuses.filter { $0 == 200 }.count == 10)
                #expect(statuses.filter { $0 == 429 }.count == 30)
            }
        }
    }
}
