//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Foundation
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A running `aviary gateway` child process, its outputs going to files that are read as they grow.
final class GatewayProcess: Sendable {
    let process: Spawn.Child
    private let directory: URL

    init(arguments: [String], environment: [String: String] = [:]) throws {
        self.directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-gateway-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        self.process = try Spawn.start(
            CommandLineTests.executable.path, arguments,
            environment: ProcessInfo.processInfo.environment.merging(environment) { _, new in new },
            stdout: .appending(to: self.directory.appendingPathComponent("stdout").path),
            stderr: .appending(to: self.directory.appendingPathComponent("stderr").path))
    }

    /// What the child wrote to standard output so far.
    var standardOutput: String { self.read("stdout") }
    /// What the child wrote to standard error so far.
    var standardError: String { self.read("stderr") }

    private func read(_ name: String) -> String {
        let data = (try? Data(contentsOf: self.directory.appendingPathComponent(name))) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    func signal(_ number: Int32) {
        self.process.kill(number)
    }

    /// The proxy and admin ports from the "listening" line.
    func ports() async -> (proxy: Int, admin: Int)? {
        var result: (Int, Int)?
        await eventually("the gateway prints its addresses") {
            let text = self.standardOutput
            guard let line = text.split(separator: "\n").first(where: { $0.contains("listening on") }) else {
                return false
            }
            let ports = line.split(whereSeparator: { $0 == ":" || $0 == "," || $0 == " " }).compactMap { Int($0) }
            guard ports.count == 2 else { return false }
            result = (ports[0], ports[1])
            return true
        }
        return result
    }

    /// SIGKILLs the child if it still runs (its waiter thread reaps it) and removes its output files.
    func stop() {
        self.process.kill(SIGKILL)
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// `aviary gateway` as a real child process receiving SIGHUP and SIGTERM.
@Suite("aviary gateway signals", .timeLimit(.minutes(2)))
struct CommandLineSignalTests {
    static func yaml(one: Int, two: Int, to cluster: String) -> String {
        """
        listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
        limits: {drain_timeout: 60s}
        clusters:
          one: {endpoints: [127.0.0.1:\(one)]}
          two: {endpoints: [127.0.0.1:\(two)]}
        routes:
          - match: {path_prefix: /}
            cluster: \(cluster)
        """
    }

    @Test("SIGHUP reloads the file (an invalid one is refused, the running one stays); SIGTERM drains, then exits 0")
    func signals() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: CommandLineTests.executable.path),
            "build the aviary product first")
        let group = MultiThreadedEventLoopGroup.singleton
        try await withOrigins(["one", "two"]) { origins in
            let (one, two) = (origins[0].port, origins[1].port)
            let path = try temporaryConfigurationFile(Self.yaml(one: one, two: two, to: "one"))
            defer { try? FileManager.default.removeItem(atPath: path) }
            let gateway = try GatewayProcess(arguments: ["gateway", "--config", path, "--threads", "1"])
            defer { gateway.stop() }
            let ports = try #require(await gateway.ports())
            let get = { (target: String) in
                try await RawConnection.exchange(
                    "GET \(target) HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", port: ports.proxy, group: group)
            }
            let ready = {
                try await RawConnection.exchange(
                    "GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", port: ports.admin, group: group
                ).status
            }
            #expect(try await get("/x").header("x-origin") == "one")
            #expect(try await ready() == 200)

            try Self.yaml(one: one, two: two, to: "two").write(toFile: path, atomically: true, encoding: .utf8)
            gateway.signal(SIGHUP)
            await eventually("the gateway reloads") { gateway.standardOutput.contains("reloaded \(path)") }
            #expect(try await get("/x").header("x-origin") == "two")

            try Self.yaml(one: one, two: two, to: "three").write(toFile: path, atomically: true, encoding: .utf8)
            gateway.signal(SIGHUP)
            await eventually("the gateway refuses the file") {
                gateway.standardError.contains(#"routes[0].cluster: unknown cluster "three""#)
            }
            #expect(try await get("/x").header("x-origin") == "two")
            #expect(gateway.process.isRunning)

            // A request in flight across SIGTERM.
            let held = try await RawConnection.connect(port: ports.proxy, group: group)
            try await held.send("POST /upload?pause HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
            await eventually("the origin holds the upload") {
                origins[1].state.pausedCount.load(ordering: .relaxed) == 1
            }
            // The body goes out only now, so the paused origin leaves it unread.
            try await held.send("hello")
            gateway.signal(SIGTERM)
            await eventuallyAsync("/ready answers 503") { try await ready() == 503 }
            #expect(gateway.process.isRunning)
            #expect(!held.isClosed)
            origins[1].release()
            let answer = try await held.readResponse()
            #expect(answer.status == 200)
            #expect(answer.text.hasPrefix("bytes=5 "))
            await eventually("the gateway exits") { !gateway.process.isRunning }
            #expect(gateway.process.exitIfFinished == .exited(0))
            #expect(gateway.standardOutput.contains("draining"))
        }
    }

    @Test("with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, requests are traced and the spans flushed before exit")
    func tracing() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: CommandLineTests.executable.path),
            "build the aviary product first")
        let group = MultiThreadedEventLoopGroup.singleton
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        let receiver = OTLPReceiver()
        try await receiver.run { collector in
            try await withOrigins(["one", "two"]) { origins in
                let (one, two) = (origins[0].port, origins[1].port)
                let path = try temporaryConfigurationFile(Self.yaml(one: one, two: two, to: "one"))
                defer { try? FileManager.default.removeItem(atPath: path) }
                let gateway = try GatewayProcess(
                    arguments: ["gateway", "--config", path, "--threads", "1"],
                    environment: [
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                    ])
                defer { gateway.stop() }
                let ports = try #require(await gateway.ports())
                let response = try await RawConnection.exchange(
                    "GET /x HTTP/1.1\r\nHost: t\r\ntraceparent: 00-\(traceID)-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n",
                    port: ports.proxy, group: group)
                #expect(response.status == 200)
                #expect(response.text.contains("traceparent: 00-\(traceID)-"))
                gateway.signal(SIGTERM)
                await eventually("the gateway exits") { !gateway.process.isRunning }
                #expect(gateway.process.exitIfFinished == .exited(0))
                await eventually("the span arrives") { !receiver.spans(inTrace: traceID).isEmpty }
                let span = receiver.spans(inTrace: traceID).first
                #expect(span?.service == "aviary-gateway")
                #expect(span?.parentSpanID == "00f067aa0ba902b7")
                #expect(span?.name == "GET /")
            }
        }
    }
}
