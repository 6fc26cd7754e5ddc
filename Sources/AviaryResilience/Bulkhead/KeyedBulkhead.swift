//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Synchronization
import Tracing

/// A bulkhead per key: at most N concurrent calls for each ``PolicyContext/key`` (a tenant, a
/// user, a client address), so that one key cannot take every slot.
///
/// Each key gets the same limits as a ``Bulkhead``: ``Configuration-swift.struct/maxConcurrentCallsPerKey``
/// slots and a FIFO queue of ``Configuration-swift.struct/maxQueueLengthPerKey`` waiters timed out
/// after ``Configuration-swift.struct/maxWaitDuration``.
///
/// Memory stays bounded however many keys callers invent:
/// - a key is tracked only while it has calls in flight or waiting; the last release removes it;
/// - at most ``Configuration-swift.struct/maxKeys`` keys are tracked at once. Because idle keys are
///   already gone, every tracked key is busy and none can be evicted without breaking its limit,
///   so a call for a new key beyond the cap is rejected with
///   ``ResilienceError/Code-swift.struct/bulkheadFull`` (and the message says why).
///
/// Calls without a key follow ``Configuration-swift.struct/missingKey``: by default they share the
/// key `""`.
///
/// ```swift
/// let perTenant = KeyedBulkhead(.init(name: "reports", maxConcurrentCallsPerKey: 2, maxKeys: 1_000))
/// let report = try await perTenant.run(PolicyContext(key: tenantID)) { try await reports.render(id) }
/// ```
public final class KeyedBulkhead: ResiliencePolicy {
    /// How a ``KeyedBulkhead`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The name used in metrics, span events and errors.
        public var name: String
        /// The number of calls per key that may run at the same time (calls). At least 1.
        public var maxConcurrentCallsPerKey: Int
        /// The number of calls per key that may wait for a slot (calls); 0 rejects at once.
        public var maxQueueLengthPerKey: Int
        /// The longest a call waits in its key's queue (a duration on the injected clock). Positive.
        public var maxWaitDuration: Duration
        /// The most keys tracked at once (keys). At least 1. Calls for further keys are rejected.
        public var maxKeys: Int
        /// What calls without a key do; by default they share the key `""`.
        public var missingKey: MissingKeyBehavior

        /// Creates a configuration.
        ///
        /// - Precondition: `maxConcurrentCallsPerKey >= 1`, `maxQueueLengthPerKey >= 0`,
        ///   `maxWaitDuration > .zero`, `maxKeys >= 1`.
        public init(
            name: String = "keyed-bulkhead",
            maxConcurrentCallsPerKey: Int = 10,
            maxQueueLengthPerKey: Int = 0,
            maxWaitDuration: Duration = .seconds(1),
            maxKeys: Int = 10_000,
            missingKey: MissingKeyBehavior = .shareOneKey
        ) {
            precondition(
                maxConcurrentCallsPerKey >= 1,
                "KeyedBulkhead.maxConcurrentCallsPerKey must be at least 1, got \(maxConcurrentCallsPerKey)"
            )
            precondition(
                maxQueueLengthPerKey >= 0,
                "KeyedBulkhead.maxQueueLengthPerKey must not be negative, got \(maxQueueLengthPerKey)"
            )
            precondition(
                maxWaitDuration > .zero, "KeyedBulkhead.maxWaitDuration must be positive, got \(maxWaitDuration)")
            precondition(maxKeys >= 1, "KeyedBulkhead.maxKeys must be at least 1, got \(maxKeys)")
            self.name = name
            self.maxConcurrentCallsPerKey = maxConcurrentCallsPerKey
            self.maxQueueLengthPerKey = maxQueueLengthPerKey
            self.maxWaitDuration = maxWaitDuration
            self.maxKeys = maxKeys
            self.missingKey = missingKey
        }
    }

    private typealias Machine = Bulkhead.Machine

    private struct State {
        var partitions: [String: Machine] = [:]
        /// Waiter ids are unique across keys, so a late timer can never touch a newer waiter.
        var nextID: UInt64 = 0
        var inFlight = 0
    }

    private enum Admission {
        case admitted(inFlight: Int)
        case enqueued(UInt64)
        case queueFull
        case tooManyKeys
    }

    private enum Rejection {
        case queueFull, timedOut, tooManyKeys, missingKey
    }

    /// The configuration this bulkhead was built with.
    public let configuration: Configuration
    private let clock: any MonotonicClock
    private let state = Mutex(State())
    private let counters: ResilienceMetrics.CallCounters
    private let concurrentCalls: Gauge

    /// Creates a keyed bulkhead.
    ///
    /// - Parameters:
    ///   - configuration: limits per key, key cap and name.
    ///   - clock: the clock that times queue waits; tests pass a `ManualClock`.
    public init(_ configuration: Configuration = .init(), clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(policy: "bulkhead", name: configuration.name)
        self.concurrentCalls = Gauge(
            label: ResilienceMetrics.bulkheadConcurrent,
            dimensions: [("name", configuration.name)]
        )
    }

    /// The number of keys tracked now (keys with calls in flight or waiting).
    public var trackedKeyCount: Int {
        self.state.withLock { $0.partitions.count }
    }

    /// The number of slots taken now, over all keys.
    public var inFlightCount: Int {
        self.state.withLock { $0.inFlight }
    }

    /// The number of slots `key` holds now.
    public func inFlightCount(forKey key: String) -> Int {
        self.state.withLock { $0.partitions[key]?.inFlight ?? 0 }
    }

    /// The number of calls for `key` waiting now.
    public func queuedCount(forKey key: String) -> Int {
        self.state.withLock { $0.partitions[key]?.queued ?? 0 }
    }

    /// Runs `next` in a slot of `context.key`'s partition, waiting in its queue if allowed.
    ///
    /// - Throws: ``ResilienceError`` (``ResilienceError/Code-swift.struct/bulkheadFull``) when the
    ///   key's queue is full, the wait timed out, ``Configuration-swift.struct/maxKeys`` keys are
    ///   busy, or the call has no key and ``MissingKeyBehavior/reject`` is configured;
    ///   `CancellationError` when cancelled while waiting; otherwise whatever `next` throws.
    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let key: String
        switch self.configuration.missingKey.resolve(context.key) {
        case .key(let resolved):
            key = resolved
        case .unlimited:
            return try await self.run(context, next)
        case .reject:
            throw self.rejection(.missingKey, key: nil, context: context)
        }
        try await self.acquireSlot(key: key, context: context)
        defer { self.releaseSlot(key: key) }
        return try await self.run(context, next)
    }

    private func run<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
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

    /// A slot of one key held outside a closure; releasing it (or dropping it) frees the slot.
    ///
    /// ```swift
    /// let permit = try await perTenant.acquire(key: tenantID)
    /// defer { permit.release() }
    /// ```
    public struct Permit: ~Copyable, Sendable {
        private let bulkhead: KeyedBulkhead
        /// nil for a call without a key under ``MissingKeyBehavior/unlimited``: nothing to free.
        private let key: String?

        fileprivate init(_ bulkhead: KeyedBulkhead, key: String?) {
            self.bulkhead = bulkhead
            self.key = key
        }

        /// Frees the slot (or hands it to the key's oldest waiter).
        public consuming func release() {
            // Consuming `self` ends its lifetime here; `deinit` frees the slot.
        }

        deinit {
            if let key { self.bulkhead.releaseSlot(key: key) }
        }
    }

    /// Takes a slot of `key` if one is free now; never waits.
    ///
    /// - Parameter key: the partition; nil follows ``Configuration-swift.struct/missingKey``.
    /// - Returns: a permit, or nil when the key's slots are taken or no key can be tracked.
    public func tryAcquire(key: String?) -> Permit? {
        let resolved: String
        switch self.configuration.missingKey.resolve(key) {
        case .key(let key): resolved = key
        case .unlimited: return Permit(self, key: nil)
        case .reject:
            self.counters.rejected.increment()
            return nil
        }
        let maxKeys = self.configuration.maxKeys
        let inFlight = self.state.withLock { state -> Int? in
            if let index = state.partitions.index(forKey: resolved) {
                guard state.partitions.values[index].tryAcquire() else { return nil }
            } else {
                guard state.partitions.count < maxKeys else { return nil }
                var machine = self.makeMachine()
                _ = machine.tryAcquire()
                state.partitions[resolved] = machine
            }
            state.inFlight += 1
            return state.inFlight
        }
        guard let inFlight else {
            self.counters.rejected.increment()
            return nil
        }
        self.concurrentCalls.record(inFlight)
        return Permit(self, key: resolved)
    }

    /// Takes a slot of `key`, waiting in its queue like ``execute(_:_:)`` does.
    ///
    /// - Parameter key: the partition; nil follows ``Configuration-swift.struct/missingKey``.
    /// - Returns: a permit that must be released when the work is done.
    /// - Throws: as ``execute(_:_:)`` does before running the operation.
    public func acquire(key: String?) async throws -> Permit {
        switch self.configuration.missingKey.resolve(key) {
        case .key(let resolved):
            try await self.acquireSlot(key: resolved, context: nil)
            return Permit(self, key: resolved)
        case .unlimited:
            return Permit(self, key: nil)
        case .reject:
            throw self.rejection(.missingKey, key: nil, context: nil)
        }
    }

    // MARK: Slots

    private func makeMachine() -> Machine {
        Machine(
            maxConcurrentCalls: self.configuration.maxConcurrentCallsPerKey,
            maxQueueLength: self.configuration.maxQueueLengthPerKey
        )
    }

    private func acquireSlot(key: String, context: PolicyContext?) async throws {
        let maxKeys = self.configuration.maxKeys
        let admission = self.state.withLock { state -> Admission in
            if let index = state.partitions.index(forKey: key) {
                if state.partitions.values[index].tryAcquire() {
                    state.inFlight += 1
                    return .admitted(inFlight: state.inFlight)
                }
                state.nextID &+= 1
                switch state.partitions.values[index].acquire(orEnqueue: state.nextID) {
                case .admitted:
                    state.inFlight += 1
                    return .admitted(inFlight: state.inFlight)
                case .enqueued(let id):
                    return .enqueued(id)
                case .rejected:
                    return .queueFull
                }
            }
            guard state.partitions.count < maxKeys else { return .tooManyKeys }
            var machine = self.makeMachine()
            _ = machine.tryAcquire()
            state.partitions[key] = machine
            state.inFlight += 1
            return .admitted(inFlight: state.inFlight)
        }
        switch admission {
        case .admitted(let inFlight):
            self.concurrentCalls.record(inFlight)
        case .queueFull:
            throw self.rejection(.queueFull, key: key, context: context)
        case .tooManyKeys:
            throw self.rejection(.tooManyKeys, key: key, context: context)
        case .enqueued(let id):
            let outcome = await Bulkhead.waitInQueue(
                deadline: self.clock.now.advanced(by: self.configuration.maxWaitDuration),
                clock: self.clock,
                suspend: { continuation in
                    self.update(key: key) { $0.suspend(id: id, waiter: continuation) }
                },
                remove: { [self] outcome in
                    self.update(key: key) { $0.remove(id: id, because: outcome) }
                }
            )
            switch outcome {
            case .granted:
                if Task.isCancelled {
                    self.releaseSlot(key: key)
                    throw CancellationError()
                }
            case .cancelled:
                throw CancellationError()
            case .timedOut:
                throw self.rejection(.timedOut, key: key, context: context)
            }
        }
    }

    fileprivate func releaseSlot(key: String) {
        let resumption = self.update(key: key) { $0.release() }
        resumption?.resume()
        self.concurrentCalls.record(self.state.withLock { $0.inFlight })
    }

    /// Applies `body` to `key`'s partition, keeps the total in step and drops the partition when
    /// it has become idle.
    private func update(
        key: String,
        _ body: (inout Machine) -> Machine.Resumption?
    ) -> Machine.Resumption? {
        self.state.withLock { state in
            guard let index = state.partitions.index(forKey: key) else {
                assertionFailure("no bulkhead partition for key \(key)")
                return nil
            }
            let before = state.partitions.values[index].inFlight
            let resumption = body(&state.partitions.values[index])
            state.inFlight += state.partitions.values[index].inFlight - before
            if state.partitions.values[index].isIdle {
                state.partitions.remove(at: index)
            }
            return resumption
        }
    }

    private func rejection(_ reason: Rejection, key: String?, context: PolicyContext?) -> ResilienceError {
        self.counters.rejected.increment()
        let configuration = self.configuration
        let name = configuration.name
        let label: String
        let message: String
        switch reason {
        case .queueFull:
            label = "queue_full"
            message =
                "\(name): all \(configuration.maxConcurrentCallsPerKey) slots of the key are taken and its wait "
                + "queue (\(configuration.maxQueueLengthPerKey)) is full"
        case .timedOut:
            label = "queue_timeout"
            message =
                "\(name): waited \(configuration.maxWaitDuration) in the key's queue without getting one of "
                + "\(configuration.maxConcurrentCallsPerKey) slots"
        case .tooManyKeys:
            label = "too_many_keys"
            message = "\(name): \(configuration.maxKeys) keys are busy, the most this bulkhead tracks"
        case .missingKey:
            label = "missing_key"
            message = "\(name): the call has no key and calls without a key are rejected"
        }
        // Keys are unbounded (user ids), so they go on the span event only, never in the message.
        var attributes: SpanAttributes = ["aviary.policy": .string(name), "aviary.reason": .string(label)]
        if let key { attributes.set("aviary.key", value: .string(key)) }
        context?.recordEvent("bulkhead.rejected", attributes)
        return ResilienceError(.bulkheadFull, message, policyName: name)
    }
}
