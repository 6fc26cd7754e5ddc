//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import InMemoryTracing
import MetricsTestKit
import Synchronization
import Testing
import Tracing

@testable import AviaryResilience

@Suite("CircuitBreaker", .timeLimit(.minutes(1)))
struct CircuitBreakerTests {
    let clock = ManualClock()
    let metrics = TestMetrics()

    func makeBreaker(
        failureRateThreshold: Double = 0.5,
        slowCallRateThreshold: Double = 1,
        window: CircuitBreaker.SlidingWindow = .countBased(4),
        minimumNumberOfCalls: Int = 4,
        wait: Duration = .seconds(30),
        multiplier: Double = 1,
        probes: Int = 2,
        recordError: @escaping @Sendable (any Error) -> Bool = CircuitBreaker.Configuration.recordAllErrors,
        ignoreError: @escaping @Sendable (any Error) -> Bool = CircuitBreaker.Configuration.ignoreCancellation,
        recordResult: (@Sendable (any Sendable) -> Bool)? = nil
    ) -> CircuitBreaker {
        CircuitBreaker(
            .init(
                name: "test",
                failureRateThreshold: failureRateThreshold,
                slowCallRateThreshold: slowCallRateThreshold,
                slowCallDuration: .seconds(1),
                slidingWindow: window,
                minimumNumberOfCalls: minimumNumberOfCalls,
                waitDurationInOpenState: wait,
                waitDurationMultiplier: multiplier,
                permittedNumberOfCallsInHalfOpenState: probes,
                recordError: recordError,
                ignoreError: ignoreError,
                recordResult: recordResult
            ),
            clock: self.clock,
            metricsFactory: self.metrics
        )
    }

    /// Runs one call through `breaker` that takes `duration` on the manual clock and then returns
    /// or throws `error`. Returns the error the breaker threw, if any.
    @discardableResult
    func call(
        _ breaker: CircuitBreaker,
        throwing error: (any Error)? = nil,
        taking duration: Duration = .zero,
        context: PolicyContext = PolicyContext()
    ) async -> (any Error)? {
        let clock = self.clock
        do {
            _ = try await breaker.execute(context) { _ in
                if duration > .zero { clock.advance(by: duration) }
                if let error { throw error }
                return 1
            }
            return nil
        } catch {
            return error
        }
    }

    func succeed(_ breaker: CircuitBreaker, count: Int = 1) async {
        for _ in 0..<count { await self.call(breaker) }
    }

    func fail(_ breaker: CircuitBreaker, count: Int = 1) async {
        for _ in 0..<count { await self.call(breaker, throwing: CircuitBreakerTestError()) }
    }

    func counter(_ outcome: String) -> Int64 {
        let dimensions = [("policy", "circuit_breaker"), ("name", "test"), ("outcome", outcome)]
        return (try? self.metrics.expectCounter("aviary_resilience_calls_total", dimensions).totalValue) ?? 0
    }

    // MARK: Closure API

    @Test("execute opens at the threshold, then rejects without running the operation")
    func executeOpensAndRejects() async throws {
        let breaker = self.makeBreaker()
        await self.succeed(breaker, count: 2)
        await self.fail(breaker)
        #expect(breaker.state == .closed)
        await self.fail(breaker)
        #expect(breaker.state == .open)

        self.clock.advance(by: .seconds(10))
        let ran = Atomic(false)
        let error = await #expect(throws: ResilienceError.self) {
            try await breaker.run { ran.store(true, ordering: .relaxed) }
        }
        let operationRan = ran.load(ordering: .relaxed)
        #expect(!operationRan)
        #expect(error?.code == .circuitOpen)
        #expect(error?.retryAfter == .seconds(20))
        #expect(error?.policyName == "test")
        #expect(self.counter("rejected") == 1)
        #expect(self.counter("failure") == 2)
        #expect(self.counter("success") == 2)
    }

    @Test(
        "rejections from inner policies never count as failures, whatever ignoreError says",
        arguments: [ResilienceError.Code.circuitOpen, .bulkheadFull, .rateLimited, .loadShed]
    )
    func innerRejectionsDoNotCount(code: ResilienceError.Code) async {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1, ignoreError: { _ in false })
        for _ in 0..<10 {
            await self.call(breaker, throwing: ResilienceError(code, "inner", policyName: "inner"))
        }
        #expect(breaker.state == .closed)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
    }

    @Test("an inner timeout is a failure, not a rejection")
    func innerTimeoutCounts() async {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1)
        await self.call(breaker, throwing: ResilienceError(.timedOut, "slow"))
        #expect(breaker.state == .open)
    }

    @Test("cancellation is ignored by default")
    func cancellationIgnored() async {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1)
        for _ in 0..<5 { await self.call(breaker, throwing: CancellationError()) }
        #expect(breaker.state == .closed)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
    }

    @Test("ignoreError and recordError classify errors")
    func predicates() async {
        struct ClientError: Error {}
        let breaker = self.makeBreaker(
            window: .countBased(10),
            minimumNumberOfCalls: 3,
            recordError: { !($0 is ClientError) },
            ignoreError: { $0 is CircuitBreakerTestError }
        )
        await self.call(breaker, throwing: ClientError())  // a success
        await self.call(breaker, throwing: CircuitBreakerTestError())  // ignored
        await self.call(breaker, throwing: CancellationError())  // a failure: the default is replaced
        let metrics = breaker.metrics
        #expect(metrics.numberOfBufferedCalls == 2)
        #expect(metrics.numberOfFailedCalls == 1)
        #expect(metrics.numberOfSuccessfulCalls == 1)
    }

    @Test("recordResult turns returned values into failures")
    func resultPredicate() async throws {
        let breaker = self.makeBreaker(
            minimumNumberOfCalls: 2,
            recordResult: { ($0 as? Int).map { $0 >= 500 } ?? false }
        )
        #expect(try await breaker.run { 200 } == 200)
        #expect(breaker.metrics.numberOfFailedCalls == 0)
        #expect(try await breaker.run { 503 } == 503)
        #expect(breaker.state == .open)
    }

    @Test("slow calls through execute open the breaker on the slow call rate")
    func slowCallsOpen() async {
        let breaker = self.makeBreaker(slowCallRateThreshold: 0.5)
        await self.call(breaker, taking: .seconds(2))
        await self.call(breaker, taking: .seconds(1))  // exactly slowCallDuration: not slow
        await self.call(breaker)
        #expect(breaker.state == .closed)
        await self.call(breaker, taking: .milliseconds(1500))
        #expect(breaker.state == .open)
        #expect(breaker.metrics.numberOfSlowCalls == 2)
    }

    @Test("after the wait the breaker probes, closes when the probes succeed")
    func probesClose() async {
        let breaker = self.makeBreaker(probes: 2)
        await self.fail(breaker, count: 4)
        self.clock.advance(by: .seconds(30))
        #expect(breaker.state == .open)  // lazy: no call yet
        await self.succeed(breaker)
        #expect(breaker.state == .halfOpen)
        await self.succeed(breaker)
        #expect(breaker.state == .closed)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
    }

    @Test("a failing probe re-opens the breaker with a grown wait")
    func failingProbeReopens() async {
        let breaker = self.makeBreaker(wait: .seconds(10), multiplier: 2, probes: 1)
        await self.fail(breaker, count: 4)
        self.clock.advance(by: .seconds(10))
        await self.fail(breaker)
        #expect(breaker.state == .open)
        let error = await self.call(breaker) as? ResilienceError
        #expect(error?.retryAfter == .seconds(20))
    }

    // MARK: Permit API

    @Test("permits: exactly N probes while they are in flight, the N+1th is rejected")
    func permitsInHalfOpen() throws {
        let breaker = self.makeBreaker(probes: 3)
        breaker.transition(to: .open)
        self.clock.advance(by: .seconds(30))
        let first = try breaker.acquirePermission()
        let second = try breaker.acquirePermission()
        let third = try breaker.acquirePermission()
        #expect(breaker.state == .halfOpen)
        let error = #expect(throws: ResilienceError.self) { _ = try breaker.acquirePermission() }
        #expect(error?.code == .circuitOpen)
        #expect(error?.retryAfter == nil)
        first.record(.success)
        second.record(.success)
        #expect(breaker.state == .halfOpen)
        third.record(.success)
        #expect(breaker.state == .closed)
    }

    @Test("a permit dropped without an outcome frees its probe slot")
    func droppedPermitFreesSlot() throws {
        let breaker = self.makeBreaker(probes: 1)
        breaker.transition(to: .halfOpen)
        do {
            _ = try breaker.acquirePermission()
        }
        let probe = try breaker.acquirePermission()
        #expect(throws: ResilienceError.self) { _ = try breaker.acquirePermission() }
        probe.record(.failure)
        #expect(breaker.state == .open)
    }

    @Test("permits record failures, errors and given durations")
    func permitOutcomes() throws {
        let breaker = self.makeBreaker(
            slowCallRateThreshold: 0.75,
            window: .countBased(10),
            minimumNumberOfCalls: 4
        )
        try breaker.acquirePermission().record(.failure)
        try breaker.acquirePermission().record(error: CancellationError())
        try breaker.acquirePermission().record(error: CircuitBreakerTestError(), duration: .seconds(5))
        try breaker.acquirePermission().record(.success, duration: .seconds(2))
        let permit = try breaker.acquirePermission()
        self.clock.advance(by: .seconds(3))
        permit.record(.success)
        let metrics = breaker.metrics
        #expect(metrics.numberOfBufferedCalls == 4)
        #expect(metrics.numberOfFailedCalls == 2)
        #expect(metrics.numberOfSlowCalls == 3)
        #expect(breaker.state == .open)
        let error = #expect(throws: ResilienceError.self) { _ = try breaker.acquirePermission() }
        #expect(error?.retryAfter == .seconds(30))
    }

    @Test("an outcome of a call admitted before a transition is dropped")
    func staleOutcomeDropped() throws {
        let breaker = self.makeBreaker(probes: 1)
        let closedPermit = try breaker.acquirePermission()
        breaker.transition(to: .halfOpen)
        closedPermit.record(.failure)
        #expect(breaker.state == .halfOpen)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
        // A closed call that succeeds quickly (the lock-free path) is dropped as well.
        breaker.reset()
        let fastPermit = try breaker.acquirePermission()
        breaker.forceOpen()
        breaker.reset()
        fastPermit.record(.success)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
    }

    // MARK: Manual control

    @Test("forced open rejects, disabled admits and records nothing, reset closes")
    func manualControl() async {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1)
        breaker.forceOpen()
        #expect(breaker.state == .forcedOpen)
        let error = await self.call(breaker) as? ResilienceError
        #expect(error?.code == .circuitOpen)
        #expect(error?.retryAfter == nil)
        breaker.disable()
        await self.fail(breaker, count: 10)
        #expect(breaker.state == .disabled)
        #expect(breaker.metrics.numberOfBufferedCalls == 0)
        breaker.reset()
        #expect(breaker.state == .closed)
        await self.fail(breaker)
        #expect(breaker.state == .open)
    }

    // MARK: The lock-free path keeps the semantics

    @Test("successes counted lock-free take their place in a count-based window before a failure")
    func bulkSuccessesKeepOrder() async {
        let breaker = self.makeBreaker(window: .countBased(10), minimumNumberOfCalls: 10)
        await self.fail(breaker, count: 4)
        await self.succeed(breaker, count: 6)  // the minimum is reached: successes go lock-free from now on
        #expect(breaker.metrics.failureRate == 0.4)
        await self.succeed(breaker, count: 4)  // pushes the 4 failures out
        #expect(breaker.metrics.numberOfFailedCalls == 0)
        await self.fail(breaker, count: 4)
        #expect(breaker.state == .closed)
        await self.fail(breaker)
        #expect(breaker.state == .open)
        #expect(breaker.metrics.numberOfBufferedCalls == 10)
    }

    @Test("successes counted lock-free go to their second of a time-based window")
    func bulkSuccessesTimeBased() async {
        let breaker = self.makeBreaker(window: .timeBased(seconds: 2), minimumNumberOfCalls: 2)
        await self.succeed(breaker, count: 5)
        self.clock.advance(by: .seconds(1))
        await self.succeed(breaker, count: 3)
        #expect(breaker.metrics.numberOfBufferedCalls == 8)
        self.clock.advance(by: .seconds(1))
        #expect(breaker.metrics.numberOfBufferedCalls == 3)
        await self.fail(breaker, count: 3)  // 3 of 6
        #expect(breaker.state == .open)
    }

    @Test("concurrent calls are all counted exactly once")
    func concurrentCallsCounted() async {
        let breaker = self.makeBreaker(
            failureRateThreshold: 1,
            window: .countBased(100_000),
            minimumNumberOfCalls: 100
        )
        let tasks = 8
        let callsPerTask = 500
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for index in 0..<callsPerTask {
                        let fails = (index + task) % 10 == 0
                        _ = try? await breaker.run {
                            if fails { throw CircuitBreakerTestError() }
                            return index
                        }
                    }
                }
            }
        }
        let metrics = breaker.metrics
        #expect(metrics.numberOfBufferedCalls == tasks * callsPerTask)
        #expect(metrics.numberOfFailedCalls == tasks * callsPerTask / 10)
        #expect(breaker.state == .closed)
    }

    @Test("concurrent calls across the seconds of a time-based window are all counted exactly once")
    func concurrentCallsTimeBased() async {
        let breaker = self.makeBreaker(
            failureRateThreshold: 1,
            window: .timeBased(seconds: 1000),
            minimumNumberOfCalls: 10
        )
        let clock = self.clock
        let tasks = 8
        let callsPerTask = 500
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    for index in 0..<callsPerTask { _ = try? await breaker.run { index } }
                }
            }
            group.addTask {
                // Seconds change while the calls run, so the lock-free counts move between batches.
                for _ in 0..<100 {
                    clock.advance(by: .milliseconds(250))
                    await Task.yield()
                }
            }
        }
        #expect(breaker.metrics.numberOfBufferedCalls == tasks * callsPerTask)
        #expect(breaker.state == .closed)
    }

    // MARK: Events and telemetry

    @Test("the event stream yields every transition in order")
    func eventsInOrder() async throws {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1, probes: 1)
        let events = breaker.events()
        let start = self.clock.now
        await self.fail(breaker)  // closed -> open
        self.clock.advance(by: .seconds(30))
        await self.fail(breaker)  // open -> half-open -> open
        self.clock.advance(by: .seconds(30))
        await self.succeed(breaker)  // open -> half-open -> closed
        breaker.forceOpen()
        breaker.disable()
        breaker.reset()

        var iterator = events.makeAsyncIterator()
        var received: [CircuitBreaker.Event] = []
        for _ in 0..<8 {
            if let event = await iterator.next() { received.append(event) }
        }
        #expect(
            received.map(\.transition) == [
                .init(from: .closed, to: .open, reason: .failureRateExceeded),
                .init(from: .open, to: .halfOpen, reason: .openWaitElapsed),
                .init(from: .halfOpen, to: .open, reason: .failureRateExceeded),
                .init(from: .open, to: .halfOpen, reason: .openWaitElapsed),
                .init(from: .halfOpen, to: .closed, reason: .probesSucceeded),
                .init(from: .closed, to: .forcedOpen, reason: .manual),
                .init(from: .forcedOpen, to: .disabled, reason: .manual),
                .init(from: .disabled, to: .closed, reason: .reset),
            ]
        )
        #expect(received.first?.instant == start)
        #expect(received.last?.instant == start.advanced(by: .seconds(60)))
    }

    @Test("the state gauge follows the transitions")
    func stateGauge() async throws {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1, probes: 1)
        let gauge = try self.metrics.expectGauge("aviary_circuit_breaker_state", [("name", "test")])
        #expect(gauge.lastValue == 0)
        await self.fail(breaker)
        #expect(gauge.lastValue == 2)
        self.clock.advance(by: .seconds(30))
        let probe = try breaker.acquirePermission()
        #expect(gauge.lastValue == 1)
        probe.record(.success)
        #expect(gauge.lastValue == 0)
        #expect(gauge.values == [0, 2, 1, 0])
    }

    @Test("rejections and transitions are span events on the caller's span")
    func spanEvents() async {
        let tracer = InMemoryTracer()
        let span = tracer.startSpan("GET /payments")
        let context = PolicyContext(span: span)
        let breaker = self.makeBreaker(minimumNumberOfCalls: 1)
        await self.call(breaker, throwing: CircuitBreakerTestError(), context: context)
        self.clock.advance(by: .seconds(5))
        await self.call(breaker, context: context)
        let names = span.events.map(\.name)
        #expect(names == ["circuit_breaker.transition", "circuit_breaker.rejected"])
        let transition = span.events.first?.attributes
        #expect(transition?.get("aviary.circuit_breaker.from") == .string("closed"))
        #expect(transition?.get("aviary.circuit_breaker.to") == .string("open"))
        #expect(transition?.get("aviary.policy") == .string("test"))
        let rejection = span.events.last?.attributes
        #expect(rejection?.get("aviary.retry_after_seconds") == .double(25))
        span.end()
    }

    @Test("a breaker in a pipeline sees each attempt")
    func inPipeline() async {
        let breaker = self.makeBreaker(minimumNumberOfCalls: 2)
        let pipeline = ResiliencePipeline<Int> { breaker }
        for _ in 0..<2 {
            _ = try? await pipeline.run { throw CircuitBreakerTestError() }
        }
        #expect(breaker.state == .open)
    }
}
