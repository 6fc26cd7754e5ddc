//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A policy that wraps an operation of any result type: it may run it, run it again, run it
/// later, or refuse to run it.
///
/// Circuit breakers, retries, timeouts, bulkheads, rate limiters, hedging and load shedding
/// conform to this protocol. They are configured and built once (per upstream, per route) and
/// then shared by every call; `execute` is the per-call path and must not allocate when it can
/// avoid it.
///
/// ```swift
/// struct Log: ResiliencePolicy {
///     func execute<Output: Sendable>(
///         _ context: PolicyContext,
///         _ next: @Sendable (PolicyContext) async throws -> Output
///     ) async throws -> Output {
///         print("attempt \(context.attempt)")
///         return try await next(context)
///     }
/// }
/// ```
public protocol ResiliencePolicy: Sendable {
    /// Runs `next` under this policy.
    ///
    /// - Parameters:
    ///   - context: what the caller says about this call (idempotency, priority, key, attempt).
    ///   - next: the rest of the pipeline, ending in the operation itself.
    /// - Returns: the operation's result.
    /// - Throws: the operation's error, or a ``ResilienceError`` when the policy refuses, times
    ///   out or gives up.
    func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output
}

/// A policy that needs to know the operation's result type, such as ``Fallback``.
///
/// Untyped ``ResiliencePolicy`` values are lifted to this protocol by ``ResiliencePipeline``'s
/// builder, so both kinds mix in one pipeline.
///
/// ```swift
/// struct DefaultOnEmpty: TypedResiliencePolicy {
///     func execute(_ context: PolicyContext, _ next: @Sendable (PolicyContext) async throws -> [Int]) async throws -> [Int] {
///         let result = try await next(context)
///         return result.isEmpty ? [0] : result
///     }
/// }
/// ```
public protocol TypedResiliencePolicy<Output>: Sendable {
    /// The result type of the operations this policy wraps.
    associatedtype Output: Sendable

    /// Runs `next` under this policy; see ``ResiliencePolicy/execute(_:_:)``.
    func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output
}
