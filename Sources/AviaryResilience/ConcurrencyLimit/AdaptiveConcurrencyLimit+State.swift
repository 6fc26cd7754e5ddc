//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

/// The built-in algorithms dispatched statically (no existential, no allocation per sample);
/// custom ones go through an existential.
enum AnyConcurrencyLimitAlgorithm: Sendable {
    case aimd(AIMDLimit)
    case gradient(GradientLimit)
    case custom(any ConcurrencyLimitAlgorithm)

    init(_ algorithm: AdaptiveConcurrencyLimit.Algorithm, initialLimit: Int, minLimit: Int, maxLimit: Int) {
        switch algorithm.kind {
        case .aimd(let parameters):
            self = .aimd(
                AIMDLimit(initialLimit: initialLimit, minLimit: minLimit, maxLimit: maxLimit, parameters: parameters)
            )
        case .gradient(let parameters):
            self = .gradient(
                GradientLimit(
                    initialLimit: initialLimit, minLimit: minLimit, maxLimit: maxLimit, parameters: parameters)
            )
        case .custom(let make):
            self = .custom(make(initialLimit, minLimit, maxLimit))
        }
    }

    var limit: Int {
        switch self {
        case .aimd(let algorithm): algorithm.limit
        case .gradient(let algorithm): algorithm.limit
        case .custom(let algorithm): algorithm.limit
        }
    }

    mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
        switch self {
        case .aimd(var algorithm):
            let limit = algorithm.update(rtt: rtt, inflight: inflight, didDrop: didDrop, now: now)
            self = .aimd(algorithm)
            return limit
        case .gradient(var algorithm):
            let limit = algorithm.update(rtt: rtt, inflight: inflight, didDrop: didDrop, now: now)
            self = .gradient(algorithm)
            return limit
        case .custom(var algorithm):
            let limit = algorithm.update(rtt: rtt, inflight: inflight, didDrop: didDrop, now: now)
            self = .custom(algorithm)
            return limit
        }
    }
}

extension AdaptiveConcurrencyLimit {
    /// The limiter's state machine: admission by priority, and the limit learned from samples.
    ///
    /// Methods return decisions; the policy performs effects (errors, metrics, events) after
    /// unlocking.
    struct State: Sendable {
        /// What ``admit(_:)`` decided.
        enum Admission: Equatable {
            /// Run the call; `inflight` counts it.
            case admitted(inflight: Int)
            /// Shed the call: `inflight` calls are running and `priority` calls need fewer than `cap`.
            case rejected(limit: Int, inflight: Int, cap: Int)
        }

        /// A change of the integer limit.
        struct LimitChange: Equatable {
            var from: Int
            var to: Int
        }

        private var algorithm: AnyConcurrencyLimitAlgorithm
        private let minLimit: Int
        private let maxLimit: Int
        private let sheddableFraction: Double
        private let criticalBoost: Double
        private(set) var limit: Int
        private(set) var inflight = 0
        /// Admission caps derived from `limit`, recomputed only when it changes.
        private(set) var sheddableCap = 0
        private(set) var criticalCap = 0

        init(_ configuration: Configuration) {
            self.algorithm = AnyConcurrencyLimitAlgorithm(
                configuration.algorithm,
                initialLimit: configuration.initialLimit,
                minLimit: configuration.minLimit,
                maxLimit: configuration.maxLimit
            )
            self.minLimit = configuration.minLimit
            self.maxLimit = configuration.maxLimit
            self.sheddableFraction = configuration.sheddableFraction
            self.criticalBoost = configuration.criticalBoost
            self.limit = min(configuration.maxLimit, max(configuration.minLimit, self.algorithm.limit))
            self.updateCaps()
        }

        /// How many calls may be in flight for a call of `priority` to be admitted (strictly fewer).
        func cap(for priority: PolicyContext.Priority) -> Int {
            if priority < .normal { return self.sheddableCap }
            if priority < .critical { return self.limit }
            return self.criticalCap
        }

        /// Admits a call of `priority` if fewer than its cap are in flight.
        mutating func admit(_ priority: PolicyContext.Priority) -> Admission {
            let cap = self.cap(for: priority)
            guard self.inflight < cap else {
                return .rejected(limit: self.limit, inflight: self.inflight, cap: cap)
            }
            self.inflight += 1
            return .admitted(inflight: self.inflight)
        }

        /// Ends an admitted call and feeds its sample to the algorithm unless it is to be ignored.
        ///
        /// - Returns: the change of the integer limit, if any.
        mutating func complete(
            inflightAtStart: Int,
            rtt: Duration,
            outcome: Outcome,
            now: MonotonicInstant
        ) -> LimitChange? {
            precondition(self.inflight > 0, "AdaptiveConcurrencyLimit: more calls completed than admitted")
            self.inflight -= 1
            if outcome == .ignored { return nil }
            let proposed = self.algorithm.update(
                rtt: rtt, inflight: inflightAtStart, didDrop: outcome == .dropped, now: now)
            let next = min(self.maxLimit, max(self.minLimit, proposed))
            guard next != self.limit else { return nil }
            let change = LimitChange(from: self.limit, to: next)
            self.limit = next
            self.updateCaps()
            return change
        }

        private mutating func updateCaps() {
            // At least one sheddable call may run, so that a service that only gets sheddable
            // traffic still produces samples and can raise its limit again.
            self.sheddableCap = max(1, Int((Double(self.limit) * self.sheddableFraction).rounded(.down)))
            let boosted = min((Double(self.limit) * self.criticalBoost).rounded(.up), Double(Int32.max))
            self.criticalCap = max(self.limit, Int(boosted))
        }
    }
}
