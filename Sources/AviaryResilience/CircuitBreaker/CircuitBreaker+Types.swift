//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

extension CircuitBreaker {
    /// The state of a breaker.
    ///
    /// ```swift
    /// if breaker.state == .open { logger.warning("payments breaker is open") }
    /// ```
    public enum State: Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// Calls run; their outcomes are recorded in the sliding window.
        case closed
        /// Calls are rejected until the open wait has passed.
        case open
        /// A limited number of probe calls run; their outcome closes or re-opens the breaker.
        case halfOpen
        /// Calls are rejected until an operator changes the state (``CircuitBreaker/transition(to:)``).
        case forcedOpen
        /// Calls run and nothing is recorded until an operator changes the state.
        case disabled

        public var description: String {
            switch self {
            case .closed: "closed"
            case .open: "open"
            case .halfOpen: "half_open"
            case .forcedOpen: "forced_open"
            case .disabled: "disabled"
            }
        }

        /// The value of the `aviary_circuit_breaker_state` gauge: 0 closed (and disabled),
        /// 1 half-open, 2 open (and forced open).
        public var gaugeValue: Int {
            switch self {
            case .closed, .disabled: 0
            case .halfOpen: 1
            case .open, .forcedOpen: 2
            }
        }
    }

    /// What a call's outcome tells the breaker about the upstream.
    ///
    /// Whether a call was slow is not part of the outcome: the breaker compares the call's duration
    /// with ``Configuration/slowCallDuration``.
    public enum Outcome: Sendable, Hashable {
        /// The upstream did its job.
        case success
        /// The upstream failed; counts towards the failure rate.
        case failure
        /// Says nothing about the upstream (cancelled, rejected by an inner policy, a client
        /// error): counts neither way, and frees the probe slot of a half-open breaker.
        case ignored
    }

    /// A change of state, as decided by the ``StateMachine``.
    public struct Transition: Sendable, Hashable, CustomStringConvertible {
        /// The state before.
        public var from: State
        /// The state after.
        public var to: State
        /// Why the state changed.
        public var reason: Reason

        /// Creates a transition.
        public init(from: State, to: State, reason: Reason) {
            self.from = from
            self.to = to
            self.reason = reason
        }

        public var description: String { "\(self.from) -> \(self.to) (\(self.reason))" }

        /// Why a breaker changed state.
        public struct Reason: Sendable, Hashable, CustomStringConvertible {
            private enum Wrapped: Hashable, Sendable {
                case failureRateExceeded, slowCallRateExceeded, openWaitElapsed, probesSucceeded
                case halfOpenWaitExceeded, manual, reset
            }

            private let wrapped: Wrapped
            private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

            /// The failure rate reached the threshold (in the window, or among the probes).
            public static let failureRateExceeded = Reason(.failureRateExceeded)
            /// The slow call rate reached the threshold (in the window, or among the probes).
            public static let slowCallRateExceeded = Reason(.slowCallRateExceeded)
            /// The open wait passed and a call arrived: the breaker admits probes.
            public static let openWaitElapsed = Reason(.openWaitElapsed)
            /// The probes' failure and slow call rates stayed below the thresholds.
            public static let probesSucceeded = Reason(.probesSucceeded)
            /// The probes did not all finish within ``Configuration/maxWaitDurationInHalfOpenState``.
            public static let halfOpenWaitExceeded = Reason(.halfOpenWaitExceeded)
            /// An operator asked for the state (``CircuitBreaker/transition(to:)`` and friends).
            public static let manual = Reason(.manual)
            /// ``CircuitBreaker/reset()``: closed with an empty window.
            public static let reset = Reason(.reset)

            public var description: String {
                switch self.wrapped {
                case .failureRateExceeded: "failure_rate_exceeded"
                case .slowCallRateExceeded: "slow_call_rate_exceeded"
                case .openWaitElapsed: "open_wait_elapsed"
                case .probesSucceeded: "probes_succeeded"
                case .halfOpenWaitExceeded: "half_open_wait_exceeded"
                case .manual: "manual"
                case .reset: "reset"
                }
            }
        }
    }

    /// A state change of a breaker, as delivered by ``CircuitBreaker/events()``.
    ///
    /// ```swift
    /// for await event in breaker.events() {
    ///     logger.info("breaker \(event.from) -> \(event.to)", metadata: ["aviary.reason": "\(event.reason)"])
    /// }
    /// ```
    public struct Event: Sendable, Hashable, CustomStringConvertible {
        /// The state before.
        public var from: State
        /// The state after.
        public var to: State
        /// Why the state changed.
        public var reason: Transition.Reason
        /// When it changed, on the breaker's clock.
        public var instant: MonotonicInstant

        /// Creates an event.
        public init(from: State, to: State, reason: Transition.Reason, instant: MonotonicInstant) {
            self.from = from
            self.to = to
            self.reason = reason
            self.instant = instant
        }

        init(_ transition: Transition, at instant: MonotonicInstant) {
            self.init(from: transition.from, to: transition.to, reason: transition.reason, instant: instant)
        }

        /// The transition, without the instant.
        public var transition: Transition { Transition(from: self.from, to: self.to, reason: self.reason) }

        public var description: String { "\(self.from) -> \(self.to) (\(self.reason)) at \(self.instant)" }
    }

    /// A snapshot of what a breaker currently judges, like Resilience4j's `getMetrics()`.
    ///
    /// In the closed (and open, forced-open, disabled) state the numbers are those of the sliding
    /// window; in the half-open state they are those of the probes.
    ///
    /// ```swift
    /// let metrics = breaker.metrics
    /// print(metrics.failureRate ?? 0, metrics.numberOfBufferedCalls)
    /// ```
    public struct Metrics: Sendable, Hashable {
        /// Failed calls divided by buffered calls, in 0...1; `nil` while fewer than the minimum
        /// number of calls are buffered (the breaker does not judge yet).
        public var failureRate: Double?
        /// Slow calls divided by buffered calls, in 0...1; `nil` below the minimum number of calls.
        public var slowCallRate: Double?
        /// Calls in the window (or probes recorded), ignored calls excluded.
        public var numberOfBufferedCalls: Int
        /// Failed calls among them (slow or not).
        public var numberOfFailedCalls: Int
        /// Successful calls among them (slow or not).
        public var numberOfSuccessfulCalls: Int
        /// Slow calls among them (failed or not).
        public var numberOfSlowCalls: Int
        /// Calls that were both slow and failed.
        public var numberOfSlowFailedCalls: Int
        /// Calls that were slow and succeeded.
        public var numberOfSlowSuccessfulCalls: Int
        /// Calls rejected since the breaker last closed.
        public var numberOfNotPermittedCalls: Int

        /// Creates a snapshot.
        public init(
            failureRate: Double? = nil,
            slowCallRate: Double? = nil,
            numberOfBufferedCalls: Int = 0,
            numberOfFailedCalls: Int = 0,
            numberOfSuccessfulCalls: Int = 0,
            numberOfSlowCalls: Int = 0,
            numberOfSlowFailedCalls: Int = 0,
            numberOfSlowSuccessfulCalls: Int = 0,
            numberOfNotPermittedCalls: Int = 0
        ) {
            self.failureRate = failureRate
            self.slowCallRate = slowCallRate
            self.numberOfBufferedCalls = numberOfBufferedCalls
            self.numberOfFailedCalls = numberOfFailedCalls
            self.numberOfSuccessfulCalls = numberOfSuccessfulCalls
            self.numberOfSlowCalls = numberOfSlowCalls
            self.numberOfSlowFailedCalls = numberOfSlowFailedCalls
            self.numberOfSlowSuccessfulCalls = numberOfSlowSuccessfulCalls
            self.numberOfNotPermittedCalls = numberOfNotPermittedCalls
        }
    }

    /// The ``StateMachine``'s answer to a call that wants to run.
    ///
    /// ```swift
    /// var machine = CircuitBreaker.StateMachine(configuration: .init(minimumNumberOfCalls: 1))
    /// #expect(machine.admit(now: clock.now).decision == .permitted)
    /// ```
    public struct Admission: Sendable, Hashable {
        /// Whether the call runs.
        public enum Decision: Sendable, Hashable {
            /// The breaker is closed (or disabled): run the call and record its outcome.
            case permitted
            /// The breaker is half-open and this call is one of its probes.
            case probe
            /// The breaker is open, forced open, or half-open with every probe slot taken.
            /// `retryAfter` is the remaining open wait (`nil` when unknown: forced open, or
            /// waiting for probes).
            case rejected(retryAfter: Duration?)
        }

        /// Whether the call runs.
        public var decision: Decision
        /// The state change that deciding caused (open to half-open once the wait has passed,
        /// half-open to open when the probes took too long), if any.
        public var transition: Transition?

        /// Creates an admission.
        public init(_ decision: Decision, transition: Transition? = nil) {
            self.decision = decision
            self.transition = transition
        }

        /// Whether the call may run.
        public var isPermitted: Bool {
            if case .rejected = self.decision { return false }
            return true
        }
    }
}
