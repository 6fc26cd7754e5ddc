//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// The error a policy throws when it refuses, times out or gives up.
///
/// Rejections (``Code-swift.struct/circuitOpen``, ``Code-swift.struct/bulkheadFull``,
/// ``Code-swift.struct/rateLimited``, ``Code-swift.struct/loadShed``,
/// ``Code-swift.struct/budgetExhausted``) mean the operation did not run; ``Retry`` never retries
/// them and ``CircuitBreaker`` never counts them as failures. ``retryAfter`` says when trying again
/// may succeed, for `Retry-After` headers.
///
/// ```swift
/// do {
///     try await pipeline.run { _ in try await payments.charge(order) }
/// } catch let error as ResilienceError where error.code == .circuitOpen {
///     // answer 503 with Retry-After: error.retryAfter
/// }
/// ```
public struct ResilienceError: Error, Sendable, CustomStringConvertible, ProblemDetailsConvertible {
    /// Which policy refused or gave up, and why.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case circuitOpen, bulkheadFull, rateLimited, timedOut, retriesExhausted, budgetExhausted, loadShed
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// A circuit breaker is open (or forced open) and did not admit the call.
        public static let circuitOpen = Code(.circuitOpen)
        /// A bulkhead had no free slot and its wait queue was full or the queue timeout passed.
        public static let bulkheadFull = Code(.bulkheadFull)
        /// A rate limiter had no quota left.
        public static let rateLimited = Code(.rateLimited)
        /// The call did not finish before its timeout or deadline.
        public static let timedOut = Code(.timedOut)
        /// Every attempt failed; ``ResilienceError/cause`` is the last attempt's error.
        public static let retriesExhausted = Code(.retriesExhausted)
        /// A retry was due but the retry budget had no room; the cause is the last error.
        public static let budgetExhausted = Code(.budgetExhausted)
        /// An adaptive concurrency limit shed the call.
        public static let loadShed = Code(.loadShed)

        /// Stable slug used in problem types and metric labels.
        public var slug: String {
            switch self.wrapped {
            case .circuitOpen: "circuit-open"
            case .bulkheadFull: "bulkhead-full"
            case .rateLimited: "rate-limited"
            case .timedOut: "timed-out"
            case .retriesExhausted: "retries-exhausted"
            case .budgetExhausted: "retry-budget-exhausted"
            case .loadShed: "load-shed"
            }
        }

        /// Whether this code means the operation was not run at all.
        public var isRejection: Bool {
            switch self.wrapped {
            case .circuitOpen, .bulkheadFull, .rateLimited, .loadShed: true
            case .timedOut, .retriesExhausted, .budgetExhausted: false
            }
        }

        public var description: String { self.slug }
    }

    /// Which policy refused or gave up.
    public var code: Code
    /// What happened, naming the policy instance.
    public var message: String
    /// The name of the policy instance (its configuration's `name`).
    public var policyName: String
    /// When a new attempt may succeed (open breaker's remaining wait, rate limiter's reset).
    public var retryAfter: Duration?
    /// The last underlying error, for ``Code-swift.struct/retriesExhausted`` and
    /// ``Code-swift.struct/budgetExhausted``.
    public var cause: (any Error)?

    /// Creates an error.
    public init(
        _ code: Code,
        _ message: String,
        policyName: String = "",
        retryAfter: Duration? = nil,
        cause: (any Error)? = nil
    ) {
        self.code = code
        self.message = message
        self.policyName = policyName
        self.retryAfter = retryAfter
        self.cause = cause
    }

    public var description: String {
        var text = "\(self.code): \(self.message)"
        if let retryAfter { text += " (retry after \(retryAfter))" }
        if let cause { text += " (cause: \(cause))" }
        return text
    }

    /// 503 for an open breaker, a full bulkhead, shed load and exhausted retries; 429 for rate
    /// limits; 504 for timeouts. `retry_after_seconds` is included when known.
    public var problemDetails: ProblemDetails {
        let status: Int
        switch self.code {
        case .rateLimited: status = 429
        case .timedOut: status = 504
        default: status = 503
        }
        var extensions: [String: String] = [:]
        if !self.policyName.isEmpty { extensions["policy"] = self.policyName }
        if let retryAfter {
            extensions["retry_after_seconds"] = String(Int(retryAfter.aviarySeconds.rounded(.up)))
        }
        return ProblemDetails(status: status, detail: self.message, slug: self.code.slug, extensions: extensions)
    }
}
