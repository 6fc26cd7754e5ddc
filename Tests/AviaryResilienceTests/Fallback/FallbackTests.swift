//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Synchronization
import Testing

/// The error test operations throw.
struct FallbackTestError: Error, Equatable {
    var code = 0
}

/// A stand-in for a retry: runs the rest of the pipeline up to `attempts` times until it succeeds.
private struct FallbackTestRepeat: ResiliencePolicy {
    var attempts: Int

    func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        var lastError: (any Error)?
        for _ in 0..<self.attempts {
            do {
                return try await next(context)
            } catch {
                lastError = error
            }
        }
        throw lastError ?? FallbackTestError()
    }
}

@Suite("Fallback", .timeLimit(.minutes(1)))
struct FallbackTests {
    private func fail() async throws -> Int { throw FallbackTestError() }

    @Test("value: a failure is answered with the value; a success passes through")
    func value() async throws {
        let fallback = Fallback.value(-1)
        #expect(try await fallback.execute(.nonIdempotent) { _ in 7 } == 7)
        #expect(try await fallback.execute(.nonIdempotent) { _ in try await self.fail() } == -1)
    }

    @Test("closure: receives the error and the context, and its result answers")
    func closure() async throws {
        let fallback = Fallback<String>.closure { error, context in
            "\((error as? FallbackTestError)?.code ?? -1) for \(context.key ?? "nobody")"
        }
        let answer = try await fallback.execute(PolicyContext(key: "alice")) { _ in
            throw FallbackTestError(code: 42)
        }
        #expect(answer == "42 for alice")
    }

    @Test("closure: an error thrown by the fallback is what the caller gets")
    func closureThrows() async {
        let fallback = Fallback<Int>.closure { _, _ in throw FallbackTestError(code: 2) }
        await #expect(throws: FallbackTestError(code: 2)) {
            try await fallback.execute(.nonIdempotent) { _ in throw FallbackTestError(code: 1) }
        }
    }

    @Test("errors the predicate excludes are rethrown unchanged")
    func predicate() async {
        let onlyRejections = Fallback.value(
            0,
            .init(name: "f") { error in
                (error as? ResilienceError)?.code.isRejection ?? false
            })
        await #expect(throws: FallbackTestError(code: 3)) {
            try await onlyRejections.execute(.nonIdempotent) { _ in throw FallbackTestError(code: 3) }
        }
        let rejected = try? await onlyRejections.execute(.nonIdempotent) { _ -> Int in
            throw ResilienceError(.bulkheadFull, "full")
        }
        #expect(rejected == 0)
    }

    @Test("CancellationError does not fall back by default")
    func cancellation() async {
        let fallback = Fallback.value(0)
        await #expect(throws: CancellationError.self) {
            try await fallback.execute(.nonIdempotent) { _ -> Int in throw CancellationError() }
        }
    }

    @Test("last known good: with no success yet, the operation's error is rethrown")
    func lastKnownGoodEmpty() async {
        let fallback = Fallback<Int>.lastKnownGood(maxStaleness: .seconds(10), clock: ManualClock())
        await #expect(throws: FallbackTestError.self) {
            try await fallback.execute(.nonIdempotent) { _ in try await self.fail() }
        }
    }

    @Test(
        "last known good: served up to exactly maxStaleness old, rethrown one nanosecond later",
        arguments: [
            (Duration.zero, true), (.seconds(5), true), (.seconds(10), true),
            (.seconds(10) + .nanoseconds(1), false), (.seconds(60), false),
        ]
    )
    func lastKnownGoodStaleness(age: Duration, served: Bool) async throws {
        let clock = ManualClock()
        let fallback = Fallback<Int>.lastKnownGood(maxStaleness: .seconds(10), clock: clock)
        #expect(try await fallback.execute(.nonIdempotent) { _ in 41 } == 41)
        clock.advance(by: age)
        if served {
            #expect(try await fallback.execute(.nonIdempotent) { _ in try await self.fail() } == 41)
        } else {
            await #expect(throws: FallbackTestError.self) {
                try await fallback.execute(.nonIdempotent) { _ in try await self.fail() }
            }
        }
    }

    @Test("last known good: the newest success is served, dated when it happened")
    func lastKnownGoodNewest() async throws {
        let clock = ManualClock()
        let fallback = Fallback<Int>.lastKnownGood(maxStaleness: .seconds(10), clock: clock)
        _ = try await fallback.execute(.nonIdempotent) { _ in 1 }
        clock.advance(by: .seconds(8))
        _ = try await fallback.execute(.nonIdempotent) { _ in 2 }
        clock.advance(by: .seconds(8))
        #expect(try await fallback.execute(.nonIdempotent) { _ in try await self.fail() } == 2)
        // A fallback answer does not refresh the date.
        clock.advance(by: .seconds(2) + .nanoseconds(1))
        await #expect(throws: FallbackTestError.self) {
            try await fallback.execute(.nonIdempotent) { _ in try await self.fail() }
        }
    }

    @Test("last known good per key: each key gets its own result, and at most maxKeys are kept")
    func lastKnownGoodKeyed() async throws {
        let clock = ManualClock()
        let fallback = Fallback<String>.lastKnownGood(maxStaleness: .seconds(60), maxKeys: 2, clock: clock)
        for key in ["a", "b"] {
            _ = try await fallback.execute(PolicyContext(key: key)) { _ in "value of \(key)" }
        }
        let failing: @Sendable (PolicyContext) async throws -> String = { _ in throw FallbackTestError() }
        #expect(try await fallback.execute(PolicyContext(key: "a"), failing) == "value of a")
        #expect(try await fallback.execute(PolicyContext(key: "b"), failing) == "value of b")
        await #expect(throws: FallbackTestError.self) {
            try await fallback.execute(PolicyContext(key: "c"), failing)
        }
        // A third key pushes out the least recently stored one (a).
        _ = try await fallback.execute(PolicyContext(key: "c")) { _ in "value of c" }
        await #expect(throws: FallbackTestError.self) {
            try await fallback.execute(PolicyContext(key: "a"), failing)
        }
        #expect(try await fallback.execute(PolicyContext(key: "b"), failing) == "value of b")
        #expect(try await fallback.execute(PolicyContext(key: "c"), failing) == "value of c")
    }

    @Test("outermost in a pipeline, the fallback runs once, after every attempt inside has failed")
    func outermostRunsOnce() async throws {
        let fallbacks = Atomic(0)
        let attempts = Atomic(0)
        let pipeline = ResiliencePipeline<Int> {
            Fallback<Int>.closure { _, _ in
                fallbacks.add(1, ordering: .relaxed)
                return -1
            }
            FallbackTestRepeat(attempts: 3)
        }
        let result = try await pipeline.run {
            attempts.add(1, ordering: .relaxed)
            throw FallbackTestError()
        }
        #expect(result == -1)
        #expect(attempts.load(ordering: .relaxed) == 3)
        #expect(fallbacks.load(ordering: .relaxed) == 1)
    }

    @Test("lastKnownGood infers its output type from the pipeline")
    func pipelineInference() async throws {
        let clock = ManualClock()
        let pipeline = ResiliencePipeline<[String]> {
            Fallback.lastKnownGood(maxStaleness: .seconds(1), clock: clock)
            Bulkhead(.init(maxConcurrentCalls: 1), clock: clock)
        }
        #expect(try await pipeline.run { ["fresh"] } == ["fresh"])
        #expect(try await pipeline.run { throw FallbackTestError() } == ["fresh"])
    }
}
