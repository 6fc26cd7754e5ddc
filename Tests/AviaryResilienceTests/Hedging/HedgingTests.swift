//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import MetricsTestKit
import Testing

@testable import AviaryResilience

@Suite("Hedging", .timeLimit(.minutes(1)))
struct HedgingTests {
    let clock = ManualClock()
    let metrics = TestMetrics()

    func makeHedging(
        maxAttempts: Int = 2,
        delay: Duration = .milliseconds(100),
        budget: RetryBudget? = nil
    ) -> Hedging {
        Hedging(
            .init(name: "test", maxAttempts: maxAttempts, delay: delay, budget: budget),
            clock: self.clock,
            metricsFactory: self.metrics
        )
    }

    func counter(_ label: String, _ dimensions: [(String, String)]) -> Int64 {
        (try? self.metrics.expectCounter(label, dimensions).totalValue) ?? 0
    }

    var hedges: Int64 { self.counter("aviary_hedging_attempts_total", [("name", "test")]) }

    /// Sleeps on the test clock until far in the future, recording a cancellation.
    @Sendable
    static func hang(_ clock: ManualClock, _ recorder: AttemptRecorder, _ attempt: Int) async throws {
        do {
            try await clock.sleep(until: clock.now.advanced(by: .seconds(3600)), tolerance: nil)
        } catch {
            recorder.recordCancellation(attempt)
            throw error
        }
    }

    @Test("a fast first attempt is the only call")
    func fastFirstAttempt() async throws {
        let hedging = self.makeHedging()
        let recorder = AttemptRecorder()
        let value = try await hedging.execute(.idempotent) { context in
            recorder.record(context.attempt)
            return "first"
        }
        #expect(value == "first")
        #expect(recorder.attempts == [1])
        #expect(self.clock.sleeperCount == 0)
        #expect(self.hedges == 0)
        #expect(
            self.counter(
                "aviary_resilience_calls_total", [("policy", "hedging"), ("name", "test"), ("outcome", "success")]) == 1
        )
    }

    @Test("a slow first attempt is hedged after exactly the delay; the hedge wins and the first is cancelled")
    func slowFirstAttemptIsHedged() async throws {
        let hedging = self.makeHedging(delay: .milliseconds(100))
        let events = hedging.events()
        let recorder = AttemptRecorder()
        let clock = self.clock
        let start = clock.now
        let startedAt = AttemptRecorder()
        let call = Task {
            try await hedging.execute(.idempotent) { context in
                recorder.record(context.attempt)
                if context.attempt == 1 {
                    try await Self.hang(clock, recorder, 1)
                }
                startedAt.record(Int(clock.now.offset.aviaryNanoseconds - start.offset.aviaryNanoseconds))
                return "attempt \(context.attempt)"
            }
        }
        // The first attempt and the hedge timer are both sleeping; the timer is due first.
        await clock.waitForSleepers(count: 2)
        #expect(clock.nextDeadline == start.advanced(by: .milliseconds(100)))
        #expect(recorder.attempts == [1])
        clock.advance(by: .milliseconds(100))
        #expect(try await call.value == "attempt 2")
        #expect(recorder.attempts == [1, 2])
        #expect(startedAt.attempts == [100_000_000])
        #expect(recorder.cancelled == [1])
        #expect(self.hedges == 1)
        let all = await firstEvents(2, of: events)
        guard case .hedgeStarted(let attempt, let afterFailure) = all.first, case .hedgeWon(let winner) = all.last
        else {
            Issue.record("unexpected events \(all)")
            return
        }
        #expect(attempt == 2 && !afterFailure && winner == 2)
    }

    @Test("the first attempt still wins if it answers before the hedge")
    func firstWinsAfterHedgeStarted() async throws {
        let hedging = self.makeHedging(delay: .milliseconds(100))
        let recorder = AttemptRecorder()
        let clock = self.clock
        let start = clock.now
        let call = Task {
            try await hedging.execute(.idempotent) { context in
                recorder.record(context.attempt)
                if context.attempt == 1 {
                    try await clock.sleep(until: start.advanced(by: .milliseconds(150)), tolerance: nil)
                    return "first"
                }
                try await Self.hang(clock, recorder, context.attempt)
                return "second"
            }
        }
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(100))
        // The hedge is now sleeping too, next to the first attempt.
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(50))
        #expect(try await call.value == "first")
        #expect(recorder.attempts == [1, 2])
        #expect(recorder.cancelled == [2])
    }

    @Test("hedges follow one another every delay up to maxAttempts")
    func hedgeChain() async throws {
        let hedging = self.makeHedging(maxAttempts: 3, delay: .milliseconds(100))
        let recorder = AttemptRecorder()
        let clock = self.clock
        let call = Task {
            try await hedging.execute(.idempotent) { context in
                recorder.record(context.attempt)
                try await Self.hang(clock, recorder, context.attempt)
                return context.attempt
            }
        }
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(100))
        // Attempts 1 and 2 and the timer for attempt 3.
        await clock.waitForSleepers(count: 3)
        #expect(recorder.attempts == [1, 2])
        clock.advance(by: .milliseconds(100))
        // Attempts 1, 2 and 3; no further timer.
        await clock.waitForSleepers(count: 3)
        #expect(recorder.attempts == [1, 2, 3])
        call.cancel()
        await #expect(throws: CancellationError.self) { try await call.value }
        #expect(Set(recorder.cancelled) == [1, 2, 3])
        #expect(self.hedges == 2)
    }

    @Test("an attempt that fails before the delay starts the next one at once")
    func failureStartsNextAttempt() async throws {
        let hedging = self.makeHedging(delay: .seconds(10))
        let events = hedging.events()
        let recorder = AttemptRecorder()
        let start = self.clock.now
        let value = try await hedging.execute(.idempotent) { context in
            recorder.record(context.attempt)
            if context.attempt == 1 { throw RetryTestError(attempt: 1) }
            return context.attempt
        }
        #expect(value == 2)
        #expect(recorder.attempts == [1, 2])
        #expect(self.clock.now == start)
        let seen = await firstEvents(3, of: events)
        guard case .attemptFailed(1, _) = seen[0], case .hedgeStarted(2, let afterFailure) = seen[1],
            case .hedgeWon(2) = seen[2]
        else {
            Issue.record("unexpected events \(seen)")
            return
        }
        #expect(afterFailure)
    }

    @Test("a non-idempotent operation is never hedged")
    func nonIdempotentNeverHedged() async throws {
        let hedging = self.makeHedging(delay: .milliseconds(100))
        let recorder = AttemptRecorder()
        let clock = self.clock
        let start = clock.now
        let call = Task {
            try await hedging.execute(.nonIdempotent) { context in
                recorder.record(context.attempt)
                if context.attempt == 1 {
                    try await clock.sleep(until: start.advanced(by: .milliseconds(300)), tolerance: nil)
                }
                return context.attempt
            }
        }
        await clock.waitForSleepers(count: 1)
        // Only the operation sleeps: a hedge timer would be due at 100 ms.
        #expect(clock.nextDeadline == start.advanced(by: .milliseconds(300)))
        clock.advance(by: .milliseconds(100))
        clock.advance(by: .milliseconds(200))
        #expect(try await call.value == 1)
        #expect(recorder.attempts == [1])
        #expect(self.hedges == 0)
    }

    @Test("a non-idempotent failure is thrown after one call")
    func nonIdempotentFailure() async throws {
        let hedging = self.makeHedging()
        let recorder = AttemptRecorder()
        await #expect(throws: RetryTestError(attempt: 1)) {
            try await hedging.execute(.nonIdempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(recorder.attempts == [1])
    }

    @Test("when every attempt fails, the last error is thrown", arguments: [2, 3])
    func allFail(maxAttempts: Int) async throws {
        let hedging = self.makeHedging(maxAttempts: maxAttempts)
        let events = hedging.events()
        let recorder = AttemptRecorder()
        await #expect(throws: RetryTestError(attempt: maxAttempts)) {
            try await hedging.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(recorder.attempts == Array(1...maxAttempts))
        #expect(
            self.counter(
                "aviary_resilience_calls_total", [("policy", "hedging"), ("name", "test"), ("outcome", "failure")]) == 1
        )
        let all = await firstEvents(2 * maxAttempts, of: events)
        guard case .allFailed(let attempts, let error) = all.last else {
            Issue.record("unexpected events \(all)")
            return
        }
        #expect(attempts == maxAttempts)
        #expect(error as? RetryTestError == RetryTestError(attempt: maxAttempts))
    }

    @Test("the last error to arrive is thrown, whichever attempt it came from")
    func lastErrorByArrival() async throws {
        let hedging = self.makeHedging(delay: .milliseconds(100))
        let events = hedging.events()
        let clock = self.clock
        let start = clock.now
        let call = Task {
            try await hedging.execute(.idempotent) { context -> Int in
                if context.attempt == 1 {
                    try await clock.sleep(until: start.advanced(by: .milliseconds(200)), tolerance: nil)
                }
                throw RetryTestError(attempt: context.attempt)
            }
        }
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(100))
        // Attempt 2 fails at once; attempt 1 is still sleeping.
        let seen = await firstEvents(2, of: events)
        guard case .hedgeStarted(2, false) = seen.first, case .attemptFailed(2, _) = seen.last else {
            Issue.record("unexpected events \(seen)")
            return
        }
        clock.advance(by: .milliseconds(100))
        await #expect(throws: RetryTestError(attempt: 1)) { try await call.value }
    }

    @Test("an error that is not worth hedging stops further attempts")
    func rejectionStopsHedging() async throws {
        let hedging = self.makeHedging(maxAttempts: 3)
        let recorder = AttemptRecorder()
        let error = await #expect(throws: ResilienceError.self) {
            try await hedging.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw ResilienceError(.circuitOpen, "open")
            }
        }
        #expect(error?.code == .circuitOpen)
        #expect(recorder.attempts == [1])
        #expect(
            self.counter(
                "aviary_resilience_calls_total", [("policy", "hedging"), ("name", "test"), ("outcome", "rejected")])
                == 1)
    }

    @Test("an empty budget stops hedges and counts it")
    func budgetStopsHedging() async throws {
        let budget = RetryBudget(.init(ratio: 0, minRetriesPerSecond: 0), clock: self.clock)
        let hedging = self.makeHedging(delay: .milliseconds(100), budget: budget)
        let events = hedging.events()
        let recorder = AttemptRecorder()
        let clock = self.clock
        let start = clock.now
        let call = Task {
            try await hedging.execute(.idempotent) { context in
                recorder.record(context.attempt)
                try await clock.sleep(until: start.advanced(by: .milliseconds(200)), tolerance: nil)
                return context.attempt
            }
        }
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(100))
        guard case .budgetExhausted(let attempts) = await firstEvents(1, of: events).first else {
            Issue.record("expected a budgetExhausted event")
            return
        }
        #expect(attempts == 1)
        clock.advance(by: .milliseconds(100))
        #expect(try await call.value == 1)
        #expect(recorder.attempts == [1])
        #expect(self.counter("aviary_retry_budget_exhausted_total", [("name", "test")]) == 1)
    }
}
