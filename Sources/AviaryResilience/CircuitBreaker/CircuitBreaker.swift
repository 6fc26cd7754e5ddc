//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Synchronization
import Tracing

/// Stops calling an upstream that keeps failing or answering slowly, and tries it again later.
///
/// A closed breaker runs every call and records its outcome in a sliding window (the last N
/// calls, or the calls of the last N seconds). Once the window holds
/// ``Configuration/minimumNumberOfCalls`` calls, a failure rate or slow call rate at or above its
/// threshold opens the breaker: calls are then rejected with
/// ``ResilienceError/Code-swift.struct/circuitOpen`` and `retryAfter` set to the remaining wait.
/// After ``Configuration/waitDurationInOpenState`` the next call moves it to half-open, where a
/// few probe calls decide whether it closes or opens again (with a longer wait when
/// ``Configuration/waitDurationMultiplier`` is above 1). The semantics are Resilience4j's; see
/// ``StateMachine`` for the details and <doc:Circuit-Breakers> for an overview.
///
/// ```swift
/// let breaker = CircuitBreaker(.init(name: "payments", failureRateThreshold: 0.5, minimumNumberOfCalls: 20))
/// do {
///     let receipt = try await breaker.run { try await payments.charge(order) }
/// } catch let error as ResilienceError where error.code == .circuitOpen {
///     // answer 503 with Retry-After: error.retryAfter
/// }
/// ```
///
/// Calls that are not a closure (a streamed body, a NIO handler) use
/// ``acquirePermission(_:)`` and resolve the returned ``Permit`` when they end.
///
/// Errors count as failures unless ``Configuration/ignoreError`` ignores them (by default
/// `CancellationError`) or ``Configuration/recordError`` says otherwise; rejections by policies
/// inside the breaker (a full bulkhead, a rate limit) never count. State changes are published on
/// ``events()``, on the `aviary_circuit_breaker_state` gauge, and as span events
/// (`circuit_breaker.transition`, `circuit_breaker.rejected`) on the caller's span.
///
/// A closed breaker admits and records successful calls without taking its lock (see
/// `CircuitBreaker+FastPath.swift`); transitions, failures and probes take it briefly.
public final class CircuitBreaker: ResiliencePolicy {
    /// The configuration this breaker was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let usesSystemClock: Bool
    private let slowCallDuration: Duration
    private let isTimeBased: Bool
    private let currentCPU: CurrentCPU
    private let counters: ResilienceMetrics.CallCounters
    private let stateGauge: Gauge
    private let broadcaster = EventBroadcaster<Event>()
    /// Serialises event delivery, so that subscribers and the gauge see transitions in order.
    private let emission = Mutex(())
    /// The published fast-path token; see `CircuitBreaker+FastPath.swift`.
    private let token: Atomic<UInt64>
    /// The second a `closedBulk` token is valid for (time-based windows).
    private let tokenSecond: Atomic<Int64>
    /// Per-CPU counts of successes not yet in the window.
    private let stripes: Stripes
    private let core: Mutex<Core>

    /// What the lock protects.
    private struct Core: Sendable {
        var machine: StateMachine
        /// What the token currently says, and the second its batch counts for.
        var mode: FastMode = .closed
        var generation: UInt32
        var batch: UInt32 = 0
        var second: Int64 = 0
        /// Transitions not yet delivered to subscribers.
        var pendingEvents: [Event] = []
    }

    /// Creates a breaker, closed with an empty window.
    ///
    /// Build one per upstream (or per route of an upstream) when the client is created, and share
    /// it between all calls to that upstream.
    ///
    /// ```swift
    /// let breaker = CircuitBreaker(.init(name: "inventory", slidingWindow: .timeBased(seconds: 30)))
    /// ```
    ///
    /// - Parameters:
    ///   - configuration: thresholds, window and waits; see ``Configuration``.
    ///   - clock: the clock for durations, windows and waits; a `ManualClock` in tests.
    /// - Precondition: the configuration's preconditions (see ``Configuration``).
    public convenience init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.init(configuration, clock: clock, metricsFactory: MetricsSystem.factory)
    }

    /// Creates a breaker that reports to `metricsFactory` (tests pass a `TestMetrics`).
    init(_ configuration: Configuration, clock: any MonotonicClock, metricsFactory: any MetricsFactory) {
        let machine = StateMachine(configuration: configuration)
        self.configuration = configuration
        self.clock = clock
        self.usesSystemClock = clock is SystemClock
        self.slowCallDuration = configuration.slowCallDuration
        self.isTimeBased = configuration.slidingWindow.isTimeBased
        self.currentCPU = CircuitBreaker.currentCPU
        self.counters = ResilienceMetrics.CallCounters(
            policy: "circuit_breaker",
            name: configuration.name,
            factory: metricsFactory
        )
        self.stateGauge = Gauge(
            label: ResilienceMetrics.breakerState,
            dimensions: [("name", configuration.name)],
            factory: metricsFactory
        )
        self.token = Atomic(Token(mode: .closed, generation: machine.generation, batch: 0).raw)
        self.tokenSecond = Atomic(0)
        self.stripes = Stripes { _ in Stripe() }
        self.core = Mutex(Core(machine: machine, generation: machine.generation))
        self.stateGauge.record(State.closed.gaugeValue)
    }

    deinit {
        self.broadcaster.finish()
    }

    // MARK: Closure API

    /// Runs `next` if the breaker admits it, and records its outcome.
    ///
    /// ```swift
    /// let user = try await breaker.execute(.idempotent) { _ in try await users.get(id) }
    /// ```
    ///
    /// - Parameters:
    ///   - context: the call's context; rejections and transitions are recorded on its span.
    ///   - next: the rest of the pipeline, ending in the operation.
    /// - Returns: what `next` returns.
    /// - Throws: ``ResilienceError`` with code ``ResilienceError/Code-swift.struct/circuitOpen``
    ///   when the breaker rejects the call (`retryAfter`: the remaining open wait), or `next`'s error.
    @inlinable
    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        // Inlinable so that the generic closure call is specialized at the call site; admission
        // and recording are ordinary calls into the module.
        let ticket = try self.admit(context)
        let output: Output
        do {
            output = try await next(context)
        } catch {
            self.complete(ticket, self.outcome(of: error), context: context)
            throw error
        }
        if let recordResult = self.configuration.recordResult, recordResult(output) {
            self.complete(ticket, .failure, context: context)
        } else {
            self.complete(ticket, .success, context: context)
        }
        return output
    }

    // MARK: Permit API

    /// Asks to make one call whose outcome is known later, for work that is not a closure.
    ///
    /// Resolve the permit once the work has ended; a permit dropped unresolved counts as
    /// ``Outcome/ignored`` (and frees its probe slot in the half-open state). The duration is
    /// measured from this call unless given when recording.
    ///
    /// ```swift
    /// let permit = try breaker.acquirePermission()
    /// let response = try await upstream.send(request)
    /// for try await chunk in response.body { try await writer.write(chunk) }
    /// permit.record(response.status.code >= 500 ? .failure : .success)
    /// ```
    ///
    /// - Parameter context: the call's context; a rejection is recorded on its span.
    /// - Returns: the permission to make the call.
    /// - Throws: ``ResilienceError`` with code ``ResilienceError/Code-swift.struct/circuitOpen``
    ///   when the breaker rejects the call.
    public func acquirePermission(_ context: PolicyContext = PolicyContext()) throws(ResilienceError) -> Permit {
        Permit(breaker: self, ticket: try self.admit(context))
    }

    /// The permission to make one call, from ``CircuitBreaker/acquirePermission(_:)``.
    ///
    /// Non-copyable, so it is resolved exactly once: each `record` consumes it, and a permit
    /// dropped without being recorded counts as ``CircuitBreaker/Outcome/ignored``.
    ///
    /// ```swift
    /// final class ProxyHandler {
    ///     var permit: CircuitBreaker.Permit?
    ///     func responseEnded(status: Int) {
    ///         self.permit.take()?.record(status >= 500 ? .failure : .success)
    ///     }
    /// }
    /// ```
    public struct Permit: ~Copyable, Sendable {
        private let breaker: CircuitBreaker
        private let ticket: Ticket
        private var resolved = false

        init(breaker: CircuitBreaker, ticket: Ticket) {
            self.breaker = breaker
            self.ticket = ticket
        }

        /// Records the call's outcome.
        ///
        /// - Parameters:
        ///   - outcome: what the call says about the upstream.
        ///   - duration: how long the call took (for slow-call detection); by default the time
        ///     since the permit was acquired, on the breaker's clock.
        public consuming func record(_ outcome: Outcome, duration: Duration? = nil) {
            self.breaker.complete(self.ticket, outcome, duration: duration)
            self.resolved = true
        }

        /// Records the outcome of a call that threw `error`, classified as the closure API does
        /// (rejections and ``Configuration/ignoreError`` ignored, then ``Configuration/recordError``).
        ///
        /// - Parameters:
        ///   - error: the call's error.
        ///   - duration: how long the call took; by default the time since acquisition.
        public consuming func record(error: any Error, duration: Duration? = nil) {
            self.breaker.complete(self.ticket, self.breaker.outcome(of: error), duration: duration)
            self.resolved = true
        }

        deinit {
            if !self.resolved {
                self.breaker.complete(self.ticket, .ignored, duration: nil)
            }
        }
    }

    // MARK: State, metrics, events

    /// The current state. An open breaker whose wait has passed reports `open` until the next call
    /// moves it to half-open.
    public var state: State {
        self.core.withLock { $0.machine.state }
    }

    /// A snapshot of the rates and counts the breaker judges, like Resilience4j's `getMetrics()`.
    public var metrics: Metrics {
        let now = self.now()
        return self.core.withLock { core in
            self.collectStripes(&core)
            return core.machine.metrics(now: now)
        }
    }

    /// The state changes of this breaker, from now on, in order.
    ///
    /// Each subscriber buffers the newest 64 events; the stream ends when the breaker is
    /// deallocated. Rejected calls are not events (they are counted in
    /// `aviary_resilience_calls_total{outcome="rejected"}` and recorded as span events).
    ///
    /// ```swift
    /// Task {
    ///     for await event in breaker.events() where event.to == .open {
    ///         logger.warning("breaker opened", metadata: ["aviary.reason": "\(event.reason)"])
    ///     }
    /// }
    /// ```
    public func events() -> AsyncStream<Event> {
        self.broadcaster.subscribe()
    }

    // MARK: Manual control

    /// Moves the breaker to `state` by hand (an operator's switch, a test).
    ///
    /// To `closed`: an empty window. To `open`: a new open wait. To `halfOpen`: new probes.
    /// `forcedOpen` rejects and `disabled` admits every call until the next manual change.
    /// Moving to the current state does nothing.
    ///
    /// ```swift
    /// breaker.transition(to: .forcedOpen)   // maintenance of the upstream
    /// ```
    public func transition(to state: State) {
        let now = self.now()
        _ = self.locked(now: now, context: nil) { machine in
            ((), machine.transition(to: state, now: now))
        }
    }

    /// Rejects every call until the state is changed by hand; see ``transition(to:)``.
    public func forceOpen() {
        self.transition(to: .forcedOpen)
    }

    /// Admits every call and records nothing until the state is changed by hand.
    public func disable() {
        self.transition(to: .disabled)
    }

    /// Closes the breaker with an empty window and forgets past openings, from any state.
    public func reset() {
        _ = self.locked(now: self.now(), context: nil) { machine in
            ((), machine.reset())
        }
    }

    // MARK: Internals

    /// Admits a call: without the lock when the token allows it.
    @usableFromInline
    func admit(_ context: PolicyContext) throws(ResilienceError) -> Ticket {
        let now = self.now()
        let token = Token(raw: self.token.load(ordering: .acquiring))
        if token.mode != .locked {
            return Ticket(start: now, generation: token.generation)
        }
        return try self.admitLocked(now: now, context: context)
    }

    private func admitLocked(now: MonotonicInstant, context: PolicyContext) throws(ResilienceError) -> Ticket {
        let ((admission, state, generation), _) = self.locked(now: now, context: context) { machine in
            let admission = machine.admit(now: now)
            return ((admission, machine.state, machine.generation), admission.transition)
        }
        switch admission.decision {
        case .permitted, .probe:
            return Ticket(start: now, generation: generation)
        case .rejected(let retryAfter):
            self.counters.rejected.increment()
            var attributes: SpanAttributes = [
                "aviary.policy": .string(self.configuration.name),
                "aviary.circuit_breaker.state": .string(state.description),
            ]
            if let retryAfter {
                attributes["aviary.retry_after_seconds"] = retryAfter.aviarySeconds
            }
            context.recordEvent("circuit_breaker.rejected", attributes)
            throw ResilienceError(
                .circuitOpen,
                self.rejectionMessage(state),
                policyName: self.configuration.name,
                retryAfter: retryAfter
            )
        }
    }

    private func rejectionMessage(_ state: State) -> String {
        let name = self.configuration.name
        switch state {
        case .forcedOpen:
            return "\(name): the circuit breaker is forced open"
        case .halfOpen:
            let probes = self.configuration.permittedNumberOfCallsInHalfOpenState
            return "\(name): the circuit breaker is half-open and its \(probes) probe calls are taken"
        default:
            return "\(name): the circuit breaker is open"
        }
    }

    /// Classifies an error: rejections from inner policies, then `ignoreError`, then `recordError`.
    @usableFromInline
    func outcome(of error: any Error) -> Outcome {
        if let error = error as? ResilienceError, error.code.isRejection { return .ignored }
        if self.configuration.ignoreError(error) { return .ignored }
        return self.configuration.recordError(error) ? .failure : .success
    }

    /// Records the outcome of a call run by ``execute(_:_:)``.
    @usableFromInline
    func complete(_ ticket: Ticket, _ outcome: Outcome, context: PolicyContext) {
        let now = self.now()
        let duration = ticket.start.duration(to: now)
        if self.recordWithoutLock(ticket, outcome, duration: duration, now: now) { return }
        self.recordLocked(ticket, outcome, duration: duration, now: now, context: context)
    }

    /// Records the outcome of a permit's call.
    func complete(_ ticket: Ticket, _ outcome: Outcome, duration: Duration?) {
        let now = self.now()
        let duration = duration ?? ticket.start.duration(to: now)
        if self.recordWithoutLock(ticket, outcome, duration: duration, now: now) { return }
        self.recordLocked(ticket, outcome, duration: duration, now: now, context: nil)
    }

    /// Counts the outcome, and records a success that is not slow without the lock when the token
    /// allows it. Returns false when the outcome must be recorded under the lock.
    @inline(__always)
    private func recordWithoutLock(
        _ ticket: Ticket,
        _ outcome: Outcome,
        duration: Duration,
        now: MonotonicInstant
    ) -> Bool {
        switch outcome {
        case .success:
            self.counters.success.increment()
            return duration <= self.slowCallDuration && self.recordBulkSuccess(ticket, now: now)
        case .failure:
            self.counters.failure.increment()
            return false
        case .ignored:
            return false
        }
    }

    /// The clock's time; the system clock is read directly rather than through the existential.
    @inline(__always)
    private func now() -> MonotonicInstant {
        self.usesSystemClock ? SystemClock().now : self.clock.now
    }

    /// Counts a success in this CPU's stripe if the token allows it; false when the lock is needed.
    @inline(__always)
    private func recordBulkSuccess(_ ticket: Ticket, now: MonotonicInstant) -> Bool {
        let token = Token(raw: self.token.load(ordering: .acquiring))
        // An outcome from an earlier generation is dropped, as the state machine would drop it.
        guard token.generation == ticket.generation else { return true }
        switch token.mode {
        case .disabled:
            return true
        case .closedBulk:
            if self.isTimeBased {
                let second = self.tokenSecond.load(ordering: .acquiring)
                guard CallWindow.second(of: now) == second else { return false }
            }
            let index = Int(self.currentCPU()) & (CircuitBreaker.stripeCount - 1)
            let word = self.stripes[index].word.load(ordering: .relaxed)
            guard StripeWord.tag(word) == token.batch, StripeWord.count(word) < StripeWord.countLimit else {
                return false
            }
            return self.stripes[index].word.compareExchange(
                expected: word,
                desired: word &+ 1,
                ordering: .relaxed
            ).exchanged
        case .locked, .closed:
            return false
        }
    }

    @inline(never)
    private func recordLocked(
        _ ticket: Ticket,
        _ outcome: Outcome,
        duration: Duration,
        now: MonotonicInstant,
        context: PolicyContext?
    ) {
        _ = self.locked(now: now, context: context) { machine in
            ((), machine.record(outcome, duration: duration, now: now, generation: ticket.generation))
        }
    }

    /// Runs `body` on the state machine under the lock: bulk successes are moved into the window
    /// first, the token is republished after, and a transition is delivered (after unlocking) to
    /// subscribers, the gauge and the caller's span.
    private func locked<Result: Sendable>(
        now: MonotonicInstant,
        context: PolicyContext?,
        _ body: (inout StateMachine) -> (Result, Transition?)
    ) -> (Result, Transition?) {
        let (result, transition) = self.core.withLock { core -> (Result, Transition?) in
            self.collectStripes(&core)
            let (result, transition) = body(&core.machine)
            if let transition {
                core.pendingEvents.append(Event(transition, at: now))
            }
            self.publish(&core)
            return (result, transition)
        }
        if let transition {
            self.deliverEvents()
            (context ?? PolicyContext()).recordEvent(
                "circuit_breaker.transition",
                [
                    "aviary.policy": .string(self.configuration.name),
                    "aviary.circuit_breaker.from": .string(transition.from.description),
                    "aviary.circuit_breaker.to": .string(transition.to.description),
                    "aviary.circuit_breaker.reason": .string(transition.reason.description),
                ]
            )
        }
        return (result, transition)
    }

    /// Moves the stripes' counts into the window, keeping the batch (under the lock).
    private func collectStripes(_ core: inout Core) {
        guard core.mode == .closedBulk else { return }
        let empty = StripeWord.make(tag: core.batch)
        var collected: UInt64 = 0
        for index in 0..<CircuitBreaker.stripeCount {
            let word = self.stripes[index].word.load(ordering: .relaxed)
            guard StripeWord.count(word) > 0 else { continue }
            let old = self.stripes[index].word.exchange(empty, ordering: .relaxed)
            if StripeWord.tag(old) == core.batch { collected += StripeWord.count(old) }
        }
        core.machine.recordSuccesses(Int(collected), second: core.second, generation: core.generation)
    }

    /// Publishes a new token if the machine's state, generation, bulk eligibility or second has
    /// changed (under the lock). See the ordering notes in `CircuitBreaker+FastPath.swift`.
    private func publish(_ core: inout Core) {
        // Read what is needed rather than copying the machine (a copy would make the next
        // mutation of its window copy the window's storage).
        let mode: FastMode
        switch core.machine.state {
        case .closed: mode = core.machine.acceptsBulkSuccesses ? .closedBulk : .closed
        case .disabled: mode = .disabled
        case .open, .halfOpen, .forcedOpen: mode = .locked
        }
        let generation = core.machine.generation
        let second = mode == .closedBulk ? (core.machine.latestSecond ?? 0) : 0
        if mode == core.mode && generation == core.generation && second == core.second { return }
        let batch = (core.batch &+ 1) & Token.batchMask
        if core.mode == .closedBulk || mode == .closedBulk {
            let empty = StripeWord.make(tag: batch)
            var collected: UInt64 = 0
            for index in 0..<CircuitBreaker.stripeCount {
                let old = self.stripes[index].word.exchange(empty, ordering: .relaxed)
                if StripeWord.tag(old) == core.batch { collected += StripeWord.count(old) }
            }
            if core.mode == .closedBulk {
                // Counted under the old token: credit them to its generation and second.
                core.machine.recordSuccesses(Int(collected), second: core.second, generation: core.generation)
            }
        }
        self.tokenSecond.store(second, ordering: .releasing)
        self.token.store(Token(mode: mode, generation: generation, batch: batch).raw, ordering: .releasing)
        core.mode = mode
        core.generation = generation
        core.batch = batch
        core.second = second
    }

    /// Delivers pending transitions in order to the gauge and the subscribers.
    private func deliverEvents() {
        self.emission.withLock { _ in
            let events = self.core.withLock { core -> [Event] in
                let events = core.pendingEvents
                core.pendingEvents = []
                return events
            }
            for event in events {
                self.stateGauge.record(event.to.gaugeValue)
                self.broadcaster.publish(event)
            }
        }
    }
}
