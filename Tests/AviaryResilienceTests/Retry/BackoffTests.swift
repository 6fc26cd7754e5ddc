//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryResilience
import PropertyBased
import Synchronization
import Testing

@Suite("Backoff", .timeLimit(.minutes(1)))
struct BackoffTests {
    @Test("a constant backoff repeats its delay")
    func constant() {
        let delays = Array(Backoff.constant(.milliseconds(250)).prefix(4))
        #expect(delays == Array(repeating: .milliseconds(250), count: 4))
    }

    @Test("an immediate backoff never waits")
    func immediate() {
        #expect(Array(Backoff.immediate.prefix(3)) == [.zero, .zero, .zero])
    }

    @Test("exponential delays grow by the multiplier and stop at the cap")
    func exponentialGrowthAndCap() {
        let backoff = Backoff.exponential(base: .milliseconds(100), multiplier: 2, cap: .seconds(1), jitter: .none)
        #expect(
            Array(backoff.prefix(7)) == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800),
                .seconds(1), .seconds(1), .seconds(1),
            ]
        )
    }

    @Test("a fractional multiplier grows the delay by that factor")
    func fractionalMultiplier() {
        let backoff = Backoff.exponential(base: .seconds(1), multiplier: 1.5, cap: .seconds(3), jitter: .none)
        #expect(
            Array(backoff.prefix(5)) == [
                .seconds(1), .milliseconds(1500), .milliseconds(2250), .seconds(3), .seconds(3),
            ])
    }

    @Test("a cap equal to the base gives a constant schedule")
    func capEqualToBase() {
        let backoff = Backoff.exponential(
            base: .milliseconds(50), multiplier: 10, cap: .milliseconds(50), jitter: .none)
        #expect(Array(backoff.prefix(3)) == [.milliseconds(50), .milliseconds(50), .milliseconds(50)])
    }

    @Test("a very long schedule saturates at the cap without overflowing")
    func longScheduleSaturates() {
        let backoff = Backoff.exponential(base: .seconds(1), multiplier: 10, cap: .seconds(3600), jitter: .none)
        #expect(Array(backoff.prefix(200)).last == .seconds(3600))
        let decorrelated = Backoff.exponential(
            base: .seconds(1), cap: .seconds(1_000_000_000), jitter: .decorrelated, randomness: .seeded(3)
        )
        for delay in decorrelated.prefix(200) {
            #expect(delay >= .seconds(1) && delay <= .seconds(1_000_000_000))
        }
    }

    @Test(
        "a seeded backoff gives the same schedule on every iteration",
        arguments: [Backoff.Jitter.full, .equal, .decorrelated])
    func seededIsDeterministic(jitter: Backoff.Jitter) {
        let backoff = Backoff.exponential(
            base: .milliseconds(10), cap: .seconds(10), jitter: jitter, randomness: .seeded(42))
        let first = Array(backoff.prefix(10))
        #expect(first == Array(backoff.prefix(10)))
        let other = Array(backoff.withRandomness(.seeded(43)).prefix(10))
        #expect(first != other)
    }

    @Test("a generator closure supplies the randomness")
    func generatorClosure() {
        /// A counter-based generator: the n-th draw is a fixed function of n.
        final class Draws: Sendable {
            let count = Mutex<UInt64>(0)
            var randomness: Backoff.Randomness {
                .generator {
                    self.count.withLock { count in
                        count += 1
                        return count &* 0x9E37_79B9_7F4A_7C15
                    }
                }
            }
        }
        let firstDraws = Draws()
        let secondDraws = Draws()
        let shape = Backoff.exponential(base: .milliseconds(100), cap: .seconds(1), jitter: .full)
        let first = Array(shape.withRandomness(firstDraws.randomness).prefix(5))
        let second = Array(shape.withRandomness(secondDraws.randomness).prefix(5))
        #expect(firstDraws.count.withLock { $0 } >= 5)
        #expect(first == second)
        #expect(Set(first).count > 1)
    }

    @Test("equal jitter of a zero-width range is the delay itself")
    func equalJitterBounds() {
        let backoff = Backoff.exponential(base: .nanoseconds(1), multiplier: 1, cap: .nanoseconds(1), jitter: .equal)
        #expect(Array(backoff.prefix(3)).allSatisfy { $0 >= .zero && $0 <= .nanoseconds(1) })
    }

    // MARK: Properties of jitter

    /// The un-jittered schedule for the same parameters.
    private static func ceilings(base: Duration, multiplier: Double, cap: Duration, count: Int) -> [Duration] {
        Array(Backoff.exponential(base: base, multiplier: multiplier, cap: cap, jitter: .none).prefix(count))
    }

    @Test("full jitter stays within [0, d]")
    func fullJitterBounds() async {
        await propertyCheck(input: Gen.int(in: 1...1000), Gen.int(in: 1...100), Gen<UInt64>.value()) {
            baseMillis, capFactor, seed in
            let base = Duration.milliseconds(baseMillis)
            let cap = base * capFactor
            let backoff = Backoff.exponential(
                base: base, multiplier: 2, cap: cap, jitter: .full, randomness: .seeded(seed))
            let ceilings = Self.ceilings(base: base, multiplier: 2, cap: cap, count: 12)
            for (delay, ceiling) in zip(backoff.prefix(12), ceilings) {
                #expect(delay >= .zero && delay <= ceiling)
            }
        }
    }

    @Test("equal jitter stays within [d/2, d]")
    func equalJitterRange() async {
        await propertyCheck(input: Gen.int(in: 1...1000), Gen.int(in: 1...100), Gen<UInt64>.value()) {
            baseMillis, capFactor, seed in
            let base = Duration.milliseconds(baseMillis)
            let cap = base * capFactor
            let backoff = Backoff.exponential(
                base: base, multiplier: 3, cap: cap, jitter: .equal, randomness: .seeded(seed))
            let ceilings = Self.ceilings(base: base, multiplier: 3, cap: cap, count: 12)
            for (delay, ceiling) in zip(backoff.prefix(12), ceilings) {
                #expect(delay >= ceiling / 2 && delay <= ceiling)
            }
        }
    }

    @Test("decorrelated jitter stays within [base, min(cap, 3 × previous)]")
    func decorrelatedJitterBounds() async {
        await propertyCheck(input: Gen.int(in: 1...1000), Gen.int(in: 1...100), Gen<UInt64>.value()) {
            baseMillis, capFactor, seed in
            let base = Duration.milliseconds(baseMillis)
            let cap = base * capFactor
            let backoff = Backoff.exponential(base: base, cap: cap, jitter: .decorrelated, randomness: .seeded(seed))
            var previous = base
            for delay in backoff.prefix(20) {
                #expect(delay >= base)
                #expect(delay <= min(cap, previous * 3))
                previous = delay
            }
        }
    }

    @Test("jitter spreads delays: full jitter is not stuck at one value")
    func fullJitterSpreads() async {
        await propertyCheck(input: Gen<UInt64>.value()) { seed in
            let backoff = Backoff.constantCeiling(seed: seed)
            #expect(Set(backoff.prefix(50)).count > 1)
        }
    }
}

extension Backoff {
    /// Full jitter over a fixed one-second ceiling.
    fileprivate static func constantCeiling(seed: UInt64) -> Backoff {
        .exponential(base: .seconds(1), multiplier: 1, cap: .seconds(1), jitter: .full, randomness: .seeded(seed))
    }
}
