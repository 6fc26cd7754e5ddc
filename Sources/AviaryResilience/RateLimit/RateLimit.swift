//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Metrics
import Tracing

/// A ``RateLimiter`` as a pipeline policy: calls beyond the rate are rejected without running.
///
/// Each call takes one permit, under ``PolicyContext/key`` for keyed limiters. A denied call
/// throws ``ResilienceError/Code-swift.struct/rateLimited`` with the limiter's
/// ``RateLimitDecision/retryAfter``, which ``Retry`` does not retry and HTTP layers answer with 429
/// and `Retry-After`.
///
/// With ``Configuration-swift.struct/enforce`` false the policy runs in *shadow mode*: denied calls
/// still run, and are only counted (`aviary_rate_limiter_shadow_denied_total{name}`), published as
/// events and recorded on the span, so that a limit can be tried on real traffic before it is
/// enforced.
///
/// ```swift
/// let perUser = RateLimit(
///     KeyedRateLimiter(.init(algorithm: .tokenBucket(.init(rate: 5, period: .seconds(1))))),
///     .init(name: "orders-per-user")
/// )
/// let order = try await perUser.run(PolicyContext(key: userID)) { try await orders.place(cart) }
/// ```
///
/// Denials are published to ``events()``; allowed calls publish nothing and cost one limiter
/// decision.
public struct RateLimit: ResiliencePolicy {
    /// How a ``RateLimit`` policy is set up.
    public struct Configuration: Sendable, Hashable {
        /// The name used in metrics, span events and errors.
        public var name: String
        /// Whether denied calls are rejected (true) or only counted and let through (shadow mode).
        public var enforce: Bool

        /// Creates a configuration.
        public init(name: String = "rate-limiter", enforce: Bool = true) {
            self.name = name
            self.enforce = enforce
        }
    }

    /// Something the policy did that observers may care about.
    public enum Event: Sendable, Hashable {
        /// A call was over the limit. `enforced` is false in shadow mode, where the call still ran.
        case denied(key: String?, decision: RateLimitDecision, enforced: Bool)
    }

    /// The name of the shadow-mode counter (labels: name).
    static let shadowDeniedMetric = "aviary_rate_limiter_shadow_denied_total"

    /// The configuration this policy was built with.
    public let configuration: Configuration
    /// The limiter that decides.
    public let limiter: any RateLimiter
    private let counters: ResilienceMetrics.CallCounters
    private let shadowDenied: Counter
    private let broadcaster: EventBroadcaster<Event>

    /// Creates a policy around `limiter`.
    ///
    /// - Parameters:
    ///   - limiter: decides each call; its clock is the policy's clock.
    ///   - configuration: name and shadow mode.
    public init(_ limiter: any RateLimiter, _ configuration: Configuration = .init()) {
        self.limiter = limiter
        self.configuration = configuration
        self.counters = ResilienceMetrics.CallCounters(policy: "rate_limiter", name: configuration.name)
        self.shadowDenied = Counter(label: Self.shadowDeniedMetric, dimensions: [("name", configuration.name)])
        self.broadcaster = EventBroadcaster()
    }

    /// The denials from now on, as they happen (the newest 64 are buffered per subscriber).
    ///
    /// ```swift
    /// for await case .denied(let key, let decision, _) in limit.events() {
    ///     logger.info("rate limited", metadata: ["aviary.key": "\(key ?? "")"])
    /// }
    /// ```
    public func events() -> AsyncStream<Event> {
        self.broadcaster.subscribe()
    }

    /// Runs `next` if the limiter grants a permit for `context.key`.
    ///
    /// - Throws: ``ResilienceError`` with code ``ResilienceError/Code-swift.struct/rateLimited`` and
    ///   ``ResilienceError/retryAfter`` when denied and enforcing; otherwise whatever `next` throws.
    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let decision = self.limiter.tryAcquire(key: context.key, permits: 1, now: self.limiter.clock.now)
        if !decision.allowed {
            try self.denied(decision, context: context)
        }
        do {
            let output = try await next(context)
            self.counters.success.increment()
            return output
        } catch {
            self.counters.failure.increment()
            throw error
        }
    }

    /// The rare path: record, publish, and throw unless in shadow mode.
    private func denied(_ decision: RateLimitDecision, context: PolicyContext) throws {
        let name = self.configuration.name
        let enforced = self.configuration.enforce
        var attributes: SpanAttributes = ["aviary.policy": .string(name)]
        if let retryAfter = decision.retryAfter {
            attributes.set("aviary.retry_after_seconds", value: .double(retryAfter.aviarySeconds))
        }
        self.broadcaster.publish(.denied(key: context.key, decision: decision, enforced: enforced))
        guard enforced else {
            self.shadowDenied.increment()
            context.recordEvent("rate_limiter.shadow_denied", attributes)
            return
        }
        self.counters.rejected.increment()
        context.recordEvent("rate_limiter.rejected", attributes)
        let message = "\(name): over the limit of \(decision.limit)"
        throw ResilienceError(.rateLimited, message, policyName: name, retryAfter: decision.retryAfter)
    }
}
