//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Synchronization
import Tracing

/// Bounds how long an operation may run, and makes the bound a deadline that nested calls see.
///
/// The effective deadline is the earlier of `now + timeout` and the caller's
/// ``AviaryCore/Deadline/current``: a nested call never gets more than its caller has left. The
/// operation runs with that deadline set (``AviaryCore/Deadline/current``), so clients further
/// down propagate it. When the deadline comes first, the operation's task is cancelled and
/// ``ResilienceError/Code-swift.struct/timedOut`` is thrown; the timer is cancelled as soon as the
/// operation finishes.
///
/// ```swift
/// let perTry = Timeout(.milliseconds(500))
/// let body = try await perTry.run(.idempotent) { try await inventory.get(sku) }
/// ```
///
/// A timeout outside ``Retry`` bounds the whole call with its backoff; inside it bounds each
/// attempt, and its expiry is a failure the ``CircuitBreaker`` between them counts.
///
/// The operation runs in a child task, so that it can be cancelled without cancelling the
/// caller, and the call returns only once that task has ended: an operation that ignores
/// cancellation delays the error until it returns. On the `SystemClock` the deadline is armed on
/// one timer thread shared by every timeout (no sleeping task per call); on any other clock, such
/// as a `ManualClock`, a child task sleeps on that clock.
public struct Timeout: ResiliencePolicy {
    /// How a ``Timeout`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The name used in metrics and errors.
        public var name: String
        /// The longest an operation may run. Must be positive.
        public var timeout: Duration

        /// Creates a configuration.
        ///
        /// - Precondition: `timeout` is positive.
        public init(name: String = "timeout", timeout: Duration = .seconds(10)) {
            precondition(timeout > .zero, "Timeout.timeout must be positive, got \(timeout)")
            self.name = name
            self.timeout = timeout
        }
    }

    /// The configuration this policy was built with.
    public let configuration: Configuration
    let clock: any MonotonicClock
    let counters: ResilienceMetrics.CallCounters

    /// Creates a timeout policy.
    public init(_ configuration: Configuration, clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(policy: "timeout", name: configuration.name)
    }

    /// Creates a timeout policy of `timeout`.
    ///
    /// - Precondition: `timeout` is positive.
    public init(_ timeout: Duration, name: String = "timeout", clock: any MonotonicClock = SystemClock()) {
        self.init(Configuration(name: name, timeout: timeout), clock: clock)
    }

    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let own = Deadline(self.clock.now.advanced(by: self.configuration.timeout))
        let outer = Deadline.current
        let deadline = Deadline.earliest(outer, own) ?? own
        let imposedByCaller = deadline != own
        if deadline.instant <= self.clock.now {
            self.counters.timeout.increment()
            context.recordEvent("timeout.expired", ["aviary.policy": .string(self.configuration.name)])
            throw self.timedOutError(imposedByCaller: imposedByCaller)
        }
        let clock = self.clock
        let race = TimeoutRace()
        let result: Result<Output, any Error> = await withDeadline(deadline) {
            await withoutActuallyEscaping(next) { next in
                await withTaskGroup(of: Result<Output, any Error>?.self) { group in
                    // Arm the timer first: the operation may start running synchronously below.
                    var timer: UInt64?
                    #if os(Linux)
                    if clock is SystemClock {
                        timer = TimerThread.shared.schedule(at: deadline.instant) { race.expire() }
                    }
                    #endif
                    if timer == nil {
                        // Any other clock (a ManualClock in tests): a child that sleeps on it.
                        group.addTask {
                            if (try? await clock.sleep(until: deadline.instant, tolerance: nil)) != nil {
                                race.expire()
                            }
                            return nil
                        }
                    }
                    let operation: @Sendable () async -> Result<Output, any Error>? = {
                        race.attach()
                        defer { race.detach() }
                        do {
                            return .success(try await next(context))
                        } catch {
                            return .failure(error)
                        }
                    }
                    if #available(macOS 26.0, iOS 26.0, watchOS 26.0, tvOS 26.0, visionOS 26.0, *) {
                        // The child starts on this thread and runs until it first suspends, so an
                        // operation that completes without suspending costs no thread hop (about
                        // 2 µs of futex wake-ups per call on Linux otherwise).
                        group.addImmediateTask(operation: operation)
                    } else {
                        group.addTask(operation: operation)
                    }
                    var result: Result<Output, any Error> = .failure(CancellationError())
                    while let event = await group.next() {
                        if let event {
                            result = event
                            break
                        }
                    }
                    #if os(Linux)
                    if let timer { TimerThread.shared.cancel(timer) }
                    #endif
                    group.cancelAll()  // the sleeping child, if any; the group waits for it
                    return race.expired ? .failure(TimedOutMarker()) : result
                }
            }
        }
        switch result {
        case .success(let value):
            self.counters.success.increment()
            return value
        case .failure(let error) where error is TimedOutMarker:
            self.counters.timeout.increment()
            context.recordEvent("timeout.expired", ["aviary.policy": .string(self.configuration.name)])
            throw self.timedOutError(imposedByCaller: imposedByCaller)
        case .failure(let error):
            self.counters.failure.increment()
            throw error
        }
    }

    private func timedOutError(imposedByCaller: Bool) -> ResilienceError {
        let reason =
            imposedByCaller
            ? "the caller's deadline passed before the call finished"
            : "the call took longer than \(self.configuration.timeout)"
        return ResilienceError(
            .timedOut, "\(self.configuration.name): \(reason)", policyName: self.configuration.name)
    }

    private struct TimedOutMarker: Error {}
}

/// Lets a timer cancel the child task that runs a ``Timeout``'s operation, and no other task.
///
/// The child registers its task when it starts and unregisters before it returns, both under the
/// lock; the timer cancels under the same lock, so it can never touch a task that has finished.
/// A timer that fires before the child has started leaves `expired` set, and the child cancels
/// itself as it registers. Cancellation handlers of the operation run on the timer's thread while
/// the lock is held; they cannot reach this object, so they cannot deadlock on it.
final class TimeoutRace: Sendable {
    /// `@unchecked Sendable`: the task is only used (to cancel it) under the lock, and only while
    /// the child that registered it has not unregistered, that is, while the task is alive.
    private struct Registered: @unchecked Sendable {
        let task: UnsafeCurrentTask
    }

    private struct State {
        var task: Registered?
        var expired = false
        var finished = false
    }

    private let state = Mutex(State())

    /// True once the deadline passed before the operation finished.
    var expired: Bool { self.state.withLock { $0.expired } }

    /// Called by the child as it starts.
    func attach() {
        withUnsafeCurrentTask { task in
            guard let task else { return }
            let registered = Registered(task: task)
            let cancelNow = self.state.withLock { state -> Bool in
                state.task = registered
                return state.expired
            }
            if cancelNow { task.cancel() }
        }
    }

    /// Called by the child before it returns.
    func detach() {
        self.state.withLock { state in
            state.task = nil
            state.finished = true
        }
    }

    /// Called by the timer at the deadline.
    func expire() {
        self.state.withLock { state in
            guard !state.finished else { return }
            state.expired = true
            state.task?.task.cancel()
        }
    }
}
