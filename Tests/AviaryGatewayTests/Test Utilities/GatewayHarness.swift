//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryDiscovery
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing
import Tracing

@testable import AviaryGateway

/// A gateway on 127.0.0.1, port 0, on its own single event loop (so that per-loop balancer
/// state is deterministic), with origins and clients on the shared group.
struct GatewayHarness {
    let server: GatewayServer
    let port: Int
    let group: any EventLoopGroup

    var clients: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

    func request(_ text: String, isHead: Bool = false) async throws -> RawResponse {
        try await RawConnection.exchange(text, port: self.port, group: self.clients, isHead: isHead)
    }

    func get(_ path: String, headers: String = "") async throws -> RawResponse {
        try await self.request("GET \(path) HTTP/1.1\r\nHost: gateway.test\r\n\(headers)Connection: close\r\n\r\n")
    }

    func connect() async throws -> RawConnection {
        try await RawConnection.connect(port: self.port, group: self.clients)
    }

    /// The admin API's port (the configuration must set `listen.admin`).
    var adminPort: Int { self.server.adminAddress?.port ?? 0 }

    /// A request to the admin API.
    func admin(_ method: String, _ path: String, body: String = "") async throws -> RawResponse {
        try await RawConnection.exchange(
            "\(method) \(path) HTTP/1.1\r\nHost: admin\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)",
            port: self.adminPort, group: self.clients)
    }

    /// The admin API's JSON document at `path`.
    func adminJSON(_ path: String) async throws -> [String: Any] {
        let response = try await self.admin("GET", path)
        let object = try JSONSerialization.jsonObject(with: Data(response.body))
        return try #require(object as? [String: Any])
    }

    /// The value of one sample in the admin `/metrics` text, or `nil` when absent.
    func metric(_ sample: String) async throws -> Double? {
        let text = try await self.admin("GET", "/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(sample + " ") {
            return Double(line.dropFirst(sample.count + 1))
        }
        return nil
    }
}

let quietLogger = Logger(label: "aviary.gateway.tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// Runs `body` with a gateway serving `yaml` (which should listen on 127.0.0.1:0).
func withGateway<T>(
    _ yaml: String, random: GatewayRandom = .system, clock: any MonotonicClock = SystemClock(), loops: Int = 1,
    tracer: (any Tracer)? = nil, configurationFile: String? = nil, directory: (any ServiceDirectory)? = nil,
    timers: any GatewayTimers = EventLoopTimers(), _ body: (GatewayHarness) async throws -> T
) async throws -> T {
    let configuration = try GatewayConfiguration(yaml: yaml)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)
    let server = GatewayServer(
        configuration: configuration, eventLoopGroup: group, logger: quietLogger, random: random, clock: clock,
        timers: timers, tracer: tracer, configurationFile: configurationFile, directory: directory)
    let address = try await server.start()
    let harness = GatewayHarness(server: server, port: address.port ?? 0, group: group)
    do {
        let result = try await body(harness)
        try await server.stop()
        try await group.shutdownGracefully()
        return result
    } catch {
        try? await server.stop()
        try? await group.shutdownGracefully()
        throw error
    }
}

/// Runs `body` with origins named `names`, stopping them afterwards.
func withOrigins<T>(_ names: [String], _ body: ([TestOrigin]) async throws -> T) async throws -> T {
    try await withServers(
        names, start: { name in try await TestOrigin.start(name: name, group: MultiThreadedEventLoopGroup.singleton) },
        stop: { await $0.stop() }, body)
}

/// Runs `body` with a server started for each of `arguments`, stopping every one started
/// afterwards, whether `body` returns or throws (and when a later start fails).
func withServers<Argument, Server, T>(
    _ arguments: [Argument], start: (Argument) async throws -> Server, stop: (Server) async -> Void,
    _ body: ([Server]) async throws -> T
) async throws -> T {
    var servers: [Server] = []
    do {
        for argument in arguments { servers.append(try await start(argument)) }
        let result = try await body(servers)
        for server in servers { await stop(server) }
        return result
    } catch {
        for server in servers { await stop(server) }
        throw error
    }
}

/// A random source that counts 0, 1, 2, ... (each draw reduced modulo its bound).
func countingRandom() -> GatewayRandom {
    let counter = Atomic<UInt64>(0)
    return GatewayRandom { bound in counter.add(1, ordering: .relaxed).oldValue % bound }
}

/// Polls an asynchronous `condition` (an admin request, say) until it holds; records an issue
/// after `timeout`.
@discardableResult
func eventuallyAsync(
    _ what: String, timeout: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async throws -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while (try? await condition()) != true {
        if ContinuousClock.now > deadline {
            Issue.record("timed out waiting until \(what)", sourceLocation: sourceLocation)
            return false
        }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return true
}

/// A file in the temporary directory holding `text`, removed by the caller.
func temporaryConfigurationFile(_ text: String) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-\(UUID().uuidString).yaml").path
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}
