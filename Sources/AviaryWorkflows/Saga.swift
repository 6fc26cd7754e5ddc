//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import AviaryResilience
public import Foundation

/// What a step's action or compensation gets besides the state: the idempotency key to pass to
/// the callee, and where it is.
///
/// The key is derived from the saga id and the step index only — the same for every attempt and
/// every re-run after a restart — so a callee that deduplicates on it applies the step once.
public struct StepContext: Sendable, Hashable {
    /// The saga's id.
    public var sagaID: String
    /// The step's index in the saga.
    public var step: Int
    /// The step's name.
    public var stepName: String
    /// Zero-based attempt (retries and runs after a restart of the same attempt share it).
    public var attempt: Int
    /// `"<saga id>/<step>"` for actions, `"<saga id>/<step>/compensate"` for compensations.
    public var idempotencyKey: String
    /// The wall-clock time the runner started this run.
    public var now: Date
}

/// How often a step's action is tried, and how long to wait between tries.
///
/// ```swift
/// let policy = StepRetryPolicy(maxAttempts: 5, backoff: .exponential(base: .milliseconds(100)))
/// ```
public struct StepRetryPolicy: Sendable {
    /// Attempts in all (1: no retry).
    public var maxAttempts: Int
    /// The delays between attempts; a retry is scheduled durably (it survives restarts).
    public var backoff: Backoff

    /// Creates a policy.
    ///
    /// - Precondition: `maxAttempts >= 1`.
    public init(maxAttempts: Int = 3, backoff: Backoff = .exponential(base: .milliseconds(100), cap: .seconds(10))) {
        precondition(maxAttempts >= 1, "StepRetryPolicy.maxAttempts must be at least 1, got \(maxAttempts)")
        self.maxAttempts = maxAttempts
        self.backoff = backoff
    }

    /// One attempt, no retry.
    public static var once: StepRetryPolicy { StepRetryPolicy(maxAttempts: 1, backoff: .immediate) }

    /// The delay before attempt `attempt` (1-based retries); zero when the backoff is exhausted.
    func delay(beforeRetry attempt: Int) -> Duration {
        var iterator = self.backoff.makeIterator()
        var delay = Duration.zero
        for _ in 0..<max(attempt, 1) {
            guard let next = iterator.next() else { break }
            delay = next
        }
        return delay
    }
}

/// An error that a step's action (or a request step's `onReply`) throws to say that trying again
/// cannot help — a payment declined, an item out of stock. The runner records the failed
/// attempt, skips the rest of the step's ``StepRetryPolicy`` and starts compensating at once
/// (with the step's own compensation when ``SagaStep/compensatesItsOwnFailure`` is on). The
/// timeline and ``SagaInstance/lastError`` show the cause. Any other error is retried per the
/// policy. Compensations do not look at it: a failing compensation is always retried.
///
/// ```swift
/// SagaStep<Order>("charge", retry: StepRetryPolicy(maxAttempts: 4)) { order, context in
///     do {
///         var order = order
///         order.paymentID = try await payments.charge(order.total, key: context.idempotencyKey)
///         return order
///     } catch let declined as PaymentDeclined {
///         throw SagaStepError.final(declined)     // compensate now; other errors are retried
///     }
/// }
/// ```
public enum SagaStepError: Error, CustomStringConvertible {
    /// A failure that no retry can fix: compensate now. `cause` is what the timeline records.
    case final(any Error)

    /// The error the step failed with.
    public var cause: any Error {
        switch self {
        case .final(let cause): cause
        }
    }

    public var description: String { "\(self.cause)" }
}

/// One step of a saga: an action and its compensation, or a durable timer.
///
/// ```swift
/// let reserve = SagaStep<Order>("reserve stock", timeout: .seconds(5)) { order, context in
///     var order = order
///     order.reservation = try await inventory.reserve(order.items, key: context.idempotencyKey)
///     return order
/// } compensate: { order, context in
///     try await inventory.release(order.reservation!, key: context.idempotencyKey)
/// }
/// ```
public struct SagaStep<State: Codable & Sendable>: Sendable {
    /// An action: gets the state, returns the new state.
    public typealias Action = @Sendable (State, StepContext) async throws -> State
    /// A compensation: undoes what the action did.
    public typealias Compensation = @Sendable (State, StepContext) async throws -> Void

    enum Kind: Sendable {
        case action(Action, compensation: Compensation?)
        case sleep(@Sendable (State, Date) -> Date)
        case request(
            send: Compensation, replyTimeout: Duration, onReply: @Sendable (State, CloudEvent) throws -> State,
            compensation: Compensation?)
    }

    /// The step's name, in the timeline.
    public var name: String
    let kind: Kind
    /// The action's retry policy.
    public var retry: StepRetryPolicy
    /// The longest an action or compensation may run; an attempt that takes longer fails with
    /// ``SagaError/Kind/timeout`` (and counts as a failed attempt). Nil: no limit.
    public var timeout: Duration?
    /// Whether the step's own compensation runs too when its action fails for good (not only
    /// the compensations of the steps before it). Turn it on when a failed attempt may still
    /// have applied on the callee (a timeout, a lost response) and the compensation is a no-op
    /// for an action that never applied (it can look up the action's idempotency key,
    /// `StepContext.idempotencyKey` without `/compensate`). Default false.
    ///
    /// ```swift
    /// var charge = SagaStep<Order>("charge", timeout: .seconds(5)) { ... } compensate: { ... }
    /// charge.compensatesItsOwnFailure = true
    /// ```
    public var compensatesItsOwnFailure = false

    /// A step with an action and an optional compensation (nil: nothing to undo).
    public init(
        _ name: String, retry: StepRetryPolicy = StepRetryPolicy(), timeout: Duration? = nil,
        action: @escaping Action, compensate: Compensation? = nil
    ) {
        self.name = name
        self.kind = .action(action, compensation: compensate)
        self.retry = retry
        self.timeout = timeout
    }

    private init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
        self.retry = .once
        self.timeout = nil
    }

    /// A durable timer: the saga sleeps until the time `until` computes from the state and the
    /// time the step started. The wake-up time is stored, so the sleep survives restarts.
    ///
    /// ```swift
    /// .sleep("cooling-off period") { _, now in now.addingTimeInterval(24 * 3600) }
    /// ```
    public static func sleep(_ name: String, until: @escaping @Sendable (State, Date) -> Date) -> SagaStep {
        SagaStep(name: name, kind: .sleep(until))
    }

    /// A step that sends a command message and waits durably for its reply.
    ///
    /// The runner first stores that the step awaits a reply (deadline: now + `replyTimeout`), then
    /// calls `send`, which enqueues the command — built with ``SagaCommand/message(topic:replyTopic:type:source:payload:context:)``,
    /// whose event id is the step's idempotency key — in the service's outbox. A reply consumer
    /// hands replies to ``SagaRunner/deliverReply(_:sagaID:step:)`` (or ``SagaRunner/replyHandler()``),
    /// correlated by saga id and step; `onReply` turns the reply into the new state (throwing
    /// counts as a failed attempt). No reply by the deadline is a failed attempt too; a retry sends
    /// the command again with the same event id (the receiver's inbox deduplicates it and should
    /// reply again).
    ///
    /// ```swift
    /// SagaStep<Order>.request("charge", replyTimeout: .seconds(30)) { order, context in
    ///     let command = try SagaCommand.message(topic: "payments-commands", replyTopic: "orders-replies",
    ///                                          type: "payment.charge", source: "/shop/orders",
    ///                                          payload: order, context: context)
    ///     try await store.write { db in try Outbox.enqueue(command, in: db) }
    /// } onReply: { order, reply in
    ///     var order = order
    ///     order.paymentID = try reply.decodeData(as: Charged.self).paymentID
    ///     return order
    /// }
    /// ```
    public static func request(
        _ name: String, retry: StepRetryPolicy = StepRetryPolicy(), replyTimeout: Duration,
        send: @escaping Compensation, onReply: @escaping @Sendable (State, CloudEvent) throws -> State,
        compensate: Compensation? = nil
    ) -> SagaStep {
        var step = SagaStep(
            name: name,
            kind: .request(send: send, replyTimeout: replyTimeout, onReply: onReply, compensation: compensate))
        step.retry = retry
        return step
    }

    /// A durable timer for a fixed duration from when the step starts.
    ///
    /// ```swift
    /// .sleep("grace period", for: .seconds(30))
    /// ```
    public static func sleep(_ name: String, for duration: Duration) -> SagaStep {
        let seconds = duration.aviaryTimeInterval
        return .sleep(name) { _, now in now.addingTimeInterval(seconds) }
    }
}

extension Duration {
    var aviaryTimeInterval: TimeInterval {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// A saga definition: a name, an ordered list of steps, and how compensations are retried.
///
/// ```swift
/// struct Order: Codable, Sendable { var id: String; var reserved = false; var charged = false }
/// let placeOrder = Saga<Order>("place-order", steps: [
///     SagaStep("reserve") { order, ctx in try await inventory.reserve(order, key: ctx.idempotencyKey); return order }
///         compensate: { order, ctx in try await inventory.release(order, key: ctx.idempotencyKey) },
///     SagaStep("charge") { order, ctx in try await payments.charge(order, key: ctx.idempotencyKey); return order },
/// ])
/// runner.register(placeOrder)
/// try await runner.start(placeOrder, id: "order-17", state: Order(id: "order-17"))
/// ```
public struct Saga<State: Codable & Sendable>: Sendable {
    /// The name stored with each instance; the runner finds the definition by it after a restart.
    public var name: String
    /// The steps, in order.
    public var steps: [SagaStep<State>]
    /// How often a compensation is tried before the saga is parked as `needs-attention`, and the
    /// delays between tries (scheduled durably).
    public var compensationRetry: StepRetryPolicy

    /// Creates a definition.
    ///
    /// - Precondition: `steps` is not empty.
    public init(
        _ name: String, steps: [SagaStep<State>],
        compensationRetry: StepRetryPolicy = StepRetryPolicy(
            maxAttempts: 10, backoff: .exponential(base: .milliseconds(200), cap: .seconds(60)))
    ) {
        precondition(!steps.isEmpty, "a saga needs at least one step")
        self.name = name
        self.steps = steps
        self.compensationRetry = compensationRetry
    }
}
