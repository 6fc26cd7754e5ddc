//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Synchronization

/// A rate limiter per key — per client address, per user, per JWT claim — with bounded memory.
///
/// Each key gets its own token bucket or sliding window, created on the key's first call. At most
/// ``Configuration-swift.struct/maxKeys`` keys are tracked; a new key beyond that evicts one:
/// first a key whose quota is whole again (a full bucket, an empty window carries no information,
/// so dropping it changes no decision), looking at the 8 least recently used keys, and otherwise
/// the least recently used key. An attacker inventing keys can therefore grow memory only to
/// `maxKeys` entries; what it can do is push other idle keys out, which costs them nothing, or push
/// out busy keys when it controls more than `maxKeys` active keys, which resets their quota. Size
/// `maxKeys` above the number of keys expected to be active at once.
///
/// Calls without a key follow ``Configuration-swift.struct/missingKey``.
///
/// ```swift
/// let perClient = KeyedRateLimiter(.init(
///     algorithm: .tokenBucket(.init(rate: 20, period: .seconds(1), burst: 40)),
///     maxKeys: 50_000
/// ))
/// let decision = perClient.tryAcquire(key: request.clientAddress)
/// ```
///
/// Memory per key is one table entry: the key, 8 bytes (token bucket) or 24 bytes (sliding window)
/// of state and two links. Keys are stored as given; bound their length where they come from.
public final class KeyedRateLimiter: RateLimiter {
    /// The algorithm applied to each key.
    public struct Algorithm: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Wrapped: Hashable, Sendable {
            case tokenBucket(TokenBucket.Configuration)
            case slidingWindow(SlidingWindowLimiter.Configuration)
        }

        fileprivate let wrapped: Wrapped

        /// A ``TokenBucket`` per key.
        public static func tokenBucket(_ configuration: TokenBucket.Configuration) -> Algorithm {
            Algorithm(wrapped: .tokenBucket(configuration))
        }

        /// A ``SlidingWindowLimiter`` per key.
        public static func slidingWindow(_ configuration: SlidingWindowLimiter.Configuration) -> Algorithm {
            Algorithm(wrapped: .slidingWindow(configuration))
        }

        public var description: String {
            switch self.wrapped {
            case .tokenBucket(let c): "tokenBucket(rate: \(c.rate), period: \(c.period), burst: \(c.burst))"
            case .slidingWindow(let c): "slidingWindow(limit: \(c.limit), window: \(c.window))"
            }
        }
    }

    /// How a ``KeyedRateLimiter`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The limiter each key gets.
        public var algorithm: Algorithm
        /// The most keys tracked at once (keys). At least 1.
        public var maxKeys: Int
        /// What calls without a key do; by default they share the key `""`.
        public var missingKey: MissingKeyBehavior

        /// Creates a configuration.
        ///
        /// - Precondition: `maxKeys >= 1`.
        public init(
            algorithm: Algorithm = .tokenBucket(.init()),
            maxKeys: Int = 10_000,
            missingKey: MissingKeyBehavior = .shareOneKey
        ) {
            precondition(maxKeys >= 1, "KeyedRateLimiter.maxKeys must be at least 1, got \(maxKeys)")
            self.algorithm = algorithm
            self.maxKeys = maxKeys
            self.missingKey = missingKey
        }
    }

    /// Per-key state of either algorithm.
    private enum KeyState: Sendable {
        case bucket(theoreticalArrival: Int64)
        case window(SlidingWindowLimiter.Counter)
    }

    private enum Engine: Sendable {
        case bucket(TokenBucket.GCRA)
        case window(SlidingWindowLimiter.Rule)

        var limit: Int {
            switch self {
            case .bucket(let gcra): gcra.burst
            case .window(let rule): rule.limit
            }
        }

        var fresh: KeyState {
            switch self {
            case .bucket: .bucket(theoreticalArrival: .min)
            case .window: .window(SlidingWindowLimiter.Counter())
            }
        }

        @inline(__always)
        func acquire(_ state: inout KeyState, permits: Int, now: Int64) -> RateLimitDecision {
            switch (self, state) {
            case (.bucket(let gcra), .bucket(let arrival)):
                let step = gcra.decide(theoreticalArrival: arrival, permits: permits, now: now)
                if let next = step.theoreticalArrival { state = .bucket(theoreticalArrival: next) }
                return step.decision
            case (.window(let rule), .window(var counter)):
                let decision = rule.acquire(&counter, permits: permits, now: now)
                state = .window(counter)
                return decision
            default:
                preconditionFailure("KeyedRateLimiter: key state does not match the algorithm")
            }
        }

        /// Whether the key's quota is whole at `now`, so the entry can be dropped.
        func isEmpty(_ state: KeyState, now: Int64) -> Bool {
            switch (self, state) {
            case (.bucket(let gcra), .bucket(let arrival)): gcra.isFull(theoreticalArrival: arrival, now: now)
            case (.window(let rule), .window(let counter)): rule.isEmpty(counter, now: now)
            default: true
            }
        }
    }

    /// The configuration this limiter was built with.
    public let configuration: Configuration
    /// The clock read by ``RateLimiter/tryAcquire(key:permits:)``.
    public let clock: any MonotonicClock
    private let engine: Engine
    private let table: Mutex<LRUTable<KeyState>>

    /// Creates a limiter that tracks no key yet.
    ///
    /// - Parameters:
    ///   - configuration: the algorithm per key, the key cap and what keyless calls do.
    ///   - clock: where time comes from; tests pass a `ManualClock`.
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        switch configuration.algorithm.wrapped {
        case .tokenBucket(let bucket): self.engine = .bucket(TokenBucket.GCRA(bucket))
        case .slidingWindow(let window): self.engine = .window(SlidingWindowLimiter.Rule(window))
        }
        self.table = Mutex(LRUTable(capacity: configuration.maxKeys))
    }

    /// The number of keys tracked now; never more than ``Configuration-swift.struct/maxKeys``.
    public var trackedKeyCount: Int {
        self.table.withLock { $0.count }
    }

    /// Whether `key` is tracked now (it was used and not evicted).
    public func isTracking(key: String) -> Bool {
        self.table.withLock { $0.contains(key) }
    }

    /// Drops every key whose quota is whole at `now`, e.g. from a periodic maintenance task. Not
    /// needed for the memory bound, which holds without it.
    ///
    /// - Returns: the number of keys dropped.
    @discardableResult
    public func removeIdleKeys(now: MonotonicInstant? = nil) -> Int {
        let nowNanoseconds = (now ?? self.clock.now).offset.rateLimiterNanoseconds
        let engine = self.engine
        return self.table.withLock { table in
            table.removeAll { engine.isEmpty($0, now: nowNanoseconds) }
        }
    }

    /// Takes `permits` permits from `key`'s limiter at `now`.
    ///
    /// A call without a key follows ``Configuration-swift.struct/missingKey``: with
    /// ``MissingKeyBehavior/unlimited`` it is allowed and reports a whole quota; with
    /// ``MissingKeyBehavior/reject`` it is denied with no ``RateLimitDecision/retryAfter``.
    ///
    /// - Returns: the decision of `key`'s token bucket or sliding window.
    /// - Precondition: `permits >= 0`.
    public func tryAcquire(key: String?, permits: Int, now: MonotonicInstant) -> RateLimitDecision {
        precondition(permits >= 0, "permits must not be negative, got \(permits)")
        let resolved: String
        switch self.configuration.missingKey.resolve(key) {
        case .key(let key):
            resolved = key
        case .unlimited:
            return RateLimitDecision(
                allowed: true, limit: self.engine.limit, remaining: self.engine.limit, resetAfter: .zero)
        case .reject:
            return RateLimitDecision(allowed: false, limit: self.engine.limit, remaining: 0, resetAfter: .zero)
        }
        let nowNanoseconds = now.offset.rateLimiterNanoseconds
        let engine = self.engine
        return self.table.withLock { table in
            if let decision = table.withValue(
                forKey: resolved, { engine.acquire(&$0, permits: permits, now: nowNanoseconds) })
            {
                return decision
            }
            var state = engine.fresh
            let decision = engine.acquire(&state, permits: permits, now: nowNanoseconds)
            // A new key whose quota is still whole (a denied or zero-permit call) needs no entry.
            if !engine.isEmpty(state, now: nowNanoseconds) {
                table.insert(state, forKey: resolved) { engine.isEmpty($0, now: nowNanoseconds) }
            }
            return decision
        }
    }
}
