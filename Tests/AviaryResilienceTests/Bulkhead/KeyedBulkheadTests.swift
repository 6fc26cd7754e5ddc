//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Testing

@Suite("KeyedBulkhead", .timeLimit(.minutes(1)))
struct KeyedBulkheadTests {
    /// Starts a call under `key` that holds its slot until the gate finishes `id`.
    private func start(
        _ bulkhead: KeyedBulkhead,
        _ gate: BulkheadCallGate,
        _ id: Int,
        key: String?
    ) -> Task<Int, any Error> {
        Task {
            try await bulkhead.run(PolicyContext(key: key)) {
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

    @Test("each key has its own slots")
    func keysAreIndependent() async throws {
        let bulkhead = KeyedBulkhead(.init(name: "k", maxConcurrentCallsPerKey: 1), clock: ManualClock())
        let gate = BulkheadCallGate()
        let a = self.start(bulkhead, gate, 0, key: "a")
        await gate.waitUntilStarted(1)
        await self.expectBulkheadFull(self.start(bulkhead, gate, 1, key: "a"), mentioning: "slots of the key")
        let b = self.start(bulkhead, gate, 2, key: "b")
        await gate.waitUntilStarted(2)
        #expect(bulkhead.inFlightCount(forKey: "a") == 1)
        #expect(bulkhead.inFlightCount(forKey: "b") == 1)
        #expect(bulkhead.inFlightCount == 2)
        gate.finish(0)
        gate.finish(2)
        #expect(try await [a.value, b.value] == [0, 2])
    }

    @Test("a key is forgotten as soon as it has nothing in flight or waiting")
    func idleKeysAreRemoved() async throws {
        let clock = ManualClock()
        let bulkhead = KeyedBulkhead(
            .init(maxConcurrentCallsPerKey: 1, maxQueueLengthPerKey: 2, maxWaitDuration: .seconds(1)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let holder = self.start(bulkhead, gate, 0, key: "a")
        await gate.waitUntilStarted(1)
        let timesOut = self.start(bulkhead, gate, 1, key: "a")
        await clock.waitForSleepers(count: 1)
        let cancelled = self.start(bulkhead, gate, 2, key: "a")
        await clock.waitForSleepers(count: 2)
        #expect(bulkhead.queuedCount(forKey: "a") == 2)
        #expect(bulkhead.trackedKeyCount == 1)

        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        clock.advance(by: .seconds(1))
        await self.expectBulkheadFull(timesOut, mentioning: "waited 1.0 seconds")
        #expect(bulkhead.trackedKeyCount == 1, "the holder still runs")

        gate.finish(0)
        #expect(try await holder.value == 0)
        #expect(bulkhead.trackedKeyCount == 0)
        #expect(bulkhead.inFlightCount == 0)
        #expect(clock.sleeperCount == 0)
    }

    @Test("a waiter of a key gets the slot its key releases, not another key's")
    func queuePerKey() async throws {
        let clock = ManualClock()
        let bulkhead = KeyedBulkhead(
            .init(maxConcurrentCallsPerKey: 1, maxQueueLengthPerKey: 1, maxWaitDuration: .seconds(1)),
            clock: clock
        )
        let gate = BulkheadCallGate()
        let a = self.start(bulkhead, gate, 0, key: "a")
        let b = self.start(bulkhead, gate, 1, key: "b")
        await gate.waitUntilStarted(2)
        let waiter = self.start(bulkhead, gate, 2, key: "a")
        await clock.waitForSleepers(count: 1)
        gate.finish(1)
        #expect(try await b.value == 1)
        #expect(bulkhead.queuedCount(forKey: "a") == 1, "b's slot is not a's")
        gate.finish(0)
        await gate.waitUntilStarted(3)
        gate.finish(2)
        #expect(try await [a.value, waiter.value] == [0, 2])
        #expect(bulkhead.trackedKeyCount == 0)
    }

    @Test("beyond maxKeys busy keys, a new key is rejected until one becomes idle")
    func maxKeys() async throws {
        let bulkhead = KeyedBulkhead(.init(maxConcurrentCallsPerKey: 5, maxKeys: 2), clock: ManualClock())
        let gate = BulkheadCallGate()
        let a = self.start(bulkhead, gate, 0, key: "a")
        let b = self.start(bulkhead, gate, 1, key: "b")
        await gate.waitUntilStarted(2)
        await self.expectBulkheadFull(self.start(bulkhead, gate, 2, key: "c"), mentioning: "2 keys are busy")
        let secondA = self.start(bulkhead, gate, 3, key: "a")
        await gate.waitUntilStarted(3)
        #expect(bulkhead.trackedKeyCount == 2)

        gate.finish(1)
        #expect(try await b.value == 1)
        let c = self.start(bulkhead, gate, 4, key: "c")
        await gate.waitUntilStarted(4)
        for id in [0, 3, 4] { gate.finish(id) }
        #expect(try await [a.value, secondA.value, c.value] == [0, 3, 4])
        #expect(bulkhead.trackedKeyCount == 0)
    }

    @Test("memory stays bounded: many distinct keys leave nothing tracked, and busy keys never exceed maxKeys")
    func boundedMemory() async throws {
        let bulkhead = KeyedBulkhead(.init(maxConcurrentCallsPerKey: 1, maxKeys: 64), clock: ManualClock())
        for index in 0..<10_000 {
            _ = try await bulkhead.run(PolicyContext(key: "client-\(index)")) { index }
        }
        #expect(bulkhead.trackedKeyCount == 0)

        let gate = BulkheadCallGate()
        var held: [Task<Int, any Error>] = []
        for index in 0..<64 {
            held.append(self.start(bulkhead, gate, index, key: "busy-\(index)"))
        }
        await gate.waitUntilStarted(64)
        var rejected = 0
        for index in 0..<500 {
            if !isHeld(bulkhead.tryAcquire(key: "flood-\(index)")) { rejected += 1 }
        }
        #expect(rejected == 500)
        #expect(bulkhead.trackedKeyCount == 64)
        for index in 0..<64 { gate.finish(index) }
        for task in held { _ = try await task.value }
        #expect(bulkhead.trackedKeyCount == 0)
    }

    @Test("calls without a key share the key \"\" by default")
    func missingKeyShares() async throws {
        let bulkhead = KeyedBulkhead(.init(maxConcurrentCallsPerKey: 1), clock: ManualClock())
        let gate = BulkheadCallGate()
        let first = self.start(bulkhead, gate, 0, key: nil)
        await gate.waitUntilStarted(1)
        #expect(bulkhead.inFlightCount(forKey: "") == 1)
        await self.expectBulkheadFull(self.start(bulkhead, gate, 1, key: nil), mentioning: "slots of the key")
        gate.finish(0)
        #expect(try await first.value == 0)
    }

    @Test("calls without a key are unlimited or rejected when configured so")
    func missingKeyBehaviours() async throws {
        let unlimited = KeyedBulkhead(.init(maxConcurrentCallsPerKey: 1, missingKey: .unlimited), clock: ManualClock())
        let gate = BulkheadCallGate()
        let tasks = (0..<3).map { self.start(unlimited, gate, $0, key: nil) }
        await gate.waitUntilStarted(3)
        #expect(unlimited.trackedKeyCount == 0)
        for id in 0..<3 { gate.finish(id) }
        for task in tasks { _ = try await task.value }

        let rejecting = KeyedBulkhead(.init(missingKey: .reject), clock: ManualClock())
        await self.expectBulkheadFull(self.start(rejecting, gate, 9, key: nil), mentioning: "has no key")
        #expect(try await rejecting.run(PolicyContext(key: "k")) { 1 } == 1)
    }

    @Test("keyed permits hold a slot of their key until released")
    func permits() async throws {
        let bulkhead = KeyedBulkhead(.init(maxConcurrentCallsPerKey: 1), clock: ManualClock())
        let held = try await bulkhead.acquire(key: "a")
        let refused = isHeld(bulkhead.tryAcquire(key: "a"))
        #expect(!refused)
        #expect(bulkhead.trackedKeyCount == 1)
        held.release()
        #expect(bulkhead.trackedKeyCount == 0)
        let again = isHeld(bulkhead.tryAcquire(key: "a"))
        #expect(again, "the permit was dropped at once, which released it")
        #expect(bulkhead.trackedKeyCount == 0)
    }
}
