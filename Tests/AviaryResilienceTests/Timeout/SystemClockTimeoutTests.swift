//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

#if os(Linux)
import AviaryCore
@testable import AviaryResilience
import Synchronization
import Testing

/// The real-time path of ``Timeout``: deadlines on the `SystemClock` are fired by the shared
/// ``TimerThread``. These tests use short real deadlines and wait for outcomes, never sleep.
@Suite("Timeout on the system clock", .timeLimit(.minutes(1)))
struct SystemClockTimeoutTests {
    /// Collects what fired, and lets a test await a number of firings.
    final class Firings: Sendable {
        private let state = Mutex<(order: [Int], waiter: CheckedContinuation<Void, Never>?, wanted: Int)>(
            ([], nil, 0))

        func record(_ value: Int) {
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                state.order.append(value)
                guard state.order.count >= state.wanted, let waiter = state.waiter else { return nil }
                state.waiter = nil
                return waiter
            }
            waiter?.resume()
        }

        func wait(for count: Int) async {
            await withCheckedContinuation { continuation in
                let done = self.state.withLock { state -> Bool in
                    if state.order.count >= count { return true }
                    state.wanted = count
                    state.waiter = continuation
                    return false
                }
                if done { continuation.resume() }
            }
        }

        var order: [Int] { self.state.withLock { $0.order } }
    }

    @Test("an operation that outlives its timeout is cancelled and the call throws timedOut")
    func firesAndCancels() async throws {
        let timeout = Timeout(.milliseconds(20))
        let sawCancellation = Atomic<Bool>(false)
        let error = await #expect(throws: ResilienceError.self) {
            try await timeout.run { () async throws -> Int in
                // Waits until cancelled: a stream that never yields ends when its task is.
                let never = AsyncStream<Void> { _ in }
                for await _ in never {}
                sawCancellation.store(Task.isCancelled, ordering: .relaxed)
                throw CancellationError()
            }
        }
        #expect(error?.code == .timedOut)
        let cancelled = sawCancellation.load(ordering: .relaxed)
        #expect(cancelled)
    }

    @Test("an operation that finishes in time returns its value, and its timer is disarmed")
    func finishesInTime() async throws {
        let timeout = Timeout(.seconds(3600))
        for value in 0..<100 {
            #expect(try await timeout.run { value } == value)
        }
        let failing = await #expect(throws: CancellationError.self) {
            try await timeout.run { () async throws -> Int in throw CancellationError() }
        }
        #expect(failing != nil)
    }

    @Test("timers fire in deadline order, whatever the order they were armed in")
    func firesInDeadlineOrder() async {
        let firings = Firings()
        let now = SystemClock().now
        for (value, delay) in [(3, 30), (1, 10), (2, 20)] {
            _ = TimerThread.shared.schedule(at: now.advanced(by: .milliseconds(delay))) { firings.record(value) }
        }
        await firings.wait(for: 3)
        #expect(firings.order == [1, 2, 3])
    }

    @Test("a disarmed timer never fires, and disarming twice reports that it was already gone")
    func cancelledTimerNeverFires() async {
        let firings = Firings()
        let now = SystemClock().now
        // 300 ms leaves room for this task to be descheduled between arming and disarming on a
        // loaded machine (CI saw 5 ms overrun) without the timer firing first.
        let cancelled = TimerThread.shared.schedule(at: now.advanced(by: .milliseconds(300))) { firings.record(0) }
        #expect(TimerThread.shared.cancel(cancelled))
        #expect(!TimerThread.shared.cancel(cancelled))
        // A later timer fires; had the cancelled one fired, it would have come first.
        _ = TimerThread.shared.schedule(at: now.advanced(by: .milliseconds(350))) { firings.record(1) }
        await firings.wait(for: 1)
        #expect(firings.order == [1])
    }

    @Test("after many disarmed timers (heap rebuilt), an earlier deadline still wakes the thread")
    func compactionKeepsLiveTimers() async {
        let firings = Firings()
        let now = SystemClock().now
        // A far deadline first, so that the thread sleeps until it...
        let far = TimerThread.shared.schedule(at: now.advanced(by: .seconds(3600))) { firings.record(-1) }
        // ...then many armed and disarmed, which forces rebuilds of the heap...
        for _ in 0..<10_000 {
            let id = TimerThread.shared.schedule(at: now.advanced(by: .seconds(60))) { firings.record(-2) }
            TimerThread.shared.cancel(id)
        }
        // ...then one sooner than the thread's wake time: it must be woken for it.
        _ = TimerThread.shared.schedule(at: now.advanced(by: .milliseconds(10))) { firings.record(7) }
        await firings.wait(for: 1)
        #expect(firings.order == [7])
        #expect(TimerThread.shared.cancel(far))
    }
}
#endif
