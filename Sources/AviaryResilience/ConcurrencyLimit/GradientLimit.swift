//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// A limit that follows the ratio of long-term to short-term round-trip time, with an allowance
/// for a small queue: the design of Netflix concurrency-limits' *Gradient2*.
///
/// Two exponential moving averages track the RTT: a short one (``Parameters/shortWindow``
/// samples, "now") and a long one (``Parameters/longWindow`` samples, "normal"). Each sample
/// computes
///
/// ```
/// gradient = clamp(tolerance × longRTT / shortRTT, 0.5, 1)
/// target   = limit × gradient + queueSize
/// limit    = limit × (1 − smoothing) + target × smoothing     (then clamped to minLimit...maxLimit)
/// ```
///
/// While latency stays within `tolerance` of normal the gradient is 1 and the limit grows by
/// `queueSize × smoothing` per sample; when latency rises above that, the gradient falls below 1
/// and the limit shrinks, by at most half per sample before smoothing. The `queueSize` term keeps
/// a few calls queued upstream so the limit can probe upward, and puts a floor under the shrink:
/// under sustained pressure the limit settles near `queueSize / (1 − gradient)` unless calls are
/// dropped. When latency falls to under half of normal, the long average is pulled down by 5 % per
/// sample so a new, faster normal is learned quickly.
///
/// Differences from Gradient2, on purpose:
/// - Samples are per call, so the short window is an EMA of 10 calls instead of a sampling window.
/// - Like Gradient2's "app-limited" check, a sample moves the limit only while the limit is in use
///   (`inflight ≥ limit × minimumUtilization`); it still updates the averages. Without the check,
///   per-call noise under light load ratchets an idle limit down to its floor, and a burst is then
///   shed while the limit grows back.
/// - A drop (timeout, overload error) multiplies the limit by ``Parameters/dropBackoff`` and is not
///   a latency sample: a fast 503 would otherwise look like an improvement.
///
/// Why Gradient2 rather than Envoy's gradient controller: Envoy measures a minimum RTT in
/// periodic windows during which it pins the limit low, which needs a timer and a phase machine
/// outside the sample path; Gradient2 needs nothing but the samples, so it stays a pure value.
///
/// ```swift
/// var gradient = GradientLimit(initialLimit: 20, minLimit: 4, maxLimit: 200)
/// gradient.update(rtt: .milliseconds(10), inflight: 20, didDrop: false, now: clock.now)
/// ```
public struct GradientLimit: ConcurrencyLimitAlgorithm, Hashable {
    /// The gradient algorithm's tuning knobs.
    public struct Parameters: Sendable, Hashable {
        /// How many recent calls the short-term RTT average spans (its EMA window); at least 1.
        /// Default 10 calls.
        public var shortWindow: Int
        /// How many calls the long-term RTT average spans; at least `shortWindow`. Default 600 calls.
        public var longWindow: Int
        /// How many times the long-term RTT the short-term RTT may reach before the limit shrinks;
        /// at least 1. Default 1.5.
        public var tolerance: Double
        /// Calls allowed to queue upstream on top of the RTT-derived limit; at least 0. Default 4.
        public var queueSize: Int
        /// The weight (0 < w ≤ 1) of each new target in the limit; lower is smoother and slower.
        /// Default 0.2.
        public var smoothing: Double
        /// The factor a dropped call multiplies the limit by, in `0 < factor ≤ 1` (1 ignores
        /// drops). Default 0.9.
        public var dropBackoff: Double
        /// The share of the limit (0...1) that must have been in flight when a call started for its
        /// latency to move the limit (up or down); drops always count. Default 0.5.
        public var minimumUtilization: Double

        /// Creates gradient parameters.
        ///
        /// - Precondition: `1 ≤ shortWindow ≤ longWindow`, `tolerance ≥ 1`, `queueSize ≥ 0`,
        ///   `0 < smoothing ≤ 1`, `0 < dropBackoff ≤ 1`, `0 ≤ minimumUtilization ≤ 1`.
        public init(
            shortWindow: Int = 10,
            longWindow: Int = 600,
            tolerance: Double = 1.5,
            queueSize: Int = 4,
            smoothing: Double = 0.2,
            dropBackoff: Double = 0.9,
            minimumUtilization: Double = 0.5
        ) {
            precondition(shortWindow >= 1, "GradientLimit.shortWindow must be at least 1")
            precondition(longWindow >= shortWindow, "GradientLimit.longWindow must be at least shortWindow")
            precondition(tolerance >= 1, "GradientLimit.tolerance must be at least 1")
            precondition(queueSize >= 0, "GradientLimit.queueSize must not be negative")
            precondition(smoothing > 0 && smoothing <= 1, "GradientLimit.smoothing must be in (0, 1]")
            precondition(dropBackoff > 0 && dropBackoff <= 1, "GradientLimit.dropBackoff must be in (0, 1]")
            precondition(
                minimumUtilization >= 0 && minimumUtilization <= 1,
                "GradientLimit.minimumUtilization must be in 0...1"
            )
            self.shortWindow = shortWindow
            self.longWindow = longWindow
            self.tolerance = tolerance
            self.queueSize = queueSize
            self.smoothing = smoothing
            self.dropBackoff = dropBackoff
            self.minimumUtilization = minimumUtilization
        }
    }

    /// The lowest the limit goes.
    public let minLimit: Int
    /// The highest the limit goes.
    public let maxLimit: Int
    /// The tuning knobs.
    public let parameters: Parameters
    /// The limit before rounding down, in `minLimit...maxLimit`.
    private var estimate: Double
    /// Short-term RTT average in seconds; nil before the first sample.
    private var shortRTTSeconds: Double?
    /// Long-term RTT average in seconds; nil before the first sample.
    private var longRTTSeconds: Double?

    /// Creates a gradient limit starting at `initialLimit`.
    ///
    /// - Precondition: `1 ≤ minLimit ≤ initialLimit ≤ maxLimit`.
    public init(initialLimit: Int, minLimit: Int, maxLimit: Int, parameters: Parameters = .init()) {
        precondition(minLimit >= 1, "GradientLimit.minLimit must be at least 1, got \(minLimit)")
        precondition(
            minLimit <= initialLimit && initialLimit <= maxLimit,
            "GradientLimit needs minLimit ≤ initialLimit ≤ maxLimit, got \(minLimit), \(initialLimit), \(maxLimit)"
        )
        self.minLimit = minLimit
        self.maxLimit = maxLimit
        self.parameters = parameters
        self.estimate = Double(initialLimit)
    }

    /// The current limit, always in `minLimit...maxLimit`.
    public var limit: Int {
        Int(self.estimate.rounded(.down))
    }

    /// The short-term RTT average ("now"); nil before the first latency sample.
    public var shortTermRTT: Duration? {
        self.shortRTTSeconds.map { Duration.aviarySeconds($0) }
    }

    /// The long-term RTT average ("normal"); nil before the first latency sample.
    public var longTermRTT: Duration? {
        self.longRTTSeconds.map { Duration.aviarySeconds($0) }
    }

    /// Takes one sample; see ``ConcurrencyLimitAlgorithm/update(rtt:inflight:didDrop:now:)``.
    @discardableResult
    public mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
        let lower = Double(self.minLimit)
        let upper = Double(self.maxLimit)
        if didDrop {
            self.estimate = min(upper, max(lower, self.estimate * self.parameters.dropBackoff))
            return self.limit
        }
        // A floor of 1 ns keeps the ratio finite for zero-length samples (a ManualClock at rest).
        let sample = max(rtt.aviarySeconds, 1e-9)
        let short = Self.average(self.shortRTTSeconds, sample, window: self.parameters.shortWindow)
        var long = Self.average(self.longRTTSeconds, sample, window: self.parameters.longWindow)
        if long > short * 2 {
            // Latency fell far below normal: let "normal" catch up instead of waiting 600 calls.
            long *= 0.95
        }
        self.shortRTTSeconds = short
        self.longRTTSeconds = long

        guard Double(inflight) >= self.estimate * self.parameters.minimumUtilization else {
            // Not in use: the sample says nothing about what more concurrency would do.
            return self.limit
        }
        let gradient = min(1, max(0.5, self.parameters.tolerance * long / short))
        let target = self.estimate * gradient + Double(self.parameters.queueSize)
        let next = self.estimate * (1 - self.parameters.smoothing) + target * self.parameters.smoothing
        self.estimate = min(upper, max(lower, next))
        return self.limit
    }

    /// One step of an exponential moving average over `window` samples, seeded by the first.
    private static func average(_ current: Double?, _ sample: Double, window: Int) -> Double {
        guard let current else { return sample }
        let alpha = 2 / (Double(window) + 1)
        return current + alpha * (sample - current)
    }
}
