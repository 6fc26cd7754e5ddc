//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Route retry policies against real failing upstreams (round robin makes the order known).
@Suite("Gateway retries", .timeLimit(.minutes(2)))
struct GatewayRetryTests {
    static func yaml(endpoints: [Int], retry: String?) -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters:
          backend: {endpoints: [\(endpoints.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]}
        routes:
          - match: {path_prefix: /}
            cluster: backend
            \(retry.map { "retry: \($0)" } ?? "")
        """
    }

    @Test("connect failures are retried on the next endpoint; without a policy they are 502s")
    func connectFailure() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["good"]) { origins in
            let endpoints = [closed, origins[0].port]
            try await withGateway(Self.yaml(endpoints: endpoints, retry: "{attempts: 2, on: [connect-failure]}")) {
                gateway in
                for _ in 0..<4 {
                    let response = try await gateway.get("/x")
                    #expect(response.status == 200)
                    #expect(response.header("x-origin") == "good")
                }
                // Round robin with retries alternates closed, good, closed, good, ...: every request
                // meets the closed endpoint first.
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 4)
            }
            try await withGateway(Self.yaml(endpoints: endpoints, retry: nil)) { gateway in
                let statuses = [try await gateway.get("/x").status, try await gateway.get("/x").status]
                #expect(statuses == [502, 200])
            }
        }
    }

    @Test("listed statuses are retried for idempotent requests only")
    func statuses() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = Self.yaml(endpoints: origins.map(\.port), retry: "{attempts: 3, on: [503]}")
            try await withGateway(yaml) { gateway in
                let get = try await gateway.get("/flaky")
                #expect(get.status == 200)
                #expect(get.header("x-origin") == "good")
                // Round robin: this POST goes to "bad" first, and is not retried.
                let post = try await gateway.request(
                    "POST /flaky HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                #expect(post.status == 503)
                #expect(post.header("x-origin") == "bad")
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
            }
        }
    }

    @Test("a connection closed before the answer is retried when the policy lists reset")
    func reset() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            let yaml = Self.yaml(endpoints: origins.map(\.port), retry: "{attempts: 2, on: [reset]}")
            try await withGateway(yaml) { gateway in
                let response = try await gateway.get("/reset-on-bad")
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "good")
            }
        }
    }

    @Test("a try that outlives per_try_timeout is abandoned for the next; the last one is a 504")
    func perTryTimeout() async throws {
        try await withOrigins(["bad", "good"]) { origins in
            // Manual timers: the tries end when the test says, however long a loaded machine
            // takes to answer (the good origin's answer can take seconds in a full parallel run).
            let timers = ManualGatewayTimers()
            let yaml = Self.yaml(endpoints: origins.map(\.port), retry: "{attempts: 2, per_try_timeout: 7s}")
            try await withGateway(yaml, timers: timers) { gateway in
                async let answer = gateway.get("/hang-on-bad")
                try await timers.waitUntilArmed(.seconds(7))
                await eventuallyAsync("the bad origin has the first try") {
                    origins[0].state.requests.load(ordering: .relaxed) == 1
                }
                await timers.advance(by: .seconds(7))
                let response = try await answer
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "good")
                #expect(gateway.server.statistics.retries.load(ordering: .relaxed) == 1)
            }
            let single = Self.yaml(endpoints: [origins[0].port], retry: "{attempts: 1, per_try_timeout: 200ms}")
            try await withGateway(single, timers: timers) { gateway in
                async let answer = gateway.get("/hang-on-bad")
                try await timers.waitUntilArmed(.milliseconds(200))
                // Just short of the limit the try goes on.
                await timers.advance(by: .milliseconds(199))
                #expect(timers.armed.contains(.milliseconds(200)))
                await timers.advance(by: .milliseconds(1))
                let response = try await answer
                #expect(response.status == 504)
                #expect(response.problem?.extensions["reason"] == "per-try-timeout")
            }
        }
    }
}

extension GatewayRetryTests {
    @Test("the retry budget caps retries: with 0% only the reserve (10/s over 10 s) is retried")
    func budget() async throws {
        let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
        try await withOrigins(["good"]) { origins in
            let yaml = Self.yaml(
                endpoints: [closed, origins[0].port], retry: "{attempts: 2, on: [connect-failure], budget: 0%}")
            // A manual clock: the whole run is one instant of the budget's window, however long
            // a loaded machine takes, so the reserve is exactly what the window holds.
            try await withGateway(yaml, clock: ManualClock()) { gateway in
                var statuses: [Int: Int] = [:]
                for _ in 0..<150 {
                    statuses[try await gateway.get("/x").status, default: 0] += 1
                }
                let statistics = gateway.server.statistics
                #expect(statuses[502, default: 0] > 0)
                #expect(statuses[502, default: 0] == statistics.retryBudgetExhausted.load(ordering: .relaxed))
                #expect(statistics.retries.load(ordering: .relaxed) <= 101)
                #expect(statistics.retries.load(ordering: .relaxed) >= 90)
            }
        }
    }
}
