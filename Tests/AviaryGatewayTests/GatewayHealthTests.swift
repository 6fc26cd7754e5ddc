//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Outlier ejection and health decisions on a manual clock, without sockets.
@Suite("Gateway outlier detection and health state")
struct OutlierStateTests {
    static func cluster(
        endpoints: Int, consecutive: Int = 3, base: Duration = .seconds(30), percent: Double = 0.5
    )
        -> GatewayConfiguration.Cluster
    {
        GatewayConfiguration.Cluster(
            name: "c", endpoints: (0..<endpoints).map { Endpoint(host: "127.0.0.1", port: 9000 + $0) },
            outlierDetection: .init(consecutive5xx: consecutive, baseEjection: base, maxEjectionRatio: percent))
    }

    @Test("consecutive failures eject; a success in between resets the count")
    func consecutive() {
        let clock = ManualClock()
        let state = ClusterState(cluster: Self.cluster(endpoints: 2), clock: clock)
        let endpoint = state.endpoints[0]
        state.record(endpoint, status: 500)
        state.record(endpoint, status: nil)
        state.record(endpoint, status: 200)
        state.record(endpoint, status: 503)
        state.record(endpoint, status: 502)
        #expect(state.isAvailable(endpoint))
        state.record(endpoint, status: 504)
        #expect(!state.isAvailable(endpoint))
        #expect(endpoint.ejections.load(ordering: .relaxed) == 1)
        #expect(state.isAvailable(state.endpoints[1]))
    }

    @Test("the n-th ejection lasts n × base_ejection, capped at max(base, 300s)")
    func growingEjection() {
        let clock = ManualClock()
        let state = ClusterState(cluster: Self.cluster(endpoints: 2, consecutive: 1), clock: clock)
        let endpoint = state.endpoints[0]
        for round in 1...3 {
            state.record(endpoint, status: 500)
            #expect(!state.isAvailable(endpoint), "round \(round)")
            clock.advance(by: .seconds(30 * round) - .milliseconds(1))
            #expect(!state.isAvailable(endpoint), "round \(round) ends early")
            clock.advance(by: .milliseconds(1))
            #expect(state.isAvailable(endpoint), "round \(round) does not end")
        }
        #expect(endpoint.ejections.load(ordering: .relaxed) == 3)
        #expect(OutlierEjection.duration(ejection: 20, base: .seconds(30)) == .seconds(300))
        #expect(OutlierEjection.duration(ejection: 3, base: .seconds(600)) == .seconds(600))
    }

    @Test("max_ejection_percent bounds how many endpoints are ejected at once")
    func maxPercent() {
        let clock = ManualClock()
        let state = ClusterState(cluster: Self.cluster(endpoints: 4, consecutive: 1, percent: 0.5), clock: clock)
        for endpoint in state.endpoints { state.record(endpoint, status: 500) }
        let ejected = state.endpoints.filter { !state.isAvailable($0) }.count
        #expect(ejected == 2)
        #expect(state.unavailable.load(ordering: .relaxed) == 2)
        clock.advance(by: .seconds(30))
        #expect(state.endpoints.allSatisfy { state.isAvailable($0) })
        #expect(state.unavailable.load(ordering: .relaxed) == 0)
    }

    @Test("health thresholds: unhealthy after N failures in a row, healthy after M successes in a row")
    func healthCounter() {
        var counter = HealthCheckCounter(healthyThreshold: 2, unhealthyThreshold: 3)
        #expect(counter.record(success: false, healthy: true) == nil)
        #expect(counter.record(success: false, healthy: true) == nil)
        #expect(counter.record(success: true, healthy: true) == nil)
        #expect(counter.record(success: false, healthy: true) == nil)
        #expect(counter.record(success: false, healthy: true) == nil)
        #expect(counter.record(success: false, healthy: true) == false)
        #expect(counter.record(success: true, healthy: false) == nil)
        #expect(counter.record(success: false, healthy: false) == nil)
        #expect(counter.record(success: true, healthy: false) == nil)
        #expect(counter.record(success: true, healthy: false) == true)
    }
}

/// Active health checks, outlier ejection and circuit breaking against real origins.
@Suite("Gateway upstream health", .timeLimit(.minutes(2)))
struct GatewayHealthTests {
    static func yaml(_ ports: [Int], cluster: String) -> String {
        """
        listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
        clusters:
          backend:
            endpoints: [\(ports.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]
            \(cluster)
        routes:
          - match: {path_prefix: /}
            cluster: backend
        """
    }

    @Test("active health checks take a failing endpoint out after `unhealthy` probes, on the injected clock")
    func activeHealthCheck() async throws {
        // "bad" answers /flaky with 503; "good" with 200.
        try await withOrigins(["bad", "good"]) { origins in
            let clock = ManualClock()
            let yaml = Self.yaml(
                origins.map(\.port),
                cluster: "health_check: {path: /flaky, interval: 10s, timeout: 5s, healthy: 1, unhealthy: 2}")
            try await withGateway(yaml, clock: clock) { gateway in
                let state = gateway.server.currentCore.clusters[0]
                // The first round runs at once: one failure of two, still healthy.
                await clock.waitForSleepers(count: 1)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
                #expect(state.endpoints[0].healthy.load(ordering: .relaxed) == true)
                clock.advance(by: .seconds(10))
                await eventually("bad is unhealthy") { !state.endpoints[0].healthy.load(ordering: .relaxed) }
                #expect(state.endpoints[1].healthy.load(ordering: .relaxed) == true)
                // The admin API says why: the last probe's answer.
                let document = try await gateway.adminJSON("/clusters")
                let endpoints = try #require(
                    (document["clusters"] as? [[String: Any]])?.first?["endpoints"] as? [[String: Any]])
                #expect(endpoints.map { $0["last_health_check_failure"] as? String } == ["status 503", nil])
                let health = try await gateway.metric(
                    #"aviary_gateway_endpoint_healthy{cluster="backend",endpoint="127.0.0.1:\#(origins[0].port)"}"#)
                #expect(health == 0)
                let before = origins[0].state.requests.load(ordering: .relaxed)
                for _ in 0..<6 {
                    #expect(try await gateway.get("/x").header("x-origin") == "good")
                }
                #expect(origins[0].state.requests.load(ordering: .relaxed) == before)
            }
        }
    }

    @Test("an endpoint with a reachable health path stays in; probes that get no answer count as failures")
    func probeFailures() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["good"]) { origins in
            let clock = ManualClock()
            let yaml = Self.yaml(
                [origins[0].port, closed],
                // The probe timeout runs on real time (the event loop's): 10 s so that a loaded
                // machine does not fail the good endpoint's probe; the closed one is refused at once.
                cluster: "health_check: {path: /readyz, interval: 10s, timeout: 10s, healthy: 1, unhealthy: 1}")
            try await withGateway(yaml, clock: clock) { gateway in
                let state = gateway.server.currentCore.clusters[0]
                await eventually("the closed endpoint is unhealthy") {
                    !state.endpoints[1].healthy.load(ordering: .relaxed)
                }
                #expect(state.endpoints[0].healthy.load(ordering: .relaxed) == true)
                let failure = state.endpoints[1].lastProbeFailure.withLock { $0 }
                #expect(failure?.hasPrefix("connect failed: ") == true, "\(failure ?? "none")")
                #expect(state.endpoints[0].lastProbeFailure.withLock { $0 } == nil)
                for _ in 0..<4 {
                    let status = try await gateway.get("/x").status
                    #expect(status == 200)
                }
            }
        }
    }

    @Test("outlier detection ejects an endpoint after consecutive 5xx answers; traffic goes to the others")
    func outlierEjection() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let clock = ManualClock()
            let yaml = Self.yaml(
                origins.map(\.port),
                cluster: "outlier_detection: {consecutive_5xx: 2, base_ejection: 30s, max_ejection_percent: 50}")
            try await withGateway(yaml, clock: clock) { gateway in
                // Round robin: bad (503), good, bad (503): ejected now.
                var origin: [String] = []
                for _ in 0..<3 { origin.append(try await gateway.get("/flaky").header("x-origin") ?? "?") }
                #expect(origin == ["bad", "good", "bad"])
                for _ in 0..<4 {
                    #expect(try await gateway.get("/flaky").header("x-origin") == "good")
                }
                let ejections = try await gateway.metric(
                    #"aviary_gateway_endpoint_ejections_total{cluster="backend",endpoint="127.0.0.1:\#(origins[0].port)"}"#
                )
                #expect(ejections == 1)
                let document = try await gateway.adminJSON("/clusters")
                let endpoints = (document["clusters"] as? [[String: Any]])?.first?["endpoints"] as? [[String: Any]]
                #expect(endpoints?.first?["ejected"] as? Bool == true)
                // Back after base_ejection.
                clock.advance(by: .seconds(30))
                var seen: Set<String> = []
                for _ in 0..<2 { seen.insert(try await gateway.get("/x").header("x-origin") ?? "?") }
                #expect(seen == ["bad", "good"])
            }
        }
    }

    @Test("circuit_breaker.max_connections and max_pending refuse requests with 503 overflow")
    func connectionThresholds() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml([origins[0].port], cluster: "circuit_breaker: {max_connections: 1, max_pending: 1}")
            try await withGateway(yaml) { gateway in
                let held = try await gateway.connect()
                try await held.send("POST /upload?pause HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
                await eventually("the origin holds the upload") {
                    origins[0].state.pausedCount.load(ordering: .relaxed) == 1
                }
                // The body goes out only now, so the paused origin leaves it unread.
                try await held.send("hello")
                // The only connection allowed is busy: a second request would need another.
                let refused = try await gateway.get("/x")
                #expect(refused.status == 503)
                #expect(refused.text.contains("\"reason\":\"overflow\""))
                #expect(refused.text.contains("max_connections"))
                #expect(
                    try await gateway.metric(#"aviary_gateway_circuit_breaker_overflows_total{cluster="backend"}"#) == 1
                )
                #expect(
                    try await gateway.metric(
                        #"aviary_gateway_circuit_breaker_open{cluster="backend",threshold="max_connections"}"#) == 1)
                origins[0].release()
                #expect(try await held.readResponse().status == 200)
                await held.close()
                // The connection went back to the pool: requests flow again.
                #expect(try await gateway.get("/x").status == 200)
            }
            // Without pooling every request needs a new connection; one waits already.
            let unpooled = Self.yaml(
                [origins[0].port], cluster: "max_idle_connections: 0\n    circuit_breaker: {max_pending: 1}")
            try await withGateway(unpooled) { gateway in
                let state = gateway.server.currentCore.clusters[0]
                #expect(try await gateway.get("/x").status == 200)
                state.pending.store(1, ordering: .relaxed)
                let refused = try await gateway.get("/x")
                state.pending.store(0, ordering: .relaxed)
                #expect(refused.status == 503)
                #expect(refused.text.contains("max_pending"))
                #expect(try await gateway.get("/x").status == 200)
            }
        }
    }
}
