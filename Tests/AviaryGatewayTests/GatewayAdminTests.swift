//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// The admin API on its own listener, against real origins.
@Suite("Gateway admin API and metrics", .timeLimit(.minutes(2)))
struct GatewayAdminTests {
    static func yaml(_ endpoints: [Int], extra: String = "", cluster: String = "") -> String {
        """
        listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
        clusters:
          backend:
            endpoints: [\(endpoints.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]
        \(cluster)
        routes:
          - match: {path_prefix: /api/}
            rewrite: {path_prefix: /}
            cluster: backend
            timeout: 30s
        \(extra)
        """
    }

    @Test("/ready, /config, unknown paths and wrong methods")
    func readyAndConfig() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml([origins[0].port])) { gateway in
                #expect(gateway.adminPort != 0)
                #expect(gateway.adminPort != gateway.port)
                let ready = try await gateway.admin("GET", "/ready")
                #expect(ready.status == 200)
                #expect(ready.text == "ready\n")

                let config = try await gateway.adminJSON("/config")
                let clusters = try #require(config["clusters"] as? [String: Any])
                let backend = try #require(clusters["backend"] as? [String: Any])
                #expect(backend["endpoints"] as? [String] == ["127.0.0.1:\(origins[0].port)"])
                #expect(backend["load_balancer"] as? String == "round_robin")
                let routes = try #require(config["routes"] as? [[String: Any]])
                #expect(routes.count == 1)
                #expect((routes.first?["match"] as? [String: Any])?["path_prefix"] as? String == "/api/")
                #expect(routes.first?["timeout"] as? String == "30s")
                #expect(routes.first?["cluster"] as? String == "backend")

                #expect(try await gateway.admin("GET", "/nope").status == 404)
                #expect(try await gateway.admin("POST", "/ready").status == 405)
                #expect(try await gateway.admin("GET", "/reload").status == 405)
                // The proxy port does not serve the admin API.
                #expect(try await gateway.get("/ready").status == 404)
            }
        }
    }

    @Test("/clusters shows endpoints with in-flight requests, pooled connections and failures")
    func clusters() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml([origins[0].port, closed])
            try await withGateway(yaml) { gateway in
                // Round robin: a, closed, a, closed.
                var statuses: [Int] = []
                for _ in 0..<4 { statuses.append(try await gateway.get("/api/x").status) }
                #expect(statuses == [200, 502, 200, 502])
                // An upload the origin does not read stays in flight.
                let slow = try await gateway.connect()
                try await slow.send("POST /api/upload?pause HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
                await eventually("the origin holds the upload") {
                    origins[0].state.pausedCount.load(ordering: .relaxed) == 1
                }
                // The body goes out only now, so the paused origin leaves it unread.
                try await slow.send("abc")
                let document = try await gateway.adminJSON("/clusters")
                let clusters = try #require(document["clusters"] as? [[String: Any]])
                let backend = try #require(clusters.first)
                #expect(backend["name"] as? String == "backend")
                #expect(backend["active_requests"] as? Int == 1)
                let endpoints = try #require(backend["endpoints"] as? [[String: Any]])
                let good = try #require(endpoints.first { $0["address"] as? String == "127.0.0.1:\(origins[0].port)" })
                let bad = try #require(endpoints.first { $0["address"] as? String == "127.0.0.1:\(closed)" })
                #expect(good["in_flight"] as? Int == 1)
                #expect(good["healthy"] as? Bool == true)
                #expect(good["ejected"] as? Bool == false)
                let connections = try #require(good["connections"] as? [String: Any])
                #expect(connections["open"] as? Int == 1)
                #expect(bad["connect_errors"] as? Int == 2)
                #expect(bad["in_flight"] as? Int == 0)
                origins[0].release()
                let answer = try await slow.readResponse()
                #expect(answer.status == 200)
                await slow.close()
                let after = try await gateway.adminJSON("/clusters")
                let cluster = try #require((after["clusters"] as? [[String: Any]])?.first)
                #expect(cluster["active_requests"] as? Int == 0)
            }
        }
    }

    @Test("/metrics counts requests by route and status class, latency, endpoint answers and connect errors")
    func metrics() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml([origins[0].port, closed])) { gateway in
                var statuses: [Int] = []
                for path in ["/api/x", "/api/x", "/api/status/503", "/api/y"] {
                    statuses.append(try await gateway.get(path).status)
                }
                // Round robin: a (200), closed (502), a (503), closed (502).
                #expect(statuses == [200, 502, 503, 502])
                #expect(try await gateway.get("/elsewhere").status == 404)

                let response = try await gateway.admin("GET", "/metrics")
                #expect(response.status == 200)
                #expect(response.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
                let endpoint = "127.0.0.1:\(origins[0].port)"
                let closedEndpoint = "127.0.0.1:\(closed)"
                #expect(
                    try await gateway.metric(#"aviary_gateway_requests_total{route="/api/",status_class="2xx"}"#) == 1)
                #expect(
                    try await gateway.metric(#"aviary_gateway_requests_total{route="/api/",status_class="5xx"}"#) == 3)
                #expect(try await gateway.metric(#"aviary_gateway_request_duration_seconds_count{route="/api/"}"#) == 4)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_request_duration_seconds_bucket{route="/api/",le="+Inf"}"#)
                        == 4)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_endpoint_responses_total{cluster="backend",endpoint="\#(endpoint)",status_class="5xx"}"#
                    ) == 1)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_endpoint_responses_total{cluster="backend",endpoint="\#(endpoint)",status_class="2xx"}"#
                    ) == 1)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_upstream_connect_errors_total{cluster="backend",endpoint="\#(closedEndpoint)"}"#
                    )
                        == 2)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_upstream_responses_total{cluster="backend",status_class="5xx"}"#) == 1)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_endpoint_healthy{cluster="backend",endpoint="\#(endpoint)"}"#) == 1)
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_circuit_breaker_open{cluster="backend",threshold="max_requests"}"#) == 0)
                #expect(try await gateway.metric("aviary_gateway_draining") == 0)
                // Requests no route took are not counted under any route.
                let text = response.text
                #expect(!text.contains("route=\"/elsewhere\""))
                // Every family's samples follow its TYPE line (the text format's grouping rule).
                var seen: Set<String> = []
                var current = ""
                for line in text.split(separator: "\n") {
                    if line.hasPrefix("# TYPE ") {
                        current = String(line.split(separator: " ")[2])
                        #expect(!seen.contains(current), "family \(current) appears twice")
                        seen.insert(current)
                    } else if line.hasPrefix("aviary_gateway_") {
                        let name = String(line.prefix { $0 != "{" && $0 != " " })
                        #expect(
                            name == current || name.hasPrefix(current + "_"), "\(name) outside its family \(current)")
                    }
                }
            }
        }
    }

    @Test("the access log writes one JSON line per request when configured")
    func accessLog() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("access-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml([origins[0].port], extra: "access_log: {path: \(path)}")
            try await withGateway(yaml) { gateway in
                #expect(try await gateway.get("/api/x?q=a%22b").status == 200)
                #expect(try await gateway.get("/nowhere").status == 404)
                let lines = { () -> [Substring] in
                    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
                    return text.split(separator: "\n")
                }
                await eventually("two access log lines") { lines().count == 2 }
                let objects = try lines().map {
                    try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
                }
                #expect(objects.count == 2)
                guard objects.count == 2 else { return }
                #expect(objects[0]["method"] as? String == "GET")
                #expect(objects[0]["target"] as? String == "/api/x?q=a%22b")
                #expect(objects[0]["status"] as? Int == 200)
                #expect(objects[0]["route"] as? String == "/api/")
                #expect(objects[0]["cluster"] as? String == "backend")
                #expect(objects[0]["endpoint"] as? String == "127.0.0.1:\(origins[0].port)")
                #expect(objects[0]["client"] as? String == "127.0.0.1")
                #expect((objects[0]["duration_ms"] as? Double).map { $0 >= 0 } == true)
                #expect((objects[0]["time"] as? String)?.hasSuffix("Z") == true)
                #expect(objects[1]["status"] as? Int == 404)
                #expect(objects[1]["route"] == nil)
            }
        }
    }

    @Test("no access log is written without access_log")
    func noAccessLog() async throws {
        try await withOrigins(["a"]) { origins in
            try await withGateway(Self.yaml([origins[0].port])) { gateway in
                let status = try await gateway.get("/api/x").status
                #expect(status == 200)
                #expect(gateway.server.currentCore.accessLog == nil)
                #expect(gateway.server.currentCore.tracer == nil)
            }
        }
    }
}
