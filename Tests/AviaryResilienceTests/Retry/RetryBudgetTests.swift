//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import PropertyBased
import Testing

@testable import AviaryResilience

@Suite("RetryBudget", .timeLimit(.minutes(1)))
struct RetryBudgetTests {
    @Test("a quiet budget still allows minRetriesPerSecond × window retries")
    func reserve() {
        let budget = RetryBudget(.init(ratio: 0.2, minRetriesPerSecond: 1, window: .seconds(10)), clock: ManualClock())
        #expect(budget.available == 10)
        for _ in 0..<10 { #expect(budget.tryWithdraw()) }
        #expect(!budget.tryWithdraw())
        #expect(budget.available == 0)
    }

    @Test("the default budget is 20% of requests plus 10 retries per second over 10 seconds")
    func defaults() {
        let configuration = RetryBudget.Configuration()
        #expect(configuration.ratio == 0.2)
        #expect(configuration.minRetriesPerSecond == 10)
        #expect(configuration.window == .seconds(10))
        #expect(RetryBudget(clock: ManualClock()).available == 100)
    }

    @Test("each request deposits a ratio of a retry", arguments: [(4, 0), (5, 1), (9, 1), (10, 2)])
    func ratioOfRequests(requests: Int, expected: Int) {
        let budget = RetryBudget(.init(ratio: 0.2, minRetriesPerSecond: 0), clock: ManualClock())
        for _ in 0..<requests { budget.deposit() }
        #expect(budget.available == expected)
    }

    @Test("a withdrawal fails when the budget is empty and counts nothing")
    func withdrawWhenEmpty() {
        let budget = RetryBudget(.init(ratio: 0.5, minRetriesPerSecond: 0), clock: ManualClock())
        #expect(!budget.tryWithdraw())
        budget.deposit()
        budget.deposit()
        #expect(budget.available == 1)
        #expect(budget.tryWithdraw())
        #expect(!budget.tryWithdraw())
        #expect(!budget.tryWithdraw())
        // The failed withdrawals took nothing: two more requests make room for exactly one retry.
        budget.deposit()
        budget.deposit()
        #expect(budget.tryWithdraw())
        #expect(!budget.tryWithdraw())
    }

    @Test("new requests refill an exhausted budget")
    func refillsWithRequests() {
        let budget = RetryBudget(.init(ratio: 0.2, minRetriesPerSecond: 0), clock: ManualClock())
        for _ in 0..<5 { budget.deposit() }
        #expect(budget.tryWithdraw())
        #expect(!budget.tryWithdraw())
        for _ in 0..<4 { budget.deposit() }
        #expect(!budget.tryWithdraw())
        budget.deposit()
        #expect(budget.tryWithdraw())
    }

    @Test("retries age out of the window bucket by bucket")
    func refillsOverTime() {
        let clock = ManualClock()
        let budget = RetryBudget(
            .init(ratio: 0, minRetriesPerSecond: 0.2, window: .seconds(10), bucketCount: 10),
            clock: clock
        )
        // Reserve: 0.2/s × 10 s = 2 retries per window.
        #expect(budget.tryWithdraw())
        clock.advance(by: .seconds(3))
        #expect(budget.tryWithdraw())
        #expect(!budget.tryWithdraw())
        // One bucket before the first retry leaves the window, it still counts.
        clock.advance(by: .seconds(6))
        #expect(budget.available == 0)
        // At exactly one window after it, it is gone; the second one (at 3 s) still counts.
        clock.advance(by: .seconds(1))
        #expect(budget.available == 1)
        clock.advance(by: .seconds(3))
        #expect(budget.available == 2)
    }

    @Test("requests age out of the window too")
    func requestsAgeOut() {
        let clock = ManualClock()
        let budget = RetryBudget(
            .init(ratio: 0.5, minRetriesPerSecond: 0, window: .seconds(2), bucketCount: 2), clock: clock)
        budget.deposit()
        budget.deposit()
        #expect(budget.available == 1)
        clock.advance(by: .seconds(1))
        #expect(budget.available == 1)
        clock.advance(by: .seconds(1))
        #expect(budget.available == 0)
    }

    @Test("a budget unused for much longer than its window starts afresh")
    func longIdle() {
        let clock = ManualClock()
        let budget = RetryBudget(.init(ratio: 1, minRetriesPerSecond: 0), clock: clock)
        budget.deposit()
        #expect(budget.tryWithdraw())
        clock.advance(by: .seconds(3600 * 24))
        #expect(budget.available == 0)
        budget.deposit()
        #expect(budget.available == 1)
    }

    @Test("the window never allows more than ratio × requests + reserve retries")
    func allowanceProperty() async {
        await propertyCheck(input: Gen.int(in: 0...200), Gen.int(in: 0...10), Gen.int(in: 0...3)) {
            requests, ratioTenths, reservePerSecond in
            let ratio = Double(ratioTenths) / 10
            let budget = RetryBudget(
                .init(ratio: ratio, minRetriesPerSecond: Double(reservePerSecond), window: .seconds(1), bucketCount: 1),
                clock: ManualClock()
            )
            for _ in 0..<requests { budget.deposit() }
            var granted = 0
            while budget.tryWithdraw() { granted += 1 }
            #expect(granted == requests * ratioTenths / 10 + reservePerSecond)
        }
    }

    @Test("the window state machine counts deposits and withdrawals per slice")
    func windowStateMachine() {
        var window = RetryBudget.Window(
            configuration: .init(ratio: 1, minRetriesPerSecond: 0, window: .seconds(4), bucketCount: 4))
        let start = MonotonicInstant(offset: .seconds(100))
        window.deposit(at: start)
        window.deposit(at: start.advanced(by: .milliseconds(1500)))
        #expect(window.available(at: start.advanced(by: .seconds(2))) == 2)
        let granted = window.withdraw(at: start.advanced(by: .seconds(2)))
        #expect(granted)
        #expect(window.available(at: start.advanced(by: .seconds(3))) == 1)
        // The deposit at 100 s expires at 104 s.
        #expect(window.available(at: start.advanced(by: .seconds(4))) == 0)
        let refused = !window.withdraw(at: start.advanced(by: .seconds(4)))
        #expect(refused)
        // The one at 101.5 s and the withdrawal at 102 s expire at 105 s and 106 s.
        #expect(window.available(at: start.advanced(by: .seconds(5))) == 0)
        window.deposit(at: start.advanced(by: .seconds(6)))
        #expect(window.available(at: start.advanced(by: .seconds(6))) == 1)
    }

    @Test("one budget shared by two retries limits both")
    func sharedBetweenRetries() async throws {
        let clock = ManualClock()
        let budget = RetryBudget(.init(ratio: 0, minRetriesPerSecond: 0.1, window: .seconds(10)), clock: clock)
        let reads = Retry(.init(name: "reads", maxAttempts: 3, backoff: .immediate, budget: budget), clock: clock)
        let writes = Retry(.init(name: "writes", maxAttempts: 3, backoff: .immediate, budget: budget), clock: clock)
        let readAttempts = AttemptRecorder()
        let value = try await reads.execute(.idempotent) { context in
            readAttempts.record(context.attempt)
            if context.attempt == 1 { throw RetryTestError(attempt: 1) }
            return context.attempt
        }
        #expect(value == 2)
        let writeAttempts = AttemptRecorder()
        let error = await #expect(throws: ResilienceError.self) {
            try await writes.execute(.idempotent) { context -> Int in
                writeAttempts.record(context.attempt)
                throw RetryTestError(attempt: context.attempt)
            }
        }
        #expect(error?.code == .budgetExhausted)
        #expect(writeAttempts.attempts == [1])
    }
}
