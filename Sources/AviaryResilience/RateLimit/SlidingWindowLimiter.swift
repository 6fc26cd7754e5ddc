//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Synchronization

/// At most ``Configuration-swift.struct/limit`` permits in any ``Configuration-swift.struct/window``,
/// counted with a sliding-window counter.
///
/// Time is cut into fixed windows aligned on the clock's origin. The limiter keeps two counts: the
/// permits granted in the current window and in the one before. At a moment `elapsed` into the
/// current window it estimates the permits of the last full window as
/// `previous × (window − elapsed) / window + current`, i.e. it assumes the previous window's
/// permits were spread evenly. A request is allowed when the estimate plus its permits is at most
/// `limit`.
///
/// This is the *sliding-window counter* (two weighted fixed windows), not a *sliding log*: it takes
/// constant memory (two counts per key), which matters for ``KeyedRateLimiter``, at the price of
/// being approximate when traffic in the previous window was bunched. It never lets through twice
/// the limit at a window edge as a plain fixed window does.
///
/// ```swift
/// let limiter = SlidingWindowLimiter(.init(limit: 600, window: .seconds(60)))
/// guard limiter.tryAcquire().allowed else { throw TooManyRequests() }
/// ```
///
/// The state is three integers behind one `Mutex`; a decision is a few integer operations.
public final class SlidingWindowLimiter: RateLimiter {
    /// How a ``SlidingWindowLimiter`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The most permits in any window (permits). At least 1.
        public var limit: Int
        /// The window's length (a duration). Positive.
        public var window: Duration

        /// Creates a configuration.
        ///
        /// - Precondition: `limit >= 1`, `window > .zero`.
        public init(limit: Int = 100, window: Duration = .seconds(1)) {
            precondition(limit >= 1, "SlidingWindowLimiter.limit must be at least 1, got \(limit)")
            precondition(window > .zero, "SlidingWindowLimiter.window must be positive, got \(window)")
            self.limit = limit
            self.window = window
        }
    }

    /// The configuration this limiter was built with.
    public let configuration: Configuration
    /// The clock read by ``RateLimiter/tryAcquire(key:permits:)``.
    public let clock: any MonotonicClock
    private let rule: Rule
    private let counter = Mutex(Counter())

    /// Creates a limiter with nothing counted yet.
    ///
    /// - Parameters:
    ///   - configuration: limit and window.
    ///   - clock: where time comes from; tests pass a `ManualClock`.
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.rule = Rule(configuration)
    }

    /// Takes `permits` permits at `now` if the estimate leaves room; `key` is ignored.
    ///
    /// - Returns: the decision; ``RateLimitDecision/resetAfter`` is the time until both counted
    ///   windows have slid out, ``RateLimitDecision/retryAfter`` the time until the same request
    ///   fits (nil when `permits` exceeds the limit).
    /// - Precondition: `permits >= 0`.
    public func tryAcquire(key: String?, permits: Int, now: MonotonicInstant) -> RateLimitDecision {
        precondition(permits >= 0, "permits must not be negative, got \(permits)")
        let nowNanoseconds = now.offset.rateLimiterNanoseconds
        let rule = self.rule
        return self.counter.withLock { rule.acquire(&$0, permits: permits, now: nowNanoseconds) }
    }
}

extension SlidingWindowLimiter {
    /// The counts of the current and previous fixed windows.
    struct Counter: Sendable, Hashable {
        /// Start of the current window (nanoseconds, a multiple of the window).
        var windowStart: Int64 = 0
        var current = 0
        var previous = 0
    }

    /// The sliding-window arithmetic, free of storage so that ``SlidingWindowLimiter`` (a mutex)
    /// and ``KeyedRateLimiter`` (a table) share it. All times are nanoseconds on one clock.
    struct Rule: Sendable, Hashable {
        let limit: Int
        let window: Int64

        init(_ configuration: Configuration) {
            self.limit = configuration.limit
            self.window = configuration.window.aviaryNanoseconds
        }

        /// Start of the window containing `now` (floor division, also for negative times).
        @inline(__always)
        func windowStart(containing now: Int64) -> Int64 {
            let remainder = now % self.window
            return now - (remainder < 0 ? remainder + self.window : remainder)
        }

        /// Moves `counter` to the window containing `now`. Times before the current window are
        /// treated as its start (the clock is monotonic; only racing readers go back a little).
        @inline(__always)
        func roll(_ counter: inout Counter, to now: Int64) {
            let start = self.windowStart(containing: now)
            guard start > counter.windowStart else { return }
            counter.previous = start &- counter.windowStart == self.window ? counter.current : 0
            counter.current = 0
            counter.windowStart = start
        }

        /// Whether nothing is counted at `now`: the quota is whole and the counter may be dropped.
        func isEmpty(_ counter: Counter, now: Int64) -> Bool {
            var rolled = counter
            self.roll(&rolled, to: now)
            return rolled.current == 0 && rolled.previous == 0
        }

        /// `previous × (window − elapsed) + count × window`: the estimate scaled by `window`.
        @inline(__always)
        func scaledEstimate(previous: Int, elapsed: Int64, count: Int) -> Int128 {
            Int128(previous) * Int128(self.window - elapsed) + Int128(count) * Int128(self.window)
        }

        func acquire(_ counter: inout Counter, permits: Int, now: Int64) -> RateLimitDecision {
            self.roll(&counter, to: now)
            let elapsed = Swift.max(0, now &- counter.windowStart)
            let scaledLimit = Int128(self.limit) * Int128(self.window)
            let wanted = self.scaledEstimate(
                previous: counter.previous, elapsed: elapsed, count: counter.current + permits)
            if permits <= self.limit, wanted <= scaledLimit {
                counter.current += permits
                return RateLimitDecision(
                    allowed: true,
                    limit: self.limit,
                    remaining: self.remaining(scaledEstimate: wanted),
                    resetAfter: self.resetAfter(counter, elapsed: elapsed)
                )
            }
            let held = self.scaledEstimate(previous: counter.previous, elapsed: elapsed, count: counter.current)
            return RateLimitDecision(
                allowed: false,
                limit: self.limit,
                remaining: self.remaining(scaledEstimate: held),
                resetAfter: self.resetAfter(counter, elapsed: elapsed),
                retryAfter: self.retryAfter(counter, permits: permits, elapsed: elapsed)
            )
        }

        /// `limit − ⌈estimate⌉`, at least 0.
        private func remaining(scaledEstimate: Int128) -> Int {
            let window = Int128(self.window)
            let estimate = (scaledEstimate + window - 1) / window
            return Int(Swift.max(0, Int128(self.limit) - estimate))
        }

        /// Until both windows' counts have slid out: the end of the next window when the current
        /// one counted anything, else the end of the current window when the previous did.
        private func resetAfter(_ counter: Counter, elapsed: Int64) -> Duration {
            if counter.current > 0 { return .rateLimiterNanoseconds(2 * self.window - elapsed) }
            if counter.previous > 0 { return .rateLimiterNanoseconds(self.window - elapsed) }
            return .zero
        }

        /// The earliest time the same request fits if nobody takes more: later in this window as
        /// the previous window's weight fades, or in the next window once this one becomes
        /// "previous".
        private func retryAfter(_ counter: Counter, permits: Int, elapsed: Int64) -> Duration? {
            guard permits <= self.limit else { return nil }
            let window = Int128(self.window)
            let roomNow = self.limit - counter.current - permits
            if roomNow >= 0, counter.previous > 0 {
                // previous × (window − e) ≤ roomNow × window  ⇔  e ≥ window − ⌊roomNow × window / previous⌋
                let fitsAt = window - Int128(roomNow) * window / Int128(counter.previous)
                return .nanoseconds(Int64(fitsAt) - elapsed)
            }
            // Next window: current × (window − e) ≤ (limit − permits) × window.
            let untilNextWindow = self.window - elapsed
            guard counter.current > 0 else { return .nanoseconds(untilNextWindow) }
            let fitsAt = Swift.max(0, window - Int128(self.limit - permits) * window / Int128(counter.current))
            return .nanoseconds(untilNextWindow + Int64(fitsAt))
        }
    }
}
