//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Testing

@Suite("Timeout", .timeLimit(.minutes(1)))
struct TimeoutTests {
    @Test("an operation that finishes in time returns its value")
    func finishesInTime() async throws {
        let clock = ManualClock()
        let timeout = Timeout(.seconds(1), clock: clock)
        let value = try await timeout.run { 42 }
        #expect(value == 42)
        #expect(clock.sleeperCount == 0, "the timer is cancelled when the operation finishes")
    }

    @Test("at the deadline the operation is cancelled and timedOut is thrown")
    func cancelsAtDeadline() async throws {
        let clock = ManualClock()
        let timeout = Timeout(.seconds(2), clock: clock)
        let (cancelled, cancelledContinuation) = AsyncStream<Bool>.makeStream()
        let call = Task {
            try await timeout.run { () async throws -> Int in
                do {
                    // Sleeps on the same clock for longer than the timeout; only cancellation ends it.
                    try await clock.sleep(until: clock.now.advanced(by: .seconds(60)), tolerance: nil)
                    cancelledContinuation.yield(false)
                } catch {
                    cancelledContinuation.yield(error is CancellationError)
                }
                return 1
            }
        }
        // The operation and the timer both sleep on the clock.
        await clock.waitForSleepers(count: 2)
        clock.advance(by: .milliseconds(1999))
        #expect(clock.sleeperCount == 2)
        clock.advance(by: .milliseconds(1))
        await #expect {
            try await call.value
        } throws: { error in
            (error as? ResilienceError)?.code == .timedOut
        }
        var iterator = cancelled.makeAsyncIterator()
        #expect(await iterator.next() == true)
    }

    @Test("the operation sees the timeout as its deadline")
    func setsDeadline() async throws {
        let clock = ManualClock()
        let timeout = Timeout(.milliseconds(500), clock: clock)
        let remaining = try await timeout.run { Deadline.current?.remaining(clock: clock) }
        #expect(remaining == .milliseconds(500))
    }

    @Test("a nested timeout never extends the caller's deadline")
    func nestedKeepsOuterDeadline() async throws {
        let clock = ManualClock()
        let outer = Timeout(.seconds(1), clock: clock)
        let inner = Timeout(.seconds(10), clock: clock)
        let remaining = try await outer.run {
            try await inner.run { Deadline.current?.remaining(clock: clock) }
        }
        #expect(remaining == .seconds(1))
    }

    @Test("an already expired caller deadline fails at once without running the operation")
    func expiredOuterDeadline() async throws {
        let clock = ManualClock()
        let timeout = Timeout(.seconds(10), clock: clock)
        let deadline = Deadline.after(.seconds(1), clock: clock)
        clock.advance(by: .seconds(1))
        _ = await withDeadline(deadline) {
            await #expect {
                try await timeout.run { () async throws -> Int in
                    Issue.record("the operation must not run")
                    return 0
                }
            } throws: { error in
                guard let error = error as? ResilienceError else { return false }
                return error.code == .timedOut && error.message.contains("caller's deadline")
            }
        }
    }

    @Test("the operation's own error passes through unchanged")
    func errorPassesThrough() async {
        struct Boom: Error {}
        let timeout = Timeout(.seconds(1), clock: ManualClock())
        await #expect(throws: Boom.self) { try await timeout.run { () async throws -> Int in throw Boom() } }
    }

    @Test("timedOut renders as a 504 problem")
    func problem() {
        let error = ResilienceError(.timedOut, "slow", policyName: "t")
        #expect(error.problemDetails.status == 504)
        #expect(error.problemDetails.type == "urn:aviary:problem:timed-out")
    }
}
