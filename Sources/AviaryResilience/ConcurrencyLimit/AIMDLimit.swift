//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// Additive increase, multiplicative decrease: grow the limit by a constant on every good call,
/// cut it by a ratio on every bad one.
///
/// A call is *bad* when it was dropped (a timeout, an overload error) or when it succeeded but
/// took longer than ``Parameters/slowCallThreshold``: a slow success is the first sign of a queue
/// building up upstream, long before errors appear. A bad call sets the limit to
/// `floor(limit × backoffRatio)`, which always lowers it by at least one until ``minLimit``.
///
/// A good call raises the limit by ``Parameters/increase``, but only while the limit is in use
/// (`inflight ≥ limit × utilizationForIncrease`): a service with 3 calls in flight has learned
/// nothing about whether it could take 300, and a limit that grew unused would not protect it when
/// load arrives.
///
/// AIMD is simple, predictable and reacts to errors; it needs a latency threshold chosen by hand.
/// ``GradientLimit`` learns what "slow" means from the observed round-trip times instead.
///
/// ```swift
/// var aimd = AIMDLimit(
///     initialLimit: 10, minLimit: 2, maxLimit: 100,
///     parameters: .init(slowCallThreshold: .milliseconds(250))
/// )
/// aimd.update(rtt: .milliseconds(20), inflight: 8, didDrop: false, now: clock.now)  // 11
/// aimd.update(rtt: .milliseconds(900), inflight: 8, didDrop: false, now: clock.now) // 9 (slow)
/// ```
public struct AIMDLimit: ConcurrencyLimitAlgorithm, Hashable {
    /// AIMD's tuning knobs.
    public struct Parameters: Sendable, Hashable {
        /// A call that takes longer than this counts as a drop even when it succeeds. Must be
        /// positive. Default 1 second.
        public var slowCallThreshold: Duration
        /// The factor a drop or slow call multiplies the limit by, in `0 < ratio < 1`. Default 0.9.
        public var backoffRatio: Double
        /// How many calls a good call adds to the limit; at least 1. Default 1.
        public var increase: Int
        /// The share of the limit (0...1) that must have been in flight when a good call started
        /// for it to raise the limit. 0 grows on every good call. Default 0.5.
        public var utilizationForIncrease: Double

        /// Creates AIMD parameters.
        ///
        /// - Precondition: `slowCallThreshold > 0`, `0 < backoffRatio < 1`, `increase ≥ 1`,
        ///   `0 ≤ utilizationForIncrease ≤ 1`.
        public init(
            slowCallThreshold: Duration = .seconds(1),
            backoffRatio: Double = 0.9,
            increase: Int = 1,
            utilizationForIncrease: Double = 0.5
        ) {
            precondition(slowCallThreshold > .zero, "AIMDLimit.slowCallThreshold must be positive")
            precondition(backoffRatio > 0 && backoffRatio < 1, "AIMDLimit.backoffRatio must be in (0, 1)")
            precondition(increase >= 1, "AIMDLimit.increase must be at least 1")
            precondition(
                utilizationForIncrease >= 0 && utilizationForIncrease <= 1,
                "AIMDLimit.utilizationForIncrease must be in 0...1"
            )
            self.slowCallThreshold = slowCallThreshold
            self.backoffRatio = backoffRatio
            self.increase = increase
            self.utilizationForIncrease = utilizationForIncrease
        }
    }

    /// The current limit, always in `minLimit...maxLimit`.
    public private(set) var limit: Int
    /// The lowest the limit goes.
    public let minLimit: Int
    /// The highest the limit goes.
    public let maxLimit: Int
    /// The tuning knobs.
    public let parameters: Parameters

    /// Creates an AIMD limit starting at `initialLimit`.
    ///
    /// - Precondition: `1 ≤ minLimit ≤ initialLimit ≤ maxLimit`.
    public init(initialLimit: Int, minLimit: Int, maxLimit: Int, parameters: Parameters = .init()) {
        precondition(minLimit >= 1, "AIMDLimit.minLimit must be at least 1, got \(minLimit)")
        precondition(
            minLimit <= initialLimit && initialLimit <= maxLimit,
            "AIMDLimit needs minLimit ≤ initialLimit ≤ maxLimit, got \(minLimit), \(initialLimit), \(maxLimit)"
        )
        self.limit = initialLimit
        self.minLimit = minLimit
        self.maxLimit = maxLimit
        self.parameters = parameters
    }

    /// Takes one sample; see ``ConcurrencyLimitAlgorithm/update(rtt:inflight:didDrop:now:)``.
    @discardableResult
    public mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
        if didDrop || rtt > self.parameters.slowCallThreshold {
            let reduced = Int((Double(self.limit) * self.parameters.backoffRatio).rounded(.down))
            self.limit = max(self.minLimit, reduced)
        } else if Double(inflight) >= Double(self.limit) * self.parameters.utilizationForIncrease {
            let (raised, overflow) = self.limit.addingReportingOverflow(self.parameters.increase)
            self.limit = overflow ? self.maxLimit : min(self.maxLimit, raised)
        }
        return self.limit
    }
}
