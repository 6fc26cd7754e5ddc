//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// Where a saga instance is in its life.
///
/// `running` and `compensating` are unfinished: a ``SagaRunner`` drives them (again after a
/// restart). `completed`, `compensated` and `abandoned` are final. `needsAttention` is parked: a
/// compensation failed more often than its limit allows; an operator retries or abandons it.
public enum SagaStatus: String, Sendable, Hashable, Codable, CaseIterable {
    /// Steps are running forwards.
    case running
    /// A step failed for good; completed steps are being compensated, last first.
    case compensating
    /// Every step completed.
    case completed
    /// A step failed and every completed step was compensated.
    case compensated
    /// A compensation failed more often than its limit allows; kept with its history.
    case needsAttention = "needs-attention"
    /// An operator gave up on a parked saga.
    case abandoned

    /// Whether a runner still has work to do on a saga in this status.
    public var isUnfinished: Bool { self == .running || self == .compensating }
}

/// One saga instance as stored: which saga, where it is, its state, when it next wakes up.
///
/// ```swift
/// let instance = try await store.instance("order-17")
/// print(instance?.status, instance?.step)
/// ```
public struct SagaInstance: Sendable, Hashable {
    /// The saga's id, unique in the store (an order id, for instance).
    public var id: String
    /// The name of the saga definition (``Saga/name``).
    public var name: String
    /// Where the saga is.
    public var status: SagaStatus
    /// The step index being run (`running`) or compensated (`compensating`); for final statuses,
    /// where it stopped.
    public var step: Int
    /// Zero-based attempt of the current step or compensation.
    public var attempt: Int
    /// The saga's state, JSON-encoded.
    public var state: Data
    /// When the runner should next look at the saga (a timer, a retry after backoff, the reply
    /// deadline of a command); nil: now.
    public var wakeAt: Date?
    /// Whether the current step sent its command and waits for the reply.
    public var awaitingReply: Bool
    /// The last error, kept for operators.
    public var lastError: String?
    /// Incremented by every ``SagaStore/update(_:expectedVersion:events:)``; starts at 1.
    public var version: Int
    /// When the saga was created.
    public var createdAt: Date
    /// When it last changed.
    public var updatedAt: Date

    /// Creates an instance value.
    public init(
        id: String, name: String, status: SagaStatus = .running, step: Int = 0, attempt: Int = 0,
        state: Data, wakeAt: Date? = nil, awaitingReply: Bool = false, lastError: String? = nil, version: Int = 1,
        createdAt: Date, updatedAt: Date
    ) {
        self.awaitingReply = awaitingReply
        self.id = id
        self.name = name
        self.status = status
        self.step = step
        self.attempt = attempt
        self.state = state
        self.wakeAt = wakeAt
        self.lastError = lastError
        self.version = version
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// What happened to one step: the saga's timeline is the list of these, in order.
public enum SagaEventKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// The step's action is about to run (recorded before it runs; for a retry after backoff,
    /// when the retry is scheduled).
    case started
    /// The action succeeded; `output` is the saga state after it.
    case completed
    /// The action failed (`error`); another attempt follows unless the retry policy is spent.
    case failed
    /// A timer step is waiting until `wakeAt` of the instance.
    case sleeping
    /// A request step is about to send its command and waits for the reply until `wakeAt`.
    case awaitingReply = "awaiting-reply"
    /// The step's compensation is about to run.
    case compensating
    /// The compensation succeeded.
    case compensated
    /// The compensation failed (`error`); retried after backoff up to its limit.
    case compensationFailed = "compensation-failed"
    /// The saga was parked, retried or abandoned (by the runner or an operator).
    case note
}

/// One entry of a saga's timeline.
public struct SagaEvent: Sendable, Hashable {
    /// The step the event is about (`-1` for saga-level notes).
    public var step: Int
    /// The step's name.
    public var stepName: String
    /// What happened.
    public var kind: SagaEventKind
    /// The attempt it belongs to.
    public var attempt: Int
    /// The saga state after a completed step (JSON).
    public var output: Data?
    /// The error of a failed action or compensation, or a note's text.
    public var error: String?
    /// When it was recorded.
    public var at: Date

    /// Creates an event.
    public init(
        step: Int, stepName: String, kind: SagaEventKind, attempt: Int, output: Data? = nil, error: String? = nil,
        at: Date
    ) {
        self.step = step
        self.stepName = stepName
        self.kind = kind
        self.attempt = attempt
        self.output = output
        self.error = error
        self.at = at
    }
}

/// Errors of the saga store and runner.
public struct SagaError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public enum Kind: Sendable, Hashable {
        /// A saga with that id exists already.
        case duplicate
        /// No saga with that id.
        case notFound
        /// The saga changed since it was read (another writer).
        case conflict
        /// A step or compensation ran longer than its timeout.
        case timeout
        /// The request makes no sense in the saga's status (retrying a running saga, ...).
        case invalidState
        /// No definition registered under the saga's name.
        case unknownSaga
    }

    /// The kind.
    public var kind: Kind
    /// A sentence for people.
    public var message: String

    /// Creates an error.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { self.message }
}

/// Durable storage of saga instances and their timelines, behind one contract for every backend.
///
/// The semantics every backend must keep (``SagaStoreConformance`` tests prove them):
/// - ``create(_:events:)`` stores a new instance and its first events **atomically**; an existing
///   id throws ``SagaError/Kind/duplicate`` and changes nothing.
/// - ``update(_:expectedVersion:events:)`` replaces the instance's mutable fields and appends
///   events **atomically**, only if the stored version equals `expectedVersion`; the stored
///   version becomes `expectedVersion + 1`. Otherwise it throws ``SagaError/Kind/conflict``
///   (or `.notFound`) and changes nothing. Once either call returns, the change is durable
///   (it survives a crash of the process).
/// - Events of one saga are returned by ``history(_:)`` in the order they were appended.
/// - ``due(at:limit:)`` returns unfinished instances (`running`, `compensating`) whose `wakeAt` is
///   nil or not after the given date, earliest first; ``nextWakeUp()`` is the earliest `wakeAt`
///   of an unfinished instance.
/// - Concurrent calls for different sagas may be committed together in one transaction (group
///   commit), but a failure of one never fails or undoes another.
///
/// ```swift
/// let store = try SQLiteSagaStore(url: StoreURL(parsing: "sqlite://.aviary/orders/sagas.db"))
/// let parked = try await store.instances(status: .needsAttention, limit: 50)
/// ```
public protocol SagaStore: Sendable {
    /// Stores a new instance (its `version` must be 1) and its first events.
    func create(_ instance: SagaInstance, events: [SagaEvent]) async throws

    /// Replaces the instance's fields and appends events, if the stored version is `expectedVersion`.
    func update(_ instance: SagaInstance, expectedVersion: Int, events: [SagaEvent]) async throws

    /// The instance with that id, or nil.
    func instance(_ id: String) async throws -> SagaInstance?

    /// The instance's timeline, oldest first (empty for an unknown id).
    func history(_ id: String) async throws -> [SagaEvent]

    /// Instances, newest first, optionally only those in `status`.
    func instances(status: SagaStatus?, limit: Int) async throws -> [SagaInstance]

    /// Unfinished instances due at `date`, earliest `wakeAt` first (nil counts as earliest).
    func due(at date: Date, limit: Int) async throws -> [SagaInstance]

    /// The earliest `wakeAt` among unfinished instances, or nil.
    func nextWakeUp() async throws -> Date?
}

/// A ``SagaStore`` that several orchestrator processes share: each unfinished saga is driven by
/// one ``SagaRunner`` at a time, the one holding its **lease** (an owner and an expiry stored with
/// the instance). A runner that dies keeps its leases until they expire; then another runner
/// takes the sagas over and resumes them (a step whose outcome was not recorded runs again with
/// the same idempotency key). A ``SagaRunner`` over such a store claims due sagas through
/// ``claimDue(at:limit:owner:leaseUntil:)`` instead of ``SagaStore/due(at:limit:)`` and renews
/// the leases of the sagas it drives.
///
/// Updating an instance to a final status (`completed`, `compensated`, `needs-attention`,
/// `abandoned`) releases its lease in the same write.
///
/// ```swift
/// let claimed = try await store.claimDue(at: now, limit: 64, owner: "host-1/4242", leaseUntil: now + 30)
/// for instance in claimed { /* drive it, then */ }
/// try await store.releaseLeases(claimed.map(\.id), owner: "host-1/4242")
/// ```
public protocol SagaLeaseStore: SagaStore {
    /// Leases up to `limit` unfinished instances due at `date` (wake-up passed) that nobody
    /// holds (no lease, or one that expired by `date`) to `owner` until `leaseUntil`, and
    /// returns them, earliest `wakeAt` first. Concurrent callers never get the same instance.
    func claimDue(at date: Date, limit: Int, owner: String, leaseUntil: Date) async throws -> [SagaInstance]

    /// Leases one unfinished instance to `owner` until `leaseUntil` if nobody else holds it at
    /// `date` (a lease `owner` holds already is extended); returns it, or nil when it is held by
    /// another owner, final or unknown.
    func claim(_ id: String, owner: String, at date: Date, leaseUntil: Date) async throws -> SagaInstance?

    /// As ``SagaStore/create(_:events:)``, with the new instance leased to `owner` until
    /// `leaseUntil` (so that no other runner claims it before its creator drives it).
    func create(_ instance: SagaInstance, events: [SagaEvent], owner: String, leaseUntil: Date) async throws

    /// Moves the expiry of the leases `owner` holds on `ids` to `leaseUntil` (others are left alone).
    func renewLeases(_ ids: [String], owner: String, leaseUntil: Date) async throws

    /// Gives up the leases `owner` holds on `ids` (others are left alone).
    func releaseLeases(_ ids: [String], owner: String) async throws

    /// The earliest time an unfinished instance can be claimed: its `wakeAt` (now when nil) or,
    /// while it is leased, the later of that and the lease's expiry; nil when none is unfinished.
    /// ``SagaRunner/run()`` sleeps until then, so that it does not spin on sagas another runner
    /// is driving.
    func nextClaimable() async throws -> Date?
}
