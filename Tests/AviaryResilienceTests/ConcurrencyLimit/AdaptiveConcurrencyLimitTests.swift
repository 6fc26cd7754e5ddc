//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import InMemoryTracing
import MetricsTestKit
import PropertyBased
import Synchronization
import Testing
import Tracing

@testable import AviaryResilience

@Suite("AdaptiveConcurrencyLimit", .timeLimit(.minutes(1)))
struct AdaptiveConcurrencyLimitTests {
    typealias Priority = PolicyContext.Priority

    /// Fills the limiter with `count` permits of `priority` and returns them (dropping them later
    /// frees the slots without a sample).
    func fill(
        _ limiter: AdaptiveConcurrencyLimit,
        _ count: Int,
        priority: Priority = .critical
    ) -> [AdaptiveConcurrencyLimit.Permit] {
        var permits: [AdaptiveConcurrencyLimit.Permit] = []
        for _ in 0..<count {
            guard let permit = limiter.tryAcquire(priority: priority) else {
                Issue.record("could not fill the limiter to \(count)")
                break
            }
            permits.append(permit)
        }
        return permits
    }

    /// Runs one call of `priority` that returns at once; true if admitted, false if shed.
    func admits(_ limiter: AdaptiveConcurrencyLimit, _ priority: Priority) async throws -> Bool {
        do {
            try await limiter.run(PolicyContext(priority: priority)) {}
            return true
        } catch let error as ResilienceError where error.code == .loadShed {
            return false
        }
    }

    // MARK: Priorities

    @Test(
        "each priority is admitted exactly while fewer calls than its cap are in flight (limit 10)",
        arguments: [(Priority.sheddable, 5), (.normal, 10), (.critical, 15)]
    )
    func capPerPriority(priority: Priority, cap: Int) {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: ManualClock())
        let permits = self.fill(limiter, cap - 1)
        let last = limiter.tryAcquire(priority: priority)
        #expect(last != nil)
        #expect(limiter.tryAcquire(priority: priority) == nil)
        #expect(limiter.inflight == cap)
        withExtendedLifetime((last, permits)) {}
    }

    @Test("near the limit sheddable calls are shed while normal and critical get in; then normal is shed too")
    func sheddingOrder() async throws {
        let clock = ManualClock()
        let limiter = AdaptiveConcurrencyLimit(.fixed(10), clock: clock)
        let gate = ConcurrencyLimitGate()
        // Hold 5 normal calls in flight: the sheddable cap (10 × 0.5) is reached.
        let held = (0..<5).map { _ in
            Task { try await limiter.run(PolicyContext(priority: .normal)) { await gate.hold() } }
        }
        await gate.waitUntilHeld(5)
        #expect(limiter.inflight == 5)

        #expect(try await !self.admits(limiter, .sheddable))
        #expect(try await self.admits(limiter, .normal))
        #expect(try await self.admits(limiter, .critical))

        // Hold 5 more: the normal cap (the limit, 10) is reached.
        let more = (0..<5).map { _ in
            Task { try await limiter.run(PolicyContext(priority: .critical)) { await gate.hold() } }
        }
        await gate.waitUntilHeld(10)
        #expect(try await !self.admits(limiter, .sheddable))
        #expect(try await !self.admits(limiter, .normal))
        #expect(try await self.admits(limiter, .critical))

        gate.openAll()
        for task in held + more { try await task.value }
        #expect(limiter.inflight == 0)
    }

    @Test("a shed call throws loadShed naming the policy, and its operation does not run")
    func rejectionError() async {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 2), clock: ManualClock())
        let permits = self.fill(limiter, 2)
        let ran = ConcurrencyLimitFlag()
        await #expect {
            try await limiter.run { ran.set() }
        } throws: { error in
            guard let error = error as? ResilienceError else { return false }
            return error.code == .loadShed && error.policyName == "test" && error.code.isRejection
        }
        #expect(!ran.value)
        withExtendedLifetime(permits) {}
    }

    @Test("a sheddable call is admitted when nothing is in flight even if limit × sheddableFraction < 1")
    func sheddableNeverStarves() {
        let limiter = AdaptiveConcurrencyLimit(
            .sensitiveAIMD(initialLimit: 1, sheddableFraction: 0.5), clock: ManualClock())
        let first = limiter.tryAcquire(priority: .sheddable)
        #expect(first != nil)
        #expect(limiter.tryAcquire(priority: .sheddable) == nil)
        withExtendedLifetime(first) {}
    }

    @Test("a criticalBoost of 1 gives critical calls no headroom above the limit")
    func criticalBoostOne() {
        let limiter = AdaptiveConcurrencyLimit(
            .sensitiveAIMD(initialLimit: 4, criticalBoost: 1), clock: ManualClock())
        let permits = self.fill(limiter, 4)
        #expect(limiter.tryAcquire(priority: .critical) == nil)
        withExtendedLifetime(permits) {}
    }

    // MARK: What counts as a sample

    @Test("a fast success raises the limit and a slow success lowers it (RTT measured on the clock)")
    func slowSuccessCounts() async throws {
        let clock = ManualClock()
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: clock)
        let gate = ConcurrencyLimitGate()

        let fast = Task { try await limiter.run { await gate.hold() } }
        await gate.waitUntilHeld(1)
        clock.advance(by: .milliseconds(10))
        gate.openAll()
        try await fast.value
        #expect(limiter.limit == 11)

        let slow = Task { try await limiter.run { await gate.hold() } }
        await gate.waitUntilHeld(1)
        clock.advance(by: .seconds(2))
        gate.openAll()
        try await slow.value
        #expect(limiter.limit == 9)  // floor(11 × 0.9)
        #expect(limiter.inflight == 0)
    }

    @Test("a failing call is a drop and lowers the limit; the error is rethrown")
    func failureIsDrop() async {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: ManualClock())
        await #expect(throws: ConcurrencyLimitTestError()) {
            try await limiter.run { throw ConcurrencyLimitTestError() }
        }
        #expect(limiter.limit == 9)
        await #expect(throws: ResilienceError.self) {
            try await limiter.run { throw ResilienceError(.timedOut, "inner timeout") }
        }
        #expect(limiter.limit == 8)
        #expect(limiter.inflight == 0)
    }

    @Test("a cancelled call is ignored")
    func cancellationIgnored() async {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: ManualClock())
        await #expect(throws: CancellationError.self) {
            try await limiter.run { throw CancellationError() }
        }
        #expect(limiter.limit == 10)
        #expect(limiter.inflight == 0)
    }

    @Test(
        "a rejection by an inner policy is neither a latency sample nor a drop",
        arguments: [ResilienceError.Code.circuitOpen, .bulkheadFull, .rateLimited, .loadShed]
    )
    func innerRejectionIgnored(code: ResilienceError.Code) async {
        // Every error counts as a drop for this classifier, so only the rejection rule can keep
        // the limit at 10; a latency sample would raise it (utilizationForIncrease 0).
        var configuration = AdaptiveConcurrencyLimit.Configuration.sensitiveAIMD(initialLimit: 10)
        configuration.classifyError = { _ in .dropped }
        let limiter = AdaptiveConcurrencyLimit(configuration, clock: ManualClock())
        await #expect {
            try await limiter.run { throw ResilienceError(code, "inner") }
        } throws: { error in
            (error as? ResilienceError)?.code == code
        }
        #expect(limiter.limit == 10)
        #expect(limiter.inflight == 0)
    }

    @Test("a custom classifier can ignore errors that say nothing about load")
    func customClassifier() async {
        var configuration = AdaptiveConcurrencyLimit.Configuration.sensitiveAIMD(initialLimit: 10)
        configuration.classifyError = { error in error is ConcurrencyLimitTestError ? .ignored : .dropped }
        let limiter = AdaptiveConcurrencyLimit(configuration, clock: ManualClock())
        await #expect(throws: ConcurrencyLimitTestError()) {
            try await limiter.run { throw ConcurrencyLimitTestError() }
        }
        #expect(limiter.limit == 10)
    }

    @Test("its own rejections do not change the limit")
    func ownRejectionsIgnored() async throws {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 4), clock: ManualClock())
        var permits = self.fill(limiter, 4, priority: .normal)
        for _ in 0..<50 {
            #expect(try await !self.admits(limiter, .normal))
            #expect(limiter.tryAcquire(priority: .sheddable) == nil)
        }
        #expect(limiter.limit == 4)
        permits.removeAll()  // released as ignored
        #expect(limiter.limit == 4)
        #expect(limiter.inflight == 0)
        // Once the slots are free, calls are admitted again at once.
        #expect(try await self.admits(limiter, .normal))
    }

    @Test("a custom algorithm's answer is clamped to minLimit...maxLimit", arguments: [(1000, 50), (-3, 2)])
    func customAlgorithmClamped(answer: Int, expected: Int) {
        struct Wild: ConcurrencyLimitAlgorithm {
            var limit: Int
            let answer: Int
            mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
                self.answer
            }
        }
        let limiter = AdaptiveConcurrencyLimit(
            .init(
                initialLimit: 10, minLimit: 2, maxLimit: 50,
                algorithm: .custom { initial, _, _ in Wild(limit: initial, answer: answer) }
            ),
            clock: ManualClock()
        )
        limiter.tryAcquire()?.release()
        #expect(limiter.limit == expected)
    }

    @Test("the default configuration starts at 20 with the gradient algorithm and learns from calls")
    func defaults() async throws {
        let configuration = AdaptiveConcurrencyLimit.Configuration()
        #expect(configuration.name == "concurrency_limit")
        #expect((configuration.initialLimit, configuration.minLimit, configuration.maxLimit) == (20, 4, 200))
        let limiter = AdaptiveConcurrencyLimit(clock: ManualClock())
        #expect(limiter.limit == 20)
        for _ in 0..<10 {
            let permits = (0..<20).compactMap { _ in limiter.tryAcquire() }
            for permit in permits { permit.release() }
        }
        #expect(limiter.limit > 20)
    }

    // MARK: Permits

    @Test("permits release exactly once: a second release does nothing, a forgotten permit frees its slot")
    func permitsReleaseOnce() throws {
        let clock = ManualClock()
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: clock)
        let success = try #require(limiter.tryAcquire())
        let dropped = try #require(limiter.tryAcquire())
        var forgotten = limiter.tryAcquire()
        #expect(limiter.inflight == 3)

        #expect(success.release(outcome: .success))
        #expect(success.isReleased)
        #expect(limiter.inflight == 2)
        #expect(limiter.limit == 11)
        #expect(!success.release(outcome: .success))
        #expect(!success.release(outcome: .dropped))
        #expect(limiter.inflight == 2)
        #expect(limiter.limit == 11)

        #expect(dropped.release(outcome: .dropped))
        #expect(limiter.inflight == 1)
        #expect(limiter.limit == 9)

        #expect(forgotten != nil)
        forgotten = nil  // deinit frees the slot without a sample
        #expect(limiter.inflight == 0)
        #expect(limiter.limit == 9)
    }

    @Test("many tasks releasing the same permit at once free one slot")
    func concurrentRelease() async throws {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: ManualClock())
        let other = limiter.tryAcquire()
        let permit = try #require(limiter.tryAcquire())
        let released = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<32 { group.addTask { permit.release(outcome: .ignored) } }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(released == 1)
        #expect(limiter.inflight == 1)
        withExtendedLifetime(other) {}
    }

    @Test("a permit's RTT runs from acquire to release: a slow permit lowers the limit")
    func permitMeasuresRTT() {
        let clock = ManualClock()
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10), clock: clock)
        let permit = limiter.tryAcquire()
        clock.advance(by: .milliseconds(1001))
        permit?.release()
        #expect(limiter.inflight == 0)
        #expect(limiter.limit == 9)
    }

    @Test("for any acquires and releases, admission follows the caps, the limit stays in bounds, in-flight ends at 0")
    func permitsProperty() async {
        let step = zip(Gen.int(in: 0...2), Gen.int(in: 0...3), Gen.duration(in: .zero ... .seconds(2)))
        await propertyCheck(input: step.array(of: 0...200)) { steps in
            let clock = ManualClock()
            let limiter = AdaptiveConcurrencyLimit(
                .init(initialLimit: 8, minLimit: 2, maxLimit: 16, algorithm: .aimd()), clock: clock)
            var permits: [AdaptiveConcurrencyLimit.Permit] = []
            for (priorityRank, action, elapsed) in steps {
                clock.advance(by: elapsed)
                let priority: Priority = [.sheddable, .normal, .critical][priorityRank]
                if action == 0 || permits.isEmpty {
                    let (limit, inflight) = (limiter.limit, limiter.inflight)
                    let cap = [
                        max(1, Int(Double(limit) * 0.75)), limit, Int((Double(limit) * 1.5).rounded(.up)),
                    ][priorityRank]
                    if let permit = limiter.tryAcquire(priority: priority) {
                        permits.append(permit)
                        #expect(inflight < cap)
                    } else {
                        #expect(inflight >= cap)
                    }
                } else {
                    let outcome: AdaptiveConcurrencyLimit.Outcome = [.success, .dropped, .ignored][action - 1]
                    permits.removeLast().release(outcome: outcome)
                }
                #expect((2...16).contains(limiter.limit))
                #expect(limiter.inflight == permits.count)
            }
            permits.removeAll()
            #expect(limiter.inflight == 0)
        }
    }

    // MARK: Events and telemetry

    @Test("events report each change of the integer limit once, not each call")
    func events() async throws {
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 10, maxLimit: 12), clock: ManualClock())
        var events = limiter.events().makeAsyncIterator()
        for _ in 0..<3 { try await limiter.run {} }  // 10 → 11 → 12 → 12 (no change)
        await #expect(throws: ConcurrencyLimitTestError()) {
            try await limiter.run { throw ConcurrencyLimitTestError() }  // 12 → 10
        }
        #expect(await events.next() == .limitChanged(from: 10, to: 11))
        #expect(await events.next() == .limitChanged(from: 11, to: 12))
        #expect(await events.next() == .limitChanged(from: 12, to: 10))
    }

    @Test("the gauge follows the limit and calls are counted by outcome, shed calls as rejected")
    func metrics() async throws {
        let metrics = TestMetrics()
        let limiter = AdaptiveConcurrencyLimit(
            .sensitiveAIMD(initialLimit: 2), clock: ManualClock(), metricsFactory: metrics)
        func calls(_ outcome: String) -> Int64 {
            let dimensions = [("policy", "concurrency_limit"), ("name", "test"), ("outcome", outcome)]
            return (try? metrics.expectCounter("aviary_resilience_calls_total", dimensions).totalValue) ?? 0
        }
        let gauge = try metrics.expectGauge("aviary_concurrency_limit", [("name", "test")])
        #expect(gauge.lastValue == 2)

        try await limiter.run {}  // 2 → 3
        #expect(gauge.lastValue == 3)
        await #expect(throws: ResilienceError.self) {
            try await limiter.run { throw ResilienceError(.timedOut, "inner timeout") }  // 3 → 2
        }
        await #expect(throws: ConcurrencyLimitTestError()) {
            try await limiter.run { throw ConcurrencyLimitTestError() }  // 2 → 1
        }
        #expect(gauge.lastValue == 1)

        let permit = try #require(limiter.tryAcquire())
        await #expect(throws: ResilienceError.self) { try await limiter.run {} }
        #expect(limiter.tryAcquire() == nil)
        permit.release(outcome: .dropped)

        #expect(calls("success") == 1)
        #expect(calls("timeout") == 1)
        #expect(calls("failure") == 2)
        #expect(calls("rejected") == 2)
        #expect(gauge.lastValue == 1)
    }

    @Test("a shed call records a span event with the priority, limit and in-flight count")
    func rejectionSpanEvent() async throws {
        let tracer = InMemoryTracer()
        let span = tracer.startSpan("call")
        let limiter = AdaptiveConcurrencyLimit(.sensitiveAIMD(initialLimit: 2), clock: ManualClock())
        let permits = self.fill(limiter, 2)
        await #expect(throws: ResilienceError.self) {
            try await limiter.run(PolicyContext(priority: .sheddable, span: span)) {}
        }
        let event = try #require(span.events.first { $0.name == "concurrency_limit.rejected" })
        #expect(event.attributes.get("aviary.priority")?.toSpanAttribute() == .string("sheddable"))
        #expect(event.attributes.get("aviary.limit")?.toSpanAttribute() == .int64(2))
        #expect(event.attributes.get("aviary.inflight")?.toSpanAttribute() == .int64(2))
        withExtendedLifetime(permits) {}
    }

    @Test("the policy composes in a pipeline and sheds inside it")
    func inPipeline() async throws {
        let limiter = AdaptiveConcurrencyLimit(.fixed(1), clock: ManualClock())
        let pipeline = ResiliencePipeline<Int> {
            limiter
        }
        #expect(try await pipeline.run { 42 } == 42)
        let permit = limiter.tryAcquire(priority: .critical)
        await #expect(throws: ResilienceError.self) {
            try await pipeline.run(PolicyContext(priority: .normal)) { 1 }
        }
        withExtendedLifetime(permit) {}
    }
}

/// A flag set from a `@Sendable` closure.
final class ConcurrencyLimitFlag: Sendable {
    private let state = Mutex(false)
    func set() { self.state.withLock { $0 = true } }
    var value: Bool { self.state.withLock { $0 } }
}
