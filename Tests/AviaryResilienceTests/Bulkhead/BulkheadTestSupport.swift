//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// Holds operations in flight, each under an id, until the test finishes them; no sleeping.
///
/// An operation calls ``hold(_:)``. The test awaits ``waitUntilStarted(_:)`` to know how many
/// have started, reads ``startedIDs`` for their order, and ends each with ``finish(_:failing:)``.
/// A held operation whose task is cancelled throws `CancellationError`.
final class BulkheadCallGate: Sendable {
    private struct State {
        var held: [Int: CheckedContinuation<Void, any Error>] = [:]
        var started: [Int] = []
        var waiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())

    /// The ids of the operations that started, in order.
    var startedIDs: [Int] {
        self.state.withLock { $0.started }
    }

    /// Suspends the operation `id` until ``finish(_:failing:)`` or cancellation.
    func hold(_ id: Int) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (ready, cancelled) = self.state.withLock { state -> ([CheckedContinuation<Void, Never>], Bool) in
                    state.started.append(id)
                    let ready = Self.readyWaiters(&state)
                    if Task.isCancelled { return (ready, true) }
                    state.held[id] = continuation
                    return (ready, false)
                }
                for waiter in ready { waiter.resume() }
                if cancelled { continuation.resume(throwing: CancellationError()) }
            }
        } onCancel: {
            let continuation = self.state.withLock { $0.held.removeValue(forKey: id) }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Returns once at least `count` operations have started.
    func waitUntilStarted(_ count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.started.count >= count { return true }
                state.waiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Lets operation `id` return, or throw ``BulkheadTestError`` when `failing`.
    func finish(_ id: Int, failing: Bool = false) {
        let continuation = self.state.withLock { $0.held.removeValue(forKey: id) }
        if failing {
            continuation?.resume(throwing: BulkheadTestError())
        } else {
            continuation?.resume()
        }
    }

    private static func readyWaiters(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        let count = state.started.count
        var ready: [CheckedContinuation<Void, Never>] = []
        state.waiters.removeAll { waiter in
            guard waiter.count <= count else { return false }
            ready.append(waiter.continuation)
            return true
        }
        return ready
    }
}

/// The error thrown by operations that the test makes fail.
struct BulkheadTestError: Error, Equatable {}
