//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Synchronization
import Testing

/// The pipelines shown in the module overview and in `ResiliencePipeline`'s documentation, built
/// and run here so that the documentation cannot drift from the API.
@Suite("Documented pipelines", .timeLimit(.minutes(1)))
struct DocumentedPipelineTests {
    struct Upstream: Error {}

    @Test("the overview's pipeline serves the last known good result when the upstream fails")
    func overviewPipeline() async throws {
        let clock = ManualClock()
        let payments = ResiliencePipeline<String> {
            Fallback.lastKnownGood(maxStaleness: .seconds(60), clock: clock)
            Timeout(.seconds(2), clock: clock)
            Retry(.init(maxAttempts: 3, backoff: .constant(.zero)), clock: clock)
            CircuitBreaker(.init(name: "payments"), clock: clock)
            Bulkhead(.init(maxConcurrentCalls: 32), clock: clock)
            Timeout(.milliseconds(500), clock: clock)
        }
        let first = try await payments.run(.idempotent) { "receipt-1" }
        #expect(first == "receipt-1")

        let attempts = Atomic<Int>(0)
        let second = try await payments.run(.idempotent) { () async throws -> String in
            attempts.add(1, ordering: .relaxed)
            throw Upstream()
        }
        #expect(second == "receipt-1")
        #expect(attempts.load(ordering: .relaxed) == 3)
    }

    @Test("the ResiliencePipeline example rethrows when nothing was remembered")
    func referencePipeline() async throws {
        let clock = ManualClock()
        let pipeline = ResiliencePipeline<Int> {
            Fallback.lastKnownGood(maxStaleness: .seconds(60), clock: clock)
            Timeout(.seconds(2), clock: clock)
            Retry(.init(maxAttempts: 3, backoff: .constant(.zero)), clock: clock)
            CircuitBreaker(.init(failureRateThreshold: 0.5, minimumNumberOfCalls: 20), clock: clock)
            Bulkhead(.init(maxConcurrentCalls: 64), clock: clock)
            Timeout(.milliseconds(500), clock: clock)
        }
        await #expect(throws: Upstream.self) {
            try await pipeline.run(.idempotent) { () async throws -> Int in throw Upstream() }
        }
    }
}
