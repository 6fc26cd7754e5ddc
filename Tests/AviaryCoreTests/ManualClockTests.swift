//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import ServiceContextModule
import Testing

@Suite("ManualClock", .timeLimit(.minutes(1)))
struct ManualClockTests {
    @Test("a sleeper resumes when the clock reaches its deadline, not before")
    func sleeperResumesAtDeadline() async throws {
        let clock = ManualClock()
        let deadline = clock.now.advanced(by: .seconds(5))
        let task = Task { try await clock.sleep(until: deadline, tolerance: nil) }
        await clock.waitForSleepers(count: 1)
        clock.advance(by: .seconds(4))
        #expect(clock.sleeperCount == 1)
        clock.advance(by: .seconds(1))
        try await task.value
        #expect(clock.sleeperCount == 0)
        #expect(clock.now == deadline)
    }

    @Test("sleeping until a past instant returns at once")
    func pastDeadlineReturns() async throws {
        let clock = ManualClock()
        try await clock.sleep(until: clock.now.advanced(by: .seconds(-1)), tolerance: nil)
        #expect(clock.sleeperCount == 0)
    }

    @Test("cancelling a sleeper throws CancellationError and removes it")
    func cancellationRemovesSleeper() async throws {
        let clock = ManualClock()
        let task = Task { try await clock.sleep(until: clock.now.advanced(by: .seconds(60)), tolerance: nil) }
        await clock.waitForSleepers(count: 1)
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(clock.sleeperCount == 0)
    }

    @Test("sleepers resume in deadline order")
    func resumeOrder() async throws {
        let clock = ManualClock()
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let start = clock.now
        let tasks = [3, 1, 2].map { n in
            Task {
                try await clock.sleep(until: start.advanced(by: .seconds(n)), tolerance: nil)
                continuation.yield(n)
            }
        }
        await clock.waitForSleepers(count: 3)
        clock.advance(by: .seconds(1))
        var iterator = stream.makeAsyncIterator()
        #expect(await iterator.next() == 1)
        clock.advance(by: .seconds(1))
        #expect(await iterator.next() == 2)
        clock.advance(by: .seconds(1))
        #expect(await iterator.next() == 3)
        for task in tasks { try await task.value }
    }

    @Test("waitForSleepers returns when its task is cancelled, so time limits can end a stuck test")
    func waitForSleepersIsCancellable() async {
        let clock = ManualClock()
        let waiter = Task { await clock.waitForSleepers(count: 5) }
        waiter.cancel()
        await waiter.value
        #expect(clock.sleeperCount == 0)
        // Cancelled before it started waiting: returns at once as well.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await clock.waitForSleepers(count: 5)
        }
        await early.value
    }
}

@Suite("Deadline", .timeLimit(.minutes(1)))
struct DeadlineTests {
    @Test("a nested deadline never extends the outer one")
    func nestedDeadlineKeepsEarlier() async {
        let clock = ManualClock()
        let outer = Deadline.after(.seconds(1), clock: clock)
        await withDeadline(outer) {
            await withDeadline(.after(.seconds(10), clock: clock)) {
                #expect(Deadline.current == outer)
                #expect(Deadline.current?.remaining(clock: clock) == .seconds(1))
            }
            let inner = Deadline.after(.milliseconds(100), clock: clock)
            await withDeadline(inner) {
                #expect(Deadline.current == inner)
            }
        }
        #expect(Deadline.current == nil)
    }

    @Test("a deadline carried by the ServiceContext is honoured, and the earlier deadline wins")
    func deadlineInServiceContext() async {
        let clock = ManualClock()
        let carried = Deadline.after(.seconds(3), clock: clock)
        var context = ServiceContextModule.ServiceContext.topLevel
        context.deadline = carried
        await ServiceContextModule.ServiceContext.$current.withValue(context) {
            #expect(Deadline.current == carried)
            await withDeadline(.after(.seconds(10), clock: clock)) {
                #expect(Deadline.current == carried, "a later local deadline does not extend it")
            }
            let sooner = Deadline.after(.seconds(1), clock: clock)
            await withDeadline(sooner) {
                #expect(Deadline.current == sooner)
            }
        }
        // A context entered inside a local deadline shortens it when its deadline is earlier.
        let local = Deadline.after(.seconds(5), clock: clock)
        await withDeadline(local) {
            var inner = ServiceContextModule.ServiceContext.topLevel
            inner.deadline = Deadline.after(.seconds(2), clock: clock)
            ServiceContextModule.ServiceContext.$current.withValue(inner) {
                #expect(Deadline.current == inner.deadline)
            }
            #expect(Deadline.current == local)
        }
    }

    @Test("expiry is exact at the instant")
    func expiryAtInstant() {
        let clock = ManualClock()
        let deadline = Deadline.after(.seconds(2), clock: clock)
        clock.advance(by: .milliseconds(1999))
        #expect(!deadline.hasExpired(clock: clock))
        clock.advance(by: .milliseconds(1))
        #expect(deadline.hasExpired(clock: clock))
        #expect(deadline.remaining(clock: clock) == .zero)
    }
}
