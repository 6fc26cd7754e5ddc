//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing

@testable import AviaryGateway

/// A proxy reuses the exchange object of its connection's last request for the next one
/// (`ProxyHandler.makeExchange`): a reused exchange must be what a new one would be.
@Suite("Exchange reuse", .timeLimit(.minutes(1)))
struct ExchangeReuseTests {
    static let yaml = """
        listen: {address: 127.0.0.1:0}
        clusters:
          a: {endpoints: [127.0.0.1:1]}
          b: {endpoints: [127.0.0.1:2, 127.0.0.1:3]}
        routes:
          - {match: {path_prefix: /a}, cluster: a}
          - {match: {path_prefix: /b}, cluster: b, retry: {attempts: 3, on: [503]}}
        """

    /// Each stored property of `exchange` by name: objects by identity, other values as printed.
    static func properties(_ exchange: ProxyHandler.Exchange) -> [String] {
        Mirror(reflecting: exchange).children.map { "\($0.label ?? "?") = \(Self.describe($0.value))" }
    }

    static func describe(_ value: Any) -> String {
        let mirror = Mirror(reflecting: value)
        switch mirror.displayStyle {
        case .class: return "object \(ObjectIdentifier(value as AnyObject))"
        case .optional: return mirror.children.first.map { "some(\(Self.describe($0.value)))" } ?? "nil"
        default: return String(reflecting: value)
        }
    }

    @Test("a reused exchange has every property a new one for the same request has")
    func reusedEqualsNew() throws {
        let configuration = try GatewayConfiguration(yaml: Self.yaml)
        let core = GatewayCore(
            configuration: configuration, statistics: GatewayStatistics(), random: GatewayRandom { _ in 0 },
            logger: Logger(label: "test"), authenticator: nil, clock: SystemClock(), tracer: nil, previous: nil)
        let upstreams = LoopUpstreams(
            eventLoop: EmbeddedEventLoop(), core: core, metrics: LoopMetrics(), previous: nil)
        let (a, b) = (upstreams.clusters[0], upstreams.clusters[1])
        // The new exchange's request and the other one differ in everything the exchange takes
        // from a request: method (replayable or not, HEAD or not), version, keep-alive.
        let post = RequestHead(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/a"))
        let headHead = HTTPRequestHead(version: .http1_0, method: .HEAD, uri: "/b")
        let head = RequestHead(headHead)
        let bytes = ByteBuffer(string: "POST /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n")

        let new = ProxyHandler.Exchange(
            route: core.routes.routes[0], clusterIndex: 0, cluster: a, pool: a.pools[0],
            head: .bytes(bytes, isHead: false), downstream: post)
        // Another request's exchange, with every property it can change changed, as a request
        // that retried, kept its body, streamed and failed would leave it.
        let reused = ProxyHandler.Exchange(
            route: core.routes.routes[1], clusterIndex: 1, cluster: b, pool: b.pools[1],
            head: .parts(headHead), downstream: head)
        reused.pending = [.end(nil)]
        reused.requestComplete = true
        reused.responseHeadSent = true
        reused.upstreamReusable = true
        reused.bodyBytes = 42
        reused.timeout = GatewayTimer(cancel: {})
        reused.retried = true
        reused.kept = ByteBuffer(string: "body")
        reused.keptTrailers = ["a": "b"]
        reused.attempt = 3
        reused.perTryTimeout = GatewayTimer(cancel: {})
        reused.attemptAnswered = true
        reused.responseHeaders = [("ratelimit-limit", "1")]
        reused.headerVariables = HeaderVariables(clientIP: "1.2.3.4", request: headHead)
        let before = Self.properties(reused)

        reused.reuse(
            route: core.routes.routes[0], clusterIndex: 0, cluster: a, pool: a.pools[0],
            head: .bytes(bytes, isHead: false), downstream: post)
        #expect(Self.properties(reused) == Self.properties(new))
        // Whoever adds a property to the exchange adds it to `reuse` and to the changes above.
        #expect(Self.properties(new).count == 27)
        let unchanged = zip(before, Self.properties(new)).filter { $0 == $1 }.map(\.0)
        #expect(
            unchanged.sorted() == [
                "cache = nil", "connection = nil", "mirrorCopy = nil",
            ])
    }

    @Test("on one keep-alive connection, a request after a retried one starts afresh; pipelined ones answer in order")
    func requestsAfterARetry() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  backend: {endpoints: [127.0.0.1:\(origins[0].port), 127.0.0.1:\(origins[1].port)]}
                routes:
                  - {match: {path_prefix: /}, cluster: backend, retry: {attempts: 3, on: [503]}}
                """
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                defer { Task { await connection.close() } }
                // Round robin: "bad" answers 503 and the GET goes again, to "good".
                try await connection.send("GET /flaky HTTP/1.1\r\nHost: t\r\n\r\n")
                let retried = try await connection.readResponse()
                #expect(retried.status == 200)
                #expect(retried.header("x-origin") == "good")
                // The next exchange on the connection (the same object, reused) has no attempts
                // or retry state of the last: this POST is not retryable, goes to "bad" and
                // gets its 503.
                try await connection.send("POST /flaky HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                let post = try await connection.readResponse()
                #expect(post.status == 503)
                #expect(post.header("x-origin") == "bad")
                // A HEAD, then two pipelined GETs: answered in order, each its own.
                try await connection.send("HEAD /flaky HTTP/1.1\r\nHost: t\r\n\r\n")
                let head = try await connection.readResponse(isHead: true)
                #expect(head.status == 200)
                #expect(head.body.isEmpty)
                try await connection.send(
                    "GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: t\r\n\r\n")
                let first = try await connection.readResponse()
                let second = try await connection.readResponse()
                #expect([first.status, second.status] == [201, 202])
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
                // Five requests, one exchange object (two if a callback still held the first
                // when the next request came; five if nothing were reused).
                let made = await gateway.server.metricsSnapshot().0.exchangesMade
                #expect((1...2).contains(made), "\(made) exchanges made")
            }
        }
    }

    @Test(
        "on one HTTP/2 connection, streams take ended streams' exchanges and start afresh; concurrent ones stay apart")
    func streamsReuseExchanges() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0, http2: true}
                clusters:
                  backend: {endpoints: [127.0.0.1:\(origins[0].port), 127.0.0.1:\(origins[1].port)]}
                routes:
                  - {match: {path_prefix: /}, cluster: backend, retry: {attempts: 3, on: [503]}}
                """
            try await withGateway(yaml) { gateway in
                let client = try await H2Client.connect(port: gateway.port, group: gateway.clients)
                defer { Task { await client.close() } }
                // Round robin: "bad" answers 503 and the GET goes again, to "good".
                let retried = try await client.request("GET", "/flaky")
                #expect(retried.status == 200)
                #expect(retried.header("x-origin") == "good")
                // The next stream's exchange is the retried stream's object: it has no attempts or
                // retry state of the last, so this POST is not retried and gets "bad"'s 503.
                let post = try await client.request("POST", "/flaky", body: [])
                #expect(post.status == 503)
                #expect(post.header("x-origin") == "bad")
                let head = try await client.request("HEAD", "/status/204")
                #expect(head.status == 204)
                #expect(head.body.isEmpty)
                // One after the other, the three streams had one exchange object between them.
                let sequential = await gateway.server.metricsSnapshot().0.exchangesMade
                #expect((1...2).contains(sequential), "\(sequential) exchanges made")
                // Streams at once, more than the connection keeps exchanges for: each gets its own
                // answer, with its body.
                let statuses = try await withThrowingTaskGroup(of: (Int, Int, String).self) { group in
                    for index in 0..<48 {
                        group.addTask {
                            let response = try await client.request("GET", "/status/\(200 + index % 4)")
                            return (index, response.status, response.text)
                        }
                    }
                    var all: [Int: (Int, String)] = [:]
                    for try await (index, status, text) in group { all[index] = (status, text) }
                    return all
                }
                #expect(statuses.count == 48)
                for (index, (status, text)) in statuses {
                    #expect(status == 200 + index % 4, "stream \(index)")
                    #expect(text == "status \(200 + index % 4)", "stream \(index)")
                }
                // At most one exchange per stream in flight at once was made; one after them
                // takes a kept one again.
                let concurrent = await gateway.server.metricsSnapshot().0.exchangesMade
                #expect(concurrent <= sequential + 48, "\(concurrent) exchanges made")
                #expect(try await client.request("GET", "/status/202").status == 202)
                #expect(await gateway.server.metricsSnapshot().0.exchangesMade == concurrent)
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
            }
        }
    }
}
