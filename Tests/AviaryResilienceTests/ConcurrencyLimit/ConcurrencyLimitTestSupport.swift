//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Synchronization

/// Holds operations in flight until the test opens it, without sleeping.
///
/// An operation calls ``hold()``; the test awaits ``waitUntilHeld(_:)`` to know that many are
/// in flight, then ``openAll()`` lets them finish.
final class ConcurrencyLimitGate: Sendable {
    private struct State {
        var held: [CheckedContinuation<Void, Never>] = []
        var waiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())

    /// Suspends the calling operation until ``openAll()``.
    func hold() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.held.append(continuation)
                let count = state.held.count
                var ready: [CheckedContinuation<Void, Never>] = []
                state.waiters.removeAll { waiter in
                    guard waiter.count <= count else { return false }
                    ready.append(waiter.continuation)
                    return true
                }
                return ready
            }
            for waiter in ready { waiter.resume() }
        }
    }

    /// Returns once at least `count` operations are held.
    func waitUntilHeld(_ count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.held.count >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Lets every held operation finish.
    func openAll() {
        let held = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            defer { state.held.removeAll() }
            return state.held
        }
        for continuation in held { continuation.resume() }
    }
}

/// An error that is not a rejection, thrown by test operations.
struct ConcurrencyLimitTestError: Error, Equatable {}

extension AdaptiveConcurrencyLimit.Configuration {
    /// AIMD that grows on every fast success (no utilisation requirement), so that any sample the
    /// policy takes moves the limit: a success up, a drop down.
    static func sensitiveAIMD(
        initialLimit: Int = 10,
        minLimit: Int = 1,
        maxLimit: Int = 100,
        sheddableFraction: Double = 0.5,
        criticalBoost: Double = 1.5
    ) -> Self {
        .init(
            name: "test",
            initialLimit: initialLimit,
            minLimit: minLimit,
            maxLimit: maxLimit,
            algorithm: .aimd(.init(slowCallThreshold: .seconds(1), backoffRatio: 0.9, utilizationForIncrease: 0)),
            sheddableFraction: sheddableFraction,
            criticalBoost: criticalBoost
        )
    }
}

/// An algorithm whose limit never moves, for tests of admission alone.
struct ConcurrencyLimitFixed: ConcurrencyLimitAlgorithm {
    var limit: Int
    mutating func update(rtt: Duration, inflight: Int, didDrop: Bool, now: MonotonicInstant) -> Int {
        self.limit
    }
}

extension AdaptiveConcurrencyLimit.Configuration {
    /// A fixed limit of `limit` with the given priority headroom.
    static func fixed(_ limit: Int, sheddableFraction: Double = 0.5, criticalBoost: Double = 1.5) -> Self {
        .init(
            name: "test",
            initialLimit: limit,
            minLimit: 1,
            maxLimit: max(limit, 100),
            algorithm: .custom { initialLimit, _, _ in ConcurrencyLimitFixed(limit: initialLimit) },
            sheddableFraction: sheddableFraction,
            criticalBoost: criticalBoost
        )
    }
}
