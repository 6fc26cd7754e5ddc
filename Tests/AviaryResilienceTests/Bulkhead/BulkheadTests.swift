//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import PropertyBased
import Testing

@testable import AviaryResilience

@Suite("Bulkhead", .timeLimit(.minutes(1)))
struct BulkheadTests {
    /// Starts a call that holds its slot until the gate finishes `id`.
    private func start(_ bulkhead: Bulkhead, _ gate: BulkheadCallGate, _ id: Int) -> Task<Int, any Error> {
        Task {
            try await bulkhead.run {
                try await gate.hold(id)
                return id
            }
        }
    }

    private func expectBulkheadFull(
        _ task: Task<Int, any Error>,
        mentioning text: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async {
        let error = await #expect(throws: ResilienceError.self, sourceLocation: sourceLocation) {
            try await task.value
        }
        #expect(error?.code == .bulkheadFull, sourceLocation: sourceLocation)
        #expect(error?.message.contains(text) == true, "\(String(describing: error))", sourceLocation: sourceLocation)
    }

    @Test("admits exactly maxConcurrentCalls and rejects the next at once when there is no queue")
    func admitsExactlyMax() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(.init(name: "b", maxConcurrentCalls: 3), clock: clock)
        let gate = BulkheadCallGate()
        let tasks = (0..<3).map { self.start(bulkhead, gate, $0) }
        await gate.waitUntilStarted(3)
        #expect(bulkhead.inFlightCount == 3)

        await self.expectBulkheadFull(self.start(bulkhead, gate, 3), mentioning: "is full")
        #expect(gate.startedIDs.count == 3, "the rejected call never ran")
        #expect(clock.sleeperCount == 0, "a rejection does not wait")

        gate.finish(0)
        #expect(try await tasks[0].value == 0)
        #expect(bulkhead.inFlightCount == 2)
        let next = self.start(bulkhead, gate, 4)
        await gate.waitUntilStarted(4)
        gate.finish(1)
        gate.finish(2)
        gate.finish(4)
        #expect(try await next.value == 4)
        _ = try await (tasks[1].value, tasks[2].value)
        #expect(bulkhead.inFlightCount == 0)
    }

    @Test("queues up to maxQueueLength, rejects the next at once, and hands slots over in FIFO order")
    func queuesInOrder() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(name: "b", maxConcurrentCalls: 1, maxQueueLength: 2, maxWaitDuration: .seconds(10)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let first = self.start(bulkhead, gate, 0)
        await gate.waitUntilStarted(1)
        let second = self.start(bulkhead, gate, 1)
        await clock.waitForSleepers(count: 1)
        let third = self.start(bulkhead, gate, 2)
        await clock.waitForSleepers(count: 2)
        #expect(bulkhead.queuedCount == 2)

        await self.expectBulkheadFull(self.start(bulkhead, gate, 3), mentioning: "wait queue (2) is full")

        gate.finish(0)
        await gate.waitUntilStarted(2)
        #expect(gate.startedIDs == [0, 1])
        #expect(bulkhead.queuedCount == 1)
        #expect(bulkhead.inFlightCount == 1, "the slot was handed over, not freed")
        gate.finish(1)
        await gate.waitUntilStarted(3)
        #expect(gate.startedIDs == [0, 1, 2])
        gate.finish(2)
        #expect(try await [first.value, second.value, third.value] == [0, 1, 2])
        #expect(bulkhead.inFlightCount == 0)
        #expect(bulkhead.queuedCount == 0)
        #expect(clock.sleeperCount == 0, "queue timers are cancelled once a waiter gets its slot")
    }

    @Test("a queued call times out exactly at maxWaitDuration", arguments: [Duration.nanoseconds(1), .seconds(2)])
    func queueTimeout(maxWait: Duration) async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(name: "b", maxConcurrentCalls: 1, maxQueueLength: 1, maxWaitDuration: maxWait),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let holder = self.start(bulkhead, gate, 0)
        await gate.waitUntilStarted(1)
        let waiter = self.start(bulkhead, gate, 1)
        await clock.waitForSleepers(count: 1)

        clock.advance(by: maxWait - .nanoseconds(1))
        #expect(bulkhead.queuedCount == 1, "one nanosecond early, the call still waits")
        clock.advance(by: .nanoseconds(1))
        await self.expectBulkheadFull(waiter, mentioning: "waited \(maxWait) in the queue")
        #expect(bulkhead.queuedCount == 0)
        #expect(bulkhead.inFlightCount == 1)

        gate.finish(0)
        #expect(try await holder.value == 0)
        #expect(bulkhead.inFlightCount == 0, "the timed-out waiter got no slot")
        #expect(gate.startedIDs == [0])
    }

    @Test("a queued call that is cancelled leaves the queue, throws CancellationError and leaks no slot")
    func cancelledWhileQueued() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(name: "b", maxConcurrentCalls: 1, maxQueueLength: 2, maxWaitDuration: .seconds(5)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let holder = self.start(bulkhead, gate, 0)
        await gate.waitUntilStarted(1)
        let cancelled = self.start(bulkhead, gate, 1)
        await clock.waitForSleepers(count: 1)
        let behind = self.start(bulkhead, gate, 2)
        await clock.waitForSleepers(count: 2)

        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(bulkhead.queuedCount == 1)

        gate.finish(0)
        await gate.waitUntilStarted(2)
        #expect(gate.startedIDs == [0, 2], "the slot skipped the cancelled waiter")
        gate.finish(2)
        #expect(try await [holder.value, behind.value] == [0, 2])
        #expect(bulkhead.inFlightCount == 0)
        #expect(bulkhead.queuedCount == 0)
        #expect(clock.sleeperCount == 0)
    }

    @Test("a call whose task is already cancelled when it must queue throws CancellationError")
    func cancelledBeforeQueueing() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(name: "b", maxConcurrentCalls: 1, maxQueueLength: 1, maxWaitDuration: .seconds(5)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let holder = self.start(bulkhead, gate, 0)
        await gate.waitUntilStarted(1)
        let late = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await bulkhead.run { 1 }
        }
        await #expect(throws: CancellationError.self) { try await late.value }
        #expect(bulkhead.queuedCount == 0)
        gate.finish(0)
        _ = try await holder.value
        #expect(bulkhead.inFlightCount == 0)
    }

    @Test("the slot is released when the operation throws")
    func releasedOnError() async throws {
        let bulkhead = Bulkhead(.init(maxConcurrentCalls: 1), clock: ManualClock())
        await #expect(throws: BulkheadTestError.self) {
            try await bulkhead.run { () async throws -> Int in throw BulkheadTestError() }
        }
        #expect(bulkhead.inFlightCount == 0)
        #expect(try await bulkhead.run { 7 } == 7)
    }

    @Test("the slot is released, and handed to the next waiter, when a running call is cancelled")
    func releasedOnCancellation() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(maxConcurrentCalls: 1, maxQueueLength: 1, maxWaitDuration: .seconds(5)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let running = self.start(bulkhead, gate, 0)
        await gate.waitUntilStarted(1)
        let waiting = self.start(bulkhead, gate, 1)
        await clock.waitForSleepers(count: 1)

        running.cancel()
        await #expect(throws: CancellationError.self) { try await running.value }
        await gate.waitUntilStarted(2)
        gate.finish(1)
        #expect(try await waiting.value == 1)
        #expect(bulkhead.inFlightCount == 0)
    }

    @Test("permits: tryAcquire never waits, release frees the slot, dropping a permit releases it")
    func permits() async throws {
        let bulkhead = Bulkhead(.init(maxConcurrentCalls: 2), clock: ManualClock())
        let first = bulkhead.tryAcquire()
        let firstHeld = isHeld(first)
        #expect(firstHeld)
        do {
            let second = bulkhead.tryAcquire()
            let secondHeld = isHeld(second)
            #expect(secondHeld)
            #expect(bulkhead.inFlightCount == 2)
            let thirdHeld = isHeld(bulkhead.tryAcquire())
            #expect(!thirdHeld, "no free slot")
        }
        #expect(bulkhead.inFlightCount == 1, "the dropped permit released its slot")
        if let first {
            first.release()
        }
        #expect(bulkhead.inFlightCount == 0)
        let awaited = try await bulkhead.acquire()
        #expect(bulkhead.inFlightCount == 1)
        awaited.release()
        #expect(bulkhead.inFlightCount == 0)
    }

    @Test("acquire() waits in the queue and gets the slot a permit releases")
    func acquireWaits() async throws {
        let clock = ManualClock()
        let bulkhead = Bulkhead(
            .init(maxConcurrentCalls: 1, maxQueueLength: 1, maxWaitDuration: .seconds(1)),
            clock: clock
        )
        guard let held = bulkhead.tryAcquire() else {
            Issue.record("the first permit was refused")
            return
        }
        let waiter = Task {
            let permit = try await bulkhead.acquire()
            permit.release()
        }
        await clock.waitForSleepers(count: 1)
        #expect(bulkhead.queuedCount == 1)
        held.release()
        try await waiter.value
        #expect(bulkhead.inFlightCount == 0)
        #expect(bulkhead.queuedCount == 0)
    }

    // MARK: State machine

    @Test("state machine: an outcome that arrives before the waiter suspends is kept for it")
    func earlyOutcomes() {
        var machine = Bulkhead.StateMachine<String>(maxConcurrentCalls: 1, maxQueueLength: 3)
        #expect(machine.acquire(orEnqueue: 1) == .admitted)
        #expect(machine.acquire(orEnqueue: 2) == .enqueued(2))
        #expect(machine.acquire(orEnqueue: 3) == .enqueued(3))
        #expect(machine.acquire(orEnqueue: 4) == .enqueued(4))
        #expect(machine.acquire(orEnqueue: 5) == .rejected)

        #expect(machine.release() == nil, "waiter 2 has not suspended yet")
        #expect(machine.inFlight == 1)
        #expect(machine.remove(id: 3, because: .timedOut) == nil)
        #expect(machine.suspend(id: 4, waiter: "four") == nil)
        #expect(machine.remove(id: 2, because: .cancelled) == nil, "2 was already granted")

        #expect(machine.suspend(id: 2, waiter: "two")?.outcome == .granted)
        #expect(machine.suspend(id: 3, waiter: "three")?.outcome == .timedOut)
        let handOff = machine.release()
        #expect(handOff?.waiter == "four")
        #expect(handOff?.outcome == .granted)
        #expect(machine.release() == nil)
        #expect(machine.isIdle)
    }

    @Test("state machine: random sequences never exceed the limits and never leak a slot")
    func stateMachineProperty() async {
        await propertyCheck(
            count: 200,
            input: Gen.int(in: 1...3),
            Gen.int(in: 0...3),
            Gen.int(in: 0...5).array(of: 0...60)
        ) { maxConcurrent, maxQueue, operations in
            var machine = Bulkhead.StateMachine<UInt64>(maxConcurrentCalls: maxConcurrent, maxQueueLength: maxQueue)
            var nextID: UInt64 = 0
            var holders = 0
            var granted = 0
            var released = 0
            var unsuspended: [UInt64] = []
            var suspended: [UInt64] = []

            func settle(_ resumption: Bulkhead.StateMachine<UInt64>.Resumption?) {
                guard let resumption else { return }
                suspended.removeAll { $0 == resumption.waiter }
                if resumption.outcome == .granted {
                    holders += 1
                    granted += 1
                }
            }

            for operation in operations {
                switch operation {
                case 0, 1:
                    nextID += 1
                    switch machine.acquire(orEnqueue: nextID) {
                    case .admitted:
                        holders += 1
                        granted += 1
                    case .enqueued(let id):
                        unsuspended.append(id)
                    case .rejected:
                        #expect(machine.inFlight == maxConcurrent && machine.queued == maxQueue)
                    }
                case 2:
                    if !unsuspended.isEmpty {
                        let id = unsuspended.removeFirst()
                        suspended.append(id)
                        settle(machine.suspend(id: id, waiter: id))
                    }
                case 3:
                    if holders > 0 {
                        holders -= 1
                        released += 1
                        settle(machine.release())
                    }
                default:
                    let queued = unsuspended + suspended
                    if let id = queued.randomElement() {
                        settle(machine.remove(id: id, because: operation == 4 ? .cancelled : .timedOut))
                    }
                }
                #expect(machine.inFlight <= maxConcurrent)
                #expect(machine.queued <= maxQueue)
                #expect(machine.queued == 0 || machine.inFlight == maxConcurrent, "a slot is free while callers wait")
            }
            // Let every waiter suspend, then every holder finish; handed-over slots finish too.
            for id in unsuspended {
                suspended.append(id)
                settle(machine.suspend(id: id, waiter: id))
            }
            while holders > 0 {
                holders -= 1
                released += 1
                settle(machine.release())
            }
            #expect(machine.inFlight == 0)
            #expect(machine.queued == 0)
            #expect(machine.isIdle)
            #expect(granted == released, "every granted slot was released exactly once")
        }
    }

    // MARK: Random sequences on the policy

    private enum Ending: CaseIterable {
        case succeed, fail, cancelRunning, cancelQueued
    }

    @Test("random calls, failures and cancellations leave no slot, waiter or timer behind")
    func policyProperty() async {
        await propertyCheck(
            count: 25,
            input: Gen.int(in: 1...3),
            Gen.int(in: 0...3),
            Gen.int(in: 0...3).array(of: 1...8)
        ) { maxConcurrent, maxQueue, endings in
            let clock = ManualClock()
            let bulkhead = Bulkhead(
                .init(maxConcurrentCalls: maxConcurrent, maxQueueLength: maxQueue, maxWaitDuration: .seconds(60)),
                clock: clock
            )
            let gate = BulkheadCallGate()
            var tasks: [Task<Int, any Error>] = []
            var queued: [Int] = []
            // Place the calls one by one so that who runs, waits or is rejected is known.
            for id in endings.indices {
                tasks.append(self.start(bulkhead, gate, id))
                if id < maxConcurrent {
                    await gate.waitUntilStarted(id + 1)
                } else if id < maxConcurrent + maxQueue {
                    queued.append(id)
                    await clock.waitForSleepers(count: queued.count)
                } else {
                    await #expect(throws: ResilienceError.self) { try await tasks[id].value }
                }
            }
            // Cancel the queued calls meant to be cancelled while waiting.
            for id in queued where Ending.allCases[endings[id]] == .cancelQueued {
                tasks[id].cancel()
                await #expect(throws: CancellationError.self) { try await tasks[id].value }
            }
            queued.removeAll { Ending.allCases[endings[$0]] == .cancelQueued }
            // End the running calls oldest first; each end lets the next queued call start. The
            // expected number of started calls is counted here, not read back after an end: the
            // next queued call may already have started by the time the ended call's task returns.
            var expectedStarted = gate.startedIDs.count
            var ended = 0
            while ended < gate.startedIDs.count {
                let id = gate.startedIDs[ended]
                switch Ending.allCases[endings[id]] {
                case .succeed, .cancelQueued:
                    gate.finish(id)
                    let value = try? await tasks[id].value
                    #expect(value == id)
                case .fail:
                    gate.finish(id, failing: true)
                    await #expect(throws: BulkheadTestError.self) { try await tasks[id].value }
                case .cancelRunning:
                    tasks[id].cancel()
                    await #expect(throws: CancellationError.self) { try await tasks[id].value }
                }
                ended += 1
                if !queued.isEmpty {
                    queued.removeFirst()
                    expectedStarted += 1
                    await gate.waitUntilStarted(expectedStarted)
                }
            }
            #expect(bulkhead.inFlightCount == 0)
            #expect(bulkhead.queuedCount == 0)
            #expect(clock.sleeperCount == 0)
        }
    }
}

/// Whether a permit was granted (`#expect` cannot compare non-copyable optionals).
func isHeld(_ permit: borrowing Bulkhead.Permit?) -> Bool {
    switch permit {
    case .some: true
    case .none: false
    }
}

/// Whether a keyed permit was granted.
func isHeld(_ permit: borrowing KeyedBulkhead.Permit?) -> Bool {
    switch permit {
    case .some: true
    case .none: false
    }
}

extension Bulkhead.StateMachine.Resumption: Equatable where Waiter: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.waiter == rhs.waiter && lhs.outcome == rhs.outcome
    }
}
