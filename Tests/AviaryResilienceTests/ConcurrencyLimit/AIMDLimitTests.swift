//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import PropertyBased
import Testing

@Suite("AIMDLimit", .timeLimit(.minutes(1)))
struct AIMDLimitTests {
    let now = MonotonicInstant(offset: .seconds(3600))

    func make(
        initial: Int = 10,
        min: Int = 2,
        max: Int = 20,
        threshold: Duration = .milliseconds(100),
        backoff: Double = 0.9,
        increase: Int = 1,
        utilization: Double = 0.5
    ) -> AIMDLimit {
        AIMDLimit(
            initialLimit: initial,
            minLimit: min,
            maxLimit: max,
            parameters: .init(
                slowCallThreshold: threshold,
                backoffRatio: backoff,
                increase: increase,
                utilizationForIncrease: utilization
            )
        )
    }

    @Test("the limit starts at initialLimit")
    func startsAtInitial() {
        #expect(self.make(initial: 7).limit == 7)
    }

    @Test("a fast success while the limit is in use raises it by `increase`", arguments: [1, 3])
    func fastSuccessIncreases(increase: Int) {
        var aimd = self.make(increase: increase)
        let limit = aimd.update(rtt: .milliseconds(10), inflight: 10, didDrop: false, now: self.now)
        #expect(limit == 10 + increase)
        #expect(aimd.limit == 10 + increase)
    }

    @Test("fast successes raise the limit one step each")
    func repeatedFastSuccesses() {
        var aimd = self.make()
        for _ in 0..<5 {
            aimd.update(rtt: .milliseconds(10), inflight: aimd.limit, didDrop: false, now: self.now)
        }
        #expect(aimd.limit == 15)
    }

    @Test("growth needs inflight ≥ limit × utilizationForIncrease: at 5 of 10 it grows, at 4 it does not")
    func utilizationBoundary() {
        var used = self.make()
        used.update(rtt: .milliseconds(10), inflight: 5, didDrop: false, now: self.now)
        #expect(used.limit == 11)

        var idle = self.make()
        idle.update(rtt: .milliseconds(10), inflight: 4, didDrop: false, now: self.now)
        #expect(idle.limit == 10)
    }

    @Test("a drop multiplies the limit by backoffRatio, rounding down")
    func dropDecreases() {
        var aimd = self.make()
        #expect(aimd.update(rtt: .milliseconds(10), inflight: 10, didDrop: true, now: self.now) == 9)
        #expect(aimd.update(rtt: .milliseconds(10), inflight: 1, didDrop: true, now: self.now) == 8)
    }

    @Test(
        "a decrease lowers the limit by at least one until minLimit",
        arguments: [(10, 0.5, 5), (3, 0.9, 2), (20, 0.99, 19), (2, 0.5, 2)]
    )
    func decreaseSteps(start: Int, backoff: Double, expected: Int) {
        var aimd = self.make(initial: start, backoff: backoff)
        #expect(aimd.update(rtt: .zero, inflight: start, didDrop: true, now: self.now) == expected)
    }

    @Test("a success exactly at slowCallThreshold is fast; one nanosecond more is slow and lowers the limit")
    func slowSuccessBoundary() {
        var atThreshold = self.make()
        atThreshold.update(rtt: .milliseconds(100), inflight: 10, didDrop: false, now: self.now)
        #expect(atThreshold.limit == 11)

        var slow = self.make()
        slow.update(rtt: .milliseconds(100) + .nanoseconds(1), inflight: 10, didDrop: false, now: self.now)
        #expect(slow.limit == 9)
    }

    @Test("a slow success lowers the limit even when the limit is not in use")
    func slowSuccessIgnoresUtilization() {
        var aimd = self.make()
        aimd.update(rtt: .seconds(5), inflight: 1, didDrop: false, now: self.now)
        #expect(aimd.limit == 9)
    }

    @Test("the limit stops at maxLimit and at minLimit")
    func staysWithinBounds() {
        var high = self.make(initial: 19, max: 20)
        high.update(rtt: .zero, inflight: 19, didDrop: false, now: self.now)
        #expect(high.limit == 20)
        high.update(rtt: .zero, inflight: 20, didDrop: false, now: self.now)
        #expect(high.limit == 20)

        var low = self.make(initial: 3, min: 2)
        low.update(rtt: .zero, inflight: 3, didDrop: true, now: self.now)
        #expect(low.limit == 2)
        low.update(rtt: .zero, inflight: 2, didDrop: true, now: self.now)
        #expect(low.limit == 2)
    }

    @Test("an increase larger than the room left stops at maxLimit")
    func largeIncreaseClamps() {
        var aimd = self.make(initial: 18, max: 20, increase: 5)
        aimd.update(rtt: .zero, inflight: 18, didDrop: false, now: self.now)
        #expect(aimd.limit == 20)
    }

    @Test("for any sequence of RTTs, in-flight counts and drops the limit stays within minLimit...maxLimit")
    func boundedUnderRandomSamples() async {
        let sample = zip(
            Gen.duration(in: .zero ... .seconds(3)),
            Gen.int(in: 0...300),
            Gen.bool(0.2)
        )
        await propertyCheck(
            input: Gen.int(in: 1...50), Gen.int(in: 0...100), sample.array(of: 0...300)
        ) { minLimit, extra, samples in
            let maxLimit = minLimit + extra
            var aimd = AIMDLimit(
                initialLimit: (minLimit + maxLimit) / 2,
                minLimit: minLimit,
                maxLimit: maxLimit,
                parameters: .init(slowCallThreshold: .seconds(1), increase: 3, utilizationForIncrease: 0.3)
            )
            for (rtt, inflight, didDrop) in samples {
                let limit = aimd.update(rtt: rtt, inflight: inflight, didDrop: didDrop, now: self.now)
                #expect((minLimit...maxLimit).contains(limit))
                #expect(limit == aimd.limit)
            }
        }
    }
}
