//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import PropertyBased
import Testing

@Suite("CircuitBreaker properties", .timeLimit(.minutes(1)))
struct CircuitBreakerPropertyTests {
    /// A random breaker configuration; thresholds are multiples of 0.05 so that rates often land
    /// exactly on them.
    struct Setup: Sendable, CustomStringConvertible {
        var timeBased: Bool
        var size: Int
        var minimum: Int
        var failureRateThreshold: Double
        var slowCallRateThreshold: Double
        var probes: Int

        var configuration: CircuitBreaker.Configuration {
            CircuitBreaker.Configuration(
                name: "property",
                failureRateThreshold: self.failureRateThreshold,
                slowCallRateThreshold: self.slowCallRateThreshold,
                slowCallDuration: .seconds(1),
                slidingWindow: self.timeBased ? .timeBased(seconds: self.size) : .countBased(self.size),
                minimumNumberOfCalls: self.minimum,
                waitDurationInOpenState: .seconds(5),
                waitDurationMultiplier: 2,
                maxWaitDurationInOpenState: .seconds(40),
                permittedNumberOfCallsInHalfOpenState: self.probes
            )
        }

        /// The minimum the breaker applies: a count-based window lowers it to its size.
        var effectiveMinimum: Int { self.timeBased ? self.minimum : min(self.minimum, self.size) }

        var description: String {
            "\(self.timeBased ? "time" : "count")(\(self.size)) min \(self.minimum) "
                + "failure \(self.failureRateThreshold) slow \(self.slowCallRateThreshold) probes \(self.probes)"
        }
    }

    /// One call: the time that passes before it, its outcome, and whether it is slow.
    struct Step: Sendable, CustomStringConvertible {
        var advance: Duration
        var outcome: CircuitBreaker.Outcome
        var slow: Bool

        var duration: Duration { self.slow ? .seconds(2) : .milliseconds(3) }

        var description: String { "+\(self.advance) \(self.outcome)\(self.slow ? " slow" : "")" }
    }

    static let setups = zip(
        Gen.bool,
        Gen.int(in: 1...12),
        Gen.int(in: 1...15),
        zip(Gen.int(in: 1...20), Gen.int(in: 1...20)),
        Gen.int(in: 1...3)
    ).map { values in
        Setup(
            timeBased: values.0,
            size: values.1,
            minimum: values.2,
            failureRateThreshold: Double(values.3.0) / 20,
            slowCallRateThreshold: Double(values.3.1) / 20,
            probes: values.4
        )
    }

    static let steps = zip(Gen.int(in: 0...2400), Gen.int(in: 0...9), Gen.bool(0.25)).map { values in
        Step(
            // About half the calls happen in the same instant as the previous one.
            advance: .milliseconds(max(0, values.0 - 1200)),
            outcome: values.1 < 6 ? .success : values.1 < 9 ? .failure : .ignored,
            slow: values.2
        )
    }.array(of: 1...150)

    /// The straightforward model: every counted call with its second; the window is recomputed
    /// from scratch each time.
    struct Recomputation {
        let setup: Setup
        var calls: [(second: Int64, failed: Bool, slow: Bool)] = []

        mutating func record(_ step: Step, at now: MonotonicInstant) {
            guard step.outcome != .ignored else { return }
            self.calls.append((Self.second(now), step.outcome == .failure, step.slow))
        }

        func window(at now: MonotonicInstant) -> [(second: Int64, failed: Bool, slow: Bool)] {
            if self.setup.timeBased {
                let current = Self.second(now)
                return self.calls.filter { $0.second > current - Int64(self.setup.size) }
            }
            return Array(self.calls.suffix(self.setup.size))
        }

        static func second(_ instant: MonotonicInstant) -> Int64 {
            instant.offset.components.seconds
        }
    }

    @Test("closed: never opens below the minimum, and judges exactly what a recomputation over the window says")
    func closedStateMatchesRecomputation() async {
        await propertyCheck(count: 300, input: Self.setups, Self.steps) { setup, steps in
            let clock = ManualClock()
            var machine = CircuitBreaker.StateMachine(configuration: setup.configuration)
            var model = Recomputation(setup: setup)
            for step in steps {
                clock.advance(by: step.advance)
                let now = clock.now
                let transition = machine.record(step.outcome, duration: step.duration, now: now)
                model.record(step, at: now)

                let window = model.window(at: now)
                let failed = window.filter(\.failed).count
                let slow = window.filter(\.slow).count
                let judged = window.count >= setup.effectiveMinimum
                let failureRate = Double(failed) / Double(window.count)
                let slowCallRate = Double(slow) / Double(window.count)
                // Only a recorded call is judged (an ignored one is not recorded at all).
                let shouldOpen =
                    step.outcome != .ignored && judged
                    && (failureRate >= setup.failureRateThreshold || slowCallRate >= setup.slowCallRateThreshold)
                if !judged {
                    #expect(transition == nil, "opened with \(window.count) calls, minimum \(setup.effectiveMinimum)")
                }
                #expect((transition?.to == .open) == shouldOpen, "\(setup): \(steps)")
                if transition != nil { break }

                let metrics = machine.metrics(now: now)
                #expect(metrics.numberOfBufferedCalls == window.count)
                #expect(metrics.numberOfFailedCalls == failed)
                #expect(metrics.numberOfSlowCalls == slow)
                #expect(metrics.failureRate == (judged ? failureRate : nil))
                #expect(metrics.slowCallRate == (judged ? slowCallRate : nil))
                #expect(machine.state == .closed)
            }
        }
    }

    @Test("the breaker (with its lock-free path) decides exactly as its state machine, through every state")
    func breakerMatchesStateMachine() async {
        await propertyCheck(count: 200, input: Self.setups, Self.steps) { setup, steps in
            let clock = ManualClock()
            let breaker = CircuitBreaker(setup.configuration, clock: clock)
            var machine = CircuitBreaker.StateMachine(configuration: setup.configuration)
            for step in steps {
                // Let the open waits pass now and then.
                clock.advance(by: step.advance * 4)
                let admission = machine.admit(now: clock.now)
                let generation = machine.generation
                var admitted = false
                do {
                    let permit = try breaker.acquirePermission()
                    admitted = true
                    permit.record(step.outcome, duration: step.duration)
                    if admission.isPermitted {
                        let now = clock.now
                        _ = machine.record(step.outcome, duration: step.duration, now: now, generation: generation)
                    }
                } catch {
                    if case .rejected(let retryAfter) = admission.decision {
                        #expect((error as? ResilienceError)?.retryAfter == retryAfter)
                    }
                }
                #expect(admitted == admission.isPermitted, "\(setup): \(steps)")
                #expect(breaker.state == machine.state, "\(setup): \(steps)")
                #expect(breaker.metrics == machine.metrics(now: clock.now), "\(setup): \(steps)")
            }
        }
    }
}
