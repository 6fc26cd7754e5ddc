//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Testing

@testable import AviaryResilience

@Suite("KeyedRateLimiter", .timeLimit(.minutes(1)))
struct KeyedRateLimiterTests {
    /// One token per second, two at most, for each key.
    private func makeLimiter(
        _ clock: ManualClock, maxKeys: Int = 100, missingKey: MissingKeyBehavior = .shareOneKey
    )
        -> KeyedRateLimiter
    {
        KeyedRateLimiter(
            .init(
                algorithm: .tokenBucket(.init(rate: 1, period: .seconds(1), burst: 2)),
                maxKeys: maxKeys,
                missingKey: missingKey
            ),
            clock: clock
        )
    }

    @Test("each key has its own quota")
    func independentKeys() {
        let limiter = self.makeLimiter(ManualClock())
        #expect(limiter.tryAcquire(key: "a", permits: 2).allowed)
        let deniedA = limiter.tryAcquire(key: "a")
        #expect(!deniedA.allowed)
        #expect(deniedA.retryAfter == .seconds(1))
        let b = limiter.tryAcquire(key: "b")
        #expect(b.allowed)
        #expect(b.remaining == 1)
    }

    @Test("a sliding window per key works the same way")
    func slidingWindowPerKey() {
        let clock = ManualClock()
        let limiter = KeyedRateLimiter(
            .init(algorithm: .slidingWindow(.init(limit: 3, window: .seconds(1)))),
            clock: clock
        )
        #expect(limiter.tryAcquire(key: "a", permits: 3).allowed)
        let denied = limiter.tryAcquire(key: "a")
        #expect(!denied.allowed)
        #expect(denied.limit == 3)
        #expect(limiter.tryAcquire(key: "b", permits: 3).allowed)
        clock.advance(by: .seconds(2))
        #expect(limiter.tryAcquire(key: "a", permits: 3).allowed)
    }

    @Test("many distinct keys never grow the table beyond maxKeys", arguments: [1, 64, 1_000])
    func boundedMemory(maxKeys: Int) {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock, maxKeys: maxKeys)
        var largest = 0
        for index in 0..<20_000 {
            #expect(limiter.tryAcquire(key: "attacker-\(index)", permits: 2).allowed, "every new key starts full")
            largest = max(largest, limiter.trackedKeyCount)
            if index % 1_000 == 0 { clock.advance(by: .milliseconds(10)) }
        }
        #expect(largest == maxKeys)
        #expect(limiter.trackedKeyCount == maxKeys)
    }

    @Test("a full table evicts a key whose bucket is full again before the least recently used one")
    func evictsRefilledFirst() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock, maxKeys: 3)
        _ = limiter.tryAcquire(key: "a", permits: 2)  // full again after 2 s
        _ = limiter.tryAcquire(key: "b", permits: 1)  // full again after 1 s
        _ = limiter.tryAcquire(key: "c", permits: 2)  // full again after 2 s
        clock.advance(by: .seconds(1))
        _ = limiter.tryAcquire(key: "d")
        #expect(limiter.isTracking(key: "a"), "a is the least recently used but still owes a token")
        #expect(!limiter.isTracking(key: "b"))
        #expect(limiter.trackedKeyCount == 3)
        // a kept its state: one token back, not two.
        #expect(limiter.tryAcquire(key: "a").allowed)
        #expect(!limiter.tryAcquire(key: "a").allowed)
    }

    @Test("when no key is idle, the least recently used one is evicted")
    func evictsLeastRecentlyUsed() {
        let limiter = self.makeLimiter(ManualClock(), maxKeys: 3)
        _ = limiter.tryAcquire(key: "a", permits: 2)
        _ = limiter.tryAcquire(key: "b", permits: 2)
        _ = limiter.tryAcquire(key: "c", permits: 2)
        _ = limiter.tryAcquire(key: "a")  // a is now the most recently used
        _ = limiter.tryAcquire(key: "d")
        #expect(limiter.isTracking(key: "a"))
        #expect(!limiter.isTracking(key: "b"))
        #expect(limiter.isTracking(key: "c"))
        #expect(limiter.isTracking(key: "d"))
    }

    @Test("a call that leaves a new key's quota whole tracks nothing")
    func nothingToTrack() {
        let limiter = self.makeLimiter(ManualClock())
        #expect(limiter.tryAcquire(key: "peek", permits: 0).allowed)
        #expect(!limiter.tryAcquire(key: "huge", permits: 3).allowed)
        #expect(limiter.trackedKeyCount == 0)
    }

    @Test("removeIdleKeys drops exactly the keys whose quota is whole again")
    func removeIdleKeys() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(key: "short", permits: 1)
        _ = limiter.tryAcquire(key: "long", permits: 2)
        clock.advance(by: .seconds(1))
        #expect(limiter.removeIdleKeys() == 1)
        #expect(!limiter.isTracking(key: "short"))
        #expect(limiter.isTracking(key: "long"))
        clock.advance(by: .seconds(1))
        #expect(limiter.removeIdleKeys() == 1)
        #expect(limiter.trackedKeyCount == 0)
    }

    @Test("calls without a key share \"\", are unlimited, or are denied, as configured")
    func missingKey() {
        let shared = self.makeLimiter(ManualClock())
        #expect(shared.tryAcquire(key: nil, permits: 2).allowed)
        #expect(!shared.tryAcquire(key: nil).allowed)
        #expect(!shared.tryAcquire(key: "").allowed, "the same bucket as the key \"\"")

        let unlimited = self.makeLimiter(ManualClock(), missingKey: .unlimited)
        for _ in 0..<10 { #expect(unlimited.tryAcquire(key: nil).allowed) }
        #expect(unlimited.trackedKeyCount == 0)

        let rejecting = self.makeLimiter(ManualClock(), missingKey: .reject)
        let denied = rejecting.tryAcquire(key: nil)
        #expect(!denied.allowed)
        #expect(denied.retryAfter == nil)
        #expect(rejecting.tryAcquire(key: "k").allowed)
    }

    // MARK: The table itself

    @Test("the LRU table reuses slots and keeps recency order through touches and removals")
    func lruTable() {
        var table = LRUTable<Int>(capacity: 3)
        table.insert(1, forKey: "a")
        table.insert(2, forKey: "b")
        table.insert(3, forKey: "c")
        #expect(table.keysByRecency == ["c", "b", "a"])
        #expect(
            table.withValue(forKey: "a") { value -> Int in
                value += 10
                return value
            } == 11)
        #expect(table.keysByRecency == ["a", "c", "b"])
        let evicted = table.insert(4, forKey: "d")
        #expect(evicted?.key == "b")
        #expect(table.keysByRecency == ["d", "a", "c"])
        #expect(table.removeValue(forKey: "a") == 11)
        table.insert(5, forKey: "e")
        #expect(table.keysByRecency == ["e", "d", "c"])
        #expect(table.count == 3)
        let disposable = table.insert(6, forKey: "f", isDisposable: { $0 == 5 })
        #expect(disposable?.key == "e", "a disposable entry goes before the least recently used")
        #expect(table.keysByRecency == ["f", "d", "c"])
        #expect(table.removeAll { $0 >= 4 } == 2)
        #expect(table.keysByRecency == ["c"])
    }
}
