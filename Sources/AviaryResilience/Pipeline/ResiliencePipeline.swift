//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// Policies composed around an operation, built once and run for every call.
///
/// The first policy listed is the outermost. The order changes meaning, so choose it on purpose;
/// the recommended order, outermost first, is:
///
/// 1. ``Fallback`` — runs once, after everything inside has given up (not once per attempt).
/// 2. ``Timeout`` (total) — bounds the whole call including retries and their backoff.
/// 3. ``Retry`` — repeats failed attempts; never repeats a rejection (open breaker, full
///    bulkhead, rate limit, shed load) and never sleeps past the deadline.
/// 4. ``CircuitBreaker`` — sees each attempt, so its failure rate is the upstream's.
/// 5. ``AdaptiveConcurrencyLimit``, ``Bulkhead``, ``RateLimit`` — admission per attempt.
/// 6. ``Timeout`` (per try) — bounds one attempt; its expiry is a failure the breaker counts.
///
/// ```swift
/// let pipeline = ResiliencePipeline<User> {
///     Fallback.lastKnownGood(maxStaleness: .seconds(60))
///     Timeout(.seconds(2))
///     Retry(.init(maxAttempts: 3, backoff: .exponential(base: .milliseconds(50))))
///     CircuitBreaker(.init(failureRateThreshold: 0.5, minimumNumberOfCalls: 20))
///     Bulkhead(.init(maxConcurrentCalls: 64))
///     Timeout(.milliseconds(500))
/// }
/// let user = try await pipeline.run(.idempotent) { try await users.get(id) }
/// ```
///
/// Building is not on the call path: build a pipeline per upstream when the client is created and
/// keep it. The policies inside are composed into nested generic values, so a call through the
/// pipeline makes one dynamic call and no allocation of its own.
public struct ResiliencePipeline<Output: Sendable>: Sendable {
    @usableFromInline
    let policy: any TypedResiliencePolicy<Output>

    /// Builds a pipeline from the listed policies, outermost first.
    public init(@ResiliencePipelineBuilder<Output> _ build: () -> some TypedResiliencePolicy<Output>) {
        self.policy = build()
    }

    /// Builds a pipeline from one composed policy.
    public init(_ policy: some TypedResiliencePolicy<Output>) {
        self.policy = policy
    }

    /// Runs `operation` through the pipeline.
    ///
    /// - Parameters:
    ///   - context: what the policies should know about the call; `.idempotent` allows retries.
    ///   - operation: the call; it receives the context of the current attempt.
    /// - Returns: the operation's result, or the fallback's.
    /// - Throws: the operation's error, or a ``ResilienceError``.
    @inlinable
    public func run(
        _ context: PolicyContext = .nonIdempotent,
        _ operation: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        try await self.policy.execute(context, operation)
    }

    /// Runs `operation` through the pipeline; see ``run(_:_:)-(_,(PolicyContext)->Output)``.
    @inlinable
    public func run(
        _ context: PolicyContext = .nonIdempotent,
        _ operation: @Sendable () async throws -> Output
    ) async throws -> Output {
        try await self.policy.execute(context) { _ in try await operation() }
    }
}

extension ResiliencePolicy {
    /// Runs `operation` under this one policy, without building a pipeline.
    ///
    /// ```swift
    /// let breaker = CircuitBreaker(.init(name: "payments"))
    /// let receipt = try await breaker.run { try await payments.charge(order) }
    /// ```
    @inlinable
    public func run<Output: Sendable>(
        _ context: PolicyContext = .nonIdempotent,
        _ operation: @Sendable () async throws -> Output
    ) async throws -> Output {
        try await self.execute(context) { _ in try await operation() }
    }
}

/// Composes policies for ``ResiliencePipeline``; the first listed is the outermost.
///
/// Untyped policies (``ResiliencePolicy``) are lifted to the pipeline's output type; `if` and
/// `if`/`else` include policies conditionally, for pipelines assembled from configuration.
@resultBuilder
public enum ResiliencePipelineBuilder<Output: Sendable> {
    public static func buildExpression<P: ResiliencePolicy>(_ policy: P) -> _UntypedPolicy<P, Output> {
        _UntypedPolicy(policy)
    }

    public static func buildExpression<P: TypedResiliencePolicy>(_ policy: P) -> P where P.Output == Output {
        policy
    }

    public static func buildBlock() -> _PassthroughPolicy<Output> {
        _PassthroughPolicy()
    }

    public static func buildPartialBlock<P: TypedResiliencePolicy>(first: P) -> P where P.Output == Output {
        first
    }

    public static func buildPartialBlock<P0: TypedResiliencePolicy, P1: TypedResiliencePolicy>(
        accumulated: P0,
        next: P1
    ) -> _Pipeline2<P0, P1> where P0.Output == Output, P1.Output == Output {
        _Pipeline2(accumulated, next)
    }

    public static func buildOptional<P: TypedResiliencePolicy>(_ policy: P?) -> _OptionalPolicy<P>
    where P.Output == Output {
        _OptionalPolicy(policy)
    }

    public static func buildEither<A: TypedResiliencePolicy, B: TypedResiliencePolicy>(
        first: A
    ) -> _EitherPolicy<A, B> where A.Output == Output, B.Output == Output {
        .first(first)
    }

    public static func buildEither<A: TypedResiliencePolicy, B: TypedResiliencePolicy>(
        second: B
    ) -> _EitherPolicy<A, B> where A.Output == Output, B.Output == Output {
        .second(second)
    }
}

// MARK: - Composition (not API: public only so the builder's types can be spelled)

/// Two policies, `outer` around `inner`. Not API.
public struct _Pipeline2<Outer: TypedResiliencePolicy, Inner: TypedResiliencePolicy>: TypedResiliencePolicy
where Outer.Output == Inner.Output {
    public typealias Output = Outer.Output
    @usableFromInline let outer: Outer
    @usableFromInline let inner: Inner

    @inlinable
    init(_ outer: Outer, _ inner: Inner) {
        self.outer = outer
        self.inner = inner
    }

    @inlinable
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        try await withoutActuallyEscaping(next) { next in
            try await self.outer.execute(context) { context in
                try await self.inner.execute(context, next)
            }
        }
    }
}

/// An untyped policy lifted to a pipeline's output type. Not API.
public struct _UntypedPolicy<Policy: ResiliencePolicy, Output: Sendable>: TypedResiliencePolicy {
    @usableFromInline let policy: Policy

    @inlinable
    init(_ policy: Policy) { self.policy = policy }

    @inlinable
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        try await self.policy.execute(context, next)
    }
}

/// The empty pipeline: runs the operation. Not API.
public struct _PassthroughPolicy<Output: Sendable>: TypedResiliencePolicy {
    @inlinable
    init() {}

    @inlinable
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        try await next(context)
    }
}

/// A policy present or not. Not API.
public struct _OptionalPolicy<Policy: TypedResiliencePolicy>: TypedResiliencePolicy {
    public typealias Output = Policy.Output
    @usableFromInline let policy: Policy?

    @inlinable
    init(_ policy: Policy?) { self.policy = policy }

    @inlinable
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        if let policy { return try await policy.execute(context, next) }
        return try await next(context)
    }
}

/// One of two policies. Not API.
public enum _EitherPolicy<A: TypedResiliencePolicy, B: TypedResiliencePolicy>: TypedResiliencePolicy
where A.Output == B.Output {
    public typealias Output = A.Output
    case first(A)
    case second(B)

    @inlinable
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        switch self {
        case .first(let policy): try await policy.execute(context, next)
        case .second(let policy): try await policy.execute(context, next)
        }
    }
}
