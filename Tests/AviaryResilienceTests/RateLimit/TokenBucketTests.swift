//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import PropertyBased
import Testing

@testable import AviaryResilience

@Suite("TokenBucket", .timeLimit(.minutes(1)))
struct TokenBucketTests {
    /// 10 tokens per second (one every 100 ms), 5 at most.
    private func makeBucket(_ clock: ManualClock) -> TokenBucket {
        TokenBucket(.init(rate: 10, period: .seconds(1), burst: 5), clock: clock)
    }

    @Test("a full bucket allows exactly burst calls at one instant, counting remaining down to 0")
    func burst() {
        let clock = ManualClock()
        let bucket = self.makeBucket(clock)
        for expected in (0..<5).reversed() {
            let decision = bucket.tryAcquire()
            #expect(decision.allowed)
            #expect(decision.limit == 5)
            #expect(decision.remaining == expected)
            #expect(decision.retryAfter == nil)
        }
        let denied = bucket.tryAcquire()
        #expect(!denied.allowed)
        #expect(denied.remaining == 0)
        #expect(denied.retryAfter == .milliseconds(100))
        #expect(denied.resetAfter == .milliseconds(500))
    }

    @Test("after the burst one token comes back exactly every interval")
    func refillTimes() {
        let clock = ManualClock()
        let bucket = self.makeBucket(clock)
        for _ in 0..<5 { _ = bucket.tryAcquire() }
        for _ in 0..<3 {
            clock.advance(by: .milliseconds(100) - .nanoseconds(1))
            let early = bucket.tryAcquire()
            #expect(!early.allowed)
            #expect(early.retryAfter == .nanoseconds(1))
            clock.advance(by: .nanoseconds(1))
            let onTime = bucket.tryAcquire()
            #expect(onTime.allowed)
            #expect(onTime.remaining == 0)
            #expect(onTime.resetAfter == .milliseconds(500))
        }
    }

    @Test("resetAfter is the time until the bucket is full again")
    func resetAfter() {
        let clock = ManualClock()
        let bucket = self.makeBucket(clock)
        let peek = bucket.tryAcquire(permits: 0)
        #expect(peek.allowed)
        #expect(peek.remaining == 5)
        #expect(peek.resetAfter == .zero)

        _ = bucket.tryAcquire()
        let second = bucket.tryAcquire()
        #expect(second.resetAfter == .milliseconds(200))
        #expect(second.remaining == 3)

        clock.advance(by: .milliseconds(150))
        let later = bucket.tryAcquire(permits: 0)
        #expect(later.resetAfter == .milliseconds(50))
        #expect(later.remaining == 4, "4.5 tokens count as 4")
        clock.advance(by: .milliseconds(50))
        #expect(bucket.tryAcquire(permits: 0).resetAfter == .zero)
        #expect(bucket.tryAcquire(permits: 0).remaining == 5)
    }

    @Test("a request for several permits waits until that many tokens are back")
    func severalPermits() {
        let clock = ManualClock()
        let bucket = self.makeBucket(clock)
        let three = bucket.tryAcquire(permits: 3)
        #expect(three.allowed)
        #expect(three.remaining == 2)
        let four = bucket.tryAcquire(permits: 4)
        #expect(!four.allowed)
        #expect(four.remaining == 2, "a denied request takes nothing")
        #expect(four.retryAfter == .milliseconds(200))
        clock.advance(by: .milliseconds(200))
        #expect(bucket.tryAcquire(permits: 4).allowed)
    }

    @Test("a request larger than the burst is denied with no retryAfter")
    func largerThanBurst() {
        let bucket = self.makeBucket(ManualClock())
        let decision = bucket.tryAcquire(permits: 6)
        #expect(!decision.allowed)
        #expect(decision.retryAfter == nil)
        #expect(decision.remaining == 5)
        #expect(bucket.tryAcquire(permits: 5).allowed)
    }

    @Test("idle time never saves more than the burst")
    func capsAtBurst() {
        let clock = ManualClock()
        let bucket = self.makeBucket(clock)
        _ = bucket.tryAcquire(permits: 5)
        clock.advance(by: .seconds(3600))
        #expect(bucket.tryAcquire(permits: 5).allowed)
        #expect(!bucket.tryAcquire().allowed)
    }

    @Test("the interval is period / rate rounded to the nanosecond")
    func roundedInterval() {
        let clock = ManualClock()
        let bucket = TokenBucket(.init(rate: 3, period: .seconds(1), burst: 1), clock: clock)
        _ = bucket.tryAcquire()
        let denied = bucket.tryAcquire()
        #expect(denied.retryAfter == .nanoseconds(333_333_333))
        let twoThirds = TokenBucket(.init(rate: 3, period: .nanoseconds(2), burst: 1), clock: clock)
        _ = twoThirds.tryAcquire()
        #expect(twoThirds.tryAcquire().retryAfter == .nanoseconds(1), "2/3 ns rounds to 1 ns")
    }

    @Test("burst defaults to the rate")
    func defaultBurst() {
        #expect(TokenBucket.Configuration(rate: 7).burst == 7)
    }

    @Test("concurrent acquisitions at one instant grant exactly the burst")
    func concurrentExactness() async {
        let clock = ManualClock()
        let bucket = TokenBucket(.init(rate: 1, period: .seconds(1), burst: 100), clock: clock)
        let now = clock.now
        let allowed = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var allowed = 0
                    for _ in 0..<100 where bucket.tryAcquire(key: nil, permits: 1, now: now).allowed {
                        allowed += 1
                    }
                    return allowed
                }
            }
            return await group.reduce(0, +)
        }
        #expect(allowed == 100)
    }

    @Test("over any sequence of requests, grants stay within burst + elapsed × rate, and retryAfter is exact")
    func neverExceedsRate() async {
        await propertyCheck(
            count: 200,
            input: Gen.int(in: 1...5),
            Gen.int(in: 0...250_000_000).array(of: 1...60)
        ) { permits, gaps in
            let clock = ManualClock()
            let bucket = self.makeBucket(clock)
            let start = clock.now
            var granted = 0
            for gap in gaps {
                clock.advance(by: .nanoseconds(gap))
                let decision = bucket.tryAcquire(permits: permits)
                if decision.allowed {
                    granted += permits
                } else if let retryAfter = decision.retryAfter {
                    // One nanosecond before retryAfter the same request is denied; at retryAfter it passes.
                    if retryAfter > .nanoseconds(1) {
                        clock.advance(by: retryAfter - .nanoseconds(1))
                        #expect(!bucket.tryAcquire(permits: permits).allowed)
                        clock.advance(by: .nanoseconds(1))
                    } else {
                        clock.advance(by: retryAfter)
                    }
                    #expect(bucket.tryAcquire(permits: permits).allowed)
                    granted += permits
                } else {
                    Issue.record("a request within the burst must have a retryAfter")
                }
                let elapsed = start.duration(to: clock.now).aviaryNanoseconds
                #expect(Int64(granted) <= 5 + elapsed / 100_000_000)
            }
        }
    }

    // MARK: Headers

    @Test("header fields for an allowed call carry limit, remaining and reset in whole seconds")
    func allowedHeaders() {
        let decision = RateLimitDecision(allowed: true, limit: 5, remaining: 4, resetAfter: .milliseconds(100))
        let fields = decision.headerFields
        #expect(fields.map(\.0) == ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"])
        #expect(fields.map(\.1) == ["5", "4", "1"])
    }

    @Test("header fields for a denied call add Retry-After, unless retrying cannot succeed")
    func deniedHeaders() {
        let clock = ManualClock()
        let bucket = TokenBucket(.init(rate: 1, period: .seconds(2), burst: 1), clock: clock)
        _ = bucket.tryAcquire()
        let denied = bucket.tryAcquire()
        #expect(
            denied.headerFields.map(\.0) == [
                "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After",
            ])
        #expect(denied.headerFields.map(\.1) == ["1", "0", "2", "2"])
        let impossible = bucket.tryAcquire(permits: 2)
        #expect(!impossible.headerFields.contains { $0.0 == "Retry-After" })
    }

    @Test(
        "durations render as whole seconds rounded up",
        arguments: [
            (Duration.zero, "0"), (.nanoseconds(1), "1"), (.seconds(1), "1"),
            (.seconds(1) + .nanoseconds(1), "2"), (.milliseconds(2500), "3"), (.seconds(60), "60"),
        ]
    )
    func wholeSeconds(duration: Duration, rendered: String) {
        let decision = RateLimitDecision(
            allowed: false, limit: 1, remaining: 0, resetAfter: duration, retryAfter: duration)
        #expect(decision.headerFields.first { $0.0 == "RateLimit-Reset" }?.1 == rendered)
        #expect(decision.headerFields.first { $0.0 == "Retry-After" }?.1 == rendered)
    }
}
