//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Synchronization

/// A token bucket: ``Configuration-swift.struct/rate`` tokens per
/// ``Configuration-swift.struct/period``, at most ``Configuration-swift.struct/burst`` saved up.
///
/// The bucket starts full. Each permit costs one token; tokens come back continuously, one every
/// `period / rate`. A burst of up to `burst` calls passes at once, after which calls pass at the
/// steady rate.
///
/// The bucket is stored as one number, as in the generic cell rate algorithm (GCRA): the
/// *theoretical arrival time*, the instant at which the bucket will be full again. A call at `now`
/// costing `n` tokens moves it to `max(tat, now) + n × interval` and is allowed when that is at
/// most `burst × interval` ahead of `now`. The number lives in one `Atomic<Int64>` (nanoseconds)
/// updated with a compare-exchange loop, so an uncontended acquisition is a clock read, a few
/// integer operations and one atomic exchange: no lock, no allocation.
///
/// ```swift
/// let bucket = TokenBucket(.init(rate: 10, period: .seconds(1), burst: 5))
/// let decision = bucket.tryAcquire()
/// if !decision.allowed { throw TooManyRequests(retryAfter: decision.retryAfter) }
/// ```
///
/// The interval between tokens is `period / rate` rounded to the nanosecond, so rates that do not
/// divide the period evenly are off by less than a nanosecond per token.
public final class TokenBucket: RateLimiter {
    /// How a ``TokenBucket`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// Tokens added per ``period`` (tokens). At least 1.
        public var rate: Int
        /// The time in which ``rate`` tokens are added (a duration). Positive.
        public var period: Duration
        /// The most tokens the bucket holds, which is the largest burst (tokens). At least 1.
        public var burst: Int

        /// Creates a configuration.
        ///
        /// - Parameters:
        ///   - rate: tokens added per `period`.
        ///   - period: the time in which `rate` tokens are added.
        ///   - burst: the bucket's capacity; by default `rate`.
        /// - Precondition: `rate >= 1`, `period > .zero`, `burst >= 1`, and `period / rate` is at
        ///   least one nanosecond.
        public init(rate: Int = 100, period: Duration = .seconds(1), burst: Int? = nil) {
            precondition(rate >= 1, "TokenBucket.rate must be at least 1, got \(rate)")
            precondition(period > .zero, "TokenBucket.period must be positive, got \(period)")
            precondition((burst ?? rate) >= 1, "TokenBucket.burst must be at least 1, got \(burst ?? rate)")
            self.rate = rate
            self.period = period
            self.burst = burst ?? rate
        }
    }

    /// The configuration this bucket was built with.
    public let configuration: Configuration
    /// The clock read by ``RateLimiter/tryAcquire(key:permits:)``.
    public let clock: any MonotonicClock
    private let gcra: GCRA
    /// Theoretical arrival time in nanoseconds on `clock`; `.min` is "full since forever".
    private let theoreticalArrival = Atomic<Int64>(.min)

    /// Creates a full bucket.
    ///
    /// - Parameters:
    ///   - configuration: rate, period and burst.
    ///   - clock: where time comes from; tests pass a `ManualClock`.
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.gcra = GCRA(configuration)
    }

    /// Takes `permits` tokens at `now` if the bucket holds them; `key` is ignored.
    ///
    /// - Returns: the decision; ``RateLimitDecision/limit`` is the burst,
    ///   ``RateLimitDecision/resetAfter`` the time until the bucket is full again, and
    ///   ``RateLimitDecision/retryAfter`` the time until the bucket holds `permits` tokens (nil
    ///   when `permits` exceeds the burst).
    /// - Precondition: `permits >= 0`.
    public func tryAcquire(key: String?, permits: Int, now: MonotonicInstant) -> RateLimitDecision {
        precondition(permits >= 0, "permits must not be negative, got \(permits)")
        let gcra = self.gcra
        let now = now.offset.rateLimiterNanoseconds
        var current = self.theoreticalArrival.load(ordering: .relaxed)
        // Only integer arithmetic between the load and the exchange, so that the window in which
        // another thread can interfere stays a few instructions long.
        while true {
            guard let next = gcra.admit(theoreticalArrival: current, permits: permits, now: now) else {
                return gcra.decide(theoreticalArrival: current, permits: permits, now: now).decision
            }
            if next == current { break }
            // Relaxed is enough: the number publishes nothing else.
            let (exchanged, original) = self.theoreticalArrival.weakCompareExchange(
                expected: current,
                desired: next,
                ordering: .relaxed
            )
            if exchanged {
                current = next
                break
            }
            current = original
        }
        return gcra.allowed(owed: current &- now)
    }
}

extension TokenBucket {
    /// The GCRA arithmetic, free of storage so that ``TokenBucket`` (one atomic) and
    /// ``KeyedRateLimiter`` (a table) share it. All times are nanoseconds on one clock.
    struct GCRA: Sendable, Hashable {
        /// Nanoseconds between tokens.
        let interval: Int64
        /// Nanoseconds to refill an empty bucket: `burst × interval`.
        let capacity: Int64
        /// Tokens in a full bucket.
        let burst: Int

        init(_ configuration: Configuration) {
            let periodNanoseconds = configuration.period.aviaryNanoseconds
            let rate = Int64(configuration.rate)
            let (quotient, remainder) = periodNanoseconds.quotientAndRemainder(dividingBy: rate)
            let interval = remainder * 2 >= rate ? quotient + 1 : quotient
            precondition(interval >= 1, "TokenBucket: period / rate must be at least 1ns")
            let (capacity, overflow) = interval.multipliedReportingOverflow(by: Int64(configuration.burst))
            precondition(!overflow, "TokenBucket: burst × period / rate does not fit in Int64 nanoseconds")
            self.interval = interval
            self.capacity = capacity
            self.burst = configuration.burst
        }

        /// The new theoretical arrival time (nil when denied) and the decision.
        struct Step {
            var theoreticalArrival: Int64?
            var decision: RateLimitDecision
        }

        /// The theoretical arrival time after granting `permits` at `now`, or nil when denied.
        @inline(__always)
        func admit(theoreticalArrival: Int64, permits: Int, now: Int64) -> Int64? {
            guard permits <= self.burst else { return nil }
            let newOwed = Swift.max(theoreticalArrival, now) &- now &+ Int64(permits) &* self.interval
            return newOwed <= self.capacity ? now &+ newOwed : nil
        }

        /// The decision for a granted request that leaves `owed` nanoseconds of refill.
        @inline(__always)
        func allowed(owed: Int64) -> RateLimitDecision {
            RateLimitDecision(
                allowed: true,
                limit: self.burst,
                remaining: self.tokens(owed: owed),
                resetAfter: .rateLimiterNanoseconds(owed)
            )
        }

        /// Decides a request of `permits` tokens at `now` against `theoreticalArrival`.
        @inline(__always)
        func decide(theoreticalArrival: Int64, permits: Int, now: Int64) -> Step {
            let base = Swift.max(theoreticalArrival, now)
            let owed = base &- now
            guard permits <= self.burst else {
                return Step(
                    theoreticalArrival: nil,
                    decision: RateLimitDecision(
                        allowed: false,
                        limit: self.burst,
                        remaining: self.tokens(owed: owed),
                        resetAfter: .rateLimiterNanoseconds(owed),
                        retryAfter: nil
                    )
                )
            }
            // permits <= burst, so the cost is at most `capacity`: no overflow.
            let newOwed = owed &+ Int64(permits) &* self.interval
            if newOwed <= self.capacity {
                return Step(theoreticalArrival: now &+ newOwed, decision: self.allowed(owed: newOwed))
            }
            return Step(
                theoreticalArrival: nil,
                decision: RateLimitDecision(
                    allowed: false,
                    limit: self.burst,
                    remaining: self.tokens(owed: owed),
                    resetAfter: .rateLimiterNanoseconds(owed),
                    retryAfter: .rateLimiterNanoseconds(newOwed &- self.capacity)
                )
            )
        }

        /// Whole tokens in the bucket when `owed` nanoseconds of refill are outstanding.
        @inline(__always)
        func tokens(owed: Int64) -> Int {
            // `owed` can exceed `capacity` by a little when callers' clocks readings interleave.
            Int(Swift.max(0, self.capacity &- owed) / self.interval)
        }

        /// Whether the bucket is full at `now`; a full bucket carries no information.
        @inline(__always)
        func isFull(theoreticalArrival: Int64, now: Int64) -> Bool {
            theoreticalArrival <= now
        }
    }
}
