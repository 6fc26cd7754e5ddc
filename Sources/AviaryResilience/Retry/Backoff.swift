//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

/// The delays between attempts, as an endless `Sequence` of `Duration`s.
///
/// A backoff is a pure value: iterating it twice gives two independent schedules (with different
/// jitter unless the randomness is seeded). ``Retry`` takes one delay per retry from a fresh
/// iterator per call.
///
/// - ``constant(_:)``: the same delay every time.
/// - ``exponential(base:multiplier:cap:jitter:randomness:)``: `min(cap, base × multiplier^n)` for
///   the n-th retry (n from 0), with a ``Jitter`` applied as in the AWS Architecture Blog's
///   "Exponential Backoff And Jitter".
///
/// ```swift
/// let backoff = Backoff.exponential(base: .milliseconds(100), multiplier: 2, cap: .seconds(1), jitter: .none)
/// print(Array(backoff.prefix(5)))
/// // [0.1 seconds, 0.2 seconds, 0.4 seconds, 0.8 seconds, 1.0 seconds]
///
/// // Deterministic jitter, for tests:
/// let seeded = Backoff.exponential(base: .milliseconds(100), jitter: .full, randomness: .seeded(42))
/// ```
public struct Backoff: Sequence, Sendable {
    public typealias Element = Duration

    /// How randomness spreads the delays of many clients apart.
    ///
    /// With `d = min(cap, base × multiplier^n)`:
    /// - ``none``: `d`.
    /// - ``full``: uniformly random in `[0, d]`.
    /// - ``equal``: `d/2` plus a uniformly random part in `[0, d/2]`, so in `[d/2, d]`.
    /// - ``decorrelated``: `min(cap, random(base, previous × 3))`, starting with `previous = base`;
    ///   each delay depends on the previous one rather than on `n`, and `multiplier` is not used.
    public struct Jitter: Sendable, Hashable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable { case none, full, equal, decorrelated }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// No randomness: every client waits exactly `d`.
        public static let none = Jitter(.none)
        /// Uniform in `[0, d]`: the least contention, the widest spread (AWS's recommendation).
        public static let full = Jitter(.full)
        /// Uniform in `[d/2, d]`: never much shorter than the exponential delay.
        public static let equal = Jitter(.equal)
        /// `min(cap, random(base, previous × 3))`.
        public static let decorrelated = Jitter(.decorrelated)

        public var description: String {
            switch self.kind {
            case .none: "none"
            case .full: "full"
            case .equal: "equal"
            case .decorrelated: "decorrelated"
            }
        }

        var isNone: Bool { self.kind == .none }
        var isFull: Bool { self.kind == .full }
        var isEqual: Bool { self.kind == .equal }
        var isDecorrelated: Bool { self.kind == .decorrelated }
    }

    /// Where jitter takes its random numbers from.
    ///
    /// Production code uses ``system``. Tests use ``seeded(_:)`` (every iterator restarts from the
    /// seed, so a backoff's schedule is the same each time it is iterated) or ``generator(_:)``.
    ///
    /// ```swift
    /// let fixed = Backoff.exponential(jitter: .full, randomness: .seeded(7))
    /// #expect(Array(fixed.prefix(3)) == Array(fixed.prefix(3)))
    /// ```
    public struct Randomness: Sendable {
        enum Kind: Sendable {
            case system
            case seeded(UInt64)
            case generator(@Sendable () -> UInt64)
        }
        let kind: Kind

        /// The system's cryptographically secure generator.
        public static let system = Randomness(kind: .system)

        /// A small, fast pseudo-random generator (SplitMix64) started from `seed` for each iterator.
        public static func seeded(_ seed: UInt64) -> Randomness {
            Randomness(kind: .seeded(seed))
        }

        /// Random numbers from `next`, called once per random delay. `next` must return uniformly
        /// distributed 64-bit values (or whatever a test needs).
        public static func generator(_ next: @escaping @Sendable () -> UInt64) -> Randomness {
            Randomness(kind: .generator(next))
        }
    }

    enum Shape: Sendable {
        case constant(Duration)
        case exponential(base: Duration, multiplier: Double, cap: Duration, jitter: Jitter)
    }

    let shape: Shape
    /// The source of randomness used by jitter.
    public var randomness: Randomness

    private init(shape: Shape, randomness: Randomness) {
        self.shape = shape
        self.randomness = randomness
    }

    /// The same `delay` before every retry.
    ///
    /// ```swift
    /// let backoff = Backoff.constant(.milliseconds(200))
    /// ```
    ///
    /// - Parameter delay: the delay before each retry; zero retries at once.
    /// - Precondition: `delay` is not negative.
    public static func constant(_ delay: Duration) -> Backoff {
        precondition(delay >= .zero, "Backoff.constant delay must not be negative, got \(delay)")
        return Backoff(shape: .constant(delay), randomness: .system)
    }

    /// No delay: retry at once.
    public static var immediate: Backoff { .constant(.zero) }

    /// Delays that grow by `multiplier` per retry up to `cap`, spread by `jitter`.
    ///
    /// ```swift
    /// let backoff = Backoff.exponential(base: .milliseconds(50), multiplier: 2, cap: .seconds(2), jitter: .full)
    /// ```
    ///
    /// - Parameters:
    ///   - base: the delay before the first retry, before jitter (default 50 ms).
    ///   - multiplier: the growth factor per retry (default 2); unused by ``Jitter/decorrelated``.
    ///   - cap: the longest delay (default 5 s).
    ///   - jitter: how delays are randomised (default ``Jitter/full``).
    ///   - randomness: where the random numbers come from (default ``Randomness/system``).
    /// - Precondition: `base` is positive, `multiplier >= 1`, `cap >= base`.
    public static func exponential(
        base: Duration = .milliseconds(50),
        multiplier: Double = 2,
        cap: Duration = .seconds(5),
        jitter: Jitter = .full,
        randomness: Randomness = .system
    ) -> Backoff {
        precondition(base > .zero, "Backoff.exponential base must be positive, got \(base)")
        precondition(
            multiplier >= 1 && multiplier.isFinite,
            "Backoff.exponential multiplier must be >= 1, got \(multiplier)"
        )
        precondition(cap >= base, "Backoff.exponential cap (\(cap)) must not be less than base (\(base))")
        return Backoff(
            shape: .exponential(base: base, multiplier: multiplier, cap: cap, jitter: jitter),
            randomness: randomness
        )
    }

    /// A copy that takes its random numbers from `randomness`.
    ///
    /// ```swift
    /// let deterministic = configuration.backoff.withRandomness(.seeded(1))
    /// ```
    public func withRandomness(_ randomness: Randomness) -> Backoff {
        var copy = self
        copy.randomness = randomness
        return copy
    }

    public func makeIterator() -> Iterator {
        Iterator(shape: self.shape, random: RandomSource(self.randomness))
    }

    /// Produces the delays of one schedule; never ends.
    public struct Iterator: IteratorProtocol {
        private let shape: Shape
        private var random: RandomSource
        /// Exponential: the un-jittered delay of the next retry, in nanoseconds.
        private var ceiling: Double
        /// Decorrelated: the previous delay, in nanoseconds.
        private var previous: Int64

        init(shape: Shape, random: RandomSource) {
            self.shape = shape
            self.random = random
            switch shape {
            case .constant(let delay):
                self.ceiling = Double(delay.aviaryNanoseconds)
                self.previous = delay.aviaryNanoseconds
            case .exponential(let base, _, _, _):
                self.ceiling = Double(base.aviaryNanoseconds)
                self.previous = base.aviaryNanoseconds
            }
        }

        public mutating func next() -> Duration? {
            switch self.shape {
            case .constant(let delay):
                return delay
            case .exponential(let base, let multiplier, let cap, let jitter):
                let capNanos = cap.aviaryNanoseconds
                if jitter.isDecorrelated {
                    let baseNanos = base.aviaryNanoseconds
                    let (tripled, overflow) = self.previous.multipliedReportingOverflow(by: 3)
                    let upper = overflow ? capNanos : Swift.min(capNanos, tripled)
                    let lower = Swift.min(baseNanos, upper)
                    let delay = Int64.random(in: lower...upper, using: &self.random)
                    self.previous = delay
                    return .nanoseconds(delay)
                }
                let current = Int64(Swift.min(self.ceiling, Double(capNanos)))
                self.ceiling = Swift.min(self.ceiling * multiplier, Double(capNanos))
                if jitter.isFull {
                    return .nanoseconds(Int64.random(in: 0...current, using: &self.random))
                }
                if jitter.isEqual {
                    let half = current / 2
                    return .nanoseconds(half + Int64.random(in: 0...(current - half), using: &self.random))
                }
                return .nanoseconds(current)
            }
        }
    }
}

/// The random number generator behind a backoff iterator.
struct RandomSource: RandomNumberGenerator {
    private enum Kind {
        case system(SystemRandomNumberGenerator)
        case splitMix(UInt64)
        case generator(@Sendable () -> UInt64)
    }
    private var kind: Kind

    init(_ randomness: Backoff.Randomness) {
        switch randomness.kind {
        case .system: self.kind = .system(SystemRandomNumberGenerator())
        case .seeded(let seed): self.kind = .splitMix(seed)
        case .generator(let next): self.kind = .generator(next)
        }
    }

    mutating func next() -> UInt64 {
        switch self.kind {
        case .system(var generator):
            return generator.next()
        case .splitMix(let state):
            // SplitMix64 (Steele, Lea, Flood 2014): one addition and a 64-bit finaliser per value.
            let advanced = state &+ 0x9E37_79B9_7F4A_7C15
            self.kind = .splitMix(advanced)
            var z = advanced
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        case .generator(let next):
            return next()
        }
    }
}
