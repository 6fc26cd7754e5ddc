//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Synchronization
import Tracing

/// Limits how many calls run at once, with a short bounded queue for the calls that find every
/// slot taken.
///
/// A bulkhead keeps one slow dependency from taking every task, connection or thread of a service.
/// At most ``Configuration-swift.struct/maxConcurrentCalls`` operations run at the same time. A
/// call that finds every slot taken waits in a FIFO queue of at most
/// ``Configuration-swift.struct/maxQueueLength`` callers, for at most
/// ``Configuration-swift.struct/maxWaitDuration``; when the queue is full, or the wait times
/// out, it fails with ``ResilienceError/Code-swift.struct/bulkheadFull`` without running. A queued
/// caller whose task is cancelled leaves the queue and throws `CancellationError`. Slots are
/// released when the operation returns, throws or is cancelled.
///
/// ```swift
/// let bulkhead = Bulkhead(.init(name: "inventory", maxConcurrentCalls: 32, maxQueueLength: 16,
///                               maxWaitDuration: .milliseconds(100)))
/// let stock = try await bulkhead.run { try await inventory.stock(sku) }
/// ```
///
/// Callers whose work is not one closure (a streamed body) take a ``Permit`` with
/// ``tryAcquire()`` or ``acquire()`` and release it when done.
///
/// The gauge `aviary_bulkhead_concurrent_calls{name}` reports the slots in use, and
/// `aviary_resilience_calls_total{policy="bulkhead"}` counts successes, failures and rejections.
public final class Bulkhead: ResiliencePolicy {
    /// How a ``Bulkhead`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The name used in metrics, span events and errors.
        public var name: String
        /// The number of calls that may run at the same time (calls). At least 1.
        public var maxConcurrentCalls: Int
        /// The number of calls that may wait for a slot (calls). 0 rejects at once when every
        /// slot is taken.
        public var maxQueueLength: Int
        /// The longest a call waits in the queue before it is rejected (a duration on the
        /// injected clock). Positive.
        public var maxWaitDuration: Duration

        /// Creates a configuration.
        ///
        /// - Precondition: `maxConcurrentCalls >= 1`, `maxQueueLength >= 0`,
        ///   `maxWaitDuration > .zero`.
        public init(
            name: String = "bulkhead",
            maxConcurrentCalls: Int = 25,
            maxQueueLength: Int = 0,
            maxWaitDuration: Duration = .seconds(1)
        ) {
            precondition(
                maxConcurrentCalls >= 1, "Bulkhead.maxConcurrentCalls must be at least 1, got \(maxConcurrentCalls)")
            precondition(maxQueueLength >= 0, "Bulkhead.maxQueueLength must not be negative, got \(maxQueueLength)")
            precondition(maxWaitDuration > .zero, "Bulkhead.maxWaitDuration must be positive, got \(maxWaitDuration)")
            self.name = name
            self.maxConcurrentCalls = maxConcurrentCalls
            self.maxQueueLength = maxQueueLength
            self.maxWaitDuration = maxWaitDuration
        }
    }

    typealias Continuation = CheckedContinuation<WaitOutcome, Never>
    typealias Machine = StateMachine<Continuation>

    private struct State {
        var machine: Machine
        var nextID: UInt64 = 0
    }

    /// The configuration this bulkhead was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let state: Mutex<State>
    private let counters: ResilienceMetrics.CallCounters
    private let concurrentCalls: Gauge

    /// Creates a bulkhead.
    ///
    /// - Parameters:
    ///   - configuration: limits and name.
    ///   - clock: the clock that times the queue wait; tests pass a `ManualClock`.
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.state = Mutex(
            State(
                machine: Machine(
                    maxConcurrentCalls: configuration.maxConcurrentCalls,
                    maxQueueLength: configuration.maxQueueLength
                )
            )
        )
        self.counters = ResilienceMetrics.CallCounters(policy: "bulkhead", name: configuration.name)
        self.concurrentCalls = Gauge(
            label: ResilienceMetrics.bulkheadConcurrent,
            dimensions: [("name", configuration.name)]
        )
    }

    /// The number of slots taken now.
    public var inFlightCount: Int {
        self.state.withLock { $0.machine.inFlight }
    }

    /// The number of calls waiting for a slot now.
    public var queuedCount: Int {
        self.state.withLock { $0.machine.queued }
    }

    /// Runs `next` in a slot, waiting in the queue for one if allowed.
    ///
    /// - Throws: ``ResilienceError`` with code ``ResilienceError/Code-swift.struct/bulkheadFull``
    ///   when the queue is full or the wait timed out; `CancellationError` when the task was
    ///   cancelled while waiting; otherwise whatever `next` throws.
    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        try await self.acquireSlot(context: context)
        defer { self.releaseSlot() }
        do {
            let output = try await next(context)
            self.counters.success.increment()
            return output
        } catch {
            self.counters.failure.increment()
            throw error
        }
    }

    // MARK: Permits

    /// A slot held outside a closure; releasing it (or dropping it) frees the slot.
    ///
    /// A permit cannot be copied, so it is released exactly once: by ``release()`` or, if it is
    /// dropped without that, when it goes out of scope.
    ///
    /// ```swift
    /// guard let permit = bulkhead.tryAcquire() else { return .serviceUnavailable }
    /// defer { permit.release() }
    /// try await stream.forward(body)
    /// ```
    public struct Permit: ~Copyable, Sendable {
        private let bulkhead: Bulkhead

        fileprivate init(_ bulkhead: Bulkhead) {
            self.bulkhead = bulkhead
        }

        /// Frees the slot (or hands it to the oldest waiter).
        public consuming func release() {
            // Consuming `self` ends its lifetime here; `deinit` frees the slot.
        }

        deinit {
            self.bulkhead.releaseSlot()
        }
    }

    /// Takes a slot if one is free now; never waits.
    ///
    /// ```swift
    /// if let permit = bulkhead.tryAcquire() {
    ///     defer { permit.release() }
    ///     try await upload(body)
    /// }
    /// ```
    ///
    /// - Returns: a permit, or nil when every slot is taken (counted as a rejection).
    public func tryAcquire() -> Permit? {
        let inFlight = self.state.withLock { state -> Int? in
            state.machine.tryAcquire() ? state.machine.inFlight : nil
        }
        guard let inFlight else {
            self.counters.rejected.increment()
            return nil
        }
        self.concurrentCalls.record(inFlight)
        return Permit(self)
    }

    /// Takes a slot, waiting in the queue like ``execute(_:_:)`` does.
    ///
    /// ```swift
    /// let permit = try await bulkhead.acquire()
    /// defer { permit.release() }
    /// ```
    ///
    /// - Returns: a permit that must be released when the work is done.
    /// - Throws: ``ResilienceError`` (``ResilienceError/Code-swift.struct/bulkheadFull``) when the
    ///   queue is full or the wait timed out; `CancellationError` when cancelled while waiting.
    public func acquire() async throws -> Permit {
        try await self.acquireSlot(context: nil)
        return Permit(self)
    }

    // MARK: Slots

    private func acquireSlot(context: PolicyContext?) async throws {
        let (admission, inFlight) = self.state.withLock { state -> (Machine.Admission, Int) in
            if state.machine.tryAcquire() { return (.admitted, state.machine.inFlight) }
            state.nextID &+= 1
            return (state.machine.acquire(orEnqueue: state.nextID), state.machine.inFlight)
        }
        switch admission {
        case .admitted:
            self.concurrentCalls.record(inFlight)
        case .rejected:
            throw self.rejection(timedOut: false, context: context)
        case .enqueued(let id):
            let outcome = await Self.waitInQueue(
                deadline: self.clock.now.advanced(by: self.configuration.maxWaitDuration),
                clock: self.clock,
                suspend: { continuation in
                    self.state.withLock { $0.machine.suspend(id: id, waiter: continuation) }
                },
                remove: { [self] outcome in
                    self.state.withLock { $0.machine.remove(id: id, because: outcome) }
                }
            )
            switch outcome {
            case .granted:
                // The slot was handed over; the gauge did not change. A caller cancelled at the
                // moment it got the slot gives it back rather than start work nobody waits for.
                if Task.isCancelled {
                    self.releaseSlot()
                    throw CancellationError()
                }
            case .cancelled:
                throw CancellationError()
            case .timedOut:
                throw self.rejection(timedOut: true, context: context)
            }
        }
    }

    fileprivate func releaseSlot() {
        let (resumption, inFlight) = self.state.withLock { state in
            (state.machine.release(), state.machine.inFlight)
        }
        resumption?.resume()
        self.concurrentCalls.record(inFlight)
    }

    private func rejection(timedOut: Bool, context: PolicyContext?) -> ResilienceError {
        self.counters.rejected.increment()
        let name = self.configuration.name
        context?.recordEvent(
            "bulkhead.rejected",
            ["aviary.policy": .string(name), "aviary.reason": .string(timedOut ? "queue_timeout" : "queue_full")]
        )
        let message =
            timedOut
            ? "\(name): waited \(self.configuration.maxWaitDuration) in the queue without getting one of "
                + "\(self.configuration.maxConcurrentCalls) slots"
            : "\(name): all \(self.configuration.maxConcurrentCalls) slots are taken and the wait queue "
                + "(\(self.configuration.maxQueueLength)) is full"
        return ResilienceError(.bulkheadFull, message, policyName: name)
    }
}

extension Bulkhead {
    /// Waits until the queued caller is granted a slot, cancelled, or times out at `deadline`.
    ///
    /// The queue timer is a child task sleeping on `clock`; it is cancelled as soon as the wait
    /// ends. The caller must already be queued (``StateMachine/acquire(orEnqueue:)``), so an outcome
    /// that arrives before the continuation is attached is kept by the state machine.
    static func waitInQueue(
        deadline: MonotonicInstant,
        clock: any MonotonicClock,
        suspend: (Continuation) -> Machine.Resumption?,
        remove: @escaping @Sendable (WaitOutcome) -> Machine.Resumption?
    ) async -> WaitOutcome {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await clock.sleep(until: deadline, tolerance: nil)
                } catch {
                    return
                }
                remove(.timedOut)?.resume()
            }
            let outcome = await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: Continuation) in
                    suspend(continuation)?.resume()
                }
            } onCancel: {
                remove(.cancelled)?.resume()
            }
            group.cancelAll()
            return outcome
        }
    }
}
