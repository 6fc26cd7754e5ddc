//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryDiscovery
import AviaryResilience
import AviaryTelemetry
import Hummingbird
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization
import Testing

@testable import AviaryService

/// Counts what one upstream replica was asked.
final class ReplicaLog: Sendable {
    let hits = Mutex<[String: Int]>([:])
    let budgets = Mutex<[String]>([])
    func hit(_ path: String) -> Int {
        self.hits.withLock {
            $0[path, default: 0] += 1; return $0[path]!
        }
    }
    func count(_ path: String) -> Int { self.hits.withLock { $0[path, default: 0] } }
}

/// Runs two replicas on free ports for the duration of `body`.
func withReplicas(_ body: ([Endpoint], [ReplicaLog]) async throws -> Void) async throws {
    let logs = [ReplicaLog(), ReplicaLog()]
    let (ports, portsContinuation) = AsyncStream.makeStream(of: (index: Int, port: Int).self)
    var services: [any Service] = []
    for (index, log) in logs.enumerated() {
        let router = Router()
        router.get("/hello") { _, _ -> String in
            _ = log.hit("/hello"); return "hello"
        }
        router.get("/flaky") { _, _ -> Response in
            log.hit("/flaky") == 1 ? Response(status: .serviceUnavailable) : Response(status: .ok)
        }
        router.post("/charges") { _, _ -> Response in
            _ = log.hit("/charges"); return Response(status: .serviceUnavailable)
        }
        router.get("/budget") { request, _ -> String in
            log.budgets.withLock {
                $0.append(request.headers[DeadlineMiddleware<BasicRequestContext>.headerName] ?? "none")
            }
            return "ok"
        }
        services.append(
            Application(
                router: router,
                configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                onServerRunning: { portsContinuation.yield((index, $0.localAddress?.port ?? 0)) },
                logger: quiet
            ))
    }
    let group = ServiceGroup(services: services, logger: quiet)
    let running = Task { try await group.run() }
    // endpoints[i] is the replica that writes logs[i], whichever started first.
    var endpoints = Array(repeating: Endpoint(host: "127.0.0.1", port: 0), count: logs.count)
    var started = 0
    for await (index, port) in ports {
        endpoints[index] = Endpoint(host: "127.0.0.1", port: port)
        started += 1
        if started == logs.count { break }
    }
    do {
        try await body(endpoints, logs)
    } catch {
        await group.triggerGracefulShutdown()
        try? await running.value
        throw error
    }
    await group.triggerGracefulShutdown()
    try await running.value
}

extension ResiliencePipeline<ClientResponse> {
    /// The default pipeline's retries without its 500 ms per try, which a loaded CI machine can
    /// exceed and so add attempts that these tests count exactly.
    static func patient(_ name: String) -> ResiliencePipeline<ClientResponse> {
        ResiliencePipeline {
            Retry(.init(name: name, maxAttempts: 3, backoff: .exponential(base: .milliseconds(5))))
            Timeout(.seconds(30))
        }
    }
}

@Suite("ServiceClient", .timeLimit(.minutes(3)))
struct ServiceClientTests {
    @Test("power of two choices spreads calls and always avoids the busier of two replicas")
    func balancing() async throws {
        try await withReplicas { endpoints, logs in
            // No per-try timeout and no retry: on a loaded machine a slow attempt would be retried
            // and counted twice, and this test is about where calls go, not about resilience.
            let client = ServiceClient(
                service: "orders", upstream: "users", endpoints: StaticEndpoints(endpoints),
                pipeline: ResiliencePipeline { Timeout(.seconds(30)) })
            for _ in 0..<100 {
                #expect(try await client.execute(.GET, "/hello").status == 200)
            }
            #expect(logs[0].count("/hello") >= 20)
            #expect(logs[1].count("/hello") >= 20)
            #expect(logs[0].count("/hello") + logs[1].count("/hello") == 100)

            client.inFlight.withLock { $0[endpoints[0]] = 10 }
            for _ in 0..<20 {
                let picked = try client.pick()
                #expect(picked == endpoints[1])
                client.inFlight.withLock { $0[picked, default: 1] -= 1 }
            }
        }
    }

    @Test("idempotent calls are retried past a 5xx; a POST only with an Idempotency-Key")
    func retries() async throws {
        try await withReplicas { endpoints, logs in
            let one = StaticEndpoints([endpoints[0]])
            let client = ServiceClient(
                service: "orders", upstream: "payments", endpoints: one, pipeline: .patient("payments"))
            let flaky = try await client.execute(.GET, "/flaky")
            #expect(flaky.status == 200)
            #expect(logs[0].count("/flaky") == 2)

            await #expect(throws: UpstreamError.self) {
                try await client.execute(.POST, "/charges", body: ByteBuffer(string: "{}"))
            }
            #expect(logs[0].count("/charges") == 1, "a POST without a key is not retried")

            let keyed = ServiceClient(
                service: "orders", upstream: "payments-keyed", endpoints: one, pipeline: .patient("payments-keyed"))
            await #expect(throws: UpstreamError.self) {
                try await keyed.execute(
                    .POST, "/charges", headers: [("Idempotency-Key", "k1")], body: ByteBuffer(string: "{}"))
            }
            #expect(logs[0].count("/charges") == 1 + 3, "with a key it is retried up to maxAttempts")
        }
    }

    @Test("the callee receives the remaining budget, and client metrics are recorded by route")
    func budgetAndMetrics() async throws {
        try await withReplicas { endpoints, logs in
            let registry = MetricsRegistry(processMetrics: false)
            // The default pipeline's shape (total, retry, per-try timeout) with times a loaded
            // machine cannot exceed: the per-try timeout, not the total, bounds the budget sent.
            let client = ServiceClient(
                service: "orders", upstream: "users", endpoints: StaticEndpoints([endpoints[0]]),
                pipeline: ResiliencePipeline {
                    Timeout(.seconds(60), name: "users-total")
                    Retry(.init(name: "users", maxAttempts: 3, backoff: .exponential(base: .milliseconds(25))))
                    Timeout(.seconds(20), name: "users-per-try")
                }, metrics: registry)
            _ = try await client.execute(.GET, "/budget")
            let budget = try #require(logs[0].budgets.withLock { $0.first }.flatMap { Int($0) })
            #expect(budget > 0 && budget <= 20_000, "the per-try timeout bounds what the callee is told")

            // Counted once: a client whose attempts cannot time out on a loaded machine.
            let patient = ServiceClient(
                service: "orders", upstream: "users", endpoints: StaticEndpoints([endpoints[0]]),
                pipeline: .patient("users-patient"), metrics: registry)
            _ = try await patient.execute(.GET, "/hello", route: "/hello")
            let text = registry.exposition()
            #expect(
                text.contains(
                    #"aviary_http_client_requests_total{service="orders",upstream="users",route="/hello",status_code="200"} 1"#
                ))
        }
    }
}
