//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Tracing

/// Runs an operation again when it fails, with backoff, a retry budget, `Retry-After` and the
/// caller's deadline taken into account.
///
/// Only idempotent operations (`context.idempotent`) are retried unless
/// ``Configuration/retryNonIdempotent`` is set. An error is retried when
/// ``Configuration/shouldRetry`` says so (by default: anything but cancellation, rejections by
/// other policies and client errors; see ``isRetryable(_:)``); a result is retried when the
/// optional ``Configuration/resultPredicate`` says so. Each attempt runs with `context.attempt`
/// set (1-based), so policies inside see it.
///
/// Before the next attempt, ``Retry`` waits `max(backoff delay, retryAfter)`, where `retryAfter`
/// comes from an error conforming to ``RetryAfterProviding`` (``ResilienceError`` does) or from
/// ``ResultPredicate/Decision/retry(after:)``: the server's wish is a lower bound, the backoff
/// keeps clients spread when the server gives none. It never sleeps past the caller's
/// `Deadline.current`: when `now + delay` would reach it, it gives up at once.
///
/// How it gives up:
/// - attempts exhausted, or `retryAfter` beyond ``Configuration/maxRetryAfter``: the last error
///   is rethrown as it is (an HTTP layer maps the upstream's error, not a wrapper);
/// - the deadline would pass during the backoff: ``ResilienceError`` with code
///   ``ResilienceError/Code-swift.struct/timedOut`` and the last error as `cause`;
/// - the retry budget is empty: ``ResilienceError/Code-swift.struct/budgetExhausted`` with the
///   last error as `cause`;
/// - after a result the predicate wanted retried, in every case: that result is returned.
///
/// ```swift
/// let retry = Retry(.init(
///     name: "inventory",
///     maxAttempts: 3,
///     backoff: .exponential(base: .milliseconds(50), cap: .seconds(1))
/// ))
/// let stock = try await retry.run(.idempotent) { try await inventory.stock(sku) }
/// ```
public struct Retry: ResiliencePolicy {
    /// How a ``Retry`` is set up.
    public struct Configuration: Sendable {
        /// The name used in metrics, span events and errors.
        public var name: String
        /// Attempts in total, the first included (default 3). `1` disables retrying.
        public var maxAttempts: Int
        /// The delays between attempts (default: exponential from 50 ms, ×2, capped at 5 s, full
        /// jitter).
        public var backoff: Backoff
        /// Whether a failed attempt's error is worth another attempt (default ``Retry/isRetryable(_:)``).
        public var shouldRetry: @Sendable (any Error) -> Bool
        /// Whether a successful attempt's result is worth another attempt; `nil` (the default)
        /// accepts every result without looking at it.
        public var resultPredicate: ResultPredicate?
        /// Whether to retry operations whose context is not idempotent (default `false`).
        public var retryNonIdempotent: Bool
        /// The longest `Retry-After` to wait for (default 60 s); when an upstream asks for a
        /// longer wait, ``Retry`` gives up at once with the last error. `nil` waits for any.
        public var maxRetryAfter: Duration?
        /// The budget that retries withdraw from (default: a new ``RetryBudget`` of 20 % plus
        /// 10 retries per second over 10 s, on the system clock). Share one budget between the
        /// retries of one upstream; `nil` disables the budget.
        public var budget: RetryBudget?

        /// Creates a configuration.
        ///
        /// - Precondition: `maxAttempts >= 1`; `maxRetryAfter`, if set, is not negative.
        public init(
            name: String = "retry",
            maxAttempts: Int = 3,
            backoff: Backoff = .exponential(),
            shouldRetry: @escaping @Sendable (any Error) -> Bool = Retry.isRetryable,
            resultPredicate: ResultPredicate? = nil,
            retryNonIdempotent: Bool = false,
            maxRetryAfter: Duration? = .seconds(60),
            budget: RetryBudget? = RetryBudget()
        ) {
            precondition(maxAttempts >= 1, "Retry.maxAttempts must be >= 1, got \(maxAttempts)")
            precondition((maxRetryAfter ?? .zero) >= .zero, "Retry.maxRetryAfter must not be negative")
            self.name = name
            self.maxAttempts = maxAttempts
            self.backoff = backoff
            self.shouldRetry = shouldRetry
            self.resultPredicate = resultPredicate
            self.retryNonIdempotent = retryNonIdempotent
            self.maxRetryAfter = maxRetryAfter
            self.budget = budget
        }
    }

    /// What a ``Retry`` did, for ``Retry/events()`` subscribers. `error` is `nil` when a result
    /// (not an error) triggered the retry.
    public enum Event: Sendable {
        /// Attempt `attempt` failed; the next one runs after `delay`.
        case retryScheduled(attempt: Int, delay: Duration, error: (any Error)?)
        /// All `attempts` ran and the last failed.
        case exhausted(attempts: Int, error: (any Error)?)
        /// A retry was due after attempt `attempt` but the budget was empty.
        case budgetExhausted(attempt: Int, error: (any Error)?)
        /// Waiting `delay` after attempt `attempt` would have passed the deadline.
        case deadlineReached(attempt: Int, delay: Duration, error: (any Error)?)
        /// The upstream asked to wait `retryAfter`, longer than ``Configuration/maxRetryAfter``.
        case retryAfterTooLong(attempt: Int, retryAfter: Duration, error: (any Error)?)
    }

    /// The configuration this policy was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let counters: ResilienceMetrics.CallCounters
    private let attemptsCounter: Counter
    private let budgetExhaustedCounter: Counter
    private let broadcaster: EventBroadcaster<Event>

    /// Creates a retry policy.
    ///
    /// - Parameters:
    ///   - configuration: attempts, backoff, predicates and budget.
    ///   - clock: the clock to sleep on between attempts (a `ManualClock` in tests).
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.init(configuration, clock: clock, metricsFactory: MetricsSystem.factory)
    }

    /// Creates a retry policy that reports to `metricsFactory` (tests).
    init(_ configuration: Configuration, clock: any MonotonicClock, metricsFactory: any MetricsFactory) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(
            policy: "retry",
            name: configuration.name,
            factory: metricsFactory
        )
        self.attemptsCounter = Counter(
            label: ResilienceMetrics.retryAttempts,
            dimensions: [("name", configuration.name)],
            factory: metricsFactory
        )
        self.budgetExhaustedCounter = Counter(
            label: ResilienceMetrics.retryBudgetExhausted,
            dimensions: [("name", configuration.name)],
            factory: metricsFactory
        )
        self.broadcaster = EventBroadcaster()
    }

    /// The default retry predicate.
    ///
    /// Retries any error except:
    /// - `CancellationError` (the caller gave up);
    /// - a ``ResilienceError`` that is a rejection (open breaker, full bulkhead, rate limit, shed
    ///   load: the operation did not run, and trying again at once would be rejected again), or
    ///   that is ``ResilienceError/Code-swift.struct/budgetExhausted`` or
    ///   ``ResilienceError/Code-swift.struct/retriesExhausted`` (an inner retry gave up);
    /// - an `AviaryError` with a 4xx code other than 429 (`invalidArgument`, `notFound`,
    ///   `conflict`, ...): the request itself is wrong, and will be wrong again.
    ///
    /// ``ResilienceError/Code-swift.struct/timedOut`` is retried: a per-try ``Timeout`` inside
    /// the retry expired. When it was the caller's deadline that passed, ``Retry`` stops anyway,
    /// because no attempt fits before the deadline any more.
    ///
    /// ```swift
    /// let retry = Retry(.init(shouldRetry: { error in
    ///     Retry.isRetryable(error) && !(error is ValidationError)
    /// }))
    /// ```
    public static func isRetryable(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        if let error = error as? ResilienceError {
            if error.code.isRejection { return false }
            return error.code != .budgetExhausted && error.code != .retriesExhausted
        }
        if let error = error as? AviaryError {
            let status = error.code.httpStatus
            return !((400..<500).contains(status) && status != 429)
        }
        return true
    }

    /// A stream of what this policy does from now on: retries scheduled and the ways it gave up.
    ///
    /// ```swift
    /// for await event in retry.events() {
    ///     if case .budgetExhausted = event { logger.warning("retry budget exhausted") }
    /// }
    /// ```
    public func events() -> AsyncStream<Event> {
        self.broadcaster.subscribe()
    }

    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        self.configuration.budget?.deposit()
        var attemptContext = context
        attemptContext.attempt = 1
        let outcome = await self.attempt(attemptContext, next)
        if case .success(let value) = outcome {
            self.counters.success.increment()
            return value
        }
        return try await self.retry(after: outcome, context: attemptContext, next)
    }

    // MARK: - Attempts

    private enum Outcome<Output: Sendable> {
        case success(Output)
        /// A result the result predicate wants retried.
        case retryableResult(Output, retryAfter: Duration?)
        case failure(any Error)

        var error: (any Error)? {
            if case .failure(let error) = self { return error }
            return nil
        }
    }

    private func attempt<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async -> Outcome<Output> {
        do {
            let value = try await next(context)
            if let predicate = self.configuration.resultPredicate,
                case .retry(let after) = predicate.decision(for: value)
            {
                return .retryableResult(value, retryAfter: after)
            }
            return .success(value)
        } catch {
            return .failure(error)
        }
    }

    /// The slow path: every attempt after a first one that failed.
    private func retry<Output: Sendable>(
        after first: Outcome<Output>,
        context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let configuration = self.configuration
        let repeatable = context.idempotent || configuration.retryNonIdempotent
        var planner = Planner(
            maxAttempts: configuration.maxAttempts,
            maxRetryAfter: configuration.maxRetryAfter,
            backoff: configuration.backoff
        )
        var context = context
        var outcome = first
        while true {
            let retryAfter: Duration?
            switch outcome {
            case .success(let value):
                self.counters.success.increment()
                return value
            case .retryableResult(_, let after):
                retryAfter = after
            case .failure(let error):
                if Task.isCancelled || !configuration.shouldRetry(error) {
                    throw self.counted(error)
                }
                retryAfter = (error as? any RetryAfterProviding)?.retryAfter
            }
            guard repeatable else { return try self.giveUp(outcome, wrapping: nil) }

            let failedAttempt = context.attempt
            let now = self.clock.now
            switch planner.next(retryAfter: retryAfter, now: now, deadline: Deadline.current) {
            case .giveUp(.attemptsExhausted):
                self.broadcaster.publish(.exhausted(attempts: failedAttempt, error: outcome.error))
                return try self.giveUp(outcome, wrapping: nil)

            case .giveUp(.retryAfterTooLong(let wait)):
                self.broadcaster.publish(
                    .retryAfterTooLong(attempt: failedAttempt, retryAfter: wait, error: outcome.error)
                )
                return try self.giveUp(outcome, wrapping: nil)

            case .giveUp(.deadline(let delay)):
                self.broadcaster.publish(.deadlineReached(attempt: failedAttempt, delay: delay, error: outcome.error))
                let error = ResilienceError(
                    .timedOut,
                    "\(configuration.name): the deadline would pass during the \(delay) wait after attempt "
                        + "\(failedAttempt)",
                    policyName: configuration.name,
                    cause: outcome.error
                )
                return try self.giveUp(outcome, wrapping: error)

            case .retry(let nextAttempt, let delay):
                if let budget = configuration.budget, !budget.tryWithdraw() {
                    self.budgetExhaustedCounter.increment()
                    self.broadcaster.publish(.budgetExhausted(attempt: failedAttempt, error: outcome.error))
                    context.recordEvent(
                        "retry.budget_exhausted",
                        [
                            "aviary.policy": .string(configuration.name),
                            "aviary.retry.attempt": .int64(Int64(failedAttempt)),
                        ]
                    )
                    let error = ResilienceError(
                        .budgetExhausted,
                        "\(configuration.name): the retry budget allows no retry after attempt \(failedAttempt)",
                        policyName: configuration.name,
                        cause: outcome.error
                    )
                    return try self.giveUp(outcome, wrapping: error)
                }
                self.attemptsCounter.increment()
                self.broadcaster.publish(.retryScheduled(attempt: failedAttempt, delay: delay, error: outcome.error))
                var attributes: SpanAttributes = [
                    "aviary.policy": .string(configuration.name),
                    "aviary.retry.attempt": .int64(Int64(nextAttempt)),
                    "aviary.retry.delay_seconds": .double(delay.aviarySeconds),
                ]
                if let error = outcome.error {
                    attributes["error.type"] = String(describing: type(of: error))
                }
                context.recordEvent("retry.attempt", attributes)
                do {
                    if delay > .zero {
                        try await self.clock.sleep(until: now.advanced(by: delay), tolerance: nil)
                    } else {
                        try Task.checkCancellation()
                    }
                } catch {
                    throw self.counted(error)
                }
                context.attempt = nextAttempt
                outcome = await self.attempt(context, next)
            }
        }
    }

    /// Ends the call after the predicate asked for a retry that will not happen: returns the
    /// last result, or throws `wrapper` (if any) or the last error.
    private func giveUp<Output: Sendable>(
        _ outcome: Outcome<Output>,
        wrapping wrapper: ResilienceError?
    ) throws -> Output {
        switch outcome {
        case .success(let value):
            self.counters.success.increment()
            return value
        case .retryableResult(let value, _):
            self.counters.failure.increment()
            return value
        case .failure(let error):
            throw self.counted(wrapper ?? error)
        }
    }

    /// Counts `error` as the call's outcome and returns it for throwing.
    private func counted(_ error: any Error) -> any Error {
        if let error = error as? ResilienceError {
            if error.code == .timedOut {
                self.counters.timeout.increment()
            } else if error.code.isRejection {
                self.counters.rejected.increment()
            } else {
                self.counters.failure.increment()
            }
        } else {
            self.counters.failure.increment()
        }
        return error
    }
}
