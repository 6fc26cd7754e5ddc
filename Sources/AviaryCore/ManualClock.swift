//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// A clock that moves only when a test tells it to.
///
/// `sleep(until:)` suspends until ``advance(by:)`` or ``advance(to:)`` moves the clock to or past
/// the sleeper's deadline; cancelling a sleeping task resumes it with `CancellationError`. Tests
/// that need to know that code under test has started sleeping await ``waitForSleepers(count:)``
/// instead of sleeping themselves.
///
/// ```swift
/// let clock = ManualClock()
/// async let slept: Void = clock.sleep(until: clock.now.advanced(by: .seconds(1)), tolerance: nil)
/// await clock.waitForSleepers(count: 1)
/// clock.advance(by: .seconds(1))
/// try await slept
/// ```
public final class ManualClock: MonotonicClock {
    private struct Sleeper {
        var id: UInt64
        var deadline: MonotonicInstant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: MonotonicInstant
        var nextID: UInt64 = 0
        var sleepers: [Sleeper] = []
        var sleeperWaiters: [(id: UInt64, count: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var cancelledWaiters: Set<UInt64> = []
        /// IDs of sleepers cancelled before they registered.
        var cancelledEarly: Set<UInt64> = []
    }

    private let state: Mutex<State>

    /// Creates a clock that starts at `start` (by default one hour after its origin, so that
    /// code subtracting durations from `now` stays positive).
    public init(start: MonotonicInstant = MonotonicInstant(offset: .seconds(3600))) {
        self.state = Mutex(State(now: start))
    }

    public var now: MonotonicInstant {
        self.state.withLock { $0.now }
    }

    public var minimumResolution: Duration { .nanoseconds(1) }

    /// The number of tasks currently suspended in ``sleep(until:tolerance:)``.
    public var sleeperCount: Int {
        self.state.withLock { $0.sleepers.count }
    }

    /// The earliest deadline among current sleepers, if any.
    public var nextDeadline: MonotonicInstant? {
        self.state.withLock { $0.sleepers.map(\.deadline).min() }
    }

    public func sleep(until deadline: MonotonicInstant, tolerance: Duration? = nil) async throws {
        try Task.checkCancellation()
        let id = self.state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let action = self.state.withLock { state -> ResumeAction in
                    if state.cancelledEarly.remove(id) != nil {
                        return .fail(continuation)
                    }
                    if deadline <= state.now {
                        return .succeed(continuation)
                    }
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return .registered(Self.readyWaiters(&state))
                }
                action.run()
            }
        } onCancel: {
            let continuation = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
                if let index = state.sleepers.firstIndex(where: { $0.id == id }) {
                    return state.sleepers.remove(at: index).continuation
                }
                state.cancelledEarly.insert(id)
                return nil
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock forward by `duration` and resumes every sleeper whose deadline has come.
    ///
    /// - Precondition: `duration` is not negative.
    public func advance(by duration: Duration) {
        precondition(duration >= .zero, "a ManualClock only moves forward")
        self.advance(to: self.now.advanced(by: duration))
    }

    /// Moves the clock to `instant` (if it is later than now) and resumes due sleepers in
    /// deadline order.
    public func advance(to instant: MonotonicInstant) {
        let due = self.state.withLock { state -> [Sleeper] in
            if instant > state.now { state.now = instant }
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }.sorted { $0.deadline < $1.deadline }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due {
            sleeper.continuation.resume()
        }
    }

    /// Suspends until at least `count` tasks are sleeping on this clock, or until the calling task
    /// is cancelled (so that a test's time limit can end a wait that would never be satisfied).
    ///
    /// Use it before ``advance(by:)`` when the code under test sleeps in another task, so that
    /// the advance cannot happen before the sleep starts.
    public func waitForSleepers(count: Int = 1) async {
        let id = self.state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.state.withLock { state -> Bool in
                    if state.cancelledWaiters.remove(id) != nil || state.sleepers.count >= count { return true }
                    state.sleeperWaiters.append((id, count, continuation))
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let continuation = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                if let index = state.sleeperWaiters.firstIndex(where: { $0.id == id }) {
                    return state.sleeperWaiters.remove(at: index).continuation
                }
                state.cancelledWaiters.insert(id)
                return nil
            }
            continuation?.resume()
        }
    }

    private static func readyWaiters(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        let count = state.sleepers.count
        var ready: [CheckedContinuation<Void, Never>] = []
        state.sleeperWaiters.removeAll { waiter in
            if waiter.count <= count {
                ready.append(waiter.continuation)
                return true
            }
            return false
        }
        return ready
    }

    private enum ResumeAction {
        case fail(CheckedContinuation<Void, any Error>)
        case succeed(CheckedContinuation<Void, any Error>)
        case registered([CheckedContinuation<Void, Never>])

        func run() {
            switch self {
            case .fail(let continuation): continuation.resume(throwing: CancellationError())
            case .succeed(let continuation): continuation.resume()
            case .registered(let waiters): for waiter in waiters { waiter.resume() }
            }
        }
    }
}
