//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import Foundation
import Testing

// MARK: An order aggregate

struct OrderPlaced: DomainEvent, Equatable {
    static let eventType = "order.placed"
    static let schemaVersion = 2
    var total: Int
    var currency: String
}

/// The first shape of `order.placed`, before it had a currency.
struct OrderPlacedV1: Codable {
    var total: Int
}

struct ItemAdded: DomainEvent, Equatable {
    static let eventType = "order.item-added"
    var amount: Int
}

struct OrderConfirmed: DomainEvent, Equatable {
    static let eventType = "order.confirmed"
}

enum Order: Aggregate {
    struct State: Codable, Sendable, Equatable {
        var placed = false
        var confirmed = false
        var total = 0
        var currency = ""
        var items = 0
    }

    enum Command: Sendable {
        case place(total: Int)
        case add(amount: Int)
        case confirm
    }

    static let category = "order"
    static let events = EventCatalog(
        [OrderPlaced.self, ItemAdded.self, OrderConfirmed.self],
        upcasters: [
            Upcaster(type: "order.placed", from: 1) { (old: OrderPlacedV1) in
                OrderPlaced(total: old.total, currency: "EUR")
            }
        ])
    static var initialState: State { State() }

    static func decide(_ command: Command, state: State) throws -> [any DomainEvent] {
        switch command {
        case .place(let total):
            guard !state.placed else { throw AviaryError(.conflict, "order already placed") }
            return [OrderPlaced(total: total, currency: "USD")]
        case .add(let amount):
            guard state.placed, !state.confirmed else { throw AviaryError(.failedPrecondition, "order is closed") }
            return [ItemAdded(amount: amount)]
        case .confirm:
            guard state.placed else { throw AviaryError(.failedPrecondition, "order not placed") }
            return state.confirmed ? [] : [OrderConfirmed()]
        }
    }

    static func evolve(_ state: State, _ event: any DomainEvent) -> State {
        var state = state
        switch event {
        case let placed as OrderPlaced:
            state.placed = true
            state.total = placed.total
            state.currency = placed.currency
        case let added as ItemAdded:
            state.items += 1
            state.total += added.amount
        case is OrderConfirmed:
            state.confirmed = true
        default:
            break
        }
        return state
    }
}

/// The same aggregate after its state's shape changed: snapshots of version 1 must be ignored.
enum OrderV2: Aggregate {
    typealias State = Order.State
    typealias Command = Order.Command
    static let category = Order.category
    static let events = Order.events
    static var initialState: State { State() }
    static let stateSchemaVersion = 2
    static func decide(_ command: Command, state: State) throws -> [any DomainEvent] {
        try Order.decide(command, state: state)
    }
    static func evolve(_ state: State, _ event: any DomainEvent) -> State { Order.evolve(state, event) }
}

/// A real event store with a competitor: before each of the first `interferences` appends to a
/// stream, another writer appends to it first (as a concurrent process would).
struct RacingEventStore: EventStore {
    let base: any EventStore
    let remaining: Locked<Int>

    init(_ base: any EventStore, interferences: Int) {
        self.base = base
        self.remaining = Locked(interferences)
    }

    func append(_ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion) async throws -> AppendResult
    {
        let interfere = self.remaining.withLock { count in
            defer { count -= 1 }
            return count > 0
        }
        if interfere {
            let competing = try Order.events.encode(ItemAdded(amount: 1))
            try await self.base.append([competing], to: stream, expectedVersion: .any)
        }
        return try await self.base.append(events, to: stream, expectedVersion: expectedVersion)
    }

    func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws
        -> [RecordedEvent]
    {
        try await self.base.readStream(stream, from: version, direction: direction, limit: limit)
    }
    func readAll(after position: Int64, limit: Int) async throws -> [RecordedEvent] {
        try await self.base.readAll(after: position, limit: limit)
    }
    func streamVersion(_ stream: String) async throws -> Int64? { try await self.base.streamVersion(stream) }
    func headPosition() async throws -> Int64 { try await self.base.headPosition() }
    func streams(after: String?, limit: Int) async throws -> [StreamInfo] {
        try await self.base.streams(after: after, limit: limit)
    }
    func saveSnapshot(_ snapshot: Snapshot) async throws { try await self.base.saveSnapshot(snapshot) }
    func latestSnapshot(of stream: String) async throws -> Snapshot? { try await self.base.latestSnapshot(of: stream) }
}

@Suite("Aggregates, snapshots and upcasting", .timeLimit(.minutes(3)))
struct AggregateTests {
    /// Runs `body` with a fresh store of `backend` (the repository works on any ``EventStore``).
    static func with(_ backend: EventStoreBackend, _ body: (any EventStore) async throws -> Void) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let store = try await backend.make(directory, { Date() })
        do {
            try await body(store)
        } catch {
            await close(store)
            throw error
        }
        await close(store)
    }

    @Test(
        "commands decide events that are appended and evolve the state; metadata travels with them",
        arguments: EventStoreBackend.all)
    func executeAndLoad(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store in
            let orders = AggregateRepository<Order>(events: store, snapshotEvery: nil)
            let placed = try await orders.execute(
                .place(total: 40), on: "17", metadata: EventMetadata(causationID: "cmd-1", correlationID: "req-1"))
            #expect(placed.version == 1)
            #expect(placed.attempts == 1)
            #expect(placed.state == Order.State(placed: true, total: 40, currency: "USD"))
            try await orders.execute(.add(amount: 2), on: "17")
            let confirmed = try await orders.execute(.confirm, on: "17")
            #expect(confirmed.version == 3)
            // Deciding nothing appends nothing.
            let again = try await orders.execute(.confirm, on: "17")
            #expect(again.events.isEmpty && again.append == nil && again.version == 3)

            let loaded = try await orders.load("17")
            #expect(loaded.version == 3)
            #expect(loaded.state == Order.State(placed: true, confirmed: true, total: 42, currency: "USD", items: 1))
            let recorded = try await store.readStream("order-17")
            #expect(recorded.map(\.type) == ["order.placed", "order.item-added", "order.confirmed"])
            #expect(recorded[0].schemaVersion == 2)
            #expect(recorded[0].metadata.causationID == "cmd-1" && recorded[0].metadata.correlationID == "req-1")

            // A rejected command throws its own error and records nothing.
            let rejected = await #expect(throws: AviaryError.self) {
                try await orders.execute(.add(amount: 1), on: "17")
            }
            #expect(rejected?.code == .failedPrecondition)
            #expect(try await store.streamVersion("order-17") == 3)
        }
    }

    @Test(
        "a conflicting append is decided again on the reloaded state, a bounded number of times",
        arguments: EventStoreBackend.all)
    func conflictRetries(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store in
            try await AggregateRepository<Order>(events: store).execute(.place(total: 10), on: "1")
            // Two competing appends, three retries allowed: the third attempt wins and sees both.
            let racing = AggregateRepository<Order>(
                events: RacingEventStore(store, interferences: 2), maxConflictRetries: 3)
            let outcome = try await racing.execute(.add(amount: 5), on: "1")
            #expect(outcome.attempts == 3)
            #expect(outcome.version == 4)
            #expect(outcome.state.total == 10 + 1 + 1 + 5)
            #expect(try await store.streamVersion("order-1") == 4)

            // More competitors than retries: the last conflict is thrown, nothing of ours recorded.
            let losing = AggregateRepository<Order>(
                events: RacingEventStore(store, interferences: 3), maxConflictRetries: 2)
            let conflict = await #expect(throws: WrongExpectedVersion.self) {
                try await losing.execute(.add(amount: 100), on: "1")
            }
            #expect(conflict?.stream == "order-1")
            #expect(conflict?.expected == .exact(6) && conflict?.actual == 7)
            #expect(try await AggregateRepository<Order>(events: store).load("1").state.total == 10 + 1 + 1 + 5 + 3)
        }
    }

    @Test(
        "snapshots every N events; loading starts from the latest; a new state schema ignores old snapshots",
        arguments: EventStoreBackend.all)
    func snapshots(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store in
            let orders = AggregateRepository<Order>(events: store, snapshotEvery: 3)
            try await orders.execute(.place(total: 0), on: "9")
            for _ in 1...6 { try await orders.execute(.add(amount: 1), on: "9") }  // version 7
            let snapshot = try #require(try await store.latestSnapshot(of: "order-9"))
            #expect(snapshot.streamVersion == 6)
            #expect(snapshot.schemaVersion == 1)

            let loaded = try await orders.load("9")
            #expect(loaded.snapshotVersion == 6 && loaded.version == 7)
            #expect(loaded.state.total == 6 && loaded.state.items == 6)

            // Loading really starts from the snapshot: a marked snapshot shows through.
            var marked = try JSONDecoder().decode(Order.State.self, from: snapshot.data)
            marked.currency = "MARK"
            try await store.saveSnapshot(
                Snapshot(
                    stream: "order-9", streamVersion: 6, schemaVersion: 1, data: try JSONEncoder().encode(marked),
                    takenAt: snapshot.takenAt))
            #expect(try await orders.load("9").state.currency == "MARK")

            // Code with state schema 2 ignores the version 1 snapshot and replays every event.
            let v2 = try await AggregateRepository<OrderV2>(events: store, snapshotEvery: 3).load("9")
            #expect(v2.snapshotVersion == 0 && v2.version == 7)
            #expect(v2.state.currency == "USD" && v2.state.total == 6)
        }
    }

    @Test(
        "old schema versions are upcast to the current type; unknown or newer versions fail clearly",
        arguments: EventStoreBackend.all)
    func upcasting(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store in
            let old = try NewEvent(type: "order.placed", schemaVersion: 1, json: OrderPlacedV1(total: 70))
            try await store.append([old], to: "order-5", expectedVersion: .noStream)
            let orders = AggregateRepository<Order>(events: store)
            let loaded = try await orders.load("5")
            #expect(loaded.state == Order.State(placed: true, total: 70, currency: "EUR"))
            let decoded = try Order.events.decode(try #require(try await store.readStream("order-5").first))
            #expect(decoded as? OrderPlaced == OrderPlaced(total: 70, currency: "EUR"))

            let newer = try NewEvent(type: "order.placed", schemaVersion: 3, json: OrderPlacedV1(total: 1))
            try await store.append([newer], to: "order-6", expectedVersion: .noStream)
            let tooNew = await #expect(throws: AviaryError.self) { try await orders.load("6") }
            #expect(tooNew?.message.contains("schema version 3, newer than this code's 2") == true)

            let noUpcaster = EventCatalog([OrderPlaced.self])
            let recorded = try #require(try await store.readStream("order-5").first)
            let missing = #expect(throws: AviaryError.self) { try noUpcaster.decode(recorded) }
            #expect(missing?.message.contains("no upcaster for order.placed from schema version 1") == true)
            #expect(missing?.message.contains("order-5@1") == true)

            let unknown = try NewEvent(type: "order.shipped", json: ["x": 1])
            try await store.append([unknown], to: "order-7", expectedVersion: .noStream)
            let unknownError = await #expect(throws: AviaryError.self) { try await orders.load("7") }
            #expect(unknownError?.message.contains("unknown event type order.shipped") == true)
        }
    }
}
