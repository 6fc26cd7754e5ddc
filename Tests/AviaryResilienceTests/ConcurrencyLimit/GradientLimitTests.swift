//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import PropertyBased
import Testing

@Suite("GradientLimit", .timeLimit(.minutes(1)))
struct GradientLimitTests {
    let now = MonotonicInstant(offset: .seconds(3600))

    func make(
        initial: Int = 20,
        min: Int = 4,
        max: Int = 100,
        parameters: GradientLimit.Parameters = .init()
    ) -> GradientLimit {
        GradientLimit(initialLimit: initial, minLimit: min, maxLimit: max, parameters: parameters)
    }

    /// Feeds `count` samples of `rtt`, each with the limit fully in use unless `inflight` is given.
    func feed(_ gradient: inout GradientLimit, rtt: Duration, count: Int, inflight: Int? = nil) {
        for _ in 0..<count {
            gradient.update(rtt: rtt, inflight: inflight ?? gradient.limit, didDrop: false, now: self.now)
        }
    }

    @Test("steady latency with the limit in use grows the limit by queueSize × smoothing per sample")
    func steadyLatencyGrows() {
        var gradient = self.make()
        gradient.update(rtt: .milliseconds(10), inflight: 20, didDrop: false, now: self.now)
        #expect(gradient.limit == 20)  // 20.8
        gradient.update(rtt: .milliseconds(10), inflight: 20, didDrop: false, now: self.now)
        #expect(gradient.limit == 21)  // 21.6
        #expect(gradient.shortTermRTT == .milliseconds(10))
        #expect(gradient.longTermRTT == .milliseconds(10))
    }

    @Test("a sample moves the limit only at inflight ≥ limit × minimumUtilization: 10 of 20 does, 9 does not")
    func utilizationBoundary() {
        let parameters = GradientLimit.Parameters(smoothing: 1)
        var used = self.make(parameters: parameters)
        used.update(rtt: .milliseconds(10), inflight: 10, didDrop: false, now: self.now)
        #expect(used.limit == 24)

        var idle = self.make(parameters: parameters)
        idle.update(rtt: .milliseconds(10), inflight: 9, didDrop: false, now: self.now)
        #expect(idle.limit == 20)
    }

    @Test("the limit decreases when latency rises above tolerance × normal")
    func decreasesWhenLatencyRises() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .milliseconds(10), count: 50, inflight: 1)
        #expect(gradient.limit == 20)

        self.feed(&gradient, rtt: .milliseconds(40), count: 30)
        #expect(gradient.limit < 12)
        // The queue allowance keeps the limit near queueSize / (1 − 0.5) under pressure.
        #expect(gradient.limit >= 8)
    }

    @Test("latency within tolerance of normal does not lower the limit")
    func toleratesModestRise() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .milliseconds(10), count: 50, inflight: 1)
        self.feed(&gradient, rtt: .milliseconds(14), count: 30)
        #expect(gradient.limit > 20)
    }

    @Test("latency of calls while the limit is not in use moves the averages but not the limit")
    func idleSamplesDoNotMoveLimit() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .milliseconds(10), count: 50, inflight: 1)
        self.feed(&gradient, rtt: .milliseconds(40), count: 30, inflight: 9)
        #expect(gradient.limit == 20)
        #expect((gradient.shortTermRTT ?? .zero) > .milliseconds(35))
    }

    @Test("under light load, noisy latency does not move the limit")
    func noiseUnderLightLoad() {
        var gradient = self.make()
        for index in 0..<1000 {
            let rtt: Duration = index % 7 == 0 ? .milliseconds(60) : .milliseconds(5)
            gradient.update(rtt: rtt, inflight: 2, didDrop: false, now: self.now)
        }
        #expect(gradient.limit == 20)
    }

    @Test("the limit recovers when latency falls back")
    func recoversWhenLatencyFalls() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .milliseconds(10), count: 50, inflight: 1)
        self.feed(&gradient, rtt: .milliseconds(40), count: 30)
        let lowered = gradient.limit
        #expect(lowered < 12)

        self.feed(&gradient, rtt: .milliseconds(10), count: 40)
        #expect(gradient.limit > lowered + 20)
    }

    @Test("when latency falls below half of normal, normal follows within a few dozen calls")
    func longAverageFollowsFasterNormal() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .milliseconds(100), count: 50, inflight: 1)
        self.feed(&gradient, rtt: .milliseconds(10), count: 50, inflight: 1)
        // A plain 600-call average would still be above 85 ms.
        let long = gradient.longTermRTT ?? .zero
        #expect(long < .milliseconds(30))
    }

    @Test("a drop multiplies the limit by dropBackoff and is not a latency sample")
    func dropBacksOff() {
        var gradient = self.make()
        gradient.update(rtt: .milliseconds(10), inflight: 1, didDrop: false, now: self.now)
        gradient.update(rtt: .milliseconds(1), inflight: 20, didDrop: true, now: self.now)
        #expect(gradient.limit == 18)
        #expect(gradient.shortTermRTT == .milliseconds(10))
        #expect(gradient.longTermRTT == .milliseconds(10))
    }

    @Test("a dropBackoff of 1 ignores drops")
    func dropBackoffOne() {
        var gradient = self.make(parameters: .init(dropBackoff: 1))
        gradient.update(rtt: .milliseconds(10), inflight: 20, didDrop: true, now: self.now)
        #expect(gradient.limit == 20)
    }

    @Test("zero-length samples (a clock at rest) leave the limit finite and growing")
    func zeroRTT() {
        var gradient = self.make()
        self.feed(&gradient, rtt: .zero, count: 10)
        #expect(gradient.limit > 20)
    }

    @Test("the limit stops at maxLimit and at minLimit")
    func staysWithinBounds() {
        var high = self.make(initial: 20, max: 22)
        self.feed(&high, rtt: .milliseconds(10), count: 100)
        #expect(high.limit == 22)

        var low = self.make(initial: 5, min: 4)
        for _ in 0..<20 {
            low.update(rtt: .milliseconds(10), inflight: 5, didDrop: true, now: self.now)
        }
        #expect(low.limit == 4)
    }

    @Test("for any sequence of RTTs, in-flight counts and drops the limit stays within minLimit...maxLimit")
    func boundedUnderRandomSamples() async {
        let sample = zip(
            Gen.duration(in: .zero ... .seconds(3)),
            Gen.int(in: 0...300),
            Gen.bool(0.2)
        )
        await propertyCheck(
            input: Gen.int(in: 1...50), Gen.int(in: 0...100), Gen.int(in: 1...20), sample.array(of: 0...300)
        ) { minLimit, extra, queueSize, samples in
            let maxLimit = minLimit + extra
            var gradient = GradientLimit(
                initialLimit: minLimit + extra / 3,
                minLimit: minLimit,
                maxLimit: maxLimit,
                parameters: .init(shortWindow: 3, longWindow: 50, queueSize: queueSize, smoothing: 0.5)
            )
            for (rtt, inflight, didDrop) in samples {
                let limit = gradient.update(rtt: rtt, inflight: inflight, didDrop: didDrop, now: self.now)
                #expect((minLimit...maxLimit).contains(limit))
                #expect(limit == gradient.limit)
            }
        }
    }
}
