//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

extension CircuitBreaker {
    /// How a ``CircuitBreaker`` is set up.
    ///
    /// Every field has a default (those of Resilience4j); set only the ones that matter for the
    /// upstream.
    ///
    /// ```swift
    /// let breaker = CircuitBreaker(
    ///     .init(
    ///         name: "payments",
    ///         failureRateThreshold: 0.5,
    ///         slidingWindow: .timeBased(seconds: 30),
    ///         minimumNumberOfCalls: 20,
    ///         waitDurationInOpenState: .seconds(10),
    ///         waitDurationMultiplier: 2,
    ///         maxWaitDurationInOpenState: .seconds(120)
    ///     )
    /// )
    /// ```
    public struct Configuration: Sendable {
        /// The name used in metrics (`name` label), span events and errors.
        public var name: String
        /// The failure rate, a ratio in `0 < x ≤ 1`, at or above which the breaker opens (and a set
        /// of half-open probes re-opens it). `0.5` opens at 50 % failed calls.
        public var failureRateThreshold: Double
        /// The slow call rate, a ratio in `0 < x ≤ 1`, at or above which the breaker opens. The
        /// default `1` opens only when every call in the window was slow.
        public var slowCallRateThreshold: Double
        /// A call that takes longer than this (strictly) is slow. Must be positive. Default 60 s.
        public var slowCallDuration: Duration
        /// Which calls the closed breaker judges: the last N calls or the calls of the last N
        /// seconds. Default: the last 100 calls.
        public var slidingWindow: SlidingWindow
        /// The number of calls (in the window) the breaker needs before it judges the rates; with
        /// exactly this many it judges, with one less it does not. At least 1. For a count-based
        /// window a minimum above the window size is lowered to the window size.
        public var minimumNumberOfCalls: Int
        /// How long the breaker stays open before it admits probe calls. Not negative. Default 60 s.
        public var waitDurationInOpenState: Duration
        /// The factor (≥ 1) by which the open wait grows each time the breaker re-opens without
        /// having closed in between (a failed set of probes). `1` keeps the wait constant.
        public var waitDurationMultiplier: Double
        /// The longest open wait the multiplier can grow to. A value below
        /// ``waitDurationInOpenState`` is raised to it. Default 600 s.
        public var maxWaitDurationInOpenState: Duration
        /// How many probe calls the half-open breaker admits; their outcome decides whether it
        /// closes or opens again. At least 1.
        public var permittedNumberOfCallsInHalfOpenState: Int
        /// The longest the breaker stays half-open waiting for its probes before it opens again
        /// (a re-opening, so the wait grows). `nil` (the default) waits for the probes forever.
        /// Positive when set.
        public var maxWaitDurationInHalfOpenState: Duration?
        /// Whether an error (not ignored by ``ignoreError``) counts as a failure; when it returns
        /// `false` the call counts as a success. Default: every error is a failure.
        public var recordError: @Sendable (any Error) -> Bool
        /// Whether an error counts neither as a success nor as a failure. Default: `CancellationError`.
        /// Rejections from policies inside the breaker (``ResilienceError`` whose code
        /// ``ResilienceError/Code-swift.struct/isRejection``) are always ignored, whatever this
        /// predicate says: the upstream was not called.
        public var ignoreError: @Sendable (any Error) -> Bool
        /// Whether a returned value counts as a failure (for example an HTTP response with a 5xx
        /// status). `nil` (the default) counts every returned value as a success and costs nothing.
        /// The value is passed as `any Sendable`; cast it to the operation's result type.
        public var recordResult: (@Sendable (any Sendable) -> Bool)?

        /// Creates a configuration.
        ///
        /// ```swift
        /// let configuration = CircuitBreaker.Configuration(
        ///     name: "inventory",
        ///     failureRateThreshold: 0.25,
        ///     slowCallRateThreshold: 0.5,
        ///     slowCallDuration: .milliseconds(800),
        ///     minimumNumberOfCalls: 10
        /// )
        /// ```
        ///
        /// - Parameters: see the properties of the same names.
        /// - Precondition: the thresholds are in `0 < x ≤ 1`; `slowCallDuration` is positive;
        ///   `minimumNumberOfCalls` and `permittedNumberOfCallsInHalfOpenState` are at least 1;
        ///   `waitDurationInOpenState` is not negative; `waitDurationMultiplier` is at least 1;
        ///   `maxWaitDurationInHalfOpenState` is positive when set.
        public init(
            name: String = "circuit_breaker",
            failureRateThreshold: Double = 0.5,
            slowCallRateThreshold: Double = 1,
            slowCallDuration: Duration = .seconds(60),
            slidingWindow: SlidingWindow = .countBased(100),
            minimumNumberOfCalls: Int = 100,
            waitDurationInOpenState: Duration = .seconds(60),
            waitDurationMultiplier: Double = 1,
            maxWaitDurationInOpenState: Duration = .seconds(600),
            permittedNumberOfCallsInHalfOpenState: Int = 10,
            maxWaitDurationInHalfOpenState: Duration? = nil,
            recordError: @escaping @Sendable (any Error) -> Bool = CircuitBreaker.Configuration.recordAllErrors,
            ignoreError: @escaping @Sendable (any Error) -> Bool = CircuitBreaker.Configuration.ignoreCancellation,
            recordResult: (@Sendable (any Sendable) -> Bool)? = nil
        ) {
            self.name = name
            self.failureRateThreshold = failureRateThreshold
            self.slowCallRateThreshold = slowCallRateThreshold
            self.slowCallDuration = slowCallDuration
            self.slidingWindow = slidingWindow
            self.minimumNumberOfCalls = minimumNumberOfCalls
            self.waitDurationInOpenState = waitDurationInOpenState
            self.waitDurationMultiplier = waitDurationMultiplier
            self.maxWaitDurationInOpenState = maxWaitDurationInOpenState
            self.permittedNumberOfCallsInHalfOpenState = permittedNumberOfCallsInHalfOpenState
            self.maxWaitDurationInHalfOpenState = maxWaitDurationInHalfOpenState
            self.recordError = recordError
            self.ignoreError = ignoreError
            self.recordResult = recordResult
            self.checkPreconditions()
        }

        /// The default ``recordError``: every error is a failure.
        public static let recordAllErrors: @Sendable (any Error) -> Bool = { _ in true }

        /// The default ``ignoreError``: a `CancellationError` (the caller gave up) says nothing
        /// about the upstream.
        public static let ignoreCancellation: @Sendable (any Error) -> Bool = { error in
            error is CancellationError
        }

        /// Checks the documented preconditions; called by the initializer and again by the breaker
        /// and the state machine, since the fields are mutable.
        func checkPreconditions() {
            precondition(
                self.failureRateThreshold > 0 && self.failureRateThreshold <= 1,
                "CircuitBreaker.failureRateThreshold must be in 0 < x ≤ 1, got \(self.failureRateThreshold)"
            )
            precondition(
                self.slowCallRateThreshold > 0 && self.slowCallRateThreshold <= 1,
                "CircuitBreaker.slowCallRateThreshold must be in 0 < x ≤ 1, got \(self.slowCallRateThreshold)"
            )
            precondition(
                self.slowCallDuration > .zero,
                "CircuitBreaker.slowCallDuration must be positive, got \(self.slowCallDuration)"
            )
            precondition(
                self.minimumNumberOfCalls >= 1,
                "CircuitBreaker.minimumNumberOfCalls must be at least 1, got \(self.minimumNumberOfCalls)"
            )
            precondition(
                self.waitDurationInOpenState >= .zero,
                "CircuitBreaker.waitDurationInOpenState must not be negative, got \(self.waitDurationInOpenState)"
            )
            precondition(
                self.waitDurationMultiplier >= 1 && self.waitDurationMultiplier.isFinite,
                "CircuitBreaker.waitDurationMultiplier must be finite and ≥ 1, got \(self.waitDurationMultiplier)"
            )
            precondition(
                self.permittedNumberOfCallsInHalfOpenState >= 1,
                "CircuitBreaker.permittedNumberOfCallsInHalfOpenState must be at least 1, "
                    + "got \(self.permittedNumberOfCallsInHalfOpenState)"
            )
            if let halfOpenWait = self.maxWaitDurationInHalfOpenState {
                precondition(
                    halfOpenWait > .zero,
                    "CircuitBreaker.maxWaitDurationInHalfOpenState must be positive when set, got \(halfOpenWait)"
                )
            }
        }

        /// The minimum number of calls actually applied to the closed state's window.
        var effectiveMinimumNumberOfCalls: Int {
            switch self.slidingWindow.kind {
            case .count(let size): min(self.minimumNumberOfCalls, size)
            case .time: self.minimumNumberOfCalls
            }
        }

        /// The open wait after the `openings`-th consecutive opening (1 for the first), grown by the
        /// multiplier and capped at the maximum.
        func openWait(afterOpenings openings: Int) -> Duration {
            let base = self.waitDurationInOpenState
            let cap = max(self.maxWaitDurationInOpenState, base)
            guard openings > 1, self.waitDurationMultiplier > 1, base > .zero else { return base }
            let capSeconds = cap.aviarySeconds
            var seconds = base.aviarySeconds
            for _ in 1..<openings {
                seconds *= self.waitDurationMultiplier
                if seconds >= capSeconds { return cap }
            }
            return .aviarySeconds(seconds)
        }
    }

    /// Which recent calls a closed ``CircuitBreaker`` judges.
    ///
    /// ```swift
    /// let lastHundredCalls = CircuitBreaker.SlidingWindow.countBased(100)
    /// let lastMinute = CircuitBreaker.SlidingWindow.timeBased(seconds: 60)
    /// ```
    public struct SlidingWindow: Sendable, Hashable, CustomStringConvertible {
        enum Kind: Hashable, Sendable {
            case count(Int)
            case time(seconds: Int)
        }

        let kind: Kind

        private init(_ kind: Kind) { self.kind = kind }

        /// The last `size` calls.
        ///
        /// - Precondition: `size` is at least 1.
        public static func countBased(_ size: Int) -> SlidingWindow {
            precondition(size >= 1, "a count-based sliding window needs a size of at least 1, got \(size)")
            return SlidingWindow(.count(size))
        }

        /// The calls recorded in the last `seconds` seconds, aggregated in one bucket per second of
        /// the breaker's clock (a bucket leaves the window as a whole).
        ///
        /// - Precondition: `seconds` is at least 1.
        public static func timeBased(seconds: Int) -> SlidingWindow {
            precondition(seconds >= 1, "a time-based sliding window needs at least 1 second, got \(seconds)")
            return SlidingWindow(.time(seconds: seconds))
        }

        /// The number of calls (count-based) or seconds (time-based) in the window.
        public var size: Int {
            switch self.kind {
            case .count(let size): size
            case .time(let seconds): seconds
            }
        }

        /// Whether the window holds the calls of the last seconds rather than the last calls.
        public var isTimeBased: Bool {
            if case .time = self.kind { return true }
            return false
        }

        public var description: String {
            switch self.kind {
            case .count(let size): "last \(size) calls"
            case .time(let seconds): "last \(seconds) seconds"
            }
        }
    }
}
