//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// The in-process wake-up of outbox relays: bumped after every commit that enqueued messages.
///
/// One signal for the whole process (GRDB does not tell an enqueuing transaction which file it
/// writes to): a relay of another database that wakes finds its outbox empty with one small read.
/// Relays in other processes are not woken; they poll.
///
/// Hand-written rather than an `AsyncStream`: waiters must be able to ask "has anything happened
/// since generation N?", which a stream's buffering cannot answer without losing or hoarding
/// elements.
final class OutboxSignal: Sendable {
    static let shared = OutboxSignal()

    private struct State {
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// The number of notifications so far; pass it to ``wait(since:)``.
    var generation: UInt64 { self.state.withLock { $0.generation } }

    /// Wakes every waiter.
    func notify() {
        let waiters = self.state.withLock { state in
            state.generation &+= 1
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the generation differs from `seen` (at once if it already does), or when the
    /// task is cancelled.
    func wait(since seen: UInt64) async {
        let id = self.state.withLock { state in
            state.nextWaiter &+= 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // Registration and the cancellation handler both take the lock, and the task's
                // cancelled flag is set before its handler runs: a waiter is either resumed by the
                // handler or sees the flag here, never neither.
                let resumeNow = self.state.withLock { state in
                    if state.generation != seen || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
