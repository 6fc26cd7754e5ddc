//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import AviaryWorkflows
import Foundation
import GRDB
import Testing

/// TCC with participants that keep their reservations in real SQLite databases.
@Suite("TCC coordinator", .timeLimit(.minutes(2)))
struct TCCTests {
    /// A stock-keeping participant: `available` drops on try, comes back on cancel or expiry.
    struct Stock: TCCParticipant {
        let name: String
        let store: SQLiteStore
        let clock: ManualWallClock
        let amount: Int
        let refuse: Bool

        init(_ name: String, path: String, clock: ManualWallClock, amount: Int = 2, refuse: Bool = false) throws {
            var migrations = Migrations()
            migrations.add("stock v1") { db in
                try db.execute(
                    sql:
                        "CREATE TABLE stock (id INTEGER PRIMARY KEY, available INTEGER NOT NULL, sold INTEGER NOT NULL)"
                )
                try db.execute(sql: "INSERT INTO stock VALUES (1, 10, 0)")
            }
            TCCReservations.addMigrations(to: &migrations)
            self.name = name
            self.store = try SQLiteStore(url: StoreURL(.sqlite(path: path)), migrations: migrations)
            self.clock = clock
            self.amount = amount
            self.refuse = refuse
        }

        func tryReserve(_ request: TCCRequest) async throws {
            if self.refuse { throw TestFailure("\(self.name) refuses") }
            let (now, amount) = (self.clock.now, self.amount)
            try await self.store.write { db in
                if try TCCReservations.reserve(request, resource: "item", amount: amount, now: now, in: db) {
                    try db.execute(sql: "UPDATE stock SET available = available - ?", arguments: [amount])
                }
            }
        }

        func confirm(_ transactionID: String) async throws {
            let (now, amount) = (self.clock.now, self.amount)
            try await self.store.write { db in
                let before = db.totalChangesCount
                try TCCReservations.confirm(transactionID, now: now, in: db)
                if db.totalChangesCount > before {
                    try db.execute(sql: "UPDATE stock SET sold = sold + ?", arguments: [amount])
                }
            }
        }

        func cancel(_ transactionID: String) async throws {
            try await self.store.write { db in
                if let released = try TCCReservations.cancel(transactionID, in: db) {
                    try db.execute(sql: "UPDATE stock SET available = available + ?", arguments: [released.amount])
                }
            }
        }

        func sweep() async throws -> Int {
            let now = self.clock.now
            return try await self.store.write { db in
                let lapsed = try TCCReservations.expire(now: now, in: db)
                for reservation in lapsed {
                    try db.execute(sql: "UPDATE stock SET available = available + ?", arguments: [reservation.amount])
                }
                return lapsed.count
            }
        }

        /// `[available, sold]`.
        var counts: [Int] {
            get async throws {
                try await self.store.read { db in
                    let row = try Row.fetchOne(db, sql: "SELECT available, sold FROM stock")!
                    return [row["available"], row["sold"]]
                }
            }
        }
    }

    static func coordinator(_ directory: TemporaryDirectory, _ clock: ManualWallClock) throws -> TCCCoordinator {
        var migrations = Migrations()
        TCCCoordinator.addMigrations(to: &migrations)
        return TCCCoordinator(
            store: try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("tcc.db"))), migrations: migrations),
            wallClock: clock)
    }

    @Test("every participant reserves, then all confirm")
    func confirmAll() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = ManualWallClock()
        let a = try Stock("a", path: directory.path("a.db"), clock: clock)
        let b = try Stock("b", path: directory.path("b.db"), clock: clock, amount: 3)
        let coordinator = try Self.coordinator(directory, clock)
        #expect(try await coordinator.execute("tx1", participants: [a, b], reservationTTL: .seconds(30)) == .confirmed)
        #expect(try await a.counts == [8, 2])
        #expect(try await b.counts == [7, 3])
        clock.advance(by: .seconds(60))
        #expect(try await a.sweep() == 0)  // confirmed reservations never expire
        #expect(try await a.counts == [8, 2])
    }

    @Test("one refusal cancels every reservation")
    func cancelAll() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = ManualWallClock()
        let a = try Stock("a", path: directory.path("a.db"), clock: clock)
        let b = try Stock("b", path: directory.path("b.db"), clock: clock, refuse: true)
        let coordinator = try Self.coordinator(directory, clock)
        #expect(try await coordinator.execute("tx1", participants: [a, b], reservationTTL: .seconds(30)) == .cancelled)
        #expect(try await a.counts == [10, 0])
        #expect(try await coordinator.status("tx1") == .cancelled)
    }

    @Test("a reservation never confirmed expires and is released; a late confirm is refused")
    func expiry() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = ManualWallClock()
        let a = try Stock("a", path: directory.path("a.db"), clock: clock)
        // The coordinator reserved and then died: nobody confirms.
        let request = TCCRequest(transactionID: "tx1", expiresAt: clock.now.addingTimeInterval(30))
        try await a.tryReserve(request)
        try await a.tryReserve(request)  // a repeated try reserves once
        #expect(try await a.counts == [8, 0])
        clock.advance(by: .seconds(29))
        #expect(try await a.sweep() == 0)
        clock.advance(by: .seconds(1))
        #expect(try await a.sweep() == 1)
        #expect(try await a.counts == [10, 0])
        await #expect(throws: TCCReservations.Refused.self) { try await a.confirm("tx1") }
        #expect(try await a.counts == [10, 0])
    }

    @Test("recovery cancels a transaction interrupted while trying; a cancel before the try refuses it")
    func recovery() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = ManualWallClock()
        let a = try Stock("a", path: directory.path("a.db"), clock: clock)
        let b = try Stock("b", path: directory.path("b.db"), clock: clock)
        let coordinator = try Self.coordinator(directory, clock)
        // Simulate a crash after `a` reserved: the row says trying.
        try await coordinator.store.write { db in
            try db.execute(sql: "INSERT INTO aviary_tcc VALUES ('tx1', 'trying', 'a,b', 0, NULL, 0)")
        }
        try await a.tryReserve(TCCRequest(transactionID: "tx1", expiresAt: clock.now.addingTimeInterval(30)))
        #expect(try await coordinator.recover(["a": a, "b": b]) == 1)
        #expect(try await coordinator.status("tx1") == .cancelled)
        #expect(try await a.counts == [10, 0])
        // `b` got the cancel first: its late try is refused.
        await #expect(throws: TCCReservations.Refused.self) {
            try await b.tryReserve(TCCRequest(transactionID: "tx1", expiresAt: clock.now.addingTimeInterval(30)))
        }
        #expect(try await b.counts == [10, 0])
    }
}

/// Choreography: reaction, inbox record and outbox rows in one transaction.
@Suite("Choreography")
struct ChoreographyTests {
    @Test("an event is reacted to once and its next event lands in the outbox in the same transaction")
    func reactOnce() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var migrations = Migrations()
        migrations.add("charges") { db in try db.execute(sql: "CREATE TABLE charges (order_id TEXT PRIMARY KEY)") }
        Inbox.addMigrations(to: &migrations)
        Outbox.addMigrations(to: &migrations)
        let store = try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("payments.db"))), migrations: migrations)
        let inbox = Inbox(store: store, group: "payments")
        let reserved = try CloudEvent(
            source: "/shop/inventory", type: "stock.reserved", subject: "order-1", json: ["orderId": "order-1"])
        let message = Message(
            position: MessagePosition(topic: "inventory", partition: 0, offset: 0), key: "order-1", event: reserved,
            headers: [:], appendedAt: Date())
        let react: @Sendable (Database, Message) throws -> [OutgoingMessage] = { db, message in
            try db.execute(sql: "INSERT INTO charges VALUES (?)", arguments: [message.key])
            let charged = try CloudEvent(
                source: "/shop/payments", type: "payment.charged", subject: message.key, json: ["orderId": message.key])
            return [OutgoingMessage(topic: "payments", event: charged)]
        }
        #expect(try await Choreography.react(to: message, inbox: inbox, react) == .processed)
        #expect(try await Choreography.react(to: message, inbox: inbox, react) == .duplicate)
        // A reaction that fails leaves nothing: no inbox record, no outbox row.
        let other = Message(
            position: MessagePosition(topic: "inventory", partition: 0, offset: 1), key: "order-2",
            event: try CloudEvent(
                source: "/shop/inventory", type: "stock.reserved", subject: "order-2", json: ["orderId": "order-2"]),
            headers: [:], appendedAt: Date())
        await #expect(throws: TestFailure.self) {
            try await Choreography.react(to: other, inbox: inbox) { _, _ in throw TestFailure("no") }
        }
        let (charges, pending) = try await store.read { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM charges") ?? 0, try Outbox.pendingCount(in: db))
        }
        #expect(charges == 1)
        #expect(pending == 1)
        #expect(try await inbox.hasProcessed(source: "/shop/inventory", id: other.event.id) == false)
    }
}
