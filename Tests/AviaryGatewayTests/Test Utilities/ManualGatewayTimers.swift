//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import Synchronization
import Testing

@testable import AviaryGateway

/// Gateway timers whose time moves only when the test calls ``advance(by:)``: a timeout fires
/// exactly then, on the event loop that armed it, however slow the machine is.
///
/// ```swift
/// let timers = ManualGatewayTimers()
/// try await withGateway(yaml, timers: timers) { gateway in
///     async let response = gateway.get("/never")
///     try await timers.waitUntilArmed(.seconds(5))   // the route's timeout
///     await timers.advance(by: .seconds(5))
///     #expect(try await response.status == 504)
/// }
/// ```
final class ManualGatewayTimers: GatewayTimers {
    private struct Timer {
        var deadline: NIODeadline
        /// How far ahead of the time it was armed at the timer was set.
        var delay: TimeAmount
        var eventLoop: any EventLoop
        var task: NIOLoopBound<() -> Void>
        var dispatched = false
    }

    private struct State {
        var now = NIODeadline.uptimeNanoseconds(3_600_000_000_000)
        var nextID = 0
        var timers: [Int: Timer] = [:]
        /// Tests waiting in ``waitUntilArmed(_:)`` for a timer of that delay.
        var waiters: [(id: Int, delay: TimeAmount, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    var now: NIODeadline { self.state.withLock { $0.now } }

    func schedule(at deadline: NIODeadline, on eventLoop: any EventLoop, _ task: @escaping () -> Void) -> GatewayTimer {
        let bound = NIOLoopBound(task, eventLoop: eventLoop)
        let (id, waiters) = self.state.withLock { state in
            state.nextID += 1
            let delay = deadline - state.now
            state.timers[state.nextID] = Timer(deadline: deadline, delay: delay, eventLoop: eventLoop, task: bound)
            let waiting = state.waiters.filter { $0.delay == delay }
            state.waiters.removeAll { $0.delay == delay }
            return (state.nextID, waiting)
        }
        for waiter in waiters { waiter.continuation.resume() }
        return GatewayTimer { [weak self] in
            _ = self?.state.withLock { $0.timers.removeValue(forKey: id) }
        }
    }

    /// The delays of the timers armed and neither fired nor cancelled.
    var armed: [Duration] {
        self.state.withLock { $0.timers.values.filter { !$0.dispatched }.map { .nanoseconds($0.delay.nanoseconds) } }
    }

    /// Returns once a timer set `delay` ahead is armed (at once if one is): woken by
    /// ``schedule(at:on:_:)``, not by polling. A timer that never comes leaves the test to its
    /// time limit, whose cancellation ends the wait with `CancellationError` (the test fails
    /// rather than hangs).
    func waitUntilArmed(_ delay: Duration) async throws {
        let amount = TimeAmount.nanoseconds(
            delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000)
        let id = self.state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        // Cancellable, so that the test's time limit (which cancels it) ends the wait with an
        // error instead of leaving it suspended forever.
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Outcome { case armed, cancelled, waiting }
                let outcome = self.state.withLock { state -> Outcome in
                    if state.timers.values.contains(where: { !$0.dispatched && $0.delay == amount }) { return .armed }
                    if Task.isCancelled { return .cancelled }
                    state.waiters.append((id, amount, continuation))
                    return .waiting
                }
                switch outcome {
                case .armed: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .waiting: break
                }
            }
        } onCancel: {
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward by `amount` and runs every timer that is due, in deadline order, each on
    /// its event loop; returns once they ran (timers they arm that are due run too).
    func advance(by amount: Duration) async {
        let (seconds, attoseconds) = amount.components
        let nanoseconds = TimeAmount.nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        self.state.withLock { $0.now = $0.now + nanoseconds }
        while true {
            let due = self.state.withLock { state -> (id: Int, timer: Timer)? in
                let ready = state.timers.filter { !$0.value.dispatched && $0.value.deadline <= state.now }
                guard let first = ready.min(by: { $0.value.deadline < $1.value.deadline }) else { return nil }
                state.timers[first.key]?.dispatched = true
                return (first.key, first.value)
            }
            guard let (id, timer) = due else { return }
            let task = timer.task
            // Cancelled between being picked and running: the removal tells.
            try? await timer.eventLoop.submit {
                guard self.state.withLock({ $0.timers.removeValue(forKey: id) }) != nil else { return }
                task.value()
            }.get()
        }
    }
}
