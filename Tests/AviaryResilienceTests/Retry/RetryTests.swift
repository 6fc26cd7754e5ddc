//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import InMemoryTracing
import MetricsTestKit
import Testing
import Tracing

@testable import AviaryResilience

@Suite("Retry", .timeLimit(.minutes(1)))
struct RetryTests {
    let clock = ManualClock()
    let metrics = TestMetrics()

    /// A retry with no budget and no backoff unless a test says otherwise.
    func makeRetry(
        maxAttempts: Int = 3,
        backoff: Backoff = .immediate,
        shouldRetry: @escaping @Sendable (any Error) -> Bool = Retry.isRetryable,
        resultPredicate: Retry.ResultPredicate? = nil,
        retryNonIdempotent: Bool = false,
        maxRetryAfter: Duration? = .seconds(60),
        budget: RetryBudget? = nil
    ) -> Retry {
        Retry(
            .init(
                name: "test",
                maxAttempts: maxAttempts,
                backoff: backoff,
                shouldRetry: shouldRetry,
                resultPredicate: resultPredicate,
                retryNonIdempotent: retryNonIdempotent,
                maxRetryAfter: maxRetryAfter,
                budget: budget
            ),
            clock: self.clock,
            metricsFactory: self.metrics
        )
    }

    func counter(_ label: String, _ dimensions: [(String, String)]) -> Int64 {
        (try? self.metrics.expectCounter(label, dimensions).totalValue) ?? 0
    }

    func calls(_ outcome: String) -> Int64 {
        self.counter("aviary_resilience_calls_total", [("policy", "retry"), ("name", "test"), ("outcome", outcome)])
    }

    var retries: Int64 { self.counter("aviary_retry_attempts_total", [("name", "test")]) }

    // MARK: Attempts

    @Test("an operation that fails twice succeeds on the third attempt, after each backoff delay")
    func succeedsOnThirdAttempt() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(1)))
        let events = retry.events()
        let recorder = AttemptRecorder()
        let start = self.clock.now
        let call = Task {
            try await retry.execute(.idempotent) { context in
                recorder.record(context.attempt)
                if context.attempt < 3 { throw RetryTestError(attempt: context.attempt) }
                return "ok"
            }
        }
        await self.clock.waitForSleepers(count: 1)
        #expect(self.clock.nextDeadline == start.advanced(by: .seconds(1)))
        #expect(recorder.attempts == [1])
        self.clock.advance(by: .seconds(1))
        await self.clock.waitForSleepers(count: 1)
        #expect(recorder.attempts == [1, 2])
        self.clock.advance(by: .seconds(1))
        #expect(try await call.value == "ok")
        #expect(recorder.attempts == [1, 2, 3])
        #expect(self.retries == 2)
        #expect(self.calls("success") == 1)

        let scheduled = await firstEvents(2, of: events)
        guard case .retryScheduled(let firstAttempt, let firstDelay, let firstError) = scheduled[0],
            case .retryScheduled(let secondAttempt, let secondDelay, let secondError) = scheduled[1]
        else {
            Issue.record("unexpected events \(scheduled)")
            return
        }
        #expect(firstAttempt == 1 && secondAttempt == 2)
        #expect(firstDelay == .seconds(1) && secondDelay == .seconds(1))
        #expect(firstError as? RetryTestError == RetryTestError(attempt: 1))
        #expect(secondError as? RetryTestError == RetryTestError(attempt: 2))
    }

    @Test("a first success runs once and counts a success")
    func firstSuccess() async throws {
        let retry = self.makeRetry()
        let recorder = AttemptRecorder()
        let value = try await retry.execute(.idempotent) { context in
            recorder.record(context.attempt)
            return 7
        }
        #expect(value == 7)
        #expect(recorder.attempts == [1])
        #expect(self.retries == 0)
        #expect(self.calls("success") == 1)
    }

    @Test("when every attempt fails, the last error is rethrown as it is", arguments: [1, 2, 3, 5])
    func exhaustsMaxAttempts(maxAttempts: Int) async throws {
        let retry = self.makeRetry(maxAttempts: maxAttempts)
        let events = retry.events()
        let recorder = AttemptRecorder()
        await #expect(throws: RetryTestError(attempt: maxAttempts)) {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(recorder.attempts == Array(1...maxAttempts))
        #expect(self.retries == Int64(maxAttempts - 1))
        #expect(self.calls("failure") == 1)
        let all = await firstEvents(maxAttempts, of: events)
        guard case .exhausted(let attempts, let error as RetryTestError) = all.last else {
            Issue.record("expected .exhausted last, got \(all)")
            return
        }
        #expect(attempts == maxAttempts)
        #expect(error.attempt == maxAttempts)
    }

    @Test("a non-idempotent operation is not retried by default")
    func nonIdempotentNotRetried() async throws {
        let retry = self.makeRetry()
        let recorder = AttemptRecorder()
        await #expect(throws: RetryTestError(attempt: 1)) {
            try await retry.execute(.nonIdempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(recorder.attempts == [1])
        #expect(self.retries == 0)
    }

    @Test("retryNonIdempotent retries a non-idempotent operation")
    func nonIdempotentRetriedWhenAllowed() async throws {
        let retry = self.makeRetry(retryNonIdempotent: true)
        let recorder = AttemptRecorder()
        let value = try await retry.execute(.nonIdempotent) { context in
            recorder.record(context.attempt)
            if context.attempt == 1 { throw RetryTestError(attempt: 1) }
            return context.attempt
        }
        #expect(value == 2)
        #expect(recorder.attempts == [1, 2])
    }

    @Test(
        "a rejection by another policy is not retried",
        arguments: [
            ResilienceError.Code.circuitOpen, .bulkheadFull, .rateLimited, .loadShed, .budgetExhausted,
            .retriesExhausted,
        ]
    )
    func rejectionsNotRetried(code: ResilienceError.Code) async throws {
        let retry = self.makeRetry()
        let recorder = AttemptRecorder()
        let error = await #expect(throws: ResilienceError.self) {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw ResilienceError(code, "rejected", retryAfter: .seconds(1))
            }
        }
        #expect(error?.code == code)
        #expect(recorder.attempts == [1])
        #expect(self.calls(code.isRejection ? "rejected" : "failure") == 1)
    }

    @Test("a per-try timeout is retried")
    func timeoutRetried() async throws {
        let retry = self.makeRetry()
        let recorder = AttemptRecorder()
        let value = try await retry.execute(.idempotent) { context in
            recorder.record(context.attempt)
            if context.attempt == 1 { throw ResilienceError(.timedOut, "per try") }
            return "second"
        }
        #expect(value == "second")
        #expect(recorder.attempts == [1, 2])
    }

    @Test("the default predicate retries transient errors and not client errors nor cancellation")
    func defaultPredicate() {
        #expect(Retry.isRetryable(RetryTestError(attempt: 1)))
        #expect(Retry.isRetryable(ResilienceError(.timedOut, "")))
        #expect(Retry.isRetryable(AviaryError(.unavailable, "")))
        #expect(Retry.isRetryable(AviaryError(.resourceExhausted, "")))
        #expect(Retry.isRetryable(AviaryError(.internal, "")))
        #expect(!Retry.isRetryable(CancellationError()))
        #expect(!Retry.isRetryable(AviaryError(.notFound, "")))
        #expect(!Retry.isRetryable(AviaryError(.invalidArgument, "")))
        #expect(!Retry.isRetryable(AviaryError(.conflict, "")))
        #expect(!Retry.isRetryable(ResilienceError(.circuitOpen, "")))
    }

    @Test("a custom error predicate decides what is retried")
    func customPredicate() async throws {
        let retry = self.makeRetry(shouldRetry: { ($0 as? RetryTestError)?.attempt != 2 })
        let recorder = AttemptRecorder()
        await #expect(throws: RetryTestError(attempt: 2)) {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(recorder.attempts == [1, 2])
    }

    @Test("a cancelled caller is not retried")
    func cancellationNotRetried() async throws {
        let retry = self.makeRetry()
        let recorder = AttemptRecorder()
        await #expect(throws: CancellationError.self) {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw CancellationError()
            }
        }
        #expect(recorder.attempts == [1])
    }

    @Test("cancelling the caller during the backoff ends the call without another attempt")
    func cancelledDuringBackoff() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(10)))
        let recorder = AttemptRecorder()
        let call = Task {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        await self.clock.waitForSleepers(count: 1)
        call.cancel()
        await #expect(throws: CancellationError.self) { try await call.value }
        #expect(recorder.attempts == [1])
        #expect(self.clock.sleeperCount == 0)
    }

    // MARK: Results

    @Test("the result predicate retries results it rejects")
    func resultPredicateRetries() async throws {
        let retry = self.makeRetry(resultPredicate: .on(Int.self) { $0 == 503 ? .retry(after: nil) : .accept })
        let recorder = AttemptRecorder()
        let status = try await retry.execute(.idempotent) { context in
            recorder.record(context.attempt)
            return context.attempt < 3 ? 503 : 200
        }
        #expect(status == 200)
        #expect(recorder.attempts == [1, 2, 3])
        #expect(self.retries == 2)
    }

    @Test("after the last attempt, a rejected result is returned rather than thrown")
    func resultPredicateExhausted() async throws {
        let retry = self.makeRetry(maxAttempts: 2, resultPredicate: .on(Int.self) { _ in .retry(after: nil) })
        let recorder = AttemptRecorder()
        let status = try await retry.execute(.idempotent) { context in
            recorder.record(context.attempt)
            return 500 + context.attempt
        }
        #expect(status == 502)
        #expect(recorder.attempts == [1, 2])
        #expect(self.calls("failure") == 1)
    }

    @Test("a result predicate for another type accepts every result")
    func resultPredicateOtherType() async throws {
        let retry = self.makeRetry(resultPredicate: .on(String.self) { _ in .retry(after: nil) })
        let recorder = AttemptRecorder()
        let value = try await retry.execute(.idempotent) { context in
            recorder.record(context.attempt)
            return 503
        }
        #expect(value == 503)
        #expect(recorder.attempts == [1])
    }

    // MARK: Retry-After

    @Test("an error's Retry-After longer than the backoff is the delay used")
    func retryAfterFromError() async throws {
        let retry = self.makeRetry(backoff: .constant(.milliseconds(100)))
        let events = retry.events()
        let start = self.clock.now
        let call = Task {
            try await retry.execute(.idempotent) { context in
                if context.attempt == 1 { throw RetryAfterTestError(retryAfter: .seconds(3)) }
                return context.attempt
            }
        }
        await self.clock.waitForSleepers(count: 1)
        #expect(self.clock.nextDeadline == start.advanced(by: .seconds(3)))
        self.clock.advance(by: .seconds(3))
        #expect(try await call.value == 2)
        let scheduled = await firstEvents(1, of: events)
        guard case .retryScheduled(let attempt, let delay, _) = scheduled.first else {
            Issue.record("unexpected events \(scheduled)")
            return
        }
        #expect(attempt == 1)
        #expect(delay == .seconds(3))
    }

    @Test("a backoff longer than Retry-After is the delay used")
    func backoffLongerThanRetryAfter() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(5)))
        let start = self.clock.now
        let call = Task {
            try await retry.execute(.idempotent) { context in
                if context.attempt == 1 { throw RetryAfterTestError(retryAfter: .seconds(1)) }
                return context.attempt
            }
        }
        await self.clock.waitForSleepers(count: 1)
        #expect(self.clock.nextDeadline == start.advanced(by: .seconds(5)))
        self.clock.advance(by: .seconds(5))
        #expect(try await call.value == 2)
    }

    @Test("a result's retry(after:) is honoured")
    func retryAfterFromResult() async throws {
        let retry = self.makeRetry(resultPredicate: .on(Int.self) { $0 == 429 ? .retry(after: .seconds(2)) : .accept })
        let start = self.clock.now
        let call = Task {
            try await retry.execute(.idempotent) { context in context.attempt == 1 ? 429 : 200 }
        }
        await self.clock.waitForSleepers(count: 1)
        #expect(self.clock.nextDeadline == start.advanced(by: .seconds(2)))
        self.clock.advance(by: .seconds(2))
        #expect(try await call.value == 200)
    }

    @Test("a Retry-After beyond maxRetryAfter gives up at once with the upstream's error")
    func retryAfterTooLong() async throws {
        let retry = self.makeRetry(maxRetryAfter: .seconds(30))
        let recorder = AttemptRecorder()
        let error = await #expect(throws: RetryAfterTestError.self) {
            try await retry.execute(.idempotent) { context -> Int in
                recorder.record(context.attempt)
                throw RetryAfterTestError(retryAfter: .seconds(31))
            }
        }
        #expect(error?.retryAfter == .seconds(31))
        #expect(recorder.attempts == [1])
        #expect(self.clock.sleeperCount == 0)
    }

    @Test("a Retry-After of exactly maxRetryAfter is waited for")
    func retryAfterAtMaximum() async throws {
        let retry = self.makeRetry(maxRetryAfter: .seconds(30))
        let call = Task {
            try await retry.execute(.idempotent) { context in
                if context.attempt == 1 { throw RetryAfterTestError(retryAfter: .seconds(30)) }
                return context.attempt
            }
        }
        await self.clock.waitForSleepers(count: 1)
        self.clock.advance(by: .seconds(30))
        #expect(try await call.value == 2)
    }

    // MARK: Deadline

    @Test("a deadline that would pass during the backoff ends the call at once with timedOut")
    func deadlineDuringBackoff() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(1)))
        let events = retry.events()
        let recorder = AttemptRecorder()
        let deadline = Deadline(self.clock.now.advanced(by: .milliseconds(500)))
        let start = self.clock.now
        let error = await #expect(throws: ResilienceError.self) {
            try await withDeadline(deadline) {
                try await retry.execute(.idempotent) { context -> Int in
                    recorder.record(context.attempt)
                    throw RetryTestError(attempt: context.attempt)
                }
            }
        }
        #expect(error?.code == .timedOut)
        #expect(error?.cause as? RetryTestError == RetryTestError(attempt: 1))
        #expect(recorder.attempts == [1])
        #expect(self.clock.now == start)
        #expect(self.clock.sleeperCount == 0)
        #expect(self.calls("timeout") == 1)
        let all = await firstEvents(1, of: events)
        guard case .deadlineReached(let attempt, let delay, _) = all.first else {
            Issue.record("unexpected events \(all)")
            return
        }
        #expect(attempt == 1)
        #expect(delay == .seconds(1))
    }

    @Test("a delay ending exactly at the deadline is not slept")
    func delayEndingAtDeadline() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(1)))
        let deadline = Deadline(self.clock.now.advanced(by: .seconds(1)))
        let error = await #expect(throws: ResilienceError.self) {
            try await withDeadline(deadline) {
                try await retry.execute(.idempotent) { context -> Int in throw RetryTestError(attempt: context.attempt)
                }
            }
        }
        #expect(error?.code == .timedOut)
        #expect(self.clock.sleeperCount == 0)
    }

    @Test("a delay ending just before the deadline is slept and the retry runs")
    func delayEndingBeforeDeadline() async throws {
        let retry = self.makeRetry(backoff: .constant(.seconds(1) - .nanoseconds(1)))
        let deadline = Deadline(self.clock.now.advanced(by: .seconds(1)))
        let recorder = AttemptRecorder()
        let call = Task {
            try await withDeadline(deadline) {
                try await retry.execute(.idempotent) { context in
                    recorder.record(context.attempt)
                    if context.attempt == 1 { throw RetryTestError(attempt: 1) }
                    return context.attempt
                }
            }
        }
        await self.clock.waitForSleepers(count: 1)
        self.clock.advance(by: .seconds(1) - .nanoseconds(1))
        #expect(try await call.value == 2)
        #expect(recorder.attempts == [1, 2])
    }

    @Test("a rejected result is returned when the deadline stops the retries")
    func deadlineAfterRejectedResult() async throws {
        let retry = self.makeRetry(
            backoff: .constant(.seconds(1)),
            resultPredicate: .on(Int.self) { $0 == 503 ? .retry(after: nil) : .accept }
        )
        let deadline = Deadline(self.clock.now.advanced(by: .milliseconds(10)))
        let status = try await withDeadline(deadline) {
            try await retry.execute(.idempotent) { _ in 503 }
        }
        #expect(status == 503)
    }

    // MARK: Budget

    @Test("an empty budget stops retries with budgetExhausted and counts it")
    func budgetExhaustion() async throws {
        let budget = RetryBudget(.init(ratio: 0.5, minRetriesPerSecond: 0), clock: self.clock)
        let retry = self.makeRetry(budget: budget)
        let events = retry.events()
        // First call: one request deposits half a retry, so no retry is allowed.
        let first = AttemptRecorder()
        let firstError = await #expect(throws: ResilienceError.self) {
            try await retry.execute(.idempotent) { context -> Int in
                first.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(firstError?.code == .budgetExhausted)
        #expect(firstError?.cause as? RetryTestError == RetryTestError(attempt: 1))
        #expect(first.attempts == [1])
        #expect(self.counter("aviary_retry_budget_exhausted_total", [("name", "test")]) == 1)
        guard case .budgetExhausted(let attempt, _) = await firstEvents(1, of: events).first else {
            Issue.record("expected a budgetExhausted event")
            return
        }
        #expect(attempt == 1)

        // Second call: two requests in the window allow exactly one retry.
        let second = AttemptRecorder()
        let secondError = await #expect(throws: ResilienceError.self) {
            try await retry.execute(.idempotent) { context -> Int in
                second.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(secondError?.code == .budgetExhausted)
        #expect(secondError?.cause as? RetryTestError == RetryTestError(attempt: 2))
        #expect(second.attempts == [1, 2])
        #expect(self.counter("aviary_retry_budget_exhausted_total", [("name", "test")]) == 2)
        #expect(self.retries == 1)
    }

    @Test("the budget refills as its window slides")
    func budgetRefillsOverTime() async throws {
        let budget = RetryBudget(.init(ratio: 0, minRetriesPerSecond: 0.1, window: .seconds(10)), clock: self.clock)
        let retry = self.makeRetry(maxAttempts: 2, budget: budget)
        let operation: @Sendable (PolicyContext) async throws -> Int = { context in
            if context.attempt == 1 { throw RetryTestError(attempt: 1) }
            return context.attempt
        }
        #expect(try await retry.execute(.idempotent, operation) == 2)
        let error = await #expect(throws: ResilienceError.self) { try await retry.execute(.idempotent, operation) }
        #expect(error?.code == .budgetExhausted)
        self.clock.advance(by: .seconds(10))
        #expect(try await retry.execute(.idempotent, operation) == 2)
    }

    @Test("the default configuration has a budget and three attempts")
    func defaultConfiguration() {
        let configuration = Retry.Configuration()
        #expect(configuration.maxAttempts == 3)
        #expect(configuration.budget != nil)
        #expect(configuration.budget?.configuration == RetryBudget.Configuration())
        #expect(!configuration.retryNonIdempotent)
        #expect(configuration.resultPredicate == nil)
    }

    // MARK: Telemetry

    @Test("each retry is a retry.attempt event on the caller's span")
    func spanEvents() async throws {
        let tracer = InMemoryTracer()
        let span = tracer.startSpan("GET /stock")
        let retry = self.makeRetry()
        let value = try await retry.execute(PolicyContext(idempotent: true, span: span)) { context in
            if context.attempt < 3 { throw RetryTestError(attempt: context.attempt) }
            return context.attempt
        }
        #expect(value == 3)
        let events = span.events.filter { $0.name == "retry.attempt" }
        #expect(events.count == 2)
        #expect(events.map { $0.attributes.get("aviary.retry.attempt") } == [.int64(2), .int64(3)])
        #expect(events.first?.attributes.get("aviary.policy") == .string("test"))
        #expect(events.first?.attributes.get("error.type") == .string("RetryTestError"))
        span.end()
    }

    @Test("inside a pipeline, the policies after Retry see each attempt's number")
    func pipelineAttempts() async throws {
        let recorder = AttemptRecorder()
        let pipeline = ResiliencePipeline<Int> {
            self.makeRetry()
            AttemptSpy(recorder: recorder)
        }
        let value = try await pipeline.run(.idempotent) { context in
            if context.attempt < 2 { throw RetryTestError(attempt: context.attempt) }
            return context.attempt
        }
        #expect(value == 2)
        #expect(recorder.attempts == [1, 2])
    }
}

/// A policy that records the attempt number it sees.
private struct AttemptSpy: ResiliencePolicy {
    let recorder: AttemptRecorder

    func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        self.recorder.record(context.attempt)
        return try await next(context)
    }
}
