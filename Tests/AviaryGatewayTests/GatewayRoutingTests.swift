//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Gateway routing and upstreams", .timeLimit(.minutes(2)))
struct GatewayRoutingTests {
    @Test("a prefix route rewrites the path, keeps the query and Host, sets X-Forwarded-*, drops hop-by-hop headers")
    func rewriteAndForwardedHeaders() async throws {
        try await withOrigins(["users"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  users: {endpoints: [127.0.0.1:\(origins[0].port)]}
                routes:
                  - match: {path_prefix: /api/users/}
                    rewrite: {path_prefix: /users/}
                    cluster: users
                """
            try await withGateway(yaml) { gateway in
                let response = try await gateway.request(
                    "GET /api/users/42?expand=orders HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 10.0.0.1\r\n"
                        + "X-Forwarded-For: 10.0.0.2\r\nForwarded: for=10.0.0.1\r\n"
                        + "Connection: close, x-drop\r\nx-drop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
                        + "Proxy-Authorization: Basic Zm9v\r\nx-keep: yes\r\n\r\n")
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "users")
                let seen = response.text
                #expect(seen.hasPrefix("GET /users/42?expand=orders\n"))
                #expect(seen.contains("host: shop.test\n"))
                #expect(seen.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1\n"))
                #expect(seen.contains("forwarded: for=10.0.0.1, for=127.0.0.1;proto=http;host=\"shop.test\"\n"))
                #expect(seen.contains("x-forwarded-proto: http\n"))
                #expect(seen.contains("x-forwarded-host: shop.test\n"))
                #expect(seen.contains("x-keep: yes\n"))
                for dropped in ["x-drop:", "keep-alive:", "te:", "proxy-authorization:", "connection: close"] {
                    #expect(!seen.contains(dropped), "\(dropped) reached the origin")
                }
            }
        }
    }

    @Test("a request with nothing to edit reaches the origin with its fields as sent and the gateway's added")
    func plainRequestFields() async throws {
        try await withOrigins(["users"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  users: {endpoints: [127.0.0.1:\(origins[0].port)]}
                routes:
                  - match: {path_prefix: /api/users/}
                    rewrite: {path_prefix: /users/}
                    cluster: users
                """
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                for method in ["GET", "POST"] {
                    try await connection.send(
                        "\(method) /api/users/7?x=1 HTTP/1.1\r\nHost: shop.test\r\nAccept: text/plain\r\n"
                            + "X-Mixed-Case: Kept As Is\r\n\r\n")
                    let response = try await connection.readResponse()
                    #expect(response.status == 200)
                    let seen = String(decoding: response.body, as: UTF8.self)
                    #expect(seen.hasPrefix("\(method) /users/7?x=1\n"))
                    for field in [
                        "host: shop.test\n", "accept: text/plain\n", "x-mixed-case: Kept As Is\n",
                        "x-forwarded-for: 127.0.0.1\n", "x-forwarded-proto: http\n", "x-forwarded-host: shop.test\n",
                        "forwarded: for=127.0.0.1;proto=http;host=\"shop.test\"\n",
                    ] {
                        #expect(seen.contains(field), "\(method): \(field) missing")
                    }
                    // A bodyless POST is given a length, so the origin does not wait for a body.
                    #expect(seen.contains("content-length: 0\n") == (method == "POST"))
                }
            }
        }
    }

    @Test("hop-by-hop headers of the response stay on the upstream hop")
    func responseHopByHop() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = GatewayHTTPTests.yaml(port: origins[0].port)
            try await withGateway(yaml) { gateway in
                let response = try await gateway.get("/hop")
                #expect(response.status == 200)
                #expect(response.header("x-kept") == "yes")
                #expect(response.header("x-secret") == nil)
                #expect(response.header("keep-alive") == nil)
                #expect(response.header("proxy-authenticate") == nil)
                #expect(response.text == "hop")
            }
        }
    }

    @Test("routes match on exact path, prefix, method and header, first match wins")
    func matching() async throws {
        try await withOrigins(["a", "b"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  a: {endpoints: [127.0.0.1:\(origins[0].port)]}
                  b: {endpoints: [127.0.0.1:\(origins[1].port)]}
                routes:
                  - match: {path: /exact}
                    cluster: b
                  - match: {path_prefix: /m, methods: [POST]}
                    cluster: b
                  - match: {path_prefix: /h, headers: {x-canary: always}}
                    cluster: b
                  - match: {path_prefix: /}
                    cluster: a
                """
            try await withGateway(yaml) { gateway in
                #expect(try await gateway.get("/exact").header("x-origin") == "b")
                #expect(try await gateway.get("/exact/more").header("x-origin") == "a")
                #expect(try await gateway.get("/exact?q=1").header("x-origin") == "b")
                #expect(try await gateway.get("/m/1").header("x-origin") == "a")
                let post = try await gateway.request(
                    "POST /m/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                #expect(post.header("x-origin") == "b")
                #expect(try await gateway.get("/h/1", headers: "X-Canary: always\r\n").header("x-origin") == "b")
                #expect(try await gateway.get("/h/1", headers: "X-Canary: never\r\n").header("x-origin") == "a")
            }
        }
    }

    @Test("no matching route is a 404 problem, and the connection stays usable")
    func noRoute() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes: [{match: {path_prefix: /api/}, cluster: a}]
                """
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
                let missing = try await connection.readResponse()
                #expect(missing.status == 404)
                #expect(missing.header("content-type") == "application/problem+json")
                #expect(missing.problem?.type == "urn:aviary:problem:no-route")
                #expect(missing.problem?.detail == "no route for GET /nowhere")
                try await connection.send("GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
                let found = try await connection.readResponse()
                #expect(found.status == 200)
                #expect(found.header("x-origin") == "a")
                await connection.close()
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a weighted split sends traffic by weight (injected random source)")
    func weightedSplit() async throws {
        try await withOrigins(["stable", "canary"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  stable: {endpoints: [127.0.0.1:\(origins[0].port)]}
                  canary: {endpoints: [127.0.0.1:\(origins[1].port)]}
                routes:
                  - match: {path_prefix: /}
                    split: [{cluster: stable, weight: 90}, {cluster: canary, weight: 10}, {cluster: canary, weight: 0}]
                """
            try await withGateway(yaml, random: countingRandom()) { gateway in
                var counts: [String: Int] = [:]
                for _ in 0..<100 {
                    let response = try await gateway.get("/x")
                    counts[response.header("x-origin") ?? "?", default: 0] += 1
                }
                #expect(counts == ["stable": 90, "canary": 10])
            }
        }
    }

    @Test("round robin takes each endpoint in turn")
    func roundRobin() async throws {
        try await withOrigins(["a", "b", "c"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  pool: {endpoints: [\(origins.map { "127.0.0.1:\($0.port)" }.joined(separator: ", "))]}
                routes: [{match: {path_prefix: /}, cluster: pool}]
                """
            try await withGateway(yaml) { gateway in
                var seen: [String] = []
                for _ in 0..<6 { seen.append(try await gateway.get("/").header("x-origin") ?? "?") }
                #expect(seen == ["a", "b", "c", "a", "b", "c"])
            }
        }
    }

    @Test("least request avoids the endpoint with a request in flight (power of two choices)")
    func leastRequest() async throws {
        try await withOrigins(["a", "b"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  pool:
                    endpoints: [127.0.0.1:\(origins[0].port), 127.0.0.1:\(origins[1].port)]
                    load_balancer: least_request
                routes: [{match: {path_prefix: /}, cluster: pool}]
                """
            // Always draws index 0 first: with equal load "a" wins, so only load can send traffic to "b".
            try await withGateway(yaml, random: GatewayRandom { _ in 0 }) { gateway in
                #expect(try await gateway.get("/").header("x-origin") == "a")
                let hanging = try await gateway.connect()
                try await hanging.send("GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
                await eventually("the hanging request reached a") {
                    origins[0].state.requests.load(ordering: .relaxed) == 2
                }
                var seen: [String] = []
                for _ in 0..<4 { seen.append(try await gateway.get("/").header("x-origin") ?? "?") }
                #expect(seen == ["b", "b", "b", "b"])
                await hanging.close()
            }
        }
    }

    @Test("upstream connections are kept alive and reused")
    func keepAlivePool() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = GatewayHTTPTests.yaml(port: origins[0].port)
            try await withGateway(yaml) { gateway in
                for index in 0..<5 {
                    let response = try await gateway.get("/n/\(index)")
                    #expect(response.status == 200)
                    #expect(response.header("x-origin-connection") == "1")
                }
                #expect(origins[0].state.connections.load(ordering: .relaxed) == 1)
                #expect(gateway.server.statistics.upstreamConnectionsOpened.load(ordering: .relaxed) == 1)
                #expect(gateway.server.statistics.upstreamConnectionsReused.load(ordering: .relaxed) == 4)
            }
        }
    }

    @Test("pipelined requests are answered in order")
    func pipelining() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = GatewayHTTPTests.yaml(port: origins[0].port)
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                try await connection.send(
                    "GET /first HTTP/1.1\r\nHost: t\r\n\r\nPOST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                        + "GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
                let first = try await connection.readResponse()
                let second = try await connection.readResponse()
                let third = try await connection.readResponse()
                #expect(first.text.hasPrefix("GET /first\n"))
                #expect(second.text.hasPrefix("POST /second\n"))
                #expect(third.text.hasPrefix("GET /third\n"))
                await connection.close()
            }
        }
    }
}
