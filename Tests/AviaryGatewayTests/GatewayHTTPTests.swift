//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization
import Testing

@testable import AviaryGateway

/// HTTP/1.1 details: HEAD, 100-continue, HTTP/1.0, stale keep-alive connections, client timeouts,
/// circuit-breaking thresholds.
@Suite("Gateway HTTP details", .timeLimit(.minutes(2)))
struct GatewayHTTPTests {
    static func yaml(port: Int, limits: String = "", cluster: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0}
        \(limits.isEmpty ? "" : "limits: {\(limits)}")
        clusters: {backend: {endpoints: [127.0.0.1:\(port)]\(cluster.isEmpty ? "" : ", \(cluster)")}}
        routes: [{match: {path_prefix: /}, cluster: backend}]
        """
    }

    @Test("a HEAD response keeps its Content-Length, has no body, and the connection stays usable")
    func head() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("HEAD /thing HTTP/1.1\r\nHost: t\r\n\r\n")
                let head = try await connection.readResponse(isHead: true)
                #expect(head.status == 200)
                let length = try #require(head.header("content-length").flatMap { Int($0) })
                #expect(length > 0)
                #expect(head.header("transfer-encoding") == nil)
                try await connection.send("GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
                let next = try await connection.readResponse()
                #expect(next.status == 200)
                #expect(next.text.hasPrefix("GET /after\n"))
                await connection.close()
            }
        }
    }

    @Test("Expect: 100-continue is answered by the gateway and not forwarded")
    func expectContinue() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                let proceed = try await connection.readResponse()
                #expect(proceed.status == 100)
                try await connection.send("hello")
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.text.hasPrefix("POST /form\n"))
                #expect(response.text.contains("content-length: 5\n"))
                #expect(!response.text.contains("expect:"))
                await connection.close()
            }
        }
    }

    @Test("an HTTP/1.0 client gets its answer and the connection closes")
    func http10() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("GET /old HTTP/1.0\r\n\r\n")
                #expect(await connection.waitUntilClosed())
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.text.hasPrefix("GET /old\n"))
                #expect(!response.truncated)
            }
        }
    }

    @Test("a kept-alive upstream connection that closes when reused is replaced, and the request still succeeds")
    func staleKeepAlive() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                #expect(try await gateway.get("/arm-close").text == "armed\n")
                let response = try await gateway.get("/after")
                #expect(response.status == 200)
                #expect(response.header("x-origin-connection") == "2")
                #expect(gateway.server.statistics.upstreamStaleRetries.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a request with a body is not sent twice when its kept-alive connection closes")
    func staleKeepAliveWithBody() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                #expect(try await gateway.get("/arm-close").status == 200)
                let response = try await gateway.request(
                    "POST /after HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
                #expect(response.status == 502)
                #expect(response.problem?.extensions["reason"] == "reset")
                #expect(gateway.server.statistics.upstreamStaleRetries.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("a request head that does not arrive within header_timeout is a 408, and the connection closes")
    func headerTimeout() async throws {
        try await withOrigins(["a"]) { origins in
            let timers = ManualGatewayTimers()
            let yaml = Self.yaml(port: origins[0].port, limits: "header_timeout: 200ms")
            try await withGateway(yaml, timers: timers) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow:")
                try await timers.waitUntilArmed(.milliseconds(200))
                await timers.advance(by: .milliseconds(200))
                let response = try await connection.readResponse()
                #expect(response.status == 408)
                #expect(response.problem?.type == "urn:aviary:problem:request-timeout")
                #expect(await connection.waitUntilClosed())
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
                #expect(gateway.server.statistics.headerTimeouts.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a connection idle for idle_timeout is closed, before and between requests")
    func idleTimeout() async throws {
        try await withOrigins(["a"]) { origins in
            // Manual timers: a stalled machine cannot let the idle timer strike before a request.
            let timers = ManualGatewayTimers()
            let yaml = Self.yaml(port: origins[0].port, limits: "idle_timeout: 1s")
            try await withGateway(yaml, timers: timers) { gateway in
                let silent = try await gateway.connect()
                try await timers.waitUntilArmed(.seconds(1))
                await timers.advance(by: .seconds(1))
                #expect(await silent.waitUntilClosed())
                #expect(gateway.server.statistics.idleTimeouts.load(ordering: .relaxed) == 1)

                // Between requests: the idle period starts again with each answer.
                let used = try await gateway.connect()
                try await timers.waitUntilArmed(.seconds(1))
                await timers.advance(by: .milliseconds(600))
                try await used.send("GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await used.readResponse().status == 200)
                // 1.2 s after the connection opened but 0.6 s after its answer: still open.
                await timers.advance(by: .milliseconds(600))
                #expect(gateway.server.statistics.idleTimeouts.load(ordering: .relaxed) == 1)
                await timers.advance(by: .milliseconds(400))
                #expect(await used.waitUntilClosed())
                #expect(gateway.server.statistics.idleTimeouts.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("circuit_breaker.max_requests in flight: more is a 503 problem with reason overflow")
    func maxRequests() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml(port: origins[0].port, cluster: "circuit_breaker: {max_requests: 1}")
            try await withGateway(yaml) { gateway in
                let hanging = try await gateway.connect()
                try await hanging.send("GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
                await eventually("the first request is in flight") {
                    origins[0].state.requests.load(ordering: .relaxed) == 1
                }
                let refused = try await gateway.get("/second")
                #expect(refused.status == 503)
                #expect(refused.problem?.type == "urn:aviary:problem:upstream-overflow")
                #expect(refused.problem?.extensions["reason"] == "overflow")
                #expect(refused.problem?.extensions["cluster"] == "backend")
                await hanging.close()
                // Once the client is gone its slot is free again.
                let deadline = ContinuousClock.now.advanced(by: .seconds(10))
                var status = 0
                while status != 200 && ContinuousClock.now < deadline {
                    status = try await gateway.get("/third").status
                }
                #expect(status == 200)
            }
        }
    }
}

extension GatewayHTTPTests {
    @Test("a chunked request body streams to the upstream chunked and comes back intact")
    func chunkedEcho() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + "5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\n\r\n")
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.header("transfer-encoding") == "chunked")
                #expect(response.text == "hello, world")
                await connection.close()
            }
        }
    }
}

extension GatewayHTTPTests {
    @Test("the gateway's own answer to a HEAD has no body, and the connection stays usable")
    func localAnswerToHead() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {backend: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes: [{match: {path_prefix: /api/}, cluster: backend}]
                """
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("HEAD /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n")
                let missing = try await connection.readResponse(isHead: true)
                #expect(missing.status == 404)
                #expect(Int(missing.header("content-length") ?? "") ?? 0 > 0)
                try await connection.send("GET /api/next HTTP/1.1\r\nHost: t\r\n\r\n")
                let next = try await connection.readResponse()
                #expect(next.status == 200)
                #expect(next.text.hasPrefix("GET /api/next\n"))
                await connection.close()
            }
        }
    }
}
