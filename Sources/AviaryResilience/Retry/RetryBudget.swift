//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Synchronization

/// Limits retries to a share of recent requests, so that retries cannot multiply the load on an
/// upstream that is already failing.
///
/// Over a sliding window (``Configuration/window``, kept in ``Configuration/bucketCount``
/// buckets), the budget allows `ratio × requests + minRetriesPerSecond × window` retries. Every
/// first attempt calls ``deposit()``; every retry calls ``tryWithdraw()``, which fails when the
/// window's retries have reached that allowance. The shape is Finagle's `RetryBudget` and gRPC's
/// retry throttling; the defaults (20 % plus 10 retries per second over 10 s) are Finagle's.
///
/// One budget can be shared by every ``Retry`` (and ``Hedging``) that calls the same upstream, or
/// used on its own:
///
/// ```swift
/// let budget = RetryBudget(.init(ratio: 0.1, minRetriesPerSecond: 5))
/// let reads = Retry(.init(name: "inventory.reads", budget: budget))
/// let writes = Retry(.init(name: "inventory.writes", retryNonIdempotent: true, budget: budget))
///
/// // Standalone, in a hand-written loop:
/// budget.deposit()
/// if requestFailed, budget.tryWithdraw() { /* retry */ }
/// ```
public final class RetryBudget: Sendable {
    /// How a ``RetryBudget`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The share of recent requests that may be retried, in `0...1` (default 0.2, i.e. 20 %).
        public var ratio: Double
        /// Retries allowed per second regardless of traffic (default 10), so that a quiet client
        /// can still retry. Over the window this is a reserve of `minRetriesPerSecond × window`.
        public var minRetriesPerSecond: Double
        /// How far back requests and retries are counted (default 10 s).
        public var window: Duration
        /// How many buckets the window is kept in (default 10): counts expire one bucket at a
        /// time, so the window slides in steps of `window / bucketCount`.
        public var bucketCount: Int

        /// Creates a configuration.
        ///
        /// - Precondition: `ratio` in `0...1`, `minRetriesPerSecond >= 0`, `window` positive,
        ///   `bucketCount >= 1` and `window / bucketCount` at least one nanosecond.
        public init(
            ratio: Double = 0.2,
            minRetriesPerSecond: Double = 10,
            window: Duration = .seconds(10),
            bucketCount: Int = 10
        ) {
            precondition((0...1).contains(ratio), "RetryBudget.ratio must be in 0...1, got \(ratio)")
            precondition(
                minRetriesPerSecond >= 0 && minRetriesPerSecond.isFinite,
                "RetryBudget.minRetriesPerSecond must be >= 0, got \(minRetriesPerSecond)"
            )
            precondition(window > .zero, "RetryBudget.window must be positive, got \(window)")
            precondition(bucketCount >= 1, "RetryBudget.bucketCount must be >= 1, got \(bucketCount)")
            precondition(
                window.aviaryNanoseconds / Int64(bucketCount) >= 1,
                "RetryBudget.window / bucketCount must be at least 1 ns"
            )
            self.ratio = ratio
            self.minRetriesPerSecond = minRetriesPerSecond
            self.window = window
            self.bucketCount = bucketCount
        }
    }

    /// The configuration this budget was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let window: Mutex<Window>

    /// Creates a budget.
    ///
    /// - Parameters:
    ///   - configuration: the ratio, reserve and window.
    ///   - clock: the clock that ages the window (a `ManualClock` in tests).
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.window = Mutex(Window(configuration: configuration))
    }

    /// Records a request (a first attempt). Call it once per call, not per retry.
    public func deposit() {
        let now = self.clock.now
        self.window.withLock { $0.deposit(at: now) }
    }

    /// Takes one retry from the budget if there is room.
    ///
    /// - Returns: `true` if the retry may go ahead (and is now counted), `false` if the budget
    ///   is exhausted.
    public func tryWithdraw() -> Bool {
        let now = self.clock.now
        return self.window.withLock { $0.withdraw(at: now) }
    }

    /// The number of retries that ``tryWithdraw()`` would allow now.
    public var available: Int {
        let now = self.clock.now
        return self.window.withLock { $0.available(at: now) }
    }

    /// The sliding window of request and retry counts: a ring of buckets, each stamped with the
    /// index of the time slice it counts (`offset / bucketWidth`). A plain value, testable without
    /// locks or clocks.
    struct Window: Sendable {
        private struct Bucket: Sendable {
            var slice: Int64
            var requests: Int
            var retries: Int
        }

        private var buckets: [Bucket]
        private let bucketWidth: Int64
        private let ratio: Double
        private let reserve: Double

        init(configuration: Configuration) {
            self.bucketWidth = configuration.window.aviaryNanoseconds / Int64(configuration.bucketCount)
            self.buckets = Array(
                repeating: Bucket(slice: .min, requests: 0, retries: 0),
                count: configuration.bucketCount
            )
            self.ratio = configuration.ratio
            self.reserve = configuration.minRetriesPerSecond * configuration.window.aviarySeconds
        }

        mutating func deposit(at now: MonotonicInstant) {
            let index = self.bucket(at: now)
            self.buckets[index].requests += 1
        }

        mutating func withdraw(at now: MonotonicInstant) -> Bool {
            let index = self.bucket(at: now)
            guard self.available(at: now) > 0 else { return false }
            self.buckets[index].retries += 1
            return true
        }

        func available(at now: MonotonicInstant) -> Int {
            let current = self.slice(at: now)
            let oldest = current - Int64(self.buckets.count) + 1
            var requests = 0
            var retries = 0
            for bucket in self.buckets where bucket.slice >= oldest && bucket.slice <= current {
                requests += bucket.requests
                retries += bucket.retries
            }
            // A small epsilon keeps 0.2 × 5 from rounding below 1.
            let allowance = (self.ratio * Double(requests) + self.reserve + 1e-9).rounded(.down)
            let allowed = allowance >= Double(Int.max) ? Int.max : Int(allowance)
            return max(0, allowed - retries)
        }

        private func slice(at now: MonotonicInstant) -> Int64 {
            let nanos = now.offset.aviaryNanoseconds
            // Floor division, so that instants before the clock's origin land in earlier slices.
            let quotient = nanos / self.bucketWidth
            return (nanos % self.bucketWidth < 0) ? quotient - 1 : quotient
        }

        /// The index of the bucket for `now`, cleared first if it held an older slice.
        private mutating func bucket(at now: MonotonicInstant) -> Int {
            let slice = self.slice(at: now)
            let count = Int64(self.buckets.count)
            let index = Int(((slice % count) + count) % count)
            if self.buckets[index].slice != slice {
                self.buckets[index] = Bucket(slice: slice, requests: 0, retries: 0)
            }
            return index
        }
    }
}
