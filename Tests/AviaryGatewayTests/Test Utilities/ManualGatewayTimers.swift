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
    }

    private let state = Mutex(State())

    var now: NIODeadline { self.state.withLock { $0.now } }

    func schedule(at deadline: NIODeadline, on eventLoop: any EventLoop, _ task: @escaping () -> Void) -> GatewayTimer {
        let bound = NIOLoopBound(task, eventLoop: eventLoop)
        let id = self.state.withLock { state in
            state.nextID += 1
            state.timers[state.nextID] = Timer(
                deadline: deadline, delay: deadline - state.now, eventLoop: eventLoop, task: bound)
            return state.nextID
        }
        return GatewayTimer { [weak self] in
            _ = self?.state.withLock { $0.timers.removeValue(forKey: id) }
        }
    }

    /// The delays of the timers armed and neither fired nor cancelled.
    var armed: [Duration] {
        self.state.withLock { $0.timers.values.filter { !$0.dispatched }.map { .nanoseconds($0.delay.nanoseconds) } }
    }

    /// Polls until a timer set `delay` ahead is armed; records an issue and throws after `timeout`
    /// of real time.
    func waitUntilArmed(
        _ delay: Duration, timeout: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while !self.armed.contains(delay) {
            if ContinuousClock.now > deadline {
                Issue.record("no timer of \(delay) was armed; armed: \(self.armed)", sourceLocation: sourceLocation)
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(1))
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
