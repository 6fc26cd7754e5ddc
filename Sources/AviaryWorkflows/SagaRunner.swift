//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryMessaging
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// Runs sagas: drives each instance step by step, recording every outcome in the ``SagaStore``
/// before and after each step, and resumes unfinished sagas after a restart (a lifecycle
/// `Service`).
///
/// - Forward: before a step's action runs, `started` is stored; after it, `completed` with the
///   new state (in the same transaction as the next step's `started`). A step interrupted by a
///   crash is run again with the same ``StepContext/idempotencyKey``.
/// - A failed action is retried after its policy's backoff (the retry time is stored, so it
///   survives restarts). When the policy is spent, or the action threw
///   ``SagaStepError/final(_:)`` (no retry can help), the completed steps are compensated in
///   reverse order; a failed compensation is retried after backoff up to
///   ``Saga/compensationRetry``'s limit, then the saga is parked as ``SagaStatus/needsAttention``
///   with its history.
/// - Timer steps store their wake-up time; ``run()`` sleeps until the earliest one.
///
/// Over a plain ``SagaStore`` (SQLite) run one runner per store: two runners driving the same
/// sagas would be refused by the store's version check, but could run a step twice (with the same
/// idempotency key). Over a ``SagaLeaseStore`` (PostgreSQL) any number of runners, in any number
/// of processes, share the store: each saga is driven by the runner holding its lease
/// (``Configuration/leaseDuration``, renewed while the saga is driven), and the sagas of a runner
/// that died are resumed by another once their leases expire.
///
/// ```swift
/// let runner = SagaRunner(store: sagaStore, logger: logger)
/// runner.register(placeOrder)
/// let group = ServiceGroup(services: [runner], logger: logger)   // resumes unfinished sagas
/// let finished = try await runner.start(placeOrder, id: order.id, state: order)
/// ```
public final class SagaRunner: Service, Sendable {
    /// Runner settings.
    public struct Configuration: Sendable {
        /// How many due sagas one pass of ``runDue()`` takes (and drives concurrently).
        public var batchSize: Int
        /// The longest ``run()`` sleeps without looking at the store (sagas created by another
        /// process, operator retries).
        public var pollInterval: Duration
        /// Over a ``SagaLeaseStore``: how long a saga stays leased to this runner without a
        /// renewal (renewed every third of it while the saga is driven). After a crash, other
        /// runners resume its sagas this long after the last renewal. Ignored by other stores.
        public var leaseDuration: Duration

        /// Creates settings.
        public init(batchSize: Int = 64, pollInterval: Duration = .seconds(1), leaseDuration: Duration = .seconds(30)) {
            precondition(leaseDuration > .zero, "leaseDuration must be positive")
            self.batchSize = batchSize
            self.pollInterval = pollInterval
            self.leaseDuration = leaseDuration
        }
    }

    /// The store.
    public let store: any SagaStore
    /// The lease owner this runner writes into a ``SagaLeaseStore`` (`host/pid/random`), unique
    /// per runner.
    public let leaseOwner: String
    private let leases: (any SagaLeaseStore)?
    private let wallClock: any WallClock
    private let clock: any MonotonicClock
    private let logger: Logger
    private let configuration: Configuration
    private let definitions = Mutex<[String: ErasedSaga]>([:])
    private let claimed = Mutex<Set<String>>([])
    private let wakeUp = Mutex(WakeUp())
    private let stopping = Mutex(false)

    private struct WakeUp {
        var pending = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    /// Creates a runner.
    ///
    /// - Parameters:
    ///   - store: where instances and timelines live.
    ///   - wallClock: the time stored in timelines and wake-ups (a `ManualWallClock` in tests).
    ///   - clock: the clock step timeouts and ``run()``'s sleeps use (a `ManualClock` in tests).
    ///   - logger: the runner's logger.
    ///   - configuration: batch size and poll interval.
    public init(
        store: any SagaStore, wallClock: any WallClock = SystemWallClock(), clock: any MonotonicClock = SystemClock(),
        logger: Logger = Logger(label: "aviary.sagas"), configuration: Configuration = Configuration()
    ) {
        self.store = store
        self.leases = store as? any SagaLeaseStore
        self.leaseOwner =
            "\(ProcessInfo.processInfo.hostName)/\(ProcessInfo.processInfo.processIdentifier)/"
            + UUID().uuidString.prefix(8).lowercased()
        self.wallClock = wallClock
        self.clock = clock
        self.logger = logger
        self.configuration = configuration
    }

    /// Makes a definition known, so that its instances can be resumed after a restart. Register
    /// every saga before ``run()`` starts.
    ///
    /// ```swift
    /// runner.register(placeOrder)
    /// ```
    public func register<State>(_ saga: Saga<State>) {
        let erased = ErasedSaga(saga)
        self.definitions.withLock { $0[saga.name] = erased }
    }

    /// Creates an instance and drives it until it finishes or waits (a timer, a retry after
    /// backoff); returns the instance as it then is. Registers `saga` if needed.
    ///
    /// ```swift
    /// let instance = try await runner.start(placeOrder, id: "order-17", state: order)
    /// if instance.status == .compensated { ... }
    /// ```
    ///
    /// - Throws: ``SagaError`` `.duplicate` when `id` exists; the store's errors (then the saga
    ///   may or may not exist; ``run()`` picks it up if it does).
    @discardableResult
    public func start<State>(_ saga: Saga<State>, id: String, state: State) async throws -> SagaInstance {
        self.register(saga)
        let instance = try await self.create(saga, id: id, state: state, claim: true)
        defer { self.release(id) }
        return try await self.driveLeased(instance, ErasedSaga(saga))
    }

    /// Creates an instance and leaves it to ``run()`` (which is woken at once).
    ///
    /// ```swift
    /// try await runner.enqueue(placeOrder, id: "order-18", state: order)
    /// ```
    public func enqueue<State>(_ saga: Saga<State>, id: String, state: State) async throws {
        self.register(saga)
        _ = try await self.create(saga, id: id, state: state, claim: false)
        self.poke()
    }

    /// The stored state of an instance, decoded.
    ///
    /// ```swift
    /// let order = try await runner.state(of: "order-17", as: Order.self)
    /// ```
    public func state<State: Decodable>(of id: String, as type: State.Type) async throws -> State {
        guard let instance = try await self.store.instance(id) else {
            throw SagaError(.notFound, "no saga \(id)")
        }
        return try JSONDecoder().decode(State.self, from: instance.state)
    }

    private func create<State>(_ saga: Saga<State>, id: String, state: State, claim: Bool) async throws -> SagaInstance
    {
        let now = self.wallClock.now
        let erased = ErasedSaga(saga)
        var instance = SagaInstance(
            id: id, name: saga.name, state: try JSONEncoder().encode(state), createdAt: now, updatedAt: now)
        let events = try erased.enter(step: 0, &instance, now: now)
        if claim {
            guard self.claim(id) else { throw SagaError(.duplicate, "saga \(id) is running") }
        }
        do {
            if claim, let leases = self.leases {
                try await leases.create(instance, events: events, owner: self.leaseOwner, leaseUntil: self.leaseEnd())
            } else {
                try await self.store.create(instance, events: events)
            }
        } catch {
            if claim { self.release(id) }
            throw error
        }
        return instance
    }

    /// Drives every saga that is due now (unfinished, wake-up time passed) until it finishes or
    /// waits; returns how many it drove. ``run()`` calls it; tests call it after moving a manual
    /// clock.
    ///
    /// ```swift
    /// wallClock.advance(by: .seconds(60))
    /// try await runner.runDue()
    /// ```
    @discardableResult
    public func runDue() async throws -> Int {
        var driven = 0
        var stuck: Set<String> = []
        while true {
            let due: [SagaInstance]
            if let leases = self.leases {
                // Leased to this runner in the store. A stuck saga (or one whose lease ran out
                // while this runner still drives it) keeps the new lease: nobody else tries it
                // before the lease expires, which is the backoff a failing store call needs.
                due = try await leases.claimDue(
                    at: self.wallClock.now, limit: self.configuration.batchSize, owner: self.leaseOwner,
                    leaseUntil: self.leaseEnd()
                )
                .filter { !stuck.contains($0.id) && self.claim($0.id) }
            } else {
                due = try await self.store.due(
                    at: self.wallClock.now, limit: self.configuration.batchSize + stuck.count
                )
                .filter { !stuck.contains($0.id) && self.claim($0.id) }
            }
            if due.isEmpty { return driven }
            let failed = await withTaskGroup(of: String?.self) { group in
                for instance in due {
                    group.addTask {
                        defer { self.release(instance.id) }
                        do {
                            guard let definition = self.definitions.withLock({ $0[instance.name] }) else {
                                throw SagaError(.unknownSaga, "no saga definition named \(instance.name) is registered")
                            }
                            let after = try await self.driveLeased(instance, definition)
                            // Still due after driving (a zero-delay retry is driven inline, so
                            // this is a store that did not move): do not spin on it.
                            return after.status.isUnfinished && after.wakeAt == nil ? instance.id : nil
                        } catch {
                            self.logger.error(
                                "saga could not be driven",
                                metadata: ["saga": "\(instance.id)", "error": "\(error)"])
                            return instance.id
                        }
                    }
                }
                var failed: [String] = []
                for await id in group { if let id { failed.append(id) } }
                return failed
            }
            driven += due.count
            stuck.formUnion(failed)
            if Task.isCancelled { return driven }
        }
    }

    /// Resumes unfinished sagas, then wakes at the earliest stored wake-up time (or the poll
    /// interval, or when ``enqueue(_:id:state:)`` is called) to drive what became due, until
    /// graceful shutdown. A step running at shutdown is cancelled and recorded as nothing: it
    /// runs again (same key) at the next start.
    public func run() async throws {
        self.stopping.withLock { $0 = false }
        await withGracefulShutdownHandler {
            while !self.stopping.withLock({ $0 }) && !Task.isCancelled {
                do {
                    try await self.runDue()
                } catch {
                    self.logger.error("saga runner pass failed", metadata: ["error": "\(error)"])
                }
                var wait = self.configuration.pollInterval
                // Over leases: also the expiry of sagas other runners hold, so as not to spin on them.
                let next: Date??
                if let leases = self.leases {
                    next = try? await leases.nextClaimable()
                } else {
                    next = try? await self.store.nextWakeUp()
                }
                if let next = next ?? nil {
                    let seconds = max(0, next.timeIntervalSince(self.wallClock.now))
                    wait = min(wait, .aviarySeconds(seconds))
                }
                if wait <= .zero { continue }
                let clock = self.clock
                let deadline = clock.now.advanced(by: wait)
                // Whichever comes first: the deadline or a poke.
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await self.waitForPoke() }
                    group.addTask { try? await clock.sleep(until: deadline, tolerance: nil) }
                    _ = await group.next()
                    group.cancelAll()
                }
            }
        } onGracefulShutdown: {
            self.stopping.withLock { $0 = true }
            self.poke()
        }
    }

    /// Wakes ``run()`` (or makes its next wait return at once).
    private func poke() {
        let waiter = self.wakeUp.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.pending = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    private func waitForPoke() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = self.wakeUp.withLock { state -> Bool in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            self.poke()
        }
    }

    private func claim(_ id: String) -> Bool {
        self.claimed.withLock { $0.insert(id).inserted }
    }

    private func release(_ id: String) {
        _ = self.claimed.withLock { $0.remove(id) }
    }

    /// When a lease taken now ends.
    private func leaseEnd() -> Date {
        self.wallClock.now.addingTimeInterval(self.configuration.leaseDuration.aviaryTimeInterval)
    }

    /// ``drive(_:_:)`` under the store's lease (when the store has leases): the lease is renewed
    /// every third of ``Configuration/leaseDuration`` while the saga is driven, and given back
    /// when the saga waits (a final saga gave it back with its last update). `first` is work to
    /// do under the lease before driving (it returns the instance to drive).
    private func driveLeased(
        _ start: SagaInstance, _ saga: ErasedSaga,
        first: (@Sendable () async throws -> SagaInstance)? = nil
    ) async throws -> SagaInstance {
        guard let leases = self.leases else {
            // Read again: the list `start` came from may predate a drive of this saga that ended
            // (and released its claim) since; a stale copy would fail its version check and log
            // "saga could not be driven". Leased stores return fresh rows from their claim.
            let instance: SagaInstance
            if let first {
                instance = try await first()
            } else {
                instance = try await self.store.instance(start.id) ?? start
            }
            return try await self.drive(instance, saga)
        }
        let id = start.id
        let owner = self.leaseOwner
        let clock = self.clock
        let every = self.configuration.leaseDuration / 3
        let result: Result<SagaInstance, any Error> = await withTaskGroup(of: Result<SagaInstance, any Error>?.self) {
            group in
            group.addTask {
                while !Task.isCancelled {
                    do {
                        try await clock.sleep(until: clock.now.advanced(by: every), tolerance: nil)
                    } catch {
                        return nil
                    }
                    do {
                        try await leases.renewLeases([id], owner: owner, leaseUntil: self.leaseEnd())
                    } catch {
                        self.logger.warning(
                            "saga lease not renewed", metadata: ["saga": "\(id)", "error": "\(error)"])
                    }
                }
                return nil
            }
            group.addTask {
                do {
                    let instance = try await first?() ?? start
                    return .success(try await self.drive(instance, saga))
                } catch {
                    return .failure(error)
                }
            }
            var outcome: Result<SagaInstance, any Error> = .failure(CancellationError())
            while let next = await group.next() {
                if let next {
                    outcome = next
                    group.cancelAll()
                }
            }
            return outcome
        }
        let final = (try? result.get())?.status.isUnfinished == false
        if !final {
            do {
                try await leases.releaseLeases([id], owner: owner)
            } catch {
                self.logger.warning("saga lease not released", metadata: ["saga": "\(id)", "error": "\(error)"])
            }
        }
        return try result.get()
    }

    /// Drives one claimed instance until it is final or waits.
    private func drive(_ start: SagaInstance, _ saga: ErasedSaga) async throws -> SagaInstance {
        var instance = start
        while instance.status.isUnfinished {
            let now = self.wallClock.now
            if let wake = instance.wakeAt, wake > now { return instance }
            if Task.isCancelled { return instance }
            let expected = instance.version
            var next = instance
            let events: [SagaEvent]
            switch instance.status {
            case .running:
                events = try await self.forward(&next, saga)
            default:
                events = try await self.backward(&next, saga)
            }
            if Task.isCancelled && events.isEmpty { return instance }
            next.updatedAt = self.wallClock.now
            next.version = expected + 1
            try await self.store.update(next, expectedVersion: expected, events: events)
            instance = next
            if events.last?.kind == .awaitingReply {
                instance = try await self.sendCommand(instance, saga)
            }
        }
        return instance
    }

    /// Sends the command of a request step that was just recorded as awaiting its reply; a send
    /// that fails is a failed attempt.
    private func sendCommand(_ instance: SagaInstance, _ saga: ErasedSaga) async throws -> SagaInstance {
        let index = instance.step
        let step = saga.steps[index]
        let context = StepContext(
            sagaID: instance.id, step: index, stepName: step.name, attempt: instance.attempt,
            idempotencyKey: "\(instance.id)/\(index)", now: self.wallClock.now)
        let state = instance.state
        do {
            _ = try await self.withTimeout(step.timeout, step.name) { try await step.action(state, context) }
            return instance
        } catch {
            // Cancelled: the reply deadline (stored) brings the step back.
            if Task.isCancelled { return instance }
            var next = instance
            let events = self.failed(&next, saga, index, error)
            next.version = instance.version + 1
            next.updatedAt = self.wallClock.now
            try await self.store.update(next, expectedVersion: instance.version, events: events)
            return next
        }
    }

    /// Hands the reply of a request step to its saga: `onReply` makes the new state and the saga
    /// goes on (driven by the caller until it finishes or waits). Returns false for a reply that
    /// is no longer awaited (a duplicate, or the step timed out meanwhile).
    ///
    /// ```swift
    /// try await runner.deliverReply(message.event, sagaID: sagaID, step: step)
    /// ```
    ///
    /// - Throws: ``SagaError`` `.conflict` when the saga is being driven right now, or has not
    ///   recorded yet that it awaits this reply (deliver the reply again later: nack it);
    ///   `.unknownSaga` when its definition is not registered; the store's errors.
    @discardableResult
    public func deliverReply(_ reply: CloudEvent, sagaID: String, step: Int) async throws -> Bool {
        guard let found = try await self.store.instance(sagaID), found.status == .running else { return false }
        if found.step > step { return false }
        guard let saga = self.definitions.withLock({ $0[found.name] }) else {
            throw SagaError(.unknownSaga, "no saga definition named \(found.name) is registered")
        }
        guard found.step == step, found.awaitingReply, self.claim(sagaID) else {
            throw SagaError(.conflict, "saga \(sagaID) is not awaiting the reply of step \(step) yet")
        }
        defer { self.release(sagaID) }
        // Read again under the claim (and the store's lease, when it has leases).
        let current: SagaInstance?
        if let leases = self.leases {
            current = try await leases.claim(
                sagaID, owner: self.leaseOwner, at: self.wallClock.now, leaseUntil: self.leaseEnd())
            guard current != nil else {
                throw SagaError(.conflict, "saga \(sagaID) is being driven by another runner")
            }
        } else {
            current = try await self.store.instance(sagaID)
        }
        guard var instance = current, instance.status == .running,
            instance.step == step, instance.awaitingReply, let onReply = saga.steps[step].onReply
        else {
            // Moved on meanwhile: give back the lease just taken.
            if let leases = self.leases, current != nil {
                try? await leases.releaseLeases([sagaID], owner: self.leaseOwner)
            }
            return false
        }
        let expected = instance.version
        let now = self.wallClock.now
        var events: [SagaEvent]
        do {
            let output = try onReply(instance.state, reply)
            events = [
                SagaEvent(
                    step: step, stepName: saga.steps[step].name, kind: .completed, attempt: instance.attempt,
                    output: output, at: now)
            ]
            instance.state = output
            instance.lastError = nil
            events += try saga.enter(step: step + 1, &instance, now: now)
        } catch {
            events = self.failed(&instance, saga, step, error)
        }
        instance.version = expected + 1
        instance.updatedAt = now
        let recorded = instance
        let transition = events
        _ = try await self.driveLeased(recorded, saga) { [self] in
            try await self.store.update(recorded, expectedVersion: expected, events: transition)
            return recorded
        }
        return true
    }

    /// A handler for a `MessageConsumer` of the reply topic: each reply goes to
    /// ``deliverReply(_:sagaID:step:)``, correlated by its ``SagaCommand`` headers; a reply that
    /// cannot be applied yet throws (the consumer nacks it and it comes again).
    ///
    /// ```swift
    /// let replies = MessageConsumer(log: log, configuration: .init(group: "orders-sagas", topic: "orders-replies"),
    ///                               logger: logger, handler: runner.replyHandler())
    /// ```
    public func replyHandler() -> @Sendable (Delivery) async throws -> Void {
        { delivery in
            let message = delivery.message
            guard let sagaID = message.headers[SagaCommand.sagaHeader],
                let step = message.headers[SagaCommand.stepHeader].flatMap(Int.init)
            else {
                self.logger.warning(
                    "a message without saga headers on a reply topic was skipped",
                    metadata: ["event": "\(message.event.id)"])
                return
            }
            try await self.deliverReply(message.event, sagaID: sagaID, step: step)
        }
    }

    /// Runs the current step forwards and describes the transition.
    private func forward(_ instance: inout SagaInstance, _ saga: ErasedSaga) async throws -> [SagaEvent] {
        let index = instance.step
        let step = saga.steps[index]
        let now = self.wallClock.now
        if step.isSleep {
            // Due: the timer fired.
            var events = [SagaEvent(step: index, stepName: step.name, kind: .completed, attempt: 0, at: now)]
            instance.wakeAt = nil
            events += try saga.enter(step: index + 1, &instance, now: now)
            return events
        }
        if step.isRequest {
            if instance.awaitingReply {
                // Due without a reply.
                return self.failed(
                    &instance, saga, index,
                    SagaError(.timeout, "no reply to \(step.name) within \(step.replyTimeout)"))
            }
            // First record that the step waits (so that no reply comes too early), then send
            // (``drive`` sends once this is stored).
            instance.awaitingReply = true
            instance.wakeAt = now.addingTimeInterval(step.replyTimeout.aviaryTimeInterval)
            return [
                SagaEvent(step: index, stepName: step.name, kind: .awaitingReply, attempt: instance.attempt, at: now)
            ]
        }
        let context = StepContext(
            sagaID: instance.id, step: index, stepName: step.name, attempt: instance.attempt,
            idempotencyKey: "\(instance.id)/\(index)", now: now)
        let state = instance.state
        do {
            let output = try await self.withTimeout(step.timeout, step.name) {
                try await step.action(state, context)
            }
            let done = self.wallClock.now
            var events = [
                SagaEvent(
                    step: index, stepName: step.name, kind: .completed, attempt: instance.attempt, output: output,
                    at: done)
            ]
            instance.state = output
            instance.lastError = nil
            events += try saga.enter(step: index + 1, &instance, now: done)
            return events
        } catch {
            if Task.isCancelled { return [] }
            return self.failed(&instance, saga, index, error)
        }
    }

    /// Records a failed attempt of step `index`: a retry (after backoff) or, when the policy is
    /// spent or the error is ``SagaStepError`` (final), the start of compensation.
    private func failed(
        _ instance: inout SagaInstance, _ saga: ErasedSaga, _ index: Int, _ error: any Error
    ) -> [SagaEvent] {
        let step = saga.steps[index]
        let done = self.wallClock.now
        let message = "\(error)"
        let isFinal = error is SagaStepError
        var events = [
            SagaEvent(
                step: index, stepName: step.name, kind: .failed, attempt: instance.attempt, error: message, at: done)
        ]
        instance.lastError = "\(step.name): \(message)"
        instance.awaitingReply = false
        if !isFinal && instance.attempt + 1 < step.retry.maxAttempts {
            instance.attempt += 1
            let delay = step.retry.delay(beforeRetry: instance.attempt)
            instance.wakeAt = delay > .zero ? done.addingTimeInterval(delay.aviaryTimeInterval) : nil
            events.append(
                SagaEvent(step: index, stepName: step.name, kind: .started, attempt: instance.attempt, at: done))
            return events
        }
        self.logger.info(
            "saga step failed for good; compensating",
            metadata: [
                "saga": "\(instance.id)", "step": "\(step.name)", "error": "\(message)", "final": "\(isFinal)",
            ])
        instance.status = .compensating
        let from = step.compensatesItsOwnFailure ? index : index - 1
        events += saga.enterCompensation(from: from, &instance, now: done)
        return events
    }

    /// Runs the current compensation and describes the transition.
    private func backward(_ instance: inout SagaInstance, _ saga: ErasedSaga) async throws -> [SagaEvent] {
        let index = instance.step
        let step = saga.steps[index]
        guard let compensation = step.compensation else {
            // Only reachable when a definition changed under a stored instance.
            return saga.enterCompensation(from: index - 1, &instance, now: self.wallClock.now)
        }
        let context = StepContext(
            sagaID: instance.id, step: index, stepName: step.name, attempt: instance.attempt,
            idempotencyKey: "\(instance.id)/\(index)/compensate", now: self.wallClock.now)
        let state = instance.state
        do {
            try await self.withTimeout(step.timeout, step.name) { try await compensation(state, context) }
            let done = self.wallClock.now
            var events = [
                SagaEvent(step: index, stepName: step.name, kind: .compensated, attempt: instance.attempt, at: done)
            ]
            events += saga.enterCompensation(from: index - 1, &instance, now: done)
            return events
        } catch {
            if Task.isCancelled { return [] }
            let done = self.wallClock.now
            let message = "\(error)"
            var events = [
                SagaEvent(
                    step: index, stepName: step.name, kind: .compensationFailed, attempt: instance.attempt,
                    error: message, at: done)
            ]
            instance.lastError = "compensating \(step.name): \(message)"
            if instance.attempt + 1 < saga.compensationRetry.maxAttempts {
                instance.attempt += 1
                let delay = saga.compensationRetry.delay(beforeRetry: instance.attempt)
                instance.wakeAt = delay > .zero ? done.addingTimeInterval(delay.aviaryTimeInterval) : nil
                events.append(
                    SagaEvent(
                        step: index, stepName: step.name, kind: .compensating, attempt: instance.attempt, at: done))
                return events
            }
            self.logger.error(
                "saga compensation failed too often; parked as needs-attention",
                metadata: ["saga": "\(instance.id)", "step": "\(step.name)", "error": "\(message)"])
            instance.status = .needsAttention
            instance.wakeAt = nil
            events.append(
                SagaEvent(
                    step: index, stepName: step.name, kind: .note, attempt: instance.attempt,
                    error: "parked after \(instance.attempt + 1) failed compensation attempts", at: done))
            return events
        }
    }

    private func withTimeout<T: Sendable>(
        _ timeout: Duration?, _ name: String, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        guard let timeout else { return try await body() }
        let clock = self.clock
        let deadline = clock.now.advanced(by: timeout)
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await clock.sleep(until: deadline, tolerance: nil)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { throw CancellationError() }
            guard let value = first else {
                throw SagaError(.timeout, "step \(name) took longer than \(timeout)")
            }
            return value
        }
    }
}

/// A definition with its state type erased to JSON, so that one runner drives many kinds.
struct ErasedSaga: Sendable {
    struct Step: Sendable {
        var name: String
        var isSleep: Bool
        var isRequest = false
        var compensatesItsOwnFailure = false
        var replyTimeout: Duration = .zero
        var onReply: (@Sendable (Data, CloudEvent) throws -> Data)?
        var retry: StepRetryPolicy
        var timeout: Duration?
        var action: @Sendable (Data, StepContext) async throws -> Data
        var wakeAt: @Sendable (Data, Date) throws -> Date
        var compensation: (@Sendable (Data, StepContext) async throws -> Void)?
    }

    var name: String
    var steps: [Step]
    var compensationRetry: StepRetryPolicy

    init<State>(_ saga: Saga<State>) {
        self.name = saga.name
        self.compensationRetry = saga.compensationRetry
        self.steps = saga.steps.map { step in
            var erased = Self.erase(step)
            erased.compensatesItsOwnFailure = step.compensatesItsOwnFailure
            return erased
        }
    }

    private static func erase<State>(_ step: SagaStep<State>) -> Step {
        let decode: @Sendable (Data) throws -> State = { data in try JSONDecoder().decode(State.self, from: data) }
        func erased(
            _ compensation: SagaStep<State>.Compensation?
        ) -> (@Sendable (Data, StepContext) async throws -> Void)? {
            guard let compensation else { return nil }
            return { data, context in try await compensation(try decode(data), context) }
        }
        let now: @Sendable (Data, Date) throws -> Date = { _, now in now }
        switch step.kind {
        case .action(let action, let compensation):
            let run: @Sendable (Data, StepContext) async throws -> Data = { data, context in
                try JSONEncoder().encode(try await action(try decode(data), context))
            }
            return Step(
                name: step.name, isSleep: false, retry: step.retry, timeout: step.timeout, action: run, wakeAt: now,
                compensation: erased(compensation))
        case .request(let send, let replyTimeout, let onReply, let compensation):
            let run: @Sendable (Data, StepContext) async throws -> Data = { data, context in
                try await send(try decode(data), context)
                return data
            }
            let reply: @Sendable (Data, CloudEvent) throws -> Data = { data, event in
                try JSONEncoder().encode(try onReply(try decode(data), event))
            }
            return Step(
                name: step.name, isSleep: false, isRequest: true, replyTimeout: replyTimeout, onReply: reply,
                retry: step.retry, timeout: step.timeout, action: run, wakeAt: now, compensation: erased(compensation))
        case .sleep(let until):
            let identity: @Sendable (Data, StepContext) async throws -> Data = { data, _ in data }
            let wake: @Sendable (Data, Date) throws -> Date = { data, now in until(try decode(data), now) }
            return Step(
                name: step.name, isSleep: true, retry: .once, timeout: nil, action: identity, wakeAt: wake,
                compensation: nil)
        }
    }

    /// Moves `instance` to step `index` (or completion) and returns the events that record it.
    func enter(step index: Int, _ instance: inout SagaInstance, now: Date) throws -> [SagaEvent] {
        instance.awaitingReply = false
        instance.step = index
        instance.attempt = 0
        guard index < self.steps.count else {
            instance.status = .completed
            instance.step = self.steps.count - 1
            instance.wakeAt = nil
            return []
        }
        let step = self.steps[index]
        if step.isSleep {
            let wake = try step.wakeAt(instance.state, now)
            instance.wakeAt = wake
            return [SagaEvent(step: index, stepName: step.name, kind: .sleeping, attempt: 0, at: now)]
        }
        instance.wakeAt = nil
        return [SagaEvent(step: index, stepName: step.name, kind: .started, attempt: 0, at: now)]
    }

    /// Moves `instance` to the latest step at or before `index` that has a compensation (or to
    /// `compensated` when none is left) and returns the events that record it.
    func enterCompensation(from index: Int, _ instance: inout SagaInstance, now: Date) -> [SagaEvent] {
        instance.awaitingReply = false
        instance.attempt = 0
        instance.wakeAt = nil
        var candidate = index
        while candidate >= 0 && self.steps[candidate].compensation == nil { candidate -= 1 }
        guard candidate >= 0 else {
            instance.status = .compensated
            return []
        }
        instance.step = candidate
        let step = self.steps[candidate]
        return [SagaEvent(step: candidate, stepName: step.name, kind: .compensating, attempt: 0, at: now)]
    }
}
