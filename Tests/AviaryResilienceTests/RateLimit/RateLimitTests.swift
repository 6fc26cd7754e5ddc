//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Synchronization
import Testing

@Suite("RateLimit policy", .timeLimit(.minutes(1)))
struct RateLimitTests {
    @Test("allowed calls run; a denied call throws rateLimited with retryAfter and does not run")
    func enforces() async throws {
        let clock = ManualClock()
        let policy = RateLimit(
            TokenBucket(.init(rate: 1, period: .seconds(4), burst: 1), clock: clock), .init(name: "rl"))
        let runs = Atomic(0)
        #expect(try await policy.run { runs.add(1, ordering: .relaxed).newValue } == 1)
        let error = await #expect(throws: ResilienceError.self) {
            try await policy.run { runs.add(1, ordering: .relaxed).newValue }
        }
        #expect(error?.code == .rateLimited)
        #expect(error?.retryAfter == .seconds(4))
        #expect(error?.policyName == "rl")
        #expect(runs.load(ordering: .relaxed) == 1)
        clock.advance(by: .seconds(4))
        #expect(try await policy.run { 5 } == 5)
    }

    @Test("a keyed limiter is keyed by the context's key")
    func keyedByContext() async throws {
        let limiter = KeyedRateLimiter(
            .init(algorithm: .tokenBucket(.init(rate: 1, period: .seconds(1), burst: 1))),
            clock: ManualClock()
        )
        let policy = RateLimit(limiter)
        _ = try await policy.run(PolicyContext(key: "alice")) { 1 }
        await #expect(throws: ResilienceError.self) {
            try await policy.run(PolicyContext(key: "alice")) { 1 }
        }
        #expect(try await policy.run(PolicyContext(key: "bob")) { 2 } == 2)
    }

    @Test("operation errors pass through unchanged")
    func operationErrors() async {
        struct Boom: Error {}
        let policy = RateLimit(TokenBucket(clock: ManualClock()))
        await #expect(throws: Boom.self) { try await policy.run { () async throws -> Int in throw Boom() } }
    }

    @Test("denials are published as events with the key")
    func events() async throws {
        let limiter = KeyedRateLimiter(
            .init(algorithm: .tokenBucket(.init(rate: 1, period: .seconds(1), burst: 1))),
            clock: ManualClock()
        )
        let policy = RateLimit(limiter)
        let events = policy.events()
        _ = try await policy.run(PolicyContext(key: "alice")) { 1 }
        _ = try? await policy.run(PolicyContext(key: "alice")) { 1 }
        var iterator = events.makeAsyncIterator()
        let event = await iterator.next()
        guard case .denied(let key, let decision, let enforced) = event else {
            Issue.record("expected a denial, got \(String(describing: event))")
            return
        }
        #expect(key == "alice")
        #expect(!decision.allowed)
        #expect(decision.retryAfter == .seconds(1))
        #expect(enforced)
    }

    @Test("in shadow mode denied calls still run and are reported as not enforced")
    func shadowMode() async throws {
        let policy = RateLimit(
            TokenBucket(.init(rate: 1, period: .seconds(1), burst: 1), clock: ManualClock()),
            .init(name: "shadow", enforce: false)
        )
        let events = policy.events()
        #expect(try await policy.run { 1 } == 1)
        #expect(try await policy.run { 2 } == 2, "over the limit, but let through")
        var iterator = events.makeAsyncIterator()
        guard case .denied(_, let decision, let enforced) = await iterator.next() else {
            Issue.record("expected a denial event")
            return
        }
        #expect(!enforced)
        #expect(!decision.allowed)
    }
}
