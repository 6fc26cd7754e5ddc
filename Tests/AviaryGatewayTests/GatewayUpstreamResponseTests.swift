//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOPosix
import Testing

@testable import AviaryGateway

/// Upstreams that answer with one fixed byte string and close: the gateway's answer to each.
@Suite("Gateway with odd upstream responses", .timeLimit(.minutes(2)))
struct GatewayUpstreamResponseTests {
    static func yaml(port: Int) -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters: {backend: {endpoints: [127.0.0.1:\(port)]}}
        routes: [{match: {path_prefix: /}, cluster: backend}]
        """
    }

    func withUpstream<T>(answering answer: String, _ body: (GatewayHarness) async throws -> T) async throws -> T {
        let origin = try await GarbageOrigin.start(answer: answer, group: MultiThreadedEventLoopGroup.singleton)
        do {
            let result = try await withGateway(Self.yaml(port: origin.port), body)
            await origin.stop()
            return result
        } catch {
            await origin.stop()
            throw error
        }
    }

    @Test(
        "a malformed status line, conflicting framing or a truncated head is a 502 bad-response",
        arguments: [
            "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-",
        ])
    func badResponse(answer: String) async throws {
        try await self.withUpstream(answering: answer) { gateway in
            let response = try await gateway.get("/x")
            #expect(response.status == 502)
            #expect(response.problem?.extensions["reason"] == "bad-response")
        }
    }

    @Test(
        "a bad chunk size or a close inside the body cuts the client's connection short",
        arguments: [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this much",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ])
    func cutShort(answer: String) async throws {
        try await self.withUpstream(answering: answer) { gateway in
            let connection = try await gateway.connect()
            try await connection.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(await connection.waitUntilClosed())
            // Whatever arrived (if anything) is not a complete response.
            if let response = try? await connection.readResponse(timeout: .milliseconds(100)) {
                #expect(response.truncated)
            }
        }
    }

    @Test("interim 1xx responses are dropped; the final one is forwarded")
    func interim() async throws {
        let answer =
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
        try await self.withUpstream(answering: answer) { gateway in
            let response = try await gateway.get("/x")
            #expect(response.status == 200)
            #expect(response.header("x-final") == "yes")
            #expect(response.header("link") == nil)
            #expect(response.text == "ok")
        }
    }

    @Test("the answer to HEAD ends with its head, whatever Content-Length says")
    func head() async throws {
        // The upstream closes after the head: had the gateway waited for 5 body bytes, the
        // response would be cut short.
        try await self.withUpstream(answering: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") { gateway in
            let response = try await gateway.request(
                "HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", isHead: true)
            #expect(response.status == 200)
            #expect(response.header("content-length") == "5")
            #expect(response.body.isEmpty)
            #expect(!response.truncated)
        }
    }

    @Test("a body delimited by the upstream's close is re-chunked for the client")
    func closeDelimited() async throws {
        try await self.withUpstream(answering: "HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end") { gateway in
            let response = try await gateway.get("/x")
            #expect(response.status == 200)
            #expect(response.header("transfer-encoding") == "chunked")
            #expect(response.text == "until the end")
            #expect(!response.truncated)
        }
    }

    @Test("the upstream's end-to-end header lines reach the client as sent; its hop-by-hop ones do not")
    func forwardedLines() async throws {
        let answer =
            "HTTP/1.1 200 OK\r\nServer: Odd/1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            + "X-Mixed-CASE: Value  With  Spaces\r\nContent-Length: 2\r\n\r\nhi"
        try await self.withUpstream(answering: answer) { gateway in
            let connection = try await gateway.connect()
            try await connection.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = try await connection.readResponse()
            #expect(
                response.head
                    == "HTTP/1.1 200 OK\r\nServer: Odd/1\r\nX-Mixed-CASE: Value  With  Spaces\r\nContent-Length: 2\r\n")
            #expect(response.text == "hi")
            // An HTTP/1.0 client is told the connection stays open.
            let old = try await gateway.request("GET /x HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
            #expect(old.header("connection") == "keep-alive")
            #expect(old.header("keep-alive") == nil)
            #expect(old.text == "hi")
        }
    }

    @Test("a chunked upstream body is re-chunked with its trailers; an HTTP/1.0 client gets it until the close")
    func chunkedWithTrailers() async throws {
        let answer =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
            + "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
        try await self.withUpstream(answering: answer) { gateway in
            let connection = try await gateway.connect()
            try await connection.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            let response = try await connection.readResponse()
            #expect(response.status == 200)
            #expect(response.header("transfer-encoding") == "chunked")
            #expect(response.header("trailer") == nil)
            #expect(String(decoding: response.body, as: UTF8.self) == "abcde")
            #expect(!response.truncated)
            let old = try await gateway.request("GET /x HTTP/1.0\r\nHost: t\r\n\r\n")
            #expect(old.header("transfer-encoding") == nil)
            #expect(old.header("connection") == "close")
            #expect(old.text == "abcde")
        }
    }
}
