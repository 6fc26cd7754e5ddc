//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryDiscovery
import Foundation
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// A directory whose services' endpoints the test sets, as an embedding application would.
private struct TestDirectory: ServiceDirectory {
    let sets: [String: EndpointSet]
    func endpoints(of service: String) -> any EndpointProvider { self.sets[service] ?? EndpointSet() }
}

private func local(_ ports: [Int]) -> [Endpoint] {
    ports.map { Endpoint(host: "127.0.0.1", port: $0) }
}

/// Clusters whose endpoints come from discovery (the protocol `ServiceClient` uses) instead of
/// the configuration.
@Suite("Gateway discovery", .timeLimit(.minutes(2)))
struct GatewayDiscoveryTests {
    static let yaml = """
        listen: {address: 127.0.0.1:0}
        clusters:
          backend: {discovery: {service: orders}, outlier_detection: {consecutive_5xx: 1, base_ejection: 60s, max_ejection_percent: 100}}
        routes:
          - match: {path_prefix: /}
            cluster: backend
        """

    @Test("configuration: discovery replaces endpoints; mistakes are named")
    func configuration() throws {
        let configuration = try GatewayConfiguration(
            yaml: """
                discovery: {file: /etc/aviary/endpoints.json, interval: 2s}
                clusters:
                  backend: {discovery: {service: orders}}
                routes: [{match: {path_prefix: /}, cluster: backend}]
                """)
        #expect(configuration.clusters[0].discovery == "orders")
        #expect(configuration.clusters[0].endpoints.isEmpty)
        #expect(configuration.discovery == .init(file: "/etc/aviary/endpoints.json", interval: .seconds(2)))
        #expect(
            problems(
                """
                discovery: {interval: 1s}
                clusters:
                  a: {endpoints: [127.0.0.1:1], discovery: {service: orders}}
                  b: {discovery: {name: orders}}
                  c: {load_balancer: round_robin}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """) == [
                    "discovery.file: is missing: expected the path of a discovery file (gateway.yaml:1)",
                    "clusters.a.discovery: cannot be used with endpoints: choose one (gateway.yaml:3)",
                    "clusters.b.discovery.name: unknown key, expected one of service (gateway.yaml:4)",
                    "clusters.b.discovery.service: is missing: expected the service name to discover (gateway.yaml:4)",
                    "clusters.c.endpoints: is missing: expected a list of host:port (or discovery: {service: NAME}) (gateway.yaml:5)",
                ])
    }

    @Test("a discovered cluster without a discovery source is refused at start")
    func noSource() async throws {
        let error = await #expect(throws: GatewayServerError.self) {
            try await withGateway(Self.yaml) { _ in }
        }
        #expect(error?.description.contains("clusters.backend.discovery: no discovery source") == true)
        let missing = "/nonexistent-\(UUID().uuidString).json"
        let fileError = await #expect(throws: GatewayServerError.self) {
            try await withGateway("discovery: {file: \(missing)}\n" + Self.yaml) { _ in }
        }
        #expect(fileError?.description.hasPrefix("discovery.file: discovery file \(missing): cannot be read") == true)
    }

    @Test("endpoints follow the directory: none is a 503, then each change is served")
    func follows() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let orders = EndpointSet()
            try await withGateway(Self.yaml, directory: TestDirectory(sets: ["orders": orders])) { gateway in
                let none = try await gateway.get("/x")
                #expect(none.status == 503)
                #expect(none.problem?.extensions["reason"] == "no-endpoints")

                orders.set(local([origins[0].port]))
                await eventuallyAsync("one serves") { try await gateway.get("/x").header("x-origin") == "one" }

                orders.set(local([origins[0].port, origins[1].port]))
                await eventuallyAsync("two serves too") { try await gateway.get("/x").header("x-origin") == "two" }
                #expect(gateway.server.configuration.clusters[0].endpoints == local(origins.map(\.port)))

                orders.set(local([origins[1].port]))
                await eventually("one is gone") { gateway.server.configuration.clusters[0].endpoints.count == 1 }
                let before = origins[0].state.requests.load(ordering: .relaxed)
                for _ in 0..<4 {
                    #expect(try await gateway.get("/x").header("x-origin") == "two")
                }
                #expect(origins[0].state.requests.load(ordering: .relaxed) == before)
                #expect(gateway.server.statistics.discoveryUpdates.load(ordering: .relaxed) == 3)
            }
        }
    }

    @Test("an endpoint that stays keeps its ejection when another appears")
    func keepsEjection() async throws {
        try await withOrigins(["bad", "good", "good-too"]) { origins in
            let orders = EndpointSet(local([origins[0].port, origins[1].port]))
            try await withGateway(Self.yaml, directory: TestDirectory(sets: ["orders": orders])) { gateway in
                // Round robin starts at "bad": its 503 ejects it (consecutive_5xx: 1).
                #expect(try await gateway.get("/flaky").status == 503)
                let before = gateway.server.currentCore.clusters[0]
                #expect(!before.isAvailable(before.endpoints[0]))

                orders.set(local(origins.map(\.port)))
                await eventually("the third endpoint is in") {
                    gateway.server.currentCore.clusters[0].endpoints.count == 3
                }
                let after = gateway.server.currentCore.clusters[0]
                #expect(after !== before)
                #expect(!after.isAvailable(after.endpoints[0]))
                #expect(after.isAvailable(after.endpoints[1]) && after.isAvailable(after.endpoints[2]))
                let bad = origins[0].state.requests.load(ordering: .relaxed)
                var seen: Set<String> = []
                for _ in 0..<6 {
                    let response = try await gateway.get("/flaky")
                    #expect(response.status == 200)
                    seen.insert(response.header("x-origin") ?? "?")
                }
                #expect(seen == ["good", "good-too"])
                #expect(origins[0].state.requests.load(ordering: .relaxed) == bad)
            }
        }
    }

    @Test("an endpoint that stays keeps its idle connections when another appears")
    func keepsConnections() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let orders = EndpointSet(local([origins[0].port]))
            try await withGateway(Self.yaml, directory: TestDirectory(sets: ["orders": orders])) { gateway in
                let statistics = gateway.server.statistics
                #expect(try await gateway.get("/x").header("x-origin") == "one")
                #expect(try await gateway.get("/x").header("x-origin") == "one")
                let opened = statistics.upstreamConnectionsOpened.load(ordering: .relaxed)
                #expect(opened == 1)
                let updates = statistics.discoveryUpdates.load(ordering: .relaxed)

                orders.set(local([origins[0].port, origins[1].port]))
                await eventually("the change is installed") {
                    statistics.discoveryUpdates.load(ordering: .relaxed) == updates + 1
                }
                var seen: [String] = []
                for _ in 0..<4 {
                    seen.append(try await gateway.get("/x").header("x-origin") ?? "?")
                }
                #expect(Set(seen) == ["one", "two"])
                // One new connection, to "two"; "one" is served on the connection it had.
                #expect(statistics.upstreamConnectionsOpened.load(ordering: .relaxed) == opened + 1)
                #expect(origins[0].state.connections.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a discovery file is re-read on the gateway's clock; a broken one keeps the last good endpoints")
    func file() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let path = FileManager.default.temporaryDirectory.appendingPathComponent(
                "endpoints-\(UUID().uuidString).json"
            ).path
            defer { try? FileManager.default.removeItem(atPath: path) }
            func write(_ text: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }
            try write(#"{"orders": ["127.0.0.1:\#(origins[0].port)"]}"#)
            let clock = ManualClock()
            try await withGateway("discovery: {file: \(path), interval: 5s}\n" + Self.yaml, clock: clock) { gateway in
                #expect(try await gateway.get("/x").header("x-origin") == "one")

                await clock.waitForSleepers(count: 1)
                try write(#"{"orders": ["127.0.0.1:\#(origins[1].port)"]}"#)
                clock.advance(by: .seconds(5))
                await eventually("the file's change is served") {
                    gateway.server.configuration.clusters[0].endpoints == local([origins[1].port])
                }
                #expect(try await gateway.get("/x").header("x-origin") == "two")

                await clock.waitForSleepers(count: 1)
                try write(#"{"orders": ["#)
                clock.advance(by: .seconds(5))
                await clock.waitForSleepers(count: 1)
                #expect(try await gateway.get("/x").header("x-origin") == "two")
            }
        }
    }

    @Test("a reload keeps discovered endpoints and refuses a discovery cluster without a source")
    func reload() async throws {
        try await withOrigins(["one"]) { origins in
            let orders = EndpointSet(local([origins[0].port]))
            try await withGateway(Self.yaml, directory: TestDirectory(sets: ["orders": orders])) { gateway in
                var next = try GatewayConfiguration(yaml: Self.yaml)
                next.routes[0].timeout = .seconds(9)
                try await gateway.server.reload(next)
                #expect(gateway.server.configuration.clusters[0].endpoints == local([origins[0].port]))
                #expect(try await gateway.get("/x").header("x-origin") == "one")
            }
            let plain = """
                listen: {address: 127.0.0.1:0}
                clusters: {backend: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes: [{match: {path_prefix: /}, cluster: backend}]
                """
            try await withGateway(plain) { gateway in
                let discovered = try GatewayConfiguration(yaml: Self.yaml)
                let error = await #expect(throws: GatewayConfigurationError.self) {
                    try await gateway.server.reload(discovered)
                }
                #expect(error?.problems.first?.hasPrefix("clusters.backend.discovery: no discovery source") == true)
                #expect(try await gateway.get("/x").header("x-origin") == "one")
            }
        }
    }
}
