//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

extension CircuitBreaker {
    /// The breaker's logic without locks, clocks or effects: every method takes the current
    /// instant and returns what it decided.
    ///
    /// ``CircuitBreaker`` holds one in a `Mutex` and performs the effects (events, metrics, span
    /// events) after unlocking. Code that already runs on one thread (a NIO event loop) can own a
    /// state machine directly.
    ///
    /// The semantics are Resilience4j's:
    /// - **closed**: every call is admitted; each recorded outcome enters the sliding window, and
    ///   once the window holds at least ``Configuration/minimumNumberOfCalls`` calls, a failure rate
    ///   or slow call rate `>=` its threshold opens the breaker.
    /// - **open**: calls are rejected with the remaining wait. The first call after the wait moves
    ///   the breaker to half-open and is its first probe (the transition is lazy: no timer runs, and
    ///   ``state`` says `open` until a call arrives).
    /// - **half-open**: ``Configuration/permittedNumberOfCallsInHalfOpenState`` probes are admitted,
    ///   further calls are rejected; an ignored probe frees its slot. Once every probe has been
    ///   recorded, rates `>=` the thresholds re-open the breaker (the wait grows by
    ///   ``Configuration/waitDurationMultiplier``), otherwise it closes with an empty window.
    /// - **forced open** / **disabled**: reject everything / admit everything and record nothing,
    ///   until changed by hand.
    ///
    /// Every transition starts a new *generation*. An outcome recorded with the generation of its
    /// admission is dropped when the generation has changed since, so a slow call admitted while
    /// closed never counts as a probe of a later half-open state.
    ///
    /// ```swift
    /// let clock = ManualClock()
    /// var machine = CircuitBreaker.StateMachine(
    ///     configuration: .init(minimumNumberOfCalls: 1, waitDurationInOpenState: .seconds(30)))
    /// _ = machine.record(.failure, duration: .milliseconds(5), now: clock.now)
    /// #expect(machine.admit(now: clock.now).decision == .rejected(retryAfter: .seconds(30)))
    /// clock.advance(by: .seconds(30))
    /// #expect(machine.admit(now: clock.now).decision == .probe)
    /// ```
    public struct StateMachine: Sendable {
        /// The configuration the machine was created with.
        public let configuration: Configuration
        /// The current state. An open breaker whose wait has passed stays `open` until the next
        /// ``admit(now:)``.
        public private(set) var state: State = .closed
        /// Changes on every transition; see ``record(_:duration:now:generation:)``.
        public private(set) var generation: UInt32 = 0

        private var window: CallWindow
        private let minimumNumberOfCalls: Int
        /// When the open wait ends (open state).
        private var openUntil: MonotonicInstant?
        /// When the half-open state began.
        private var halfOpenSince: MonotonicInstant?
        /// Openings since the breaker last closed; the exponent of the wait's growth.
        private var consecutiveOpenings = 0
        /// Probes admitted in this half-open state (in flight or recorded).
        private var probesAdmitted = 0
        /// Probes recorded in this half-open state.
        private var probes = Tally()
        /// Calls rejected since the breaker last closed.
        private var notPermittedCalls = 0

        /// Creates a closed state machine with an empty window.
        ///
        /// - Precondition: the configuration's preconditions (see ``Configuration``).
        public init(configuration: Configuration) {
            configuration.checkPreconditions()
            self.configuration = configuration
            self.window = CallWindow(configuration.slidingWindow)
            self.minimumNumberOfCalls = configuration.effectiveMinimumNumberOfCalls
        }

        // MARK: Admission

        /// Decides whether a call may run now.
        ///
        /// An open breaker whose wait has passed moves to half-open here and admits the call as its
        /// first probe; a half-open breaker whose ``Configuration/maxWaitDurationInHalfOpenState``
        /// has passed opens again here.
        ///
        /// ```swift
        /// switch machine.admit(now: clock.now).decision {
        /// case .permitted, .probe: runTheCall()
        /// case .rejected(let retryAfter): answer503(retryAfter: retryAfter)
        /// }
        /// ```
        ///
        /// - Parameter now: the current instant.
        /// - Returns: the decision, and the transition it caused, if any.
        public mutating func admit(now: MonotonicInstant) -> Admission {
            switch self.state {
            case .closed, .disabled:
                return Admission(.permitted)
            case .forcedOpen:
                self.notPermittedCalls += 1
                return Admission(.rejected(retryAfter: nil))
            case .open:
                let openUntil = self.openUntil ?? now
                if now >= openUntil {
                    let transition = self.enterHalfOpen(now: now, reason: .openWaitElapsed)
                    self.probesAdmitted = 1
                    return Admission(.probe, transition: transition)
                }
                self.notPermittedCalls += 1
                return Admission(.rejected(retryAfter: now.duration(to: openUntil)))
            case .halfOpen:
                if let transition = self.expireHalfOpen(now: now) {
                    self.notPermittedCalls += 1
                    return Admission(.rejected(retryAfter: self.remainingOpenWait(now: now)), transition: transition)
                }
                if self.probesAdmitted < self.configuration.permittedNumberOfCallsInHalfOpenState {
                    self.probesAdmitted += 1
                    return Admission(.probe)
                }
                self.notPermittedCalls += 1
                return Admission(.rejected(retryAfter: nil))
            }
        }

        // MARK: Recording

        /// Records the outcome of an admitted call.
        ///
        /// A call is slow when `duration > slowCallDuration`. Closed: the call enters the window
        /// and the rates are judged. Half-open: the call is a probe; the last of the permitted
        /// probes decides. Other states: nothing happens.
        ///
        /// ```swift
        /// let generation = machine.generation
        /// guard machine.admit(now: start).isPermitted else { return }
        /// // ... run the call ...
        /// if let transition = machine.record(.failure, duration: start.duration(to: end), now: end,
        ///                                    generation: generation) {
        ///     print(transition)
        /// }
        /// ```
        ///
        /// - Parameters:
        ///   - outcome: what the call says about the upstream.
        ///   - duration: how long the call took.
        ///   - now: the current instant (picks the second's bucket of a time-based window).
        ///   - generation: ``generation`` right after the call was admitted; the outcome is dropped
        ///     when it differs from the current one. `nil` records into the current generation.
        /// - Returns: the transition the outcome caused, if any.
        public mutating func record(
            _ outcome: Outcome,
            duration: Duration,
            now: MonotonicInstant,
            generation: UInt32? = nil
        ) -> Transition? {
            if let generation, generation != self.generation { return nil }
            switch self.state {
            case .closed:
                guard outcome != .ignored else { return nil }
                let code = Tally.code(failed: outcome == .failure, slow: duration > self.configuration.slowCallDuration)
                guard self.window.record(code, second: CallWindow.second(of: now)) else { return nil }
                return self.judgeClosed(now: now)
            case .halfOpen:
                if let transition = self.expireHalfOpen(now: now) { return transition }
                if outcome == .ignored {
                    if self.probesAdmitted > self.probes.calls { self.probesAdmitted -= 1 }
                    return nil
                }
                let permitted = self.configuration.permittedNumberOfCallsInHalfOpenState
                guard self.probes.calls < permitted else { return nil }
                let code = Tally.code(failed: outcome == .failure, slow: duration > self.configuration.slowCallDuration)
                self.probes.add(code)
                guard self.probes.calls == permitted else { return nil }
                if let reason = self.exceededThreshold(self.probes) {
                    return self.enterOpen(now: now, reason: reason)
                }
                return self.enterClosed(reason: .probesSucceeded)
            case .open, .forcedOpen, .disabled:
                return nil
            }
        }

        // MARK: Manual control

        /// Moves to `state` by hand, like Resilience4j's `transitionTo...State()`.
        ///
        /// To `closed`: an empty window. To `open`: a new open wait (a consecutive opening, so it
        /// grows). To `halfOpen`: a new set of probes. Moving to the current state does nothing.
        ///
        /// ```swift
        /// _ = machine.transition(to: .forcedOpen, now: clock.now)
        /// ```
        ///
        /// - Returns: the transition, or `nil` when already in `state`.
        public mutating func transition(to state: State, now: MonotonicInstant) -> Transition? {
            guard state != self.state else { return nil }
            switch state {
            case .closed: return self.enterClosed(reason: .manual)
            case .open: return self.enterOpen(now: now, reason: .manual)
            case .halfOpen: return self.enterHalfOpen(now: now, reason: .manual)
            case .forcedOpen, .disabled:
                let from = self.state
                self.state = state
                self.generation &+= 1
                self.openUntil = nil
                self.halfOpenSince = nil
                if state == .disabled { self.consecutiveOpenings = 0 }
                return Transition(from: from, to: state, reason: .manual)
            }
        }

        /// Closes the breaker with an empty window and forgets past openings (the wait stops
        /// growing), from any state, including closed.
        ///
        /// - Returns: the transition (`closed -> closed` when it was closed).
        public mutating func reset() -> Transition {
            self.enterClosed(reason: .reset)
        }

        // MARK: Queries

        /// The rates and counts the breaker currently judges; see ``CircuitBreaker/Metrics``.
        ///
        /// - Parameter now: the current instant; a time-based window leaves out the seconds that
        ///   have left it by then.
        public func metrics(now: MonotonicInstant) -> Metrics {
            let tally: Tally
            let minimum: Int
            if self.state == .halfOpen {
                tally = self.probes
                minimum = self.configuration.permittedNumberOfCallsInHalfOpenState
            } else {
                tally = self.window.tally(at: CallWindow.second(of: now))
                minimum = self.minimumNumberOfCalls
            }
            let judged = tally.calls >= minimum && tally.calls > 0
            return Metrics(
                failureRate: judged ? tally.failureRate : nil,
                slowCallRate: judged ? tally.slowCallRate : nil,
                numberOfBufferedCalls: tally.calls,
                numberOfFailedCalls: tally.failures,
                numberOfSuccessfulCalls: tally.calls - tally.failures,
                numberOfSlowCalls: tally.slowCalls,
                numberOfSlowFailedCalls: tally.slowFailures,
                numberOfSlowSuccessfulCalls: tally.slowCalls - tally.slowFailures,
                numberOfNotPermittedCalls: self.notPermittedCalls
            )
        }

        /// The time left until an open breaker admits probes; `nil` unless open.
        public func remainingOpenWait(now: MonotonicInstant) -> Duration? {
            guard self.state == .open, let openUntil = self.openUntil else { return nil }
            return max(.zero, now.duration(to: openUntil))
        }

        // MARK: Bulk recording (the breaker's fast path)

        /// Whether a success that is not slow may be counted in bulk (``recordSuccesses(_:second:generation:)``)
        /// instead of one by one: closed with at least the minimum number of calls in the window.
        /// Such a success can neither open the breaker (it lowers both rates, and the window stays
        /// at or above the minimum) nor change a later decision beyond its place in the window.
        /// For a time-based window this holds within ``latestSecond`` only: a later second drops
        /// older calls, which must be judged.
        var acceptsBulkSuccesses: Bool {
            self.state == .closed && self.window.total.calls >= self.minimumNumberOfCalls
        }

        /// The newest second of a time-based window; `nil` for count-based windows.
        var latestSecond: Int64? {
            self.configuration.slidingWindow.isTimeBased ? self.window.latestSecond : nil
        }

        /// Records `count` successes that were not slow, counted while ``acceptsBulkSuccesses``
        /// held in `generation` (and, time-based, in `second`), as if each had been recorded on its
        /// own. Dropped when the generation has changed.
        mutating func recordSuccesses(_ count: Int, second: Int64, generation: UInt32) {
            guard count > 0, generation == self.generation, self.state == .closed else { return }
            self.window.record(0, count: count, second: second)
        }

        // MARK: Transitions

        private func exceededThreshold(_ tally: Tally) -> Transition.Reason? {
            guard tally.calls > 0 else { return nil }
            if tally.failureRate >= self.configuration.failureRateThreshold { return .failureRateExceeded }
            if tally.slowCallRate >= self.configuration.slowCallRateThreshold { return .slowCallRateExceeded }
            return nil
        }

        private mutating func judgeClosed(now: MonotonicInstant) -> Transition? {
            let total = self.window.total
            guard total.calls >= self.minimumNumberOfCalls, let reason = self.exceededThreshold(total) else {
                return nil
            }
            return self.enterOpen(now: now, reason: reason)
        }

        private mutating func expireHalfOpen(now: MonotonicInstant) -> Transition? {
            guard let limit = self.configuration.maxWaitDurationInHalfOpenState,
                let since = self.halfOpenSince,
                now >= since.advanced(by: limit)
            else { return nil }
            return self.enterOpen(now: now, reason: .halfOpenWaitExceeded)
        }

        private mutating func enterOpen(now: MonotonicInstant, reason: Transition.Reason) -> Transition {
            let from = self.state
            self.consecutiveOpenings += 1
            self.openUntil = now.advanced(by: self.configuration.openWait(afterOpenings: self.consecutiveOpenings))
            self.halfOpenSince = nil
            self.state = .open
            self.generation &+= 1
            return Transition(from: from, to: .open, reason: reason)
        }

        private mutating func enterHalfOpen(now: MonotonicInstant, reason: Transition.Reason) -> Transition {
            let from = self.state
            self.state = .halfOpen
            self.halfOpenSince = now
            self.openUntil = nil
            self.probesAdmitted = 0
            self.probes = Tally()
            self.generation &+= 1
            return Transition(from: from, to: .halfOpen, reason: reason)
        }

        private mutating func enterClosed(reason: Transition.Reason) -> Transition {
            let from = self.state
            self.state = .closed
            self.window.removeAll()
            self.openUntil = nil
            self.halfOpenSince = nil
            self.consecutiveOpenings = 0
            self.probesAdmitted = 0
            self.probes = Tally()
            self.notPermittedCalls = 0
            self.generation &+= 1
            return Transition(from: from, to: .closed, reason: reason)
        }
    }
}
