//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Tracing

/// Answers with something else when the operation fails: a fixed value, the result of a closure,
/// or the last result that succeeded.
///
/// Which errors fall back is decided by ``Configuration-swift.struct/shouldFallBack``; by default
/// every error except `CancellationError` (a caller that went away wants no answer). Errors that do
/// not fall back are rethrown unchanged.
///
/// ```swift
/// let recommendations = ResiliencePipeline<[Product]> {
///     Fallback.value([])                       // outermost: runs once, after retries
///     Retry(.init(maxAttempts: 3))
///     Timeout(.milliseconds(300))
/// }
/// let products = try await recommendations.run(.idempotent) { try await ranking.top(for: user) }
/// ```
///
/// A fallback acts on what comes out of the policies inside it. Placed outermost (first in the
/// pipeline) it runs once, after every retry has failed or the total timeout has expired; placed
/// inside ``Retry`` it would turn each failed attempt into a success and nothing would be retried.
///
/// The strategies:
/// - ``value(_:_:)``: a fixed value.
/// - ``closure(_:_:)``: an async throwing closure given the error and the context.
/// - ``lastKnownGood(maxStaleness:maxKeys:_:clock:)``: remembers the most recent success (and when
///   it happened, on the injected clock) and serves it when the operation fails, if it is at most
///   `maxStaleness` old; otherwise the error is rethrown. With `maxKeys` it remembers one result
///   per ``PolicyContext/key``, for at most that many keys (least recently used dropped).
///
/// Outcomes are counted in `aviary_resilience_calls_total{policy="fallback"}`: `success` when the
/// operation succeeded, `fallback` when a fallback answered, `failure` when the error was rethrown
/// (or the fallback closure threw). Each fallback records a `fallback.used` span event.
public struct Fallback<Output: Sendable>: TypedResiliencePolicy {
    /// How a ``Fallback`` is set up (apart from its ``Strategy``).
    public struct Configuration: Sendable {
        /// The name used in metrics and span events.
        public var name: String
        /// Whether an error should be answered by the fallback. The default falls back on every
        /// error except `CancellationError`.
        public var shouldFallBack: @Sendable (any Error) -> Bool

        /// Creates a configuration.
        ///
        /// ```swift
        /// let onlyUnavailable = Fallback<Int>.Configuration(name: "stock") { error in
        ///     (error as? ResilienceError)?.code.isRejection ?? false
        /// }
        /// ```
        public init(
            name: String = "fallback",
            shouldFallBack: @escaping @Sendable (any Error) -> Bool = { !($0 is CancellationError) }
        ) {
            self.name = name
            self.shouldFallBack = shouldFallBack
        }
    }

    /// What the fallback answers with.
    public struct Strategy: Sendable {
        fileprivate enum Wrapped: Sendable {
            case value(Output)
            case closure(@Sendable (any Error, PolicyContext) async throws -> Output)
            case lastKnownGood(maxStaleness: Duration, maxKeys: Int?)
        }

        fileprivate let wrapped: Wrapped

        /// Answers with `value`.
        public static func value(_ value: Output) -> Strategy {
            Strategy(wrapped: .value(value))
        }

        /// Answers with what `body` returns for the error and the call's context; if `body`
        /// throws, that error is thrown.
        public static func closure(
            _ body: @escaping @Sendable (_ error: any Error, _ context: PolicyContext) async throws -> Output
        ) -> Strategy {
            Strategy(wrapped: .closure(body))
        }

        /// Answers with the most recent successful result if it is at most `maxStaleness` old.
        ///
        /// - Parameters:
        ///   - maxStaleness: the oldest result still served (a duration on the injected clock);
        ///     a result exactly this old is served. Not negative.
        ///   - maxKeys: nil remembers one result for all calls; a number remembers one per
        ///     ``PolicyContext/key`` (calls without a key share `""`) for at most that many keys.
        /// - Precondition: `maxStaleness >= .zero`; `maxKeys` is nil or at least 1.
        public static func lastKnownGood(maxStaleness: Duration, maxKeys: Int? = nil) -> Strategy {
            precondition(maxStaleness >= .zero, "Fallback.maxStaleness must not be negative, got \(maxStaleness)")
            precondition(maxKeys.map { $0 >= 1 } ?? true, "Fallback.maxKeys must be at least 1, got \(maxKeys ?? 0)")
            return Strategy(wrapped: .lastKnownGood(maxStaleness: maxStaleness, maxKeys: maxKeys))
        }
    }

    private enum Mode: Sendable {
        case value(Output)
        case closure(@Sendable (any Error, PolicyContext) async throws -> Output)
        case lastKnownGood(LastKnownGood<Output>, maxStaleness: Duration)
    }

    /// The configuration this fallback was built with.
    public let configuration: Configuration
    private let mode: Mode
    private let clock: any MonotonicClock
    private let counters: ResilienceMetrics.CallCounters

    /// Creates a fallback.
    ///
    /// - Parameters:
    ///   - strategy: what to answer with.
    ///   - configuration: name and which errors fall back.
    ///   - clock: the clock that dates remembered results (last-known-good only); tests pass a
    ///     `ManualClock`.
    public init(
        _ strategy: Strategy,
        _ configuration: Configuration = .init(),
        clock: any MonotonicClock = SystemClock()
    ) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(policy: "fallback", name: configuration.name)
        switch strategy.wrapped {
        case .value(let value):
            self.mode = .value(value)
        case .closure(let body):
            self.mode = .closure(body)
        case .lastKnownGood(let maxStaleness, let maxKeys):
            self.mode = .lastKnownGood(LastKnownGood(maxKeys: maxKeys), maxStaleness: maxStaleness)
        }
    }

    /// A fallback answering with `value`.
    ///
    /// ```swift
    /// let noDiscount = Fallback.value(Discount.none)
    /// ```
    public static func value(_ value: Output, _ configuration: Configuration = .init()) -> Fallback {
        Fallback(.value(value), configuration)
    }

    /// A fallback answering with what `body` returns for the error and the context.
    ///
    /// ```swift
    /// let cached = Fallback<Price>.closure { error, context in
    ///     try await priceCache.get(context.key ?? "")
    /// }
    /// ```
    public static func closure(
        _ configuration: Configuration = .init(),
        _ body: @escaping @Sendable (_ error: any Error, _ context: PolicyContext) async throws -> Output
    ) -> Fallback {
        Fallback(.closure(body), configuration)
    }

    /// A fallback answering with the most recent success when it is at most `maxStaleness` old.
    ///
    /// ```swift
    /// let profile = ResiliencePipeline<Profile> {
    ///     Fallback.lastKnownGood(maxStaleness: .seconds(60), maxKeys: 10_000)
    ///     Timeout(.seconds(1))
    /// }
    /// let user = try await profile.run(PolicyContext(key: userID)) { try await profiles.get(userID) }
    /// ```
    ///
    /// See ``Strategy/lastKnownGood(maxStaleness:maxKeys:)`` for the parameters.
    public static func lastKnownGood(
        maxStaleness: Duration,
        maxKeys: Int? = nil,
        _ configuration: Configuration = .init(),
        clock: any MonotonicClock = SystemClock()
    ) -> Fallback {
        Fallback(.lastKnownGood(maxStaleness: maxStaleness, maxKeys: maxKeys), configuration, clock: clock)
    }

    /// Runs `next`, and answers with the fallback if it throws an error that falls back.
    ///
    /// - Throws: errors for which ``Configuration-swift.struct/shouldFallBack`` is false; the
    ///   operation's error when no remembered result is fresh enough; the closure's error.
    public func execute(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let output: Output
        do {
            output = try await next(context)
        } catch {
            return try await self.fallBack(from: error, context: context)
        }
        if case .lastKnownGood(let store, _) = self.mode {
            store.remember(output, key: context.key, at: self.clock.now)
        }
        self.counters.success.increment()
        return output
    }

    private func fallBack(from error: any Error, context: PolicyContext) async throws -> Output {
        guard self.configuration.shouldFallBack(error) else {
            self.counters.failure.increment()
            throw error
        }
        switch self.mode {
        case .value(let value):
            self.served(for: error, context: context)
            return value
        case .closure(let body):
            let value: Output
            do {
                value = try await body(error, context)
            } catch {
                self.counters.failure.increment()
                throw error
            }
            self.served(for: error, context: context)
            return value
        case .lastKnownGood(let store, let maxStaleness):
            let now = self.clock.now
            guard let remembered = store.recall(key: context.key),
                remembered.at.duration(to: now) <= maxStaleness
            else {
                self.counters.failure.increment()
                throw error
            }
            self.served(for: error, context: context, age: remembered.at.duration(to: now))
            return remembered.value
        }
    }

    private func served(for error: any Error, context: PolicyContext, age: Duration? = nil) {
        self.counters.fallback.increment()
        var attributes: SpanAttributes = [
            "aviary.policy": .string(self.configuration.name),
            "error.type": .string(String(describing: type(of: error))),
        ]
        if let age { attributes.set("aviary.fallback.age_seconds", value: .double(age.aviarySeconds)) }
        context.recordEvent("fallback.used", attributes)
    }
}
