//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Active health checks of `protocol: h2` clusters against real HTTP/2 origins on 127.0.0.1:
/// gRPC's health protocol and `GET path` over HTTP/2. Probe rounds run on a manual clock; a
/// probe's own timeout is real time (10 s, so that a loaded machine does not fail a good probe).
@Suite("Gateway HTTP/2 health checks", .timeLimit(.minutes(2)))
struct GatewayHTTP2HealthTests {
    static func withGRPCOrigins<T>(_ count: Int, _ body: ([GRPCOrigin]) async throws -> T) async throws -> T {
        try await withServers(
            Array(0..<count), start: { _ in try await GRPCOrigin.start(group: MultiThreadedEventLoopGroup.singleton) },
            stop: { await $0.stop() }, body)
    }

    static func yaml(_ ports: [Int], check: String) -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters:
          echo:
            endpoints: [\(ports.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]
            protocol: h2
            health_check: \(check)
        routes: [{match: {path_prefix: /}, cluster: echo}]
        """
    }

    static func healthy(_ state: ClusterState) -> [Bool] {
        state.endpoints.map { $0.healthy.load(ordering: .relaxed) }
    }

    /// Why each endpoint's last probe failed (`nil`: it succeeded).
    static func failures(_ state: ClusterState) -> [String?] {
        state.endpoints.map { $0.lastProbeFailure.withLock { $0 } }
    }

    /// Waits until the endpoints' health is `expected`; after a timeout, also records the health
    /// found and why each last probe failed, so that a failure here says which probe went wrong.
    static func expectHealth(
        _ state: ClusterState, _ expected: [Bool], _ what: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async {
        guard await !eventually(what, sourceLocation: sourceLocation, { Self.healthy(state) == expected }) else {
            return
        }
        Issue.record(
            "health \(Self.healthy(state)), last probe failures \(Self.failures(state))", sourceLocation: sourceLocation
        )
    }

    @Test("gRPC health checks: NOT_SERVING or an unknown service takes an endpoint out, SERVING brings it back")
    func grpcHealth() async throws {
        try await Self.withGRPCOrigins(3) { origins async throws in
            origins[0].health.withLock { $0["test.Echo"] = 1 }
            origins[1].health.withLock { $0["test.Echo"] = 2 }  // NOT_SERVING
            // origins[2] does not know the service: grpc-status 5.
            let clock = ManualClock()
            let yaml = Self.yaml(
                origins.map(\.port),
                check: "{grpc: {service: test.Echo}, interval: 10s, timeout: 10s, healthy: 1, unhealthy: 1}")
            try await withGateway(yaml, clock: clock) { gateway async throws in
                let state = gateway.server.currentCore.clusters[0]
                await Self.expectHealth(
                    state, [true, false, false], "the first round took out the not-serving and the unknown")
                #expect(Self.failures(state) == [nil, "serving status 2", "grpc-status 5"])
                #expect(
                    origins[0].seen.withLock { $0.map(\.path) }.allSatisfy { $0 == HealthProbeHandler.grpcPath })
                #expect(origins[0].seen.withLock { $0.first?.te } == "trailers")
                // Traffic goes to the serving endpoint only.
                for _ in 0..<4 {
                    #expect(try await gateway.get("/healthz").status == 200)
                }
                #expect(origins[1].seen.withLock { $0.filter { $0.path == "/healthz" }.count } == 0)

                origins[1].health.withLock { $0["test.Echo"] = 1 }
                origins[2].health.withLock { $0["test.Echo"] = 1 }
                await clock.waitForSleepers(count: 1)
                clock.advance(by: .seconds(10))
                await Self.expectHealth(state, [true, true, true], "both serve again")
                #expect(Self.failures(state) == [nil, nil, nil])
            }
        }
    }

    @Test("the empty service name asks about the server as a whole; GET path over HTTP/2 needs a 2xx")
    func serverAndPathHealth() async throws {
        try await Self.withGRPCOrigins(2) { origins async throws in
            origins[1].health.withLock { $0[""] = 2 }
            let clock = ManualClock()
            try await withGateway(
                Self.yaml(origins.map(\.port), check: "{grpc: {}, interval: 10s, timeout: 10s, unhealthy: 1}"),
                clock: clock
            ) { gateway async throws in
                let state = gateway.server.currentCore.clusters[0]
                await Self.expectHealth(state, [true, false], "the not-serving server is out")
                #expect(Self.failures(state) == [nil, "serving status 2"])
            }
            origins[1].httpHealth.store(503, ordering: .relaxed)
            try await withGateway(
                Self.yaml(origins.map(\.port), check: "{path: /healthz, interval: 10s, timeout: 10s, unhealthy: 1}"),
                clock: clock
            ) { gateway async throws in
                let state = gateway.server.currentCore.clusters[0]
                await Self.expectHealth(state, [true, false], "the 503 endpoint is out")
                #expect(Self.failures(state) == [nil, "status 503"])
                #expect(origins[0].seen.withLock { $0.contains { $0.path == "/healthz" } })
            }
        }
    }

    @Test("a probe that gets no answer over HTTP/2 (refused, or not HTTP/2) is a failure")
    func unreachable() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["http1"]) { http1 async throws in
            try await Self.withGRPCOrigins(1) { origins async throws in
                let clock = ManualClock()
                let yaml = Self.yaml(
                    [origins[0].port, closed, http1[0].port],
                    // Neither endpoint is waited for: the refused one fails at connect, the HTTP/1.1
                    // one at its answer to HTTP/2's preface (a connection error closes the probe's
                    // connection). The timeout is far beyond the wait below, so a probe that only
                    // its timeout ends fails the test.
                    check: "{grpc: {}, interval: 600s, timeout: 600s, unhealthy: 1}")
                try await withGateway(yaml, clock: clock) { gateway async throws in
                    let state = gateway.server.currentCore.clusters[0]
                    await Self.expectHealth(
                        state, [true, false, false], "the closed port and the HTTP/1.1 origin are out")
                    let failures = Self.failures(state)
                    #expect(failures[0] == nil)
                    #expect(failures[1]?.hasPrefix("connect failed: ") == true, "\(failures)")
                    #expect(failures[2] != nil)
                }
            }
        }
    }

    /// A gRPC body of one message: the 5-byte prefix (`compressed`, `length` or the real length)
    /// and `bytes`; the status the reader finds in it.
    static func status(_ bytes: [UInt8], length: Int? = nil, compressed: UInt8 = 0) -> UInt64? {
        var buffer = ByteBuffer()
        buffer.writeInteger(compressed)
        buffer.writeInteger(UInt32(length ?? bytes.count))
        buffer.writeBytes(bytes)
        return HealthProbeHandler.servingStatus(of: buffer)
    }

    @Test("the HealthCheckResponse reader takes the status field, skips others, and refuses what is not one message")
    func responseReader() {
        #expect(Self.status([0x08, 0x01]) == 1)
        #expect(Self.status([0x08, 0x02]) == 2)
        #expect(Self.status([]) == 0)
        // An unknown length-delimited field 2 ("ab") before the status.
        #expect(Self.status([0x12, 0x02, 0x61, 0x62, 0x08, 0x01]) == 1)
        #expect(Self.status([0x08, 0x01], compressed: 1) == nil)
        #expect(Self.status([0x08, 0x01], length: 3) == nil)
        #expect(Self.status([0x08]) == nil)
        #expect(Self.status([0x12, 0x05, 0x61]) == nil)
        let short = HealthProbeHandler.servingStatus(of: ByteBuffer(bytes: [0, 0]))
        #expect(short == nil)
    }

    @Test("grpc health checks are validated: protocol h2 only, not with path")
    func configuration() throws {
        func problems(_ cluster: String) -> String {
            do {
                _ = try GatewayConfiguration(
                    yaml: """
                        clusters: {a: \(cluster)}
                        routes: [{match: {path_prefix: /}, cluster: a}]
                        """)
                return ""
            } catch {
                return "\(error)"
            }
        }
        #expect(
            problems("{endpoints: [127.0.0.1:1], health_check: {grpc: {}}}").contains(
                "clusters.a.health_check.grpc: needs protocol: h2"))
        #expect(
            problems("{endpoints: [127.0.0.1:1], protocol: h2, health_check: {path: /x, grpc: {service: s}}}")
                .contains("clusters.a.health_check.grpc: cannot be used with path"))
        #expect(
            problems("{endpoints: [127.0.0.1:1], protocol: h2, health_check: {grpc: {name: s}}}").contains(
                "clusters.a.health_check.grpc"))
        #expect(problems("{endpoints: [127.0.0.1:1], protocol: h2, health_check: {grpc: {service: s.S}}}") == "")
        #expect(problems("{endpoints: [127.0.0.1:1], protocol: h2, health_check: {path: /healthz}}") == "")
        let configuration = try GatewayConfiguration(
            yaml: """
                clusters: {a: {endpoints: [127.0.0.1:1], protocol: h2, health_check: {grpc: {service: s.S}}}}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """)
        #expect(configuration.clusters.first?.healthCheck?.grpcService == "s.S")
        // The admin API's /config shows the service, not a path that is not probed.
        let cluster = try #require(configuration.clusters.first)
        let check = AdminViews.cluster(cluster)["health_check"] as? [String: Any]
        #expect((check?["grpc"] as? [String: String]) == ["service": "s.S"])
        #expect(check?["path"] == nil)
    }
}
