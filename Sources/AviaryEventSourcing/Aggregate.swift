//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation
public import Logging

/// An event-sourced aggregate: it decides events from a command and its current state, and
/// evolves its state from events. Both are pure functions; ``AggregateRepository`` does the I/O.
///
/// ```swift
/// enum Order: Aggregate {
///     struct State: Codable, Sendable { var placed = false; var total = 0 }
///     enum Command: Sendable { case place(total: Int) }
///     static let category = "order"
///     static let events = EventCatalog([OrderPlaced.self])
///     static var initialState: State { State() }
///     static func decide(_ command: Command, state: State) throws -> [any DomainEvent] {
///         switch command {
///         case .place(let total):
///             guard !state.placed else { throw AviaryError(.conflict, "already placed") }
///             return [OrderPlaced(total: total)]
///         }
///     }
///     static func evolve(_ state: State, _ event: any DomainEvent) -> State {
///         var state = state
///         if let placed = event as? OrderPlaced { state.placed = true; state.total = placed.total }
///         return state
///     }
/// }
/// ```
public protocol Aggregate {
    /// The state decisions are made on; Codable for snapshots.
    associatedtype State: Codable & Sendable
    /// What the aggregate is asked to do.
    associatedtype Command: Sendable

    /// The stream prefix: an aggregate `17` lives in stream `<category>-17`.
    static var category: String { get }
    /// The event types the aggregate records and reads, with their upcasters.
    static var events: EventCatalog { get }
    /// The state before any event.
    static var initialState: State { get }
    /// The version of ``State``'s shape; bump it when the shape changes and snapshots taken
    /// before are ignored (the state is rebuilt from events). 1 unless overridden.
    static var stateSchemaVersion: Int { get }

    /// The events a command produces in `state`; none for a command that changes nothing.
    ///
    /// - Throws: the command's rejection (not retried).
    static func decide(_ command: Command, state: State) throws -> [any DomainEvent]

    /// The state after `event`.
    static func evolve(_ state: State, _ event: any DomainEvent) -> State
}

extension Aggregate {
    public static var stateSchemaVersion: Int { 1 }

    /// The stream of the aggregate with id `id`.
    public static func stream(_ id: String) -> String {
        "\(Self.category)-\(id)"
    }
}

/// An aggregate's state as loaded: the state and the stream version it includes.
public struct LoadedAggregate<A: Aggregate>: Sendable {
    /// The state.
    public var state: A.State
    /// The stream version the state includes (0: no events yet).
    public var version: Int64
    /// The snapshot version loading started from (0: none was usable).
    public var snapshotVersion: Int64
}

/// What ``AggregateRepository/execute(_:on:metadata:)`` did.
public struct CommandOutcome<A: Aggregate>: Sendable {
    /// The state after the command.
    public var state: A.State
    /// The stream version after the command.
    public var version: Int64
    /// The events the command produced (empty: nothing changed and nothing was appended).
    public var events: [any DomainEvent]
    /// Where they were recorded; `nil` when there were none.
    public var append: AppendResult?
    /// How many times the command was decided (1 unless concurrent appends conflicted).
    public var attempts: Int
}

/// Loads aggregates (from the latest snapshot plus the events after it), runs commands with
/// optimistic concurrency, and retries a conflicting append a bounded number of times.
///
/// ```swift
/// let orders = AggregateRepository<Order>(events: eventStore, snapshotEvery: 100)
/// let outcome = try await orders.execute(.place(total: 4200), on: "17",
///                                        metadata: EventMetadata(correlationID: requestID))
/// print(outcome.version)   // 1
/// ```
public struct AggregateRepository<A: Aggregate>: Sendable {
    /// The event store.
    public let events: any EventStore
    /// Take a snapshot whenever a stream's version crosses a multiple of this; `nil`: never.
    public var snapshotEvery: Int?
    /// How many times a command is decided again after a conflicting append (so at most
    /// `maxConflictRetries + 1` attempts); then the last ``WrongExpectedVersion`` is thrown.
    public var maxConflictRetries: Int
    /// Logs snapshot failures (which never fail a command).
    public var logger: Logger
    let now: @Sendable () -> Date

    /// Creates a repository.
    ///
    /// - Precondition: `snapshotEvery` is nil or positive; `maxConflictRetries >= 0`.
    public init(
        events: any EventStore, snapshotEvery: Int? = 100, maxConflictRetries: Int = 3,
        logger: Logger = Logger(label: "aviary.eventsourcing"), now: @escaping @Sendable () -> Date = { Date() }
    ) {
        precondition(snapshotEvery.map { $0 > 0 } ?? true, "snapshotEvery must be positive")
        precondition(maxConflictRetries >= 0, "maxConflictRetries must not be negative")
        self.events = events
        self.snapshotEvery = snapshotEvery
        self.maxConflictRetries = maxConflictRetries
        self.logger = logger
        self.now = now
    }

    /// Loads an aggregate: its latest snapshot (when taken with the current
    /// ``Aggregate/stateSchemaVersion``) plus the events recorded after it.
    ///
    /// - Throws: the store's errors; ``EventCatalog/decode(_:)``'s errors for events it cannot read.
    public func load(_ id: String) async throws -> LoadedAggregate<A> {
        let stream = A.stream(id)
        var state = A.initialState
        var version: Int64 = 0
        if let snapshot = try await self.events.latestSnapshot(of: stream),
            snapshot.schemaVersion == A.stateSchemaVersion
        {
            do {
                state = try EventJSON.decode(A.State.self, from: snapshot.data)
                version = snapshot.streamVersion
            } catch {
                self.logger.warning(
                    "snapshot does not decode; loading from events",
                    metadata: ["aviary.stream": "\(stream)", "error.message": "\(error)"])
            }
        }
        let snapshotVersion = version
        while true {
            let page = try await self.events.readStream(stream, from: version + 1, direction: .forwards, limit: 1000)
            for recorded in page {
                state = A.evolve(state, try A.events.decode(recorded))
                version = recorded.streamVersion
            }
            if page.count < 1000 { break }
        }
        return LoadedAggregate(state: state, version: version, snapshotVersion: snapshotVersion)
    }

    /// Runs a command: loads the aggregate, decides, and appends the events expecting the version
    /// it loaded. When another writer appended first, loads and decides again, up to
    /// ``maxConflictRetries`` times.
    ///
    /// - Parameters:
    ///   - command: the command.
    ///   - id: the aggregate's id (its stream is ``Aggregate/stream(_:)``).
    ///   - metadata: recorded with every event (causation, correlation, trace context).
    /// - Throws: the command's rejection from ``Aggregate/decide(_:state:)``; the last
    ///   ``WrongExpectedVersion`` when every attempt conflicted; the store's errors.
    @discardableResult
    public func execute(
        _ command: A.Command, on id: String, metadata: EventMetadata = EventMetadata()
    ) async throws
        -> CommandOutcome<A>
    {
        let stream = A.stream(id)
        var attempt = 0
        while true {
            attempt += 1
            let loaded = try await self.load(id)
            let decided = try A.decide(command, state: loaded.state)
            guard !decided.isEmpty else {
                return CommandOutcome(
                    state: loaded.state, version: loaded.version, events: [], append: nil, attempts: attempt)
            }
            let new = try decided.map { try A.events.encode($0, metadata: metadata) }
            let result: AppendResult
            do {
                result = try await self.events.append(
                    new, to: stream, expectedVersion: loaded.version == 0 ? .noStream : .exact(loaded.version))
            } catch let conflict as WrongExpectedVersion where attempt <= self.maxConflictRetries {
                self.logger.debug(
                    "append conflicted; deciding again",
                    metadata: ["aviary.stream": "\(stream)", "aviary.conflict": "\(conflict)"])
                continue
            }
            let state = decided.reduce(loaded.state, A.evolve)
            await self.snapshotIfDue(stream: stream, state: state, from: loaded.version, to: result.streamVersion)
            return CommandOutcome(
                state: state, version: result.streamVersion, events: decided, append: result, attempts: attempt)
        }
    }

    /// Saves a snapshot when the version crossed a multiple of ``snapshotEvery``. A failure is
    /// logged, never thrown: the events are recorded and a snapshot is only a cache.
    private func snapshotIfDue(stream: String, state: A.State, from old: Int64, to new: Int64) async {
        guard let every = self.snapshotEvery.map(Int64.init), old / every != new / every else { return }
        do {
            try await self.events.saveSnapshot(
                Snapshot(
                    stream: stream, streamVersion: new, schemaVersion: A.stateSchemaVersion,
                    data: try EventJSON.encode(state), takenAt: self.now()))
        } catch {
            self.logger.warning(
                "snapshot failed", metadata: ["aviary.stream": "\(stream)", "error.message": "\(error)"])
        }
    }
}
