//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryService
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import ServiceLifecycleTestKit
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whether a TCP connection to 127.0.0.1:`port` is accepted now.
func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    return result == 0
}

/// An ordered log shared by handlers, services and the test.
final class EventLog: Sendable {
    private let entries = Mutex<[String]>([])
    func append(_ entry: String) { self.entries.withLock { $0.append(entry) } }
    var all: [String] { self.entries.withLock { $0 } }
}

/// A background service that logs when it starts and when it stops.
struct RecordingService: Service {
    let name: String
    let log: EventLog

    func run() async throws {
        self.log.append("\(self.name) started")
        try? await gracefulShutdown()
        self.log.append("\(self.name) stopped")
    }
}

/// Holds requests until the test opens it.
final class RequestGate: Sendable {
    private let state = Mutex<(entered: Int, open: Bool, waiters: [CheckedContinuation<Void, Never>])>((0, false, []))

    func enterAndWait() async {
        await withCheckedContinuation { continuation in
            let resumeNow = self.state.withLock { state -> Bool in
                state.entered += 1
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    var entered: Int { self.state.withLock { $0.entered } }

    func open() {
        let waiters = self.state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// GETs `path` on 127.0.0.1:`port`: the status and the body.
func httpGet(_ http: HTTPClient, port: Int, _ path: String) async throws -> (Int, String) {
    let response = try await http.execute(
        HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)"), timeout: .seconds(30))
    let body = try await response.body.collect(upTo: 1 << 16)
    return (Int(response.status.code), String(buffer: body))
}

@Suite("AviaryApplication", .timeLimit(.minutes(3)))
struct AviaryApplicationTests {
    @Test(
        "graceful shutdown: readiness fails, then new connections are refused, in-flight requests finish, background services stop last"
    )
    func gracefulShutdownOrder() async throws {
        let clock = ManualClock()
        let log = EventLog()
        let gate = RequestGate()
        let (listening, listeningContinuation) = AsyncStream.makeStream(of: Endpoint.self)
        // Built inside the task that runs it: a router is not Sendable.
        @Sendable func makeApp() -> AviaryApplication<BasicRequestContext> {
            var app = AviaryApplication(
                ServiceOptions(name: "orders", port: 0, drainDelay: .seconds(5), gracePeriod: .seconds(30)),
                context: BasicRequestContext.self,
                logger: quiet,
                clock: clock
            )
            app.onListening = { listeningContinuation.yield($0) }
            app.router.get("/slow") { _, _ -> String in
                await gate.enterAndWait()
                log.append("slow request finished")
                return "done"
            }
            app.addHealthCheck(HealthCheck("always", interval: .seconds(3600)) {})
            app.addBackgroundService(RecordingService(name: "relay", log: log))
            return app
        }

        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        @Sendable func get(_ endpoint: Endpoint, _ path: String) async throws -> (Int, String) {
            try await httpGet(http, port: endpoint.port, path)
        }

        // The client is shut down on every path: one left running crashes the test process at deinit.
        do {
            try await testGracefulShutdown { trigger in
                let running = Task { try await makeApp().run(gracefulShutdownSignals: []) }
                var iterator = listening.makeAsyncIterator()
                let endpoint = try #require(await iterator.next())

                #expect(try await get(endpoint, "/readyz").0 == 200)
                let slow = Task { try await get(endpoint, "/slow") }
                await eventually("the slow request is in flight") { gate.entered == 1 }

                trigger.triggerGracefulShutdown()
                // Draining: readiness fails while the server still accepts connections.
                await eventually("readiness fails with draining") {
                    let readiness = try? await get(endpoint, "/readyz")
                    return readiness?.0 == 503 && readiness?.1.contains("draining") == true
                }
                #expect(canConnect(port: endpoint.port))
                // The check loops have stopped; the one sleeper is the drain delay.
                await clock.waitForSleepers(count: 1)
                #expect(canConnect(port: endpoint.port), "still accepting during the drain delay")

                // After the drain delay the server stops accepting; the in-flight request goes on.
                clock.advance(by: .seconds(5))
                await eventually("new connections are refused") { !canConnect(port: endpoint.port) }
                #expect(log.all == ["relay started"], "the background service runs until the server is done")

                gate.open()
                let finished = try await slow.value
                #expect(finished.0 == 200)
                #expect(finished.1 == "done")
                try await running.value
                #expect(log.all == ["relay started", "slow request finished", "relay stopped"])
            }
        } catch {
            try await http.shutdown()
            throw error
        }
        try await http.shutdown()
    }
}
