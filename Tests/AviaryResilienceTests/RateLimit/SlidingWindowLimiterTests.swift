//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import PropertyBased
import Testing

@Suite("SlidingWindowLimiter", .timeLimit(.minutes(1)))
struct SlidingWindowLimiterTests {
    /// 10 permits per 1-second window; the manual clock starts on a window boundary (3600 s).
    private func makeLimiter(_ clock: ManualClock) -> SlidingWindowLimiter {
        SlidingWindowLimiter(.init(limit: 10, window: .seconds(1)), clock: clock)
    }

    @Test("allows exactly limit permits in a window and denies the next")
    func limitInWindow() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        for expected in (0..<10).reversed() {
            let decision = limiter.tryAcquire()
            #expect(decision.allowed)
            #expect(decision.limit == 10)
            #expect(decision.remaining == expected)
            #expect(decision.resetAfter == .seconds(2), "the count slides out at the end of the next window")
        }
        let denied = limiter.tryAcquire()
        #expect(!denied.allowed)
        #expect(denied.remaining == 0)
        // At 3601.1 s the previous window weighs 0.9: 9 + 1 fits.
        #expect(denied.retryAfter == .milliseconds(1100))
    }

    @Test("the previous window's count fades linearly: retryAfter is exact to the nanosecond")
    func previousWindowFades() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(permits: 10)
        clock.advance(by: .milliseconds(1100) - .nanoseconds(1))
        let early = limiter.tryAcquire()
        #expect(!early.allowed)
        #expect(early.retryAfter == .nanoseconds(1))
        clock.advance(by: .nanoseconds(1))
        let onTime = limiter.tryAcquire()
        #expect(onTime.allowed)
        #expect(onTime.remaining == 0)
        #expect(!limiter.tryAcquire().allowed)
    }

    @Test("in the middle of a window, room grows as the previous window fades")
    func middleOfWindow() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(permits: 10)
        clock.advance(by: .milliseconds(1500))
        // previous 10 × 0.5 = 5 counted, so 5 more fit.
        #expect(limiter.tryAcquire(permits: 0).remaining == 5)
        let five = limiter.tryAcquire(permits: 5)
        #expect(five.allowed)
        #expect(five.remaining == 0)
        let denied = limiter.tryAcquire()
        #expect(!denied.allowed)
        // 10 × (1 − e) + 5 + 1 ≤ 10 from e = 0.6: 100 ms from now.
        #expect(denied.retryAfter == .milliseconds(100))
        #expect(denied.resetAfter == .milliseconds(1500))
    }

    @Test("a window with no traffic in between forgets everything")
    func skippedWindow() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(permits: 10)
        clock.advance(by: .seconds(2))
        let decision = limiter.tryAcquire(permits: 0)
        #expect(decision.remaining == 10)
        #expect(decision.resetAfter == .zero)
        #expect(limiter.tryAcquire(permits: 10).allowed)
    }

    @Test("resetAfter counts to the end of the current window when only the previous one counted")
    func resetAfterPreviousOnly() {
        let clock = ManualClock()
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(permits: 4)
        clock.advance(by: .milliseconds(1250))
        let peek = limiter.tryAcquire(permits: 0)
        #expect(peek.resetAfter == .milliseconds(750))
        #expect(peek.remaining == 7, "4 × 0.75 = 3 counted")
    }

    @Test("windows are aligned on the clock's origin, not on the first call")
    func alignment() {
        let clock = ManualClock(start: MonotonicInstant(offset: .seconds(3600) + .milliseconds(900)))
        let limiter = self.makeLimiter(clock)
        _ = limiter.tryAcquire(permits: 10)
        #expect(!limiter.tryAcquire().allowed)
        clock.advance(by: .milliseconds(100))
        // A new window started: the 10 now weigh 1.0 and fade from here.
        let decision = limiter.tryAcquire()
        #expect(!decision.allowed)
        #expect(decision.retryAfter == .milliseconds(100))
    }

    @Test("a request larger than the limit is denied with no retryAfter")
    func largerThanLimit() {
        let limiter = self.makeLimiter(ManualClock())
        let decision = limiter.tryAcquire(permits: 11)
        #expect(!decision.allowed)
        #expect(decision.retryAfter == nil)
        #expect(limiter.tryAcquire(permits: 10).allowed)
    }

    @Test("at retryAfter the denied request fits, one nanosecond before it does not")
    func retryAfterIsExact() async {
        await propertyCheck(
            count: 300,
            input: Gen.int(in: 1...4),
            Gen.int(in: 0...400_000_000).array(of: 1...40)
        ) { permits, gaps in
            let clock = ManualClock()
            let limiter = self.makeLimiter(clock)
            for gap in gaps {
                clock.advance(by: .nanoseconds(gap))
                let decision = limiter.tryAcquire(permits: permits)
                #expect(decision.remaining >= 0 && decision.remaining <= 10)
                guard !decision.allowed else { continue }
                guard let retryAfter = decision.retryAfter else {
                    Issue.record("a request within the limit must have a retryAfter")
                    return
                }
                #expect(retryAfter > .zero)
                if retryAfter > .nanoseconds(1) {
                    clock.advance(by: retryAfter - .nanoseconds(1))
                    #expect(!limiter.tryAcquire(permits: permits).allowed, "\(retryAfter) was too late")
                    clock.advance(by: .nanoseconds(1))
                } else {
                    clock.advance(by: retryAfter)
                }
                #expect(limiter.tryAcquire(permits: permits).allowed, "\(retryAfter) was too early")
            }
        }
    }
}
