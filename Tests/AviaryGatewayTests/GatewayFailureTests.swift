//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Misbehaving upstreams and malformed clients.
@Suite("Gateway failures and defences", .timeLimit(.minutes(2)))
struct GatewayFailureTests {
    static func yaml(port: Int, limits: String = "", timeout: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0}
        \(limits.isEmpty ? "" : "limits: {\(limits)}")
        clusters: {backend: {endpoints: [127.0.0.1:\(port)], connect_timeout: 2s}}
        routes:
          - match: {path_prefix: /}
            cluster: backend
            \(timeout.isEmpty ? "" : "timeout: \(timeout)")
        """
    }

    @Test("connection refused is a 502 problem naming the cluster, the endpoint and the reason")
    func connectionRefused() async throws {
        let port = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withGateway(Self.yaml(port: port)) { gateway in
            let response = try await gateway.get("/orders")
            #expect(response.status == 502)
            #expect(response.header("content-type") == "application/problem+json")
            let problem = try #require(response.problem)
            #expect(problem.type == "urn:aviary:problem:upstream-connect-failure")
            #expect(problem.title == "Bad Gateway")
            #expect(problem.extensions["cluster"] == "backend")
            #expect(problem.extensions["endpoint"] == "127.0.0.1:\(port)")
            #expect(problem.extensions["reason"] == "connect-failure")
            #expect(problem.detail?.hasPrefix("cannot connect to cluster backend at 127.0.0.1:\(port): ") == true)
        }
    }

    @Test("an upstream that closes before answering is a 502 problem with reason reset")
    func closedBeforeResponse() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let response = try await gateway.get("/close-before-response")
                #expect(response.status == 502)
                #expect(response.problem?.type == "urn:aviary:problem:upstream-reset")
                #expect(response.problem?.extensions["reason"] == "reset")
                #expect(response.problem?.extensions["cluster"] == "backend")
                // The gateway still works afterwards, on a new upstream connection.
                #expect(try await gateway.get("/fine").status == 200)
            }
        }
    }

    @Test("an upstream that closes mid-body cuts the client's connection, so the client sees a short body")
    func closedMidBody() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("GET /close-mid-body HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(await connection.waitUntilClosed())
                let response = try await connection.readResponse()
                #expect(response.status == 200)
                #expect(response.header("content-length") == "1000")
                #expect(response.truncated)
                #expect(response.body.count == 100)
                #expect(try await gateway.get("/fine").status == 200)
            }
        }
    }

    @Test("an upstream that never answers hits the route timeout: 504 problem")
    func neverAnswers() async throws {
        try await withOrigins(["a"]) { origins in
            // Manual timers: the timeout fires when the test advances time, so neither a loaded
            // machine's slow `/fine` below nor a slow first request can race it.
            let timers = ManualGatewayTimers()
            try await withGateway(Self.yaml(port: origins[0].port, timeout: "5s"), timers: timers) { gateway in
                async let answer = gateway.get("/never")
                try await timers.waitUntilArmed(.seconds(5))
                await eventuallyAsync("the origin has the request") {
                    origins[0].state.requests.load(ordering: .relaxed) == 1
                }
                await timers.advance(by: .milliseconds(4999))
                #expect(timers.armed.contains(.seconds(5)))
                await timers.advance(by: .milliseconds(1))
                let response = try await answer
                #expect(response.status == 504)
                #expect(response.problem?.type == "urn:aviary:problem:upstream-timeout")
                #expect(response.problem?.extensions["reason"] == "timeout")
                #expect(
                    response.problem?.detail
                        == "cluster backend at 127.0.0.1:\(origins[0].port) did not answer within 5s")
                // The timed-out upstream connection is not reused.
                #expect(try await gateway.get("/fine").header("x-origin-connection") == "2")
            }
        }
    }

    static let smuggling: [(String, String)] = [
        ("Content-Length and Transfer-Encoding", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two equal Content-Lengths", "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        ("two different Content-Lengths", "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("a list Content-Length", "Content-Length: 3, 3\r\n\r\nabc"),
        ("a Content-Length that is not a number", "Content-Length: 3x\r\n\r\nabc"),
        ("a Transfer-Encoding other than chunked", "Transfer-Encoding: gzip\r\n\r\nabc"),
        ("chunked twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ]

    @Test(
        "ambiguous request framing is refused with 400 and the connection closed, before any upstream sees it",
        arguments: smuggling)
    func smugglingDefences(name: String, rest: String) async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "POST /upload HTTP/1.1\r\nHost: t\r\n" + rest + "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
                let response = try await connection.readResponse()
                #expect(response.status == 400, "\(name)")
                #expect(response.header("connection") == "close")
                #expect(await connection.waitUntilClosed(), "\(name)")
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0, "\(name)")
            }
        }
    }

    @Test("a bad chunk size is refused with 400 and the connection closed")
    func badChunkSize() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
                let response = try await connection.readResponse()
                #expect(response.status == 400)
                #expect(response.problem?.type == "urn:aviary:problem:bad-request")
                #expect(await connection.waitUntilClosed())
            }
        }
    }

    @Test("garbage instead of a request line is a 400")
    func garbage() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port)) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("\u{1}\u{2}GARBAGE\r\n\r\n")
                let response = try await connection.readResponse()
                #expect(response.status == 400)
                #expect(await connection.waitUntilClosed())
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("a request head over max_header_bytes is a 431", arguments: [2_000, 100_000])
    func headerTooLarge(size: Int) async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: "max_header_bytes: 1500")) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "GET / HTTP/1.1\r\nHost: t\r\nx-big: \(String(repeating: "a", count: size))\r\n\r\n")
                let response = try await connection.readResponse()
                #expect(response.status == 431)
                #expect(response.problem?.type == "urn:aviary:problem:header-too-large")
                #expect(await connection.waitUntilClosed())
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("a Content-Length over max_body_bytes is a 413 before any upstream sees it")
    func declaredBodyTooLarge() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: "max_body_bytes: 1KiB")) { gateway in
                let response = try await gateway.request(
                    "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n")
                #expect(response.status == 413)
                #expect(response.problem?.type == "urn:aviary:problem:payload-too-large")
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
                let fits = try await gateway.request(
                    "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n"
                        + String(repeating: "b", count: 1024))
                #expect(fits.status == 200)
                #expect(fits.text.hasPrefix("bytes=1024 "))
            }
        }
    }

    @Test("a chunked body that grows over max_body_bytes is cut with a 413")
    func streamedBodyTooLarge() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: "max_body_bytes: 4KiB")) { gateway in
                let connection = try await gateway.connect()
                let chunk = String(repeating: "c", count: 1024)
                var request = "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                for _ in 0..<5 { request += "400\r\n\(chunk)\r\n" }
                try await connection.send(request)
                let response = try await connection.readResponse()
                #expect(response.status == 413)
                #expect(await connection.waitUntilClosed())
                // The origin got at most the allowed bytes and never finished the request.
                #expect(origins[0].state.uploadBytesRead.load(ordering: .relaxed) <= 4096)
            }
        }
    }

    @Test("connections over max_connections are closed at once")
    func maxConnections() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml(port: origins[0].port, limits: "max_connections: 2")) { gateway in
                let first = try await gateway.connect()
                let second = try await gateway.connect()
                await eventually("two connections are accepted") {
                    gateway.server.statistics.connectionsAccepted.load(ordering: .relaxed) == 2
                }
                let third = try await gateway.connect()
                #expect(await third.waitUntilClosed())
                #expect(gateway.server.statistics.connectionsRejected.load(ordering: .relaxed) == 1)
                try await first.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await first.readResponse().status == 200)
                await first.close()
                await second.close()
            }
        }
    }
}

extension GatewayFailureTests {
    @Test(
        "an upstream that answers garbage is a 502 problem with reason bad-response",
        arguments: [
            "SSH-2.0-OpenSSH_9.2\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ])
    func garbageUpstream(answer: String) async throws {
        let origin = try await GarbageOrigin.start(answer: answer, group: MultiThreadedEventLoopGroup.singleton)
        defer { Task { await origin.stop() } }
        try await withGateway(Self.yaml(port: origin.port)) { gateway in
            let response = try await gateway.get("/anything")
            #expect(response.status == 502)
            #expect(response.problem?.type == "urn:aviary:problem:upstream-bad-response")
            #expect(response.problem?.extensions["reason"] == "bad-response")
            #expect(response.problem?.extensions["cluster"] == "backend")
        }
    }
}
