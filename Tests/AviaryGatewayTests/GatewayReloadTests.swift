//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing

@testable import AviaryGateway

/// Hot reload and graceful drain, with real sockets and requests in flight.
@Suite("Gateway reload and drain", .timeLimit(.minutes(2)))
struct GatewayReloadTests {
    /// Routes `/` to `cluster`; both clusters are declared.
    static func yaml(one: Int, two: Int, to cluster: String, drain: String = "30s") -> String {
        """
        listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
        limits: {drain_timeout: \(drain)}
        clusters:
          one: {endpoints: [127.0.0.1:\(one)]}
          two: {endpoints: [127.0.0.1:\(two)]}
        routes:
          - match: {path_prefix: /}
            cluster: \(cluster)
        """
    }

    /// Starts an upload the origin does not read, so its response waits for `release()`.
    static func startHeldUpload(_ gateway: GatewayHarness, origin: TestOrigin, held: Int) async throws -> RawConnection
    {
        let connection = try await gateway.connect()
        try await connection.send("POST /upload?pause HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        await eventually("the origin holds the upload") { origin.state.pausedCount.load(ordering: .relaxed) == held }
        // The body goes out only now, so the paused origin leaves it unread.
        try await connection.send("hello")
        return connection
    }

    @Test("a reload serves new requests from the new configuration; a request in flight finishes on the old one")
    func reloadWithRequestInFlight() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            try await withGateway(Self.yaml(one: one, two: two, to: "one")) { gateway in
                #expect(try await gateway.get("/x").header("x-origin") == "one")
                let held = try await Self.startHeldUpload(gateway, origin: origins[0], held: 1)

                // The new configuration drops cluster "one" entirely.
                let next = """
                    listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
                    clusters:
                      two: {endpoints: [127.0.0.1:\(two)]}
                    routes:
                      - match: {path_prefix: /}
                        cluster: two
                    """
                let reload = try await gateway.admin("POST", "/reload", body: next)
                #expect(reload.status == 200)
                #expect(gateway.server.configuration.clusters.map(\.name) == ["two"])
                #expect(try await gateway.get("/x").header("x-origin") == "two")

                origins[0].release()
                let answer = try await held.readResponse()
                #expect(answer.status == 200)
                #expect(answer.header("x-origin") == "one")
                #expect(
                    answer.text == "bytes=5 sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
                await held.close()
                #expect(gateway.server.reloadsAccepted.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("an invalid configuration is refused with one line per problem; the running one stays")
    func invalidReload() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            try await withGateway(Self.yaml(one: one, two: two, to: "one")) { gateway in
                let broken = Self.yaml(one: one, two: two, to: "three")
                    .replacingOccurrences(of: "drain_timeout: 30s", with: "drain_timeout: soon")
                let response = try await gateway.admin("POST", "/reload", body: broken)
                #expect(response.status == 400)
                let object = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
                let problems = try #require(object?["problems"] as? [String])
                #expect(problems.count == 2)
                #expect(problems.first?.hasPrefix("limits.drain_timeout: expected a duration") == true)
                #expect(problems.last?.hasPrefix(#"routes[0].cluster: unknown cluster "three""#) == true)
                #expect(try await gateway.get("/x").header("x-origin") == "one")
                #expect(gateway.server.reloadsRefused.load(ordering: .relaxed) == 1)

                // listen cannot change without a restart.
                let moved = Self.yaml(one: one, two: two, to: "two")
                    .replacingOccurrences(of: "address: 127.0.0.1:0,", with: "address: 127.0.0.1:1,")
                let refused = try await gateway.admin("POST", "/reload", body: moved)
                #expect(refused.status == 400)
                #expect(refused.text.contains("listen.address: cannot change while running"))
                #expect(try await gateway.get("/x").header("x-origin") == "one")
            }
        }
    }

    @Test("a reload keeps the pooled connections of clusters it does not change")
    func reloadKeepsPools() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            try await withGateway(Self.yaml(one: one, two: two, to: "one")) { gateway in
                #expect(try await gateway.get("/x").header("x-origin-connection") == "1")
                // Same clusters, another route added in front.
                let next =
                    Self.yaml(one: one, two: two, to: "one") + """

                          - match: {path: /never-matched-first}
                            cluster: two
                        """
                try await gateway.server.reload(try GatewayConfiguration(yaml: next))
                #expect(gateway.server.configuration.routes.count == 2)
                let again = try await gateway.get("/x")
                #expect(again.header("x-origin") == "one")
                #expect(again.header("x-origin-connection") == "1")
                #expect(gateway.server.statistics.upstreamConnectionsOpened.load(ordering: .relaxed) == 1)
                #expect(origins[0].state.connections.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("POST /reload and reloadFromFile read the configuration file again")
    func reloadFromFile() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            let path = try temporaryConfigurationFile(Self.yaml(one: one, two: two, to: "one"))
            defer { try? FileManager.default.removeItem(atPath: path) }
            try await withGateway(Self.yaml(one: one, two: two, to: "one"), configurationFile: path) { gateway in
                try Self.yaml(one: one, two: two, to: "two").write(toFile: path, atomically: true, encoding: .utf8)
                #expect(try await gateway.admin("POST", "/reload").status == 200)
                #expect(try await gateway.get("/x").header("x-origin") == "two")
                try "routes: [".write(toFile: path, atomically: true, encoding: .utf8)
                let refused = try await gateway.admin("POST", "/reload")
                #expect(refused.status == 400)
                #expect(refused.text.contains("invalid YAML"))
                #expect(try await gateway.get("/x").header("x-origin") == "two")
            }
        }
    }

    @Test("a watched file is reloaded when its content changes, polled on the injected clock")
    func watchFile() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            let path = try temporaryConfigurationFile(Self.yaml(one: one, two: two, to: "one"))
            defer { try? FileManager.default.removeItem(atPath: path) }
            let clock = ManualClock()
            try await withGateway(Self.yaml(one: one, two: two, to: "one"), clock: clock, configurationFile: path) {
                gateway in
                gateway.server.watchConfigurationFile(every: .seconds(2))
                await clock.waitForSleepers(count: 1)
                // An unchanged file is not reloaded.
                clock.advance(by: .seconds(2))
                await clock.waitForSleepers(count: 1)
                #expect(gateway.server.reloadsAccepted.load(ordering: .relaxed) == 0)

                try Self.yaml(one: one, two: two, to: "two").write(toFile: path, atomically: true, encoding: .utf8)
                // Nothing happens before the interval passes.
                #expect(try await gateway.get("/x").header("x-origin") == "one")
                clock.advance(by: .seconds(2))
                await eventually("the watcher reloaded") {
                    gateway.server.reloadsAccepted.load(ordering: .relaxed) == 1
                }
                #expect(try await gateway.get("/x").header("x-origin") == "two")

                await clock.waitForSleepers(count: 1)
                try "clusters: {}\nroutes: []\nbogus: 1\n".write(toFile: path, atomically: true, encoding: .utf8)
                clock.advance(by: .seconds(2))
                await eventually("the watcher refused the file") {
                    gateway.server.reloadsRefused.load(ordering: .relaxed) == 1
                }
                #expect(try await gateway.get("/x").header("x-origin") == "two")
            }
        }
    }

    @Test("a drain answers /ready 503, closes idle connections, refuses new ones and lets requests in flight finish")
    func drain() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            try await withGateway(Self.yaml(one: one, two: two, to: "one")) { gateway in
                let idle = try await gateway.connect()
                try await idle.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await idle.readResponse().status == 200)
                let held = try await Self.startHeldUpload(gateway, origin: origins[0], held: 1)
                #expect(try await gateway.admin("GET", "/ready").status == 200)

                let draining = Task { await gateway.server.drain(timeout: .seconds(60)) }
                #expect(await idle.waitUntilClosed())
                let ready = try await gateway.admin("GET", "/ready")
                #expect(ready.status == 503)
                #expect(ready.text == "draining\n")
                await #expect(throws: (any Error).self) {
                    let late = try await gateway.connect()
                    try await late.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                    _ = try await late.readResponse(timeout: .seconds(5))
                }
                #expect(!held.isClosed)

                origins[0].release()
                let answer = try await held.readResponse()
                #expect(answer.status == 200)
                #expect(answer.header("connection") == "close")
                #expect(await held.waitUntilClosed())
                await draining.value
                #expect(gateway.server.connections.load(ordering: .relaxed) == 0)
            }
        }
    }

    @Test("a drain closes what is still open after its timeout")
    func drainTimeout() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            try await withGateway(Self.yaml(one: one, two: two, to: "one")) { gateway in
                let stuck = try await gateway.connect()
                try await stuck.send("GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
                await eventually("the origin got the request") {
                    origins[0].state.requests.load(ordering: .relaxed) == 1
                }
                await gateway.server.drain(timeout: .milliseconds(100))
                #expect(await stuck.waitUntilClosed())
                await eventually("the gateway counted the closed connection") {
                    gateway.server.connections.load(ordering: .relaxed) == 0
                }
            }
        }
    }

    @Test("GatewayService drains at graceful shutdown: the request in flight finishes before the service returns")
    func serviceDrains() async throws {
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            let configuration = try GatewayConfiguration(yaml: Self.yaml(one: one, two: two, to: "one"))
            let server = GatewayServer(configuration: configuration, logger: quietLogger)
            let (listening, continuation) = AsyncStream.makeStream(of: Endpoint.self)
            let group = ServiceGroup(
                services: [GatewayService(server) { continuation.yield($0) }], logger: quietLogger)
            let running = Task { try await group.run() }
            var endpoints = listening.makeAsyncIterator()
            let endpoint = try #require(await endpoints.next())
            let held = try await RawConnection.connect(
                port: endpoint.port, group: MultiThreadedEventLoopGroup.singleton)
            try await held.send("POST /upload?pause HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
            await eventually("the origin holds the upload") {
                origins[0].state.pausedCount.load(ordering: .relaxed) == 1
            }
            try await held.send("hello")

            await group.triggerGracefulShutdown()
            await eventually("the drain reached every connection") { server.drainReachedConnections }
            #expect(!held.isClosed)
            origins[0].release()
            let answer = try await held.readResponse()
            #expect(answer.status == 200)
            #expect(answer.header("connection") == "close")
            try await running.value
            #expect(server.connections.load(ordering: .relaxed) == 0)
        }
    }
}
