//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// Something that hands out permits at a bounded rate: ``TokenBucket``, ``SlidingWindowLimiter``,
/// ``KeyedRateLimiter``.
///
/// A limiter answers at once and never waits; its ``RateLimitDecision`` says whether the caller
/// may proceed and carries what an HTTP layer needs for `RateLimit-*` and `Retry-After` headers.
/// Limiters that are not keyed ignore `key`. Wrap a limiter in ``RateLimit`` to use it in a
/// ``ResiliencePipeline``.
///
/// ```swift
/// let limiter = TokenBucket(.init(rate: 100, period: .seconds(1), burst: 20))
/// let decision = limiter.tryAcquire()
/// guard decision.allowed else { return .tooManyRequests(headers: decision.headerFields) }
/// ```
public protocol RateLimiter: Sendable {
    /// The clock the limiter reads when no time is given.
    var clock: any MonotonicClock { get }

    /// Takes `permits` permits for `key` at time `now`, if there are enough.
    ///
    /// - Parameters:
    ///   - key: the partition for keyed limiters (a client address, a user id); ignored by
    ///     limiters that are not keyed.
    ///   - permits: how many permits the call costs; 0 only asks for the current state.
    ///   - now: the current time on ``clock``; pass it when you already read the clock.
    /// - Returns: whether the permits were granted, and the quota left.
    /// - Precondition: `permits >= 0`; `now` never goes back by more than the limiter tolerates
    ///   (earlier times are treated as the latest time seen).
    func tryAcquire(key: String?, permits: Int, now: MonotonicInstant) -> RateLimitDecision
}

extension RateLimiter {
    /// Takes `permits` permits for `key` now; see ``tryAcquire(key:permits:now:)``.
    ///
    /// ```swift
    /// let decision = perClient.tryAcquire(key: clientAddress)
    /// ```
    @inlinable
    public func tryAcquire(key: String? = nil, permits: Int = 1) -> RateLimitDecision {
        self.tryAcquire(key: key, permits: permits, now: self.clock.now)
    }
}

/// A rate limiter's answer: whether the call may proceed, and the quota around it.
///
/// The fields map onto the IETF `RateLimit` header fields draft (`RateLimit-Limit`,
/// `RateLimit-Remaining`, `RateLimit-Reset`) and `Retry-After`; ``headerFields`` renders them.
///
/// ```swift
/// let decision = limiter.tryAcquire(key: client)
/// for (name, value) in decision.headerFields { response.headers[name] = value }
/// if !decision.allowed { response.status = 429 }
/// ```
public struct RateLimitDecision: Sendable, Hashable, CustomStringConvertible {
    /// Whether the permits were granted.
    public var allowed: Bool
    /// The quota: the most permits available at once (a token bucket's burst, a window's limit).
    public var limit: Int
    /// Permits left after this decision (whole permits, rounded down).
    public var remaining: Int
    /// How long until the quota is whole again if nobody takes more (a duration; zero when full).
    public var resetAfter: Duration
    /// When denied: how long until the same request would be granted, if nobody takes more.
    /// nil when allowed, and when the request can never be granted (more permits than ``limit``).
    public var retryAfter: Duration?

    /// Creates a decision.
    @inlinable
    public init(allowed: Bool, limit: Int, remaining: Int, resetAfter: Duration, retryAfter: Duration? = nil) {
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.resetAfter = resetAfter
        self.retryAfter = retryAfter
    }

    /// The decision as HTTP header fields, without depending on an HTTP library.
    ///
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (IETF draft
    /// `draft-ietf-httpapi-ratelimit-headers`, the `-Limit`/`-Remaining`/`-Reset` form), plus
    /// `Retry-After` when denied and retrying can succeed. Durations are whole seconds, rounded up,
    /// so that a client waiting that long is never early.
    ///
    /// ```swift
    /// decision.headerFields
    /// // [("RateLimit-Limit", "10"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "2"),
    /// //  ("Retry-After", "1")]
    /// ```
    public var headerFields: [(String, String)] {
        var fields: [(String, String)] = [
            ("RateLimit-Limit", String(self.limit)),
            ("RateLimit-Remaining", String(self.remaining)),
            ("RateLimit-Reset", String(Self.wholeSecondsRoundedUp(self.resetAfter))),
        ]
        if !self.allowed, let retryAfter = self.retryAfter {
            fields.append(("Retry-After", String(Self.wholeSecondsRoundedUp(retryAfter))))
        }
        return fields
    }

    /// Seconds rounded up, computed on integers so that exact seconds stay exact.
    static func wholeSecondsRoundedUp(_ duration: Duration) -> Int64 {
        let nanoseconds = duration.aviaryNanoseconds
        guard nanoseconds > 0 else { return 0 }
        let (seconds, rest) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        return rest == 0 ? seconds : seconds + 1
    }

    public var description: String {
        var text = "\(self.allowed ? "allowed" : "denied") limit=\(self.limit) remaining=\(self.remaining) "
        text += "resetAfter=\(self.resetAfter)"
        if let retryAfter { text += " retryAfter=\(retryAfter)" }
        return text
    }
}

extension Duration {
    /// Whole nanoseconds (truncated toward zero), computed without `components`' 128-bit division
    /// for the durations clocks produce (0 to about 290 years); the hot path of the limiters.
    @inline(__always)
    var rateLimiterNanoseconds: Int64 {
        let attoseconds = self.attoseconds
        let high = attoseconds >> 64
        guard high >= 0, high < 500_000_000 else { return self.aviaryNanoseconds }
        // high < 5e8 keeps the quotient below 2^63, so one 128-by-64-bit division is exact.
        let (quotient, _) = UInt64(1_000_000_000).dividingFullWidth(
            (high: UInt64(truncatingIfNeeded: high), low: UInt64(truncatingIfNeeded: attoseconds))
        )
        return Int64(quotient)
    }

    /// A duration of `nanoseconds`, without overflow-checked 128-bit arithmetic.
    @inline(__always)
    static func rateLimiterNanoseconds(_ nanoseconds: Int64) -> Duration {
        // |nanoseconds| < 2^63, so the product stays below 2^93: no overflow.
        Duration(attoseconds: Int128(nanoseconds) &* 1_000_000_000)
    }
}
