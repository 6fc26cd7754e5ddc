//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Synchronization
import Tracing

/// Sheds load by limiting concurrent calls to a limit it learns from their latency and failures.
///
/// A ``Bulkhead`` caps concurrency at a number you choose; this policy finds the number. Every
/// admitted call is a sample for a ``ConcurrencyLimitAlgorithm`` (``AIMDLimit`` or
/// ``GradientLimit``): while calls are fast the limit grows, when latency rises or calls time out
/// it shrinks, so that work queues here, where it can be shed cheaply, rather than upstream, where
/// it makes every call slow. A call over the limit is not queued: it fails at once with
/// ``ResilienceError/Code-swift.struct/loadShed``.
///
/// **Priorities.** ``PolicyContext/priority`` reserves headroom so that sheddable work is dropped
/// first and critical work last. With `limit` the learned limit, a call is admitted while fewer
/// calls than its cap are in flight:
///
/// | priority | cap |
/// | --- | --- |
/// | `.sheddable` | `max(1, floor(limit × sheddableFraction))` |
/// | `.normal` | `limit` |
/// | `.critical` | `ceil(limit × criticalBoost)` |
///
/// As load rises, sheddable calls are refused first, then normal ones; critical calls still get
/// through above the limit. The caps count all calls in flight, whatever their priority.
///
/// **What counts as a sample.** Each admitted call ends in an ``Outcome``:
/// - `.success`: its round-trip time is a latency sample. A slow success is a signal even though
///   it succeeded: ``AIMDLimit`` treats calls over its threshold as drops, ``GradientLimit``
///   compares recent latency with normal latency.
/// - `.dropped`: an overload signal (a timeout, an overload error); the limit shrinks.
/// - `.ignored`: no sample; the limit does not move.
///
/// Errors thrown by the operation are classified by ``Configuration/classifyError`` (by default
/// cancellation is ignored and every other error is a drop), except that rejections by policies
/// inside this one (``ResilienceError/Code-swift.struct/isRejection``: an open breaker, a full
/// bulkhead, a rate limit) are always ignored: the call did not run, so its microsecond "latency"
/// would wrongly raise the limit, and counting it as a drop would cut the limit for a reason that
/// is not load. Calls this policy rejects never reach the algorithm either: a limiter that counted
/// its own rejections as failures would keep shrinking because it is shrinking.
///
/// Put a per-attempt ``Timeout`` *inside* this policy, so that its expiry is a drop; a timeout
/// outside cancels the call, and a cancelled call is ignored.
///
/// ```swift
/// let limiter = AdaptiveConcurrencyLimit(.init(name: "inventory", algorithm: .gradient()))
/// let pipeline = ResiliencePipeline<Stock> {
///     Retry(.init(maxAttempts: 3))
///     limiter
///     Timeout(.milliseconds(500))
/// }
/// let stock = try await pipeline.run(PolicyContext(priority: .sheddable)) { _ in try await inventory.get(sku) }
/// ```
///
/// Callers that cannot wrap the work in a closure (a streamed response body) use
/// ``tryAcquire(priority:)`` and release the ``Permit`` when the work ends.
///
/// Metrics: `aviary_concurrency_limit{name}` (gauge, the learned limit) and
/// `aviary_resilience_calls_total{policy="concurrency_limit", name, outcome}`. Span events:
/// `concurrency_limit.rejected` on a shed call, `concurrency_limit.changed` when a call changes the
/// limit. ``events()`` streams limit changes.
public final class AdaptiveConcurrencyLimit: ResiliencePolicy, Sendable {
    /// How an ``AdaptiveConcurrencyLimit`` is set up.
    public struct Configuration: Sendable {
        /// The name used in metrics, errors and span events.
        public var name: String
        /// The limit before any sample, in calls. Default 20.
        public var initialLimit: Int
        /// The lowest the learned limit goes, in calls; at least 1. Default 4.
        public var minLimit: Int
        /// The highest the learned limit goes, in calls. Default 200.
        public var maxLimit: Int
        /// How the limit is learned, with the algorithm's parameters. Default ``Algorithm/gradient(_:)``.
        public var algorithm: Algorithm
        /// The share of the limit (0 < share ≤ 1) that sheddable calls may use. Default 0.75.
        public var sheddableFraction: Double
        /// How far above the limit critical calls may go, as a factor of it (≥ 1; 1 treats them as
        /// normal). Default 1.5.
        public var criticalBoost: Double
        /// Decides what an error thrown by the operation says about load. It is not consulted for
        /// rejections by inner policies, which are always ``Outcome/ignored``. Default: a
        /// `CancellationError` (or any error of a cancelled task) is ignored, anything else is
        /// ``Outcome/dropped``.
        public var classifyError: @Sendable (any Error) -> Outcome

        /// Creates a configuration.
        ///
        /// - Precondition: `1 ≤ minLimit ≤ initialLimit ≤ maxLimit`, `0 < sheddableFraction ≤ 1`,
        ///   `criticalBoost ≥ 1`.
        public init(
            name: String = "concurrency_limit",
            initialLimit: Int = 20,
            minLimit: Int = 4,
            maxLimit: Int = 200,
            algorithm: Algorithm = .gradient(),
            sheddableFraction: Double = 0.75,
            criticalBoost: Double = 1.5,
            classifyError: @escaping @Sendable (any Error) -> Outcome = Configuration.defaultErrorClassifier
        ) {
            precondition(minLimit >= 1, "AdaptiveConcurrencyLimit.minLimit must be at least 1, got \(minLimit)")
            precondition(
                minLimit <= initialLimit && initialLimit <= maxLimit,
                "AdaptiveConcurrencyLimit needs minLimit ≤ initialLimit ≤ maxLimit, "
                    + "got \(minLimit), \(initialLimit), \(maxLimit)"
            )
            precondition(
                sheddableFraction > 0 && sheddableFraction <= 1,
                "AdaptiveConcurrencyLimit.sheddableFraction must be in (0, 1], got \(sheddableFraction)"
            )
            precondition(
                criticalBoost >= 1 && criticalBoost.isFinite,
                "AdaptiveConcurrencyLimit.criticalBoost must be a finite number ≥ 1, got \(criticalBoost)"
            )
            self.name = name
            self.initialLimit = initialLimit
            self.minLimit = minLimit
            self.maxLimit = maxLimit
            self.algorithm = algorithm
            self.sheddableFraction = sheddableFraction
            self.criticalBoost = criticalBoost
            self.classifyError = classifyError
        }

        /// The default ``classifyError``: cancellation is ignored, every other error is a drop.
        public static let defaultErrorClassifier: @Sendable (any Error) -> Outcome = { error in
            if error is CancellationError || Task.isCancelled { return .ignored }
            return .dropped
        }
    }

    /// The algorithm that learns the limit.
    ///
    /// ```swift
    /// .aimd(.init(slowCallThreshold: .milliseconds(300)))
    /// .gradient(.init(tolerance: 2, queueSize: 8))
    /// .custom { initialLimit, minLimit, maxLimit in MyLimit(initialLimit) }
    /// ```
    public struct Algorithm: Sendable {
        enum Kind: Sendable {
            case aimd(AIMDLimit.Parameters)
            case gradient(GradientLimit.Parameters)
            case custom(Factory)
        }

        let kind: Kind

        /// Additive increase, multiplicative decrease; see ``AIMDLimit``.
        public static func aimd(_ parameters: AIMDLimit.Parameters = .init()) -> Algorithm {
            Algorithm(kind: .aimd(parameters))
        }

        /// Long-term versus short-term latency (Gradient2); see ``GradientLimit``.
        public static func gradient(_ parameters: GradientLimit.Parameters = .init()) -> Algorithm {
            Algorithm(kind: .gradient(parameters))
        }

        /// Makes a custom algorithm from the configuration's `initialLimit`, `minLimit` and `maxLimit`.
        public typealias Factory =
            @Sendable (_ initialLimit: Int, _ minLimit: Int, _ maxLimit: Int) ->
            any ConcurrencyLimitAlgorithm

        /// Your own algorithm, made once from the configuration's `initialLimit`, `minLimit` and
        /// `maxLimit`. The policy clamps whatever it answers to `minLimit...maxLimit`.
        public static func custom(_ make: @escaping Factory) -> Algorithm {
            Algorithm(kind: .custom(make))
        }
    }

    /// What a finished call says about load.
    public struct Outcome: Sendable, Hashable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable { case success, dropped, ignored }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The call did its work; its round-trip time is a latency sample (and may be slow).
        /// Counted as `success`.
        public static let success = Outcome(.success)
        /// The call failed in a way that signals overload (timeout, 503, reset); the limit
        /// shrinks. Counted as `failure`.
        public static let dropped = Outcome(.dropped)
        /// The call says nothing about load (cancelled, rejected by an inner policy, a client
        /// error); no sample. Counted as `failure`.
        public static let ignored = Outcome(.ignored)

        public var description: String {
            switch self.wrapped {
            case .success: "success"
            case .dropped: "dropped"
            case .ignored: "ignored"
            }
        }
    }

    /// A change the limiter reports through ``events()``.
    public enum Event: Sendable, Hashable {
        /// The integer limit changed. Reported once per change, not per call.
        case limitChanged(from: Int, to: Int)
    }

    /// The configuration this policy was built with.
    public let configuration: Configuration
    let clock: any MonotonicClock
    private let state: Mutex<State>
    private let counters: ResilienceMetrics.CallCounters
    private let limitGauge: Gauge
    private let broadcaster = EventBroadcaster<Event>()

    /// Creates an adaptive concurrency limit.
    ///
    /// ```swift
    /// let limiter = AdaptiveConcurrencyLimit(.init(name: "payments", algorithm: .aimd()))
    /// ```
    ///
    /// - Parameters:
    ///   - configuration: limits, algorithm and priority headroom.
    ///   - clock: measures round-trip times; tests pass a `ManualClock`.
    public convenience init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.init(configuration, clock: clock, metricsFactory: MetricsSystem.factory)
    }

    /// Creates an adaptive concurrency limit that reports to `metricsFactory` (tests).
    init(_ configuration: Configuration, clock: any MonotonicClock, metricsFactory: any MetricsFactory) {
        self.configuration = configuration
        self.clock = clock
        let state = State(configuration)
        self.state = Mutex(state)
        self.counters = ResilienceMetrics.CallCounters(
            policy: "concurrency_limit", name: configuration.name, factory: metricsFactory)
        self.limitGauge = Gauge(
            label: ResilienceMetrics.concurrencyLimit,
            dimensions: [("name", configuration.name)],
            factory: metricsFactory
        )
        self.limitGauge.record(state.limit)
    }

    deinit {
        self.broadcaster.finish()
    }

    /// The current learned limit, in calls.
    public var limit: Int {
        self.state.withLock { $0.limit }
    }

    /// How many admitted calls (and unreleased permits) are in flight.
    public var inflight: Int {
        self.state.withLock { $0.inflight }
    }

    /// A stream of limit changes from now on; it ends when the subscriber stops iterating or the
    /// limiter is deinitialised. A slow subscriber loses the oldest events, never blocks calls.
    ///
    /// ```swift
    /// for await case .limitChanged(let from, let to) in limiter.events() {
    ///     logger.info("concurrency limit \(from) -> \(to)")
    /// }
    /// ```
    public func events() -> AsyncStream<Event> {
        self.broadcaster.subscribe()
    }

    /// Runs `next` if a call of `context.priority` fits under the limit, and learns from it.
    ///
    /// - Parameters:
    ///   - context: the call's priority decides how much of the limit it may use.
    ///   - next: the rest of the pipeline.
    /// - Returns: the operation's result.
    /// - Throws: ``ResilienceError`` with code ``ResilienceError/Code-swift.struct/loadShed`` when
    ///   the call is shed (the operation did not run), or the operation's error.
    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let admission = self.state.withLock { $0.admit(context.priority) }
        guard case .admitted(let inflightAtStart) = admission else {
            throw self.rejected(admission, priority: context.priority, context: context)
        }
        let start = self.clock.now
        let output: Output
        do {
            output = try await next(context)
        } catch {
            let outcome = self.classify(error)
            self.complete(inflightAtStart: inflightAtStart, start: start, outcome: outcome, context: context)
            if let error = error as? ResilienceError, error.code == .timedOut {
                self.counters.timeout.increment()
            } else {
                self.counters.failure.increment()
            }
            throw error
        }
        self.complete(inflightAtStart: inflightAtStart, start: start, outcome: .success, context: context)
        self.counters.success.increment()
        return output
    }

    /// Admits one unit of work of `priority` that is not a closure, such as a streamed body.
    ///
    /// The returned permit holds a slot until ``Permit/release(outcome:)``; its round-trip time is
    /// measured from now until then. A rejection is counted but records no span event (there is no
    /// context); the caller reports it.
    ///
    /// ```swift
    /// guard let permit = limiter.tryAcquire(priority: .normal) else { return .serviceUnavailable }
    /// let response = try await upstream.send(request)
    /// permit.release(outcome: response.status.code >= 500 ? .dropped : .success)
    /// ```
    ///
    /// - Parameter priority: how much of the limit the work may use.
    /// - Returns: a permit, or nil when the work is shed.
    public func tryAcquire(priority: PolicyContext.Priority = .normal) -> Permit? {
        let admission = self.state.withLock { $0.admit(priority) }
        guard case .admitted(let inflightAtStart) = admission else {
            self.counters.rejected.increment()
            return nil
        }
        return Permit(limiter: self, start: self.clock.now, inflightAtStart: inflightAtStart)
    }

    // MARK: - Internals

    /// Rejections by inner policies are always ignored; everything else is classified by the
    /// configuration.
    private func classify(_ error: any Error) -> Outcome {
        if let error = error as? ResilienceError, error.code.isRejection {
            return .ignored
        }
        return self.configuration.classifyError(error)
    }

    /// Ends an admitted call: frees its slot, feeds the sample, reports a limit change.
    func complete(inflightAtStart: Int, start: MonotonicInstant, outcome: Outcome, context: PolicyContext?) {
        let now = self.clock.now
        let rtt = start.duration(to: now)
        let change = self.state.withLock {
            $0.complete(inflightAtStart: inflightAtStart, rtt: rtt, outcome: outcome, now: now)
        }
        guard let change else { return }
        self.limitGauge.record(change.to)
        self.broadcaster.publish(.limitChanged(from: change.from, to: change.to))
        context?.recordEvent(
            "concurrency_limit.changed",
            [
                "aviary.policy": .string(self.configuration.name),
                "aviary.limit.previous": .int64(Int64(change.from)),
                "aviary.limit": .int64(Int64(change.to)),
            ]
        )
    }

    /// Counts a permit's release.
    func countRelease(_ outcome: Outcome) {
        if outcome == .success {
            self.counters.success.increment()
        } else {
            self.counters.failure.increment()
        }
    }

    private func rejected(
        _ admission: State.Admission,
        priority: PolicyContext.Priority,
        context: PolicyContext
    ) -> ResilienceError {
        guard case .rejected(let limit, let inflight, let cap) = admission else {
            preconditionFailure("rejected(_:) called for an admitted call")
        }
        self.counters.rejected.increment()
        context.recordEvent(
            "concurrency_limit.rejected",
            [
                "aviary.policy": .string(self.configuration.name),
                "aviary.priority": .string(priority.description),
                "aviary.limit": .int64(Int64(limit)),
                "aviary.inflight": .int64(Int64(inflight)),
            ]
        )
        return ResilienceError(
            .loadShed,
            "\(self.configuration.name): shed a \(priority) call, \(inflight) calls in flight "
                + "(limit \(limit), \(priority) calls admitted below \(cap))",
            policyName: self.configuration.name
        )
    }
}
