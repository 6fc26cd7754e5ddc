//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// The deadlines of a store's calls that are waiting for readiness or a connection, kept by one
/// sweeper task instead of a timer per call.
///
/// A call registers its deadline and what to do when it passes, and removes it when it ends.
/// Every call of a store has the same timeout, so deadlines come in the order calls registered
/// them, and the sweeper sleeps until the earliest one still registered. It runs only while there
/// are deadlines and stops when it finds none; the next registration starts it again. A timer per
/// call (`Task.sleep` in a second child task of a task group) took about a sixth of a publishing
/// process's CPU time per call (a dispatch timer created, armed by libdispatch's manager thread and
/// cancelled), for a deadline that almost never passes.
final class AcquireDeadlines: Sendable {
    private struct Entry {
        var deadline: ContinuousClock.Instant
        var expire: @Sendable () -> Void
    }

    private struct State {
        /// By registration: ids grow with deadlines.
        var entries: [UInt64: Entry] = [:]
        var nextID: UInt64 = 0
        var sweeping = false
    }

    private let state = Mutex(State())

    /// Registers `expire`, to be called once `deadline` passed unless ``remove(_:)`` came first;
    /// returns the id to remove it with.
    func add(deadline: ContinuousClock.Instant, expire: @escaping @Sendable () -> Void) -> UInt64 {
        let (id, start) = self.state.withLock { state -> (UInt64, Bool) in
            state.nextID += 1
            state.entries[state.nextID] = Entry(deadline: deadline, expire: expire)
            let start = !state.sweeping
            state.sweeping = true
            return (state.nextID, start)
        }
        if start {
            Task.detached { await self.sweep() }
        }
        return id
    }

    func remove(_ id: UInt64) {
        _ = self.state.withLock { $0.entries.removeValue(forKey: id) }
    }

    /// Calls the expired entries' `expire` and sleeps until the earliest remaining deadline; ends
    /// when no entry is left.
    private func sweep() async {
        while true {
            let now = ContinuousClock.now
            let (expired, next) = self.state.withLock { state -> ([Entry], ContinuousClock.Instant?) in
                var expired: [Entry] = []
                var next: ContinuousClock.Instant?
                for (id, entry) in state.entries {
                    if entry.deadline <= now {
                        expired.append(entry)
                        state.entries[id] = nil
                    } else if next.map({ entry.deadline < $0 }) ?? true {
                        next = entry.deadline
                    }
                }
                if next == nil { state.sweeping = false }
                return (expired, next)
            }
            for entry in expired { entry.expire() }
            guard let next else { return }
            try? await Task.sleep(until: next, tolerance: nil, clock: .continuous)
        }
    }
}
