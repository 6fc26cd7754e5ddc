//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Gateway CORS and fault injection", .timeLimit(.minutes(2)))
struct GatewayCORSFaultTests {
    @Test("preflights are answered by the gateway (before auth); allowed origins get Allow-Origin on responses")
    func cors() async throws {
        try await withOrigins(["a"]) { origins async throws in
            let requests = { origins[0].state.requests.load(ordering: .relaxed) }
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path_prefix: /api}
                    cluster: a
                    cors: {allow_origins: [https://shop.example], allow_methods: [GET, POST],
                           allow_headers: [content-type, authorization], max_age: 10m, allow_credentials: true}
                  - match: {path_prefix: /public}
                    cluster: a
                    cors: {allow_origins: ["*"], allow_headers: ["*"]}
                """
            try await withGateway(yaml) { gateway async throws in
                let preflight = try await gateway.request(
                    "OPTIONS /api/orders HTTP/1.1\r\nHost: g\r\nOrigin: https://shop.example\r\n"
                        + "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: Content-Type\r\n"
                        + "Connection: close\r\n\r\n", isHead: true)
                #expect(preflight.status == 204)
                #expect(preflight.header("access-control-allow-origin") == "https://shop.example")
                #expect(preflight.header("access-control-allow-methods") == "GET, POST")
                #expect(preflight.header("access-control-allow-headers") == "content-type, authorization")
                #expect(preflight.header("access-control-max-age") == "600")
                #expect(preflight.header("access-control-allow-credentials") == "true")
                #expect(preflight.header("vary") == "Origin")

                let wrongOrigin = try await gateway.request(
                    "OPTIONS /api/orders HTTP/1.1\r\nHost: g\r\nOrigin: https://evil.example\r\n"
                        + "Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n")
                #expect(wrongOrigin.status == 403)
                #expect(wrongOrigin.text.contains("cors-forbidden"))
                let wrongMethod = try await gateway.request(
                    "OPTIONS /api/orders HTTP/1.1\r\nHost: g\r\nOrigin: https://shop.example\r\n"
                        + "Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n")
                #expect(wrongMethod.status == 403)
                #expect(requests() == 0)

                let actual = try await gateway.get("/api/orders", headers: "Origin: https://shop.example\r\n")
                #expect(actual.status == 200)
                #expect(actual.header("access-control-allow-origin") == "https://shop.example")
                let other = try await gateway.get("/api/orders", headers: "Origin: https://evil.example\r\n")
                #expect(other.status == 200)
                #expect(other.header("access-control-allow-origin") == nil)

                let star = try await gateway.request(
                    "OPTIONS /public/x HTTP/1.1\r\nHost: g\r\nOrigin: https://any.example\r\n"
                        + "Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: X-Custom\r\n"
                        + "Connection: close\r\n\r\n", isHead: true)
                #expect(star.status == 204)
                #expect(star.header("access-control-allow-origin") == "*")
                #expect(star.header("access-control-allow-headers") == "x-custom")
                #expect(requests() == 2)
            }
        }
    }

    @Test("fault injection: a seeded random source decides which requests are aborted or delayed")
    func faults() async throws {
        // Draws: below 500 000 of 1 000 000 is "yes" at 50%.
        let draws = Mutex<[UInt64]>([])
        let script: [UInt64] = [
            100,  // 1st request: abort yes
            900_000, 900_000,  // 2nd: abort no, delay no
            900_000, 100,  // 3rd: abort no, delay yes
        ]
        let random = GatewayRandom { _ in
            draws.withLock { taken in
                defer { taken.append(0) }
                return taken.count < script.count ? script[taken.count] : 999_999
            }
        }
        try await withOrigins(["a"]) { origins async throws in
            let requests = { origins[0].state.requests.load(ordering: .relaxed) }
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path_prefix: /}
                    cluster: a
                    fault: {abort: {percent: 50%, status: 418}, delay: {percent: 50%, duration: 300ms}}
                """
            let timers = ManualGatewayTimers()
            try await withGateway(yaml, random: random, timers: timers) { gateway async throws in
                let aborted = try await gateway.get("/x")
                #expect(aborted.status == 418)
                #expect(aborted.text.contains("fault-injected"))
                #expect(requests() == 0)
                let passed = try await gateway.get("/x")
                #expect(passed.status == 200)
                #expect(requests() == 1)
                // The delayed request still arrives, with its body.
                let body = String(repeating: "b", count: 5000)
                async let answer = gateway.request(
                    "POST /echo HTTP/1.1\r\nHost: g\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                )
                try await timers.waitUntilArmed(.milliseconds(300))
                #expect(requests() == 1)  // held until the delay ends
                await timers.advance(by: .milliseconds(300))
                let delayed = try await answer
                #expect(delayed.status == 200)
                #expect(delayed.text == body)
                #expect(requests() == 2)
            }
        }
    }
}
