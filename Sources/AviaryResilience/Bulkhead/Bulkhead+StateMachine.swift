//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import DequeModule

extension Bulkhead {
    /// How a queued waiter's wait ended.
    enum WaitOutcome: Hashable, Sendable {
        /// The waiter now holds a slot and must release it.
        case granted
        /// The waiter's task was cancelled while it was queued; it holds no slot.
        case cancelled
        /// The waiter was queued for the whole queue timeout; it holds no slot.
        case timedOut
    }

    /// The admission logic of one bulkhead partition, without locks, tasks or clocks.
    ///
    /// Slots are counted in ``inFlight``; callers that find every slot taken join a bounded FIFO
    /// queue. A released slot is handed straight to the oldest waiter (``inFlight`` stays the
    /// same), so while anyone waits every slot is taken and new callers cannot overtake the queue.
    ///
    /// Waiting is two-phase so that no wake-up is lost: ``acquire(orEnqueue:)`` puts the waiter in
    /// the queue synchronously, and ``suspend(id:waiter:)`` later attaches what must be resumed
    /// (a continuation in production, any value in tests). A grant, cancellation or timeout that
    /// arrives between the two phases is remembered and returned by ``suspend(id:waiter:)``.
    ///
    /// Owners hold the machine in a `Mutex` and resume the returned ``Resumption`` after unlocking.
    struct StateMachine<Waiter> {
        typealias Outcome = Bulkhead.WaitOutcome

        /// What to resume once the lock is released.
        struct Resumption {
            var waiter: Waiter
            var outcome: Outcome
        }

        /// The answer to an acquisition.
        enum Admission: Hashable, Sendable {
            /// The caller holds a slot.
            case admitted
            /// The caller is queued under the given id and must call ``suspend(id:waiter:)``.
            case enqueued(UInt64)
            /// Every slot is taken and the queue is full.
            case rejected
        }

        struct Entry {
            var id: UInt64
            var waiter: Waiter?
        }

        /// The number of slots; at least 1.
        let maxConcurrentCalls: Int
        /// The number of callers that may wait for a slot; 0 disables waiting.
        let maxQueueLength: Int
        /// Slots held now, including slots granted to waiters that have not resumed yet.
        private(set) var inFlight = 0
        private var queue: Deque<Entry> = []
        /// Outcomes that arrived before their waiter suspended.
        private var early: [UInt64: Outcome] = [:]

        init(maxConcurrentCalls: Int, maxQueueLength: Int) {
            self.maxConcurrentCalls = maxConcurrentCalls
            self.maxQueueLength = maxQueueLength
        }

        /// The number of queued waiters.
        var queued: Int { self.queue.count }

        /// True when nothing is in flight, nobody waits and no outcome is pending: the partition
        /// carries no information and may be dropped.
        var isIdle: Bool { self.inFlight == 0 && self.queue.isEmpty && self.early.isEmpty }

        /// Takes a free slot if there is one; never queues.
        mutating func tryAcquire() -> Bool {
            guard self.inFlight < self.maxConcurrentCalls else { return false }
            // Every release hands its slot to the queue head, so a free slot means an empty queue.
            assert(self.queue.isEmpty, "a slot is free while callers wait")
            self.inFlight += 1
            return true
        }

        /// Takes a free slot, or queues the caller under `id` (which must be unique among this
        /// machine's waiters), or rejects when the queue is full.
        mutating func acquire(orEnqueue id: UInt64) -> Admission {
            if self.tryAcquire() { return .admitted }
            guard self.queue.count < self.maxQueueLength else { return .rejected }
            self.queue.append(Entry(id: id, waiter: nil))
            return .enqueued(id)
        }

        /// Attaches `waiter` to the queued caller `id`, or returns it at once with the outcome
        /// that already arrived.
        mutating func suspend(id: UInt64, waiter: Waiter) -> Resumption? {
            if let outcome = self.early.removeValue(forKey: id) {
                return Resumption(waiter: waiter, outcome: outcome)
            }
            if let index = self.queue.firstIndex(where: { $0.id == id }) {
                self.queue[index].waiter = waiter
                return nil
            }
            // Unknown id: a bug in the owner. Answer rather than leave the waiter hanging.
            assertionFailure("suspend for unknown waiter \(id)")
            return Resumption(waiter: waiter, outcome: .cancelled)
        }

        /// Releases one slot: hands it to the oldest waiter, or frees it.
        ///
        /// - Precondition: a slot is held.
        mutating func release() -> Resumption? {
            precondition(self.inFlight > 0, "bulkhead slot released more often than acquired")
            guard let head = self.queue.popFirst() else {
                self.inFlight -= 1
                return nil
            }
            guard let waiter = head.waiter else {
                self.early[head.id] = .granted
                return nil
            }
            return Resumption(waiter: waiter, outcome: .granted)
        }

        /// Takes the queued caller `id` out of the queue because it was cancelled or timed out.
        /// Does nothing when the caller was already granted a slot or removed.
        mutating func remove(id: UInt64, because outcome: Outcome) -> Resumption? {
            assert(outcome != .granted, "remove is for cancellation and timeout")
            guard let index = self.queue.firstIndex(where: { $0.id == id }) else { return nil }
            let entry = self.queue.remove(at: index)
            guard let waiter = entry.waiter else {
                self.early[id] = outcome
                return nil
            }
            return Resumption(waiter: waiter, outcome: outcome)
        }
    }
}

extension Bulkhead.StateMachine: Sendable where Waiter: Sendable {}
extension Bulkhead.StateMachine.Entry: Sendable where Waiter: Sendable {}
extension Bulkhead.StateMachine.Resumption: Sendable where Waiter: Sendable {}

extension Bulkhead.StateMachine.Resumption where Waiter == CheckedContinuation<Bulkhead.WaitOutcome, Never> {
    /// Resumes the waiting task with the outcome.
    func resume() {
        self.waiter.resume(returning: self.outcome)
    }
}
