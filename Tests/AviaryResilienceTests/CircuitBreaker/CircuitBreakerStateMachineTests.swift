//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Testing

@Suite("CircuitBreaker.StateMachine", .timeLimit(.minutes(1)))
struct CircuitBreakerStateMachineTests {
    typealias Machine = CircuitBreaker.StateMachine

    let clock = ManualClock()
    let fast = Duration.milliseconds(1)

    func makeMachine(
        failureRateThreshold: Double = 0.5,
        slowCallRateThreshold: Double = 1,
        slowCallDuration: Duration = .seconds(1),
        window: CircuitBreaker.SlidingWindow = .countBased(10),
        minimumNumberOfCalls: Int = 10,
        wait: Duration = .seconds(30),
        multiplier: Double = 1,
        maxWait: Duration = .seconds(600),
        probes: Int = 3,
        maxHalfOpenWait: Duration? = nil
    ) -> Machine {
        Machine(
            configuration: .init(
                name: "test",
                failureRateThreshold: failureRateThreshold,
                slowCallRateThreshold: slowCallRateThreshold,
                slowCallDuration: slowCallDuration,
                slidingWindow: window,
                minimumNumberOfCalls: minimumNumberOfCalls,
                waitDurationInOpenState: wait,
                waitDurationMultiplier: multiplier,
                maxWaitDurationInOpenState: maxWait,
                permittedNumberOfCallsInHalfOpenState: probes,
                maxWaitDurationInHalfOpenState: maxHalfOpenWait
            )
        )
    }

    /// Records `count` outcomes of `duration`; returns the transitions they caused.
    @discardableResult
    func record(
        _ machine: inout Machine,
        _ outcome: CircuitBreaker.Outcome,
        count: Int = 1,
        duration: Duration? = nil
    ) -> [CircuitBreaker.Transition] {
        var transitions: [CircuitBreaker.Transition] = []
        for _ in 0..<count {
            if let transition = machine.record(outcome, duration: duration ?? self.fast, now: self.clock.now) {
                transitions.append(transition)
            }
        }
        return transitions
    }

    /// A machine opened by one failure at `clock.now` (minimum 1).
    func openedMachine(
        wait: Duration = .seconds(30),
        multiplier: Double = 1,
        maxWait: Duration = .seconds(600),
        probes: Int = 3,
        maxHalfOpenWait: Duration? = nil
    ) -> Machine {
        var machine = self.makeMachine(
            minimumNumberOfCalls: 1,
            wait: wait,
            multiplier: multiplier,
            maxWait: maxWait,
            probes: probes,
            maxHalfOpenWait: maxHalfOpenWait
        )
        self.record(&machine, .failure)
        return machine
    }

    // MARK: Closed

    @Test("a new machine is closed and admits calls")
    func startsClosed() {
        var machine = self.makeMachine()
        #expect(machine.state == .closed)
        #expect(machine.admit(now: self.clock.now) == CircuitBreaker.Admission(.permitted))
    }

    @Test(
        "closed opens exactly when the minimum number of calls reaches the failure threshold",
        arguments: [
            (minimum: 10, failures: 5), (minimum: 4, failures: 2), (minimum: 1, failures: 1), (minimum: 3, failures: 3),
        ]
    )
    func opensAtThresholdWithExactlyMinimumCalls(minimum: Int, failures: Int) {
        var machine = self.makeMachine(window: .countBased(minimum), minimumNumberOfCalls: minimum)
        // Successes first, then failures, so the call that completes the minimum is a failure.
        #expect(self.record(&machine, .success, count: minimum - failures).isEmpty)
        #expect(self.record(&machine, .failure, count: failures - 1).isEmpty)
        #expect(machine.state == .closed)
        let transitions = self.record(&machine, .failure)
        #expect(transitions == [.init(from: .closed, to: .open, reason: .failureRateExceeded)])
        #expect(machine.state == .open)
    }

    @Test("one call before the minimum, even all failures do not open the breaker")
    func oneBeforeMinimumDoesNotOpen() {
        var machine = self.makeMachine(window: .countBased(100), minimumNumberOfCalls: 10)
        #expect(self.record(&machine, .failure, count: 9).isEmpty)
        #expect(machine.state == .closed)
        #expect(machine.metrics(now: self.clock.now).failureRate == nil)
        #expect(self.record(&machine, .failure) == [.init(from: .closed, to: .open, reason: .failureRateExceeded)])
    }

    @Test("a failure rate just below the threshold keeps the breaker closed")
    func belowThresholdStaysClosed() {
        var machine = self.makeMachine(failureRateThreshold: 0.5, window: .countBased(10), minimumNumberOfCalls: 10)
        self.record(&machine, .success, count: 6)
        self.record(&machine, .failure, count: 4)
        #expect(machine.state == .closed)
        #expect(machine.metrics(now: self.clock.now).failureRate == 0.4)
        // The 11th call pushes the oldest success out: 5 of 10.
        self.record(&machine, .failure)
        #expect(machine.state == .open)
    }

    @Test("a decimal threshold compares with >= exactly (3 of 10 at 0.3)")
    func decimalThresholdIsInclusive() {
        var machine = self.makeMachine(failureRateThreshold: 0.3, window: .countBased(10), minimumNumberOfCalls: 10)
        self.record(&machine, .success, count: 7)
        self.record(&machine, .failure, count: 2)
        #expect(machine.state == .closed)
        self.record(&machine, .failure)
        #expect(machine.state == .open)
    }

    @Test("a minimum above a count-based window's size is lowered to the size")
    func minimumCappedAtWindowSize() {
        var machine = self.makeMachine(window: .countBased(5), minimumNumberOfCalls: 100)
        #expect(self.record(&machine, .failure, count: 4).isEmpty)
        #expect(self.record(&machine, .failure).count == 1)
        #expect(machine.state == .open)
    }

    @Test("a count-based window judges only the last N calls")
    func countWindowSlides() {
        var machine = self.makeMachine(window: .countBased(4), minimumNumberOfCalls: 4)
        self.record(&machine, .failure)
        self.record(&machine, .success, count: 3)  // F S S S: 25 %
        #expect(machine.metrics(now: self.clock.now).failureRate == 0.25)
        self.record(&machine, .success)  // S S S S: the failure has left
        #expect(machine.metrics(now: self.clock.now).numberOfFailedCalls == 0)
        self.record(&machine, .failure)  // S S S F
        #expect(machine.state == .closed)
        self.record(&machine, .failure)  // S S F F: 50 %
        #expect(machine.state == .open)
    }

    @Test("the slow call rate opens the breaker; a call of exactly slowCallDuration is not slow")
    func slowCallRateOpens() {
        var machine = self.makeMachine(
            slowCallRateThreshold: 0.5,
            slowCallDuration: .seconds(1),
            window: .countBased(4),
            minimumNumberOfCalls: 4
        )
        self.record(&machine, .success, count: 2, duration: .seconds(1))
        self.record(&machine, .success, duration: .milliseconds(1001))
        #expect(machine.state == .closed)
        #expect(machine.metrics(now: self.clock.now).slowCallRate == nil)
        let transitions = self.record(&machine, .success, duration: .seconds(2))
        #expect(transitions == [.init(from: .closed, to: .open, reason: .slowCallRateExceeded)])
        let metrics = machine.metrics(now: self.clock.now)
        #expect(metrics.numberOfSlowCalls == 2)
        #expect(metrics.numberOfSlowSuccessfulCalls == 2)
        #expect(metrics.numberOfFailedCalls == 0)
    }

    @Test("a slow failure counts as failed and as slow")
    func slowFailureCountsTwice() {
        var machine = self.makeMachine(window: .countBased(10), minimumNumberOfCalls: 10)
        self.record(&machine, .failure, duration: .seconds(5))
        self.record(&machine, .success, duration: .seconds(5))
        let metrics = machine.metrics(now: self.clock.now)
        #expect(metrics.numberOfFailedCalls == 1)
        #expect(metrics.numberOfSlowCalls == 2)
        #expect(metrics.numberOfSlowFailedCalls == 1)
        #expect(metrics.numberOfSlowSuccessfulCalls == 1)
        #expect(metrics.numberOfSuccessfulCalls == 1)
    }

    @Test("ignored outcomes count neither as success nor as failure")
    func ignoredOutcomesDoNotCount() {
        var machine = self.makeMachine(window: .countBased(10), minimumNumberOfCalls: 2)
        #expect(self.record(&machine, .ignored, count: 50).isEmpty)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 0)
        self.record(&machine, .failure)
        self.record(&machine, .ignored, count: 5)
        #expect(machine.state == .closed)
        self.record(&machine, .failure)
        #expect(machine.state == .open)
    }

    // MARK: Time-based window

    @Test("a time-based window forgets calls once their second leaves the window")
    func timeWindowForgets() {
        var machine = self.makeMachine(window: .timeBased(seconds: 10), minimumNumberOfCalls: 4)
        self.record(&machine, .failure, count: 3)
        self.clock.advance(by: .seconds(10))  // the first second has left (window: the last 10 s)
        self.record(&machine, .failure)
        #expect(machine.state == .closed)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 1)
    }

    @Test("a time-based window still holds calls from the oldest second of the window")
    func timeWindowKeepsLastSeconds() {
        var machine = self.makeMachine(window: .timeBased(seconds: 10), minimumNumberOfCalls: 4)
        self.record(&machine, .failure, count: 3)
        self.clock.advance(by: .milliseconds(9999))  // still within the 10th second
        self.record(&machine, .failure)
        #expect(machine.state == .open)
    }

    @Test("a time-based window's snapshot drops old seconds without a new call")
    func timeWindowSnapshotExpires() {
        var machine = self.makeMachine(window: .timeBased(seconds: 3), minimumNumberOfCalls: 100)
        self.record(&machine, .failure, count: 2)
        self.clock.advance(by: .seconds(1))
        self.record(&machine, .success, count: 3)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 5)
        self.clock.advance(by: .seconds(2))
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 3)
        self.clock.advance(by: .seconds(1))
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 0)
    }

    @Test("expiry of old successes can raise the failure rate, judged on the next call")
    func timeWindowExpiryRaisesRate() {
        var machine = self.makeMachine(window: .timeBased(seconds: 2), minimumNumberOfCalls: 2)
        self.record(&machine, .success, count: 3)
        self.clock.advance(by: .seconds(1))
        self.record(&machine, .failure)  // 1 of 4
        #expect(machine.state == .closed)
        self.clock.advance(by: .seconds(1))
        self.record(&machine, .success)  // the 3 successes left: F S, 50 %
        #expect(machine.state == .open)
    }

    // MARK: Open

    @Test("an open breaker rejects with the remaining wait as retryAfter")
    func openRejectsWithRemainingWait() {
        var machine = self.openedMachine(wait: .seconds(30))
        #expect(machine.admit(now: self.clock.now).decision == .rejected(retryAfter: .seconds(30)))
        self.clock.advance(by: .seconds(12))
        #expect(machine.admit(now: self.clock.now).decision == .rejected(retryAfter: .seconds(18)))
        #expect(machine.remainingOpenWait(now: self.clock.now) == .seconds(18))
        #expect(machine.metrics(now: self.clock.now).numberOfNotPermittedCalls == 2)
    }

    @Test("an open breaker ignores late outcomes of calls admitted before it opened")
    func openIgnoresOutcomes() {
        var machine = self.makeMachine(minimumNumberOfCalls: 1)
        let generation = machine.generation
        self.record(&machine, .failure)
        #expect(machine.record(.success, duration: self.fast, now: self.clock.now, generation: generation) == nil)
        #expect(machine.record(.failure, duration: self.fast, now: self.clock.now) == nil)
        #expect(machine.state == .open)
    }

    @Test("one nanosecond before the wait has passed the breaker still rejects")
    func waitBoundary() {
        var machine = self.openedMachine(wait: .seconds(30))
        self.clock.advance(by: .seconds(30) - .nanoseconds(1))
        #expect(machine.admit(now: self.clock.now).decision == .rejected(retryAfter: .nanoseconds(1)))
        #expect(machine.state == .open)
        self.clock.advance(by: .nanoseconds(1))
        let admission = machine.admit(now: self.clock.now)
        #expect(admission.decision == .probe)
        #expect(admission.transition == .init(from: .open, to: .halfOpen, reason: .openWaitElapsed))
        #expect(machine.state == .halfOpen)
    }

    // MARK: Half-open

    @Test("half-open admits exactly the permitted probes and rejects the next", arguments: [1, 3, 10])
    func halfOpenAdmitsExactlyNProbes(probes: Int) {
        var machine = self.openedMachine(probes: probes)
        self.clock.advance(by: .seconds(30))
        for _ in 0..<probes {
            #expect(machine.admit(now: self.clock.now).decision == .probe)
        }
        #expect(machine.admit(now: self.clock.now) == CircuitBreaker.Admission(.rejected(retryAfter: nil)))
        #expect(machine.state == .halfOpen)
    }

    @Test("when every probe succeeds the breaker closes with an empty window")
    func probesSucceedCloses() {
        var machine = self.openedMachine(probes: 3)
        self.clock.advance(by: .seconds(30))
        for _ in 0..<3 { _ = machine.admit(now: self.clock.now) }
        #expect(self.record(&machine, .success, count: 2).isEmpty)
        #expect(machine.state == .halfOpen)
        #expect(self.record(&machine, .success) == [.init(from: .halfOpen, to: .closed, reason: .probesSucceeded)])
        #expect(machine.metrics(now: self.clock.now) == CircuitBreaker.Metrics())
        #expect(machine.admit(now: self.clock.now).decision == .permitted)
    }

    @Test("probes below the failure threshold close the breaker (1 of 3 at 0.5)")
    func probesBelowThresholdClose() {
        var machine = self.openedMachine(probes: 3)
        self.clock.advance(by: .seconds(30))
        for _ in 0..<3 { _ = machine.admit(now: self.clock.now) }
        self.record(&machine, .failure)
        self.record(&machine, .success, count: 2)
        #expect(machine.state == .closed)
    }

    @Test("failing probes re-open the breaker with an exponentially grown, capped wait")
    func failingProbesReopenWithGrownWait() {
        var machine = self.openedMachine(wait: .seconds(10), multiplier: 2, maxWait: .seconds(35), probes: 1)
        var waits: [Duration] = []
        for _ in 0..<4 {
            guard case .rejected(let retryAfter?) = machine.admit(now: self.clock.now).decision else {
                Issue.record("expected an open breaker")
                return
            }
            waits.append(retryAfter)
            self.clock.advance(by: retryAfter)
            #expect(machine.admit(now: self.clock.now).decision == .probe)
            let transitions = self.record(&machine, .failure)
            #expect(transitions == [.init(from: .halfOpen, to: .open, reason: .failureRateExceeded)])
        }
        #expect(waits == [.seconds(10), .seconds(20), .seconds(35), .seconds(35)])
    }

    @Test("closing resets the grown wait to waitDurationInOpenState")
    func closingResetsGrowth() {
        var machine = self.openedMachine(wait: .seconds(10), multiplier: 3, probes: 1)
        self.clock.advance(by: .seconds(10))
        _ = machine.admit(now: self.clock.now)
        self.record(&machine, .failure)  // re-opened: 30 s
        #expect(machine.remainingOpenWait(now: self.clock.now) == .seconds(30))
        self.clock.advance(by: .seconds(30))
        _ = machine.admit(now: self.clock.now)
        self.record(&machine, .success)
        #expect(machine.state == .closed)
        self.record(&machine, .failure)  // opens again: back to 10 s
        #expect(machine.remainingOpenWait(now: self.clock.now) == .seconds(10))
    }

    @Test("a slow probe set re-opens the breaker on the slow call rate")
    func slowProbesReopen() {
        var machine = self.makeMachine(slowCallRateThreshold: 0.5, minimumNumberOfCalls: 1, probes: 2)
        self.record(&machine, .failure)
        self.clock.advance(by: .seconds(30))
        _ = machine.admit(now: self.clock.now)
        _ = machine.admit(now: self.clock.now)
        self.record(&machine, .success)
        let transitions = self.record(&machine, .success, duration: .seconds(2))
        #expect(transitions == [.init(from: .halfOpen, to: .open, reason: .slowCallRateExceeded)])
    }

    @Test("an ignored probe frees its slot for another probe")
    func ignoredProbeFreesSlot() {
        var machine = self.openedMachine(probes: 2)
        self.clock.advance(by: .seconds(30))
        _ = machine.admit(now: self.clock.now)
        _ = machine.admit(now: self.clock.now)
        #expect(!machine.admit(now: self.clock.now).isPermitted)
        self.record(&machine, .ignored)
        #expect(machine.admit(now: self.clock.now).decision == .probe)
        #expect(!machine.admit(now: self.clock.now).isPermitted)
        self.record(&machine, .success, count: 2)
        #expect(machine.state == .closed)
    }

    @Test("a call admitted while closed does not count as a probe when it ends half-open")
    func staleOutcomeIsNotAProbe() {
        var machine = self.openedMachine(probes: 1)
        // Admitted in the closed generation of a fresh machine, simulated by the generation before opening.
        let stale = machine.generation &- 1
        self.clock.advance(by: .seconds(30))
        let probeGeneration = machine.generation &+ 1
        #expect(machine.admit(now: self.clock.now).decision == .probe)
        #expect(machine.generation == probeGeneration)
        #expect(machine.record(.success, duration: self.fast, now: self.clock.now, generation: stale) == nil)
        #expect(machine.state == .halfOpen)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 0)
        let transition = machine.record(.success, duration: self.fast, now: self.clock.now, generation: probeGeneration)
        #expect(transition?.to == .closed)
    }

    @Test("a half-open breaker whose probes take too long opens again with a grown wait")
    func halfOpenMaxWait() {
        var machine = self.openedMachine(wait: .seconds(10), multiplier: 2, probes: 2, maxHalfOpenWait: .seconds(5))
        self.clock.advance(by: .seconds(10))
        _ = machine.admit(now: self.clock.now)
        self.clock.advance(by: .seconds(5) - .nanoseconds(1))
        #expect(machine.admit(now: self.clock.now).decision == .probe)
        self.clock.advance(by: .nanoseconds(1))
        let admission = machine.admit(now: self.clock.now)
        #expect(admission.transition == .init(from: .halfOpen, to: .open, reason: .halfOpenWaitExceeded))
        #expect(admission.decision == .rejected(retryAfter: .seconds(20)))
        // The probes that finish late are dropped.
        #expect(machine.record(.success, duration: self.fast, now: self.clock.now) == nil)
        #expect(machine.state == .open)
    }

    @Test("a probe recorded after the half-open wait opens the breaker instead of counting")
    func lateProbeRecordExpires() {
        var machine = self.openedMachine(probes: 1, maxHalfOpenWait: .seconds(5))
        self.clock.advance(by: .seconds(30))
        _ = machine.admit(now: self.clock.now)
        self.clock.advance(by: .seconds(5))
        let transition = machine.record(.success, duration: .seconds(5), now: self.clock.now)
        #expect(transition == .init(from: .halfOpen, to: .open, reason: .halfOpenWaitExceeded))
    }

    // MARK: Manual control

    @Test("forced open rejects without retryAfter until changed by hand")
    func forcedOpen() {
        var machine = self.makeMachine()
        let transition = machine.transition(to: .forcedOpen, now: self.clock.now)
        #expect(transition == .init(from: .closed, to: .forcedOpen, reason: .manual))
        self.clock.advance(by: .seconds(3600))
        #expect(machine.admit(now: self.clock.now).decision == .rejected(retryAfter: nil))
        #expect(machine.transition(to: .forcedOpen, now: self.clock.now) == nil)
        #expect(machine.transition(to: .closed, now: self.clock.now)?.to == .closed)
        #expect(machine.admit(now: self.clock.now).decision == .permitted)
    }

    @Test("disabled admits every call and records nothing")
    func disabled() {
        var machine = self.makeMachine(minimumNumberOfCalls: 1)
        _ = machine.transition(to: .disabled, now: self.clock.now)
        for _ in 0..<20 {
            #expect(machine.admit(now: self.clock.now).decision == .permitted)
            #expect(machine.record(.failure, duration: self.fast, now: self.clock.now) == nil)
        }
        #expect(machine.state == .disabled)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 0)
    }

    @Test("manual transitions to open and half-open start a wait and new probes")
    func manualOpenAndHalfOpen() {
        var machine = self.makeMachine(wait: .seconds(7), probes: 1)
        #expect(machine.transition(to: .open, now: self.clock.now)?.reason == .manual)
        #expect(machine.admit(now: self.clock.now).decision == .rejected(retryAfter: .seconds(7)))
        let transition = machine.transition(to: .halfOpen, now: self.clock.now)
        #expect(transition == .init(from: .open, to: .halfOpen, reason: .manual))
        #expect(machine.admit(now: self.clock.now).decision == .probe)
        #expect(!machine.admit(now: self.clock.now).isPermitted)
    }

    @Test("reset closes with an empty window from any state", arguments: CircuitBreaker.State.allCases)
    func resetFromAnyState(state: CircuitBreaker.State) {
        var machine = self.makeMachine(window: .countBased(10), minimumNumberOfCalls: 10)
        self.record(&machine, .failure, count: 3)
        _ = machine.transition(to: state, now: self.clock.now)
        let transition = machine.reset()
        #expect(transition == .init(from: state, to: .closed, reason: .reset))
        #expect(machine.state == .closed)
        #expect(machine.metrics(now: self.clock.now).numberOfBufferedCalls == 0)
    }

    @Test("every transition starts a new generation")
    func generations() {
        var machine = self.openedMachine(probes: 1)
        let afterOpen = machine.generation
        self.clock.advance(by: .seconds(30))
        _ = machine.admit(now: self.clock.now)
        #expect(machine.generation != afterOpen)
        let halfOpen = machine.generation
        self.record(&machine, .success)
        #expect(machine.generation != halfOpen)
    }

    // MARK: Metrics and configuration

    @Test("metrics report rates only from the minimum number of calls on")
    func metricsRates() {
        var machine = self.makeMachine(window: .countBased(10), minimumNumberOfCalls: 4)
        self.record(&machine, .failure)
        self.record(&machine, .success, count: 2)
        var metrics = machine.metrics(now: self.clock.now)
        #expect(metrics.failureRate == nil)
        #expect(metrics.slowCallRate == nil)
        #expect(metrics.numberOfBufferedCalls == 3)
        self.record(&machine, .success)
        metrics = machine.metrics(now: self.clock.now)
        #expect(metrics.failureRate == 0.25)
        #expect(metrics.slowCallRate == 0)
        #expect(metrics.numberOfSuccessfulCalls == 3)
    }

    @Test("half-open metrics are those of the probes")
    func halfOpenMetrics() {
        var machine = self.openedMachine(probes: 4)
        self.clock.advance(by: .seconds(30))
        for _ in 0..<4 { _ = machine.admit(now: self.clock.now) }
        self.record(&machine, .success)
        self.record(&machine, .failure)
        let metrics = machine.metrics(now: self.clock.now)
        #expect(metrics.numberOfBufferedCalls == 2)
        #expect(metrics.numberOfFailedCalls == 1)
        #expect(metrics.failureRate == nil)
    }

    @Test("the open wait grows by the multiplier and stops at the cap")
    func openWaitGrowth() {
        let configuration = CircuitBreaker.Configuration(
            waitDurationInOpenState: .seconds(1),
            waitDurationMultiplier: 1.5,
            maxWaitDurationInOpenState: .seconds(3)
        )
        var machine = Machine(configuration: configuration)
        var waits: [Duration?] = []
        for _ in 0..<5 {
            _ = machine.transition(to: .open, now: self.clock.now)
            waits.append(machine.remainingOpenWait(now: self.clock.now))
            _ = machine.transition(to: .halfOpen, now: self.clock.now)
        }
        #expect(waits == [.seconds(1), .milliseconds(1500), .milliseconds(2250), .seconds(3), .seconds(3)])
    }

    @Test("the defaults are Resilience4j's")
    func defaults() {
        let configuration = CircuitBreaker.Configuration()
        #expect(configuration.failureRateThreshold == 0.5)
        #expect(configuration.slowCallRateThreshold == 1)
        #expect(configuration.slowCallDuration == .seconds(60))
        #expect(configuration.slidingWindow == .countBased(100))
        #expect(configuration.minimumNumberOfCalls == 100)
        #expect(configuration.waitDurationInOpenState == .seconds(60))
        #expect(configuration.permittedNumberOfCallsInHalfOpenState == 10)
        #expect(configuration.maxWaitDurationInHalfOpenState == nil)
        #expect(configuration.recordResult == nil)
        #expect(configuration.ignoreError(CancellationError()))
        #expect(!configuration.ignoreError(CircuitBreakerTestError()))
        #expect(configuration.recordError(CircuitBreakerTestError()))
    }
}

struct CircuitBreakerTestError: Error, Equatable {}
