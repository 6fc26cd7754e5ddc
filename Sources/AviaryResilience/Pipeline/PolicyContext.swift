//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Tracing

/// What a caller tells the policies about one call, and what policies tell the ones inside them.
///
/// ```swift
/// let order = try await pipeline.run(.idempotent) { _ in try await orders.get(id) }
/// let charge = try await pipeline.run(PolicyContext(idempotent: false, priority: .critical, key: userID)) { _ in
///     try await payments.charge(order)
/// }
/// ```
public struct PolicyContext: Sendable {
    /// Whether running the operation twice has the effect of running it once. ``Retry`` and
    /// ``Hedging`` only repeat idempotent operations unless configured otherwise.
    public var idempotent: Bool
    /// How much the call matters when load must be shed; see ``AdaptiveConcurrencyLimit``.
    public var priority: Priority
    /// The partition key for keyed policies (keyed bulkhead, keyed rate limiter), e.g. a user id.
    public var key: String?
    /// The 1-based attempt number, set by ``Retry`` and ``Hedging`` for the policies inside them.
    public var attempt: Int
    /// The span on which policies record events (retries, rejections, state changes). When nil,
    /// policies use the active span of the current `ServiceContext`, if the tracer knows one.
    public var span: (any Span)?

    /// Creates a context.
    public init(
        idempotent: Bool = false,
        priority: Priority = .normal,
        key: String? = nil,
        attempt: Int = 1,
        span: (any Span)? = nil
    ) {
        self.idempotent = idempotent
        self.priority = priority
        self.key = key
        self.attempt = attempt
        self.span = span
    }

    /// A call that is safe to repeat (GET, PUT, DELETE, or a POST with an idempotency key).
    public static var idempotent: PolicyContext { PolicyContext(idempotent: true) }
    /// A call that must not be repeated (the default).
    public static var nonIdempotent: PolicyContext { PolicyContext(idempotent: false) }

    /// Returns a copy with `key` set.
    public func with(key: String?) -> PolicyContext {
        var copy = self
        copy.key = key
        return copy
    }

    /// Returns a copy with `priority` set.
    public func with(priority: Priority) -> PolicyContext {
        var copy = self
        copy.priority = priority
        return copy
    }

    /// How much a call matters when a service must drop work. Ordered: `sheddable < normal < critical`.
    public struct Priority: Sendable, Hashable, Comparable, CustomStringConvertible {
        /// 0 is the most sheddable; higher numbers are kept longer.
        public let rank: Int
        private init(rank: Int) { self.rank = rank }

        /// Work that can be dropped first: prefetches, analytics, retries of background jobs.
        public static let sheddable = Priority(rank: 0)
        /// Ordinary user-facing work.
        public static let normal = Priority(rank: 1)
        /// Work that must get through while anything does: health checks, payments in flight.
        public static let critical = Priority(rank: 2)

        public static func < (lhs: Priority, rhs: Priority) -> Bool { lhs.rank < rhs.rank }

        public var description: String {
            switch self.rank {
            case 0: "sheddable"
            case 1: "normal"
            default: "critical"
            }
        }
    }

    /// Records an event on the call's span (``span``, or the active span of the current
    /// `ServiceContext`). Policies call this on the rare paths only (retry, rejection), never per
    /// successful call.
    public func recordEvent(_ name: String, _ attributes: SpanAttributes = [:]) {
        if let span {
            span.addEvent(SpanEvent(name: name, attributes: attributes))
            return
        }
        guard let context = ServiceContext.current,
            let active = InstrumentationSystem.tracer.activeSpan(identifiedBy: context)
        else { return }
        active.addEvent(SpanEvent(name: name, attributes: attributes))
    }
}
