//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Tracing

/// Cuts tail latency by sending a second copy of a slow idempotent call and taking whichever
/// answers first.
///
/// For an idempotent call (`context.idempotent`), ``Hedging`` starts the first attempt; if no
/// attempt has succeeded ``Configuration/delay`` after the latest one started, it starts another,
/// up to ``Configuration/maxAttempts`` in total. The first success wins and the other attempts
/// are cancelled (the call returns once they have stopped). When an attempt fails before the
/// delay, the next one starts at once, unless ``Configuration/shouldHedge`` says the error is not
/// worth another attempt (by default the same errors ``Retry`` does not retry: cancellation,
/// rejections, client errors), in which case no further attempt starts and the call waits for
/// those in flight. When every attempt fails, the last error to arrive is thrown.
///
/// Non-idempotent calls run once, unhedged. Each attempt runs with `context.attempt` set (1-based).
///
/// ```swift
/// let hedging = Hedging(.init(name: "catalog", maxAttempts: 2, delay: .milliseconds(30)))
/// let product = try await hedging.run(.idempotent) { try await catalog.product(id) }
/// ```
///
/// Choose the delay near the upstream's p95 latency, so that about one call in twenty is
/// hedged. With a shared ``RetryBudget`` (``Configuration/budget``), hedges also count against
/// the upstream's retry budget.
public struct Hedging: ResiliencePolicy {
    /// How a ``Hedging`` policy is set up.
    public struct Configuration: Sendable {
        /// The name used in metrics, span events and errors.
        public var name: String
        /// Attempts in total, the first included (default 2). `1` disables hedging.
        public var maxAttempts: Int
        /// How long to wait for a success after starting an attempt before starting the next
        /// (default 100 ms).
        public var delay: Duration
        /// Whether an attempt's failure should start the next attempt at once (default
        /// ``Retry/isRetryable(_:)``). When it returns `false`, no more attempts start.
        public var shouldHedge: @Sendable (any Error) -> Bool
        /// A retry budget that each hedge (each attempt after the first) withdraws from; when it
        /// is empty no hedge starts. `nil` (the default) hedges without a budget.
        public var budget: RetryBudget?

        /// Creates a configuration.
        ///
        /// - Precondition: `maxAttempts >= 1`, `delay` not negative.
        public init(
            name: String = "hedging",
            maxAttempts: Int = 2,
            delay: Duration = .milliseconds(100),
            shouldHedge: @escaping @Sendable (any Error) -> Bool = Retry.isRetryable,
            budget: RetryBudget? = nil
        ) {
            precondition(maxAttempts >= 1, "Hedging.maxAttempts must be >= 1, got \(maxAttempts)")
            precondition(delay >= .zero, "Hedging.delay must not be negative, got \(delay)")
            self.name = name
            self.maxAttempts = maxAttempts
            self.delay = delay
            self.shouldHedge = shouldHedge
            self.budget = budget
        }
    }

    /// What a ``Hedging`` policy did, for ``Hedging/events()`` subscribers.
    public enum Event: Sendable {
        /// Attempt `attempt` started: because the previous one failed (`afterFailure`), or
        /// because the delay passed without a success.
        case hedgeStarted(attempt: Int, afterFailure: Bool)
        /// Attempt `attempt` (after the first) succeeded first: the hedge paid off.
        case hedgeWon(attempt: Int)
        /// Attempt `attempt` failed with `error` (other attempts may still succeed).
        case attemptFailed(attempt: Int, error: any Error)
        /// A hedge was due but the budget was empty; `attempts` attempts had started.
        case budgetExhausted(attempts: Int)
        /// Every one of `attempts` attempts failed; `error` is the last to arrive.
        case allFailed(attempts: Int, error: any Error)
    }

    /// The metric that counts hedges (attempts after the first), labelled by `name`.
    static let hedgesMetric = "aviary_hedging_attempts_total"

    /// The configuration this policy was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let counters: ResilienceMetrics.CallCounters
    private let hedgesCounter: Counter
    private let budgetExhaustedCounter: Counter
    private let broadcaster: EventBroadcaster<Event>

    /// Creates a hedging policy.
    ///
    /// - Parameters:
    ///   - configuration: attempts, delay and budget.
    ///   - clock: the clock that times the delay (a `ManualClock` in tests).
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.init(configuration, clock: clock, metricsFactory: MetricsSystem.factory)
    }

    /// Creates a hedging policy that reports to `metricsFactory` (tests).
    init(_ configuration: Configuration, clock: any MonotonicClock, metricsFactory: any MetricsFactory) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(
            policy: "hedging",
            name: configuration.name,
            factory: metricsFactory
        )
        self.hedgesCounter = Counter(
            label: Self.hedgesMetric,
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

    /// A stream of what this policy does from now on: hedges started and won, failed attempts,
    /// budget exhaustion, calls whose attempts all failed.
    ///
    /// ```swift
    /// for await case .hedgeWon(let attempt) in hedging.events() {
    ///     print("attempt \(attempt) won")
    /// }
    /// ```
    public func events() -> AsyncStream<Event> {
        self.broadcaster.subscribe()
    }

    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        var first = context
        first.attempt = 1
        guard context.idempotent, self.configuration.maxAttempts > 1 else {
            do {
                let value = try await next(first)
                self.counters.success.increment()
                return value
            } catch {
                throw self.counted(error)
            }
        }
        self.configuration.budget?.deposit()
        let outcome = await withoutActuallyEscaping(next) { next in
            await self.race(first, next)
        }
        switch outcome {
        case .success(let value):
            self.counters.success.increment()
            return value
        case .failure(let error):
            throw self.counted(error)
        }
    }

    // MARK: - Racing attempts

    private enum Message<Output: Sendable>: Sendable {
        case finished(attempt: Int, Result<Output, any Error>)
        case timerFired(generation: Int)
        case timerCancelled
    }

    /// Runs attempts in a task group until one succeeds or all have failed.
    private func race<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @escaping @Sendable (PolicyContext) async throws -> Output
    ) async -> Result<Output, any Error> {
        let configuration = self.configuration
        let clock = self.clock
        return await withTaskGroup(of: Message<Output>.self) { group in
            var started = 0
            var running = 0
            var generation = 0
            var hedgingStopped = false
            var lastError: (any Error)?

            /// Starts the next attempt and, if another may follow, a timer for it.
            func startAttempt() {
                started += 1
                running += 1
                var attemptContext = context
                attemptContext.attempt = started
                let attempt = started
                group.addTask {
                    do {
                        return .finished(attempt: attempt, .success(try await next(attemptContext)))
                    } catch {
                        return .finished(attempt: attempt, .failure(error))
                    }
                }
                guard started < configuration.maxAttempts else { return }
                // A new generation makes any earlier timer stale; stale timers are ignored and
                // cancelled when the group ends.
                generation += 1
                let timer = generation
                let fireAt = clock.now.advanced(by: configuration.delay)
                group.addTask {
                    do {
                        try await clock.sleep(until: fireAt, tolerance: nil)
                        return .timerFired(generation: timer)
                    } catch {
                        return .timerCancelled
                    }
                }
            }

            /// Starts a hedge if one is allowed; returns whether it did.
            func startHedge(afterFailure: Bool) -> Bool {
                guard !hedgingStopped, started < configuration.maxAttempts, !Task.isCancelled else { return false }
                if let budget = configuration.budget, !budget.tryWithdraw() {
                    hedgingStopped = true
                    self.budgetExhaustedCounter.increment()
                    self.broadcaster.publish(.budgetExhausted(attempts: started))
                    context.recordEvent(
                        "hedging.budget_exhausted",
                        [
                            "aviary.policy": .string(configuration.name),
                            "aviary.hedging.attempts": .int64(Int64(started)),
                        ]
                    )
                    return false
                }
                startAttempt()
                self.hedgesCounter.increment()
                self.broadcaster.publish(.hedgeStarted(attempt: started, afterFailure: afterFailure))
                context.recordEvent(
                    "hedging.attempt",
                    [
                        "aviary.policy": .string(configuration.name),
                        "aviary.hedging.attempt": .int64(Int64(started)),
                        "aviary.hedging.after_failure": .bool(afterFailure),
                    ]
                )
                return true
            }

            startAttempt()
            while let message = await group.next() {
                switch message {
                case .finished(let attempt, .success(let value)):
                    group.cancelAll()
                    if attempt > 1 { self.broadcaster.publish(.hedgeWon(attempt: attempt)) }
                    return .success(value)

                case .finished(let attempt, .failure(let error)):
                    running -= 1
                    lastError = error
                    self.broadcaster.publish(.attemptFailed(attempt: attempt, error: error))
                    if !configuration.shouldHedge(error) { hedgingStopped = true }
                    if startHedge(afterFailure: true) { continue }
                    if running == 0 {
                        group.cancelAll()
                        self.broadcaster.publish(.allFailed(attempts: started, error: error))
                        return .failure(error)
                    }

                case .timerFired(let timer):
                    guard timer == generation else { continue }
                    _ = startHedge(afterFailure: false)

                case .timerCancelled:
                    continue
                }
            }
            // Unreachable: every attempt reports before the group runs dry.
            return .failure(lastError ?? CancellationError())
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
