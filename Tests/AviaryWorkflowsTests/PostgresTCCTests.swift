//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryStorage
import AviaryTestSupport
import AviaryWorkflows
import Foundation
import Logging
import PostgresNIO
import Testing

/// TCC, choreography and saga request/reply on real PostgreSQL databases (one per service).
@Suite("Workflows on PostgreSQL: TCC and messaging", .timeLimit(.minutes(3)))
struct PostgresTCCTests {
    static let quiet: Logger = {
        var logger = Logger(label: "aviary.test")
        logger.logLevel = .error
        return logger
    }()

    /// Runs `body` with a running store on a fresh database.
    static func withStore<T: Sendable>(
        _ migrations: PostgresMigrations, _ body: @Sendable (PostgresStore) async throws -> T
    ) async throws -> T {
        let url = try await PostgresTestServer.shared().makeDatabase()
        return try await PostgresStore.withStore(url: url, migrations: migrations, logger: Self.quiet, body)
    }

    static func int(_ store: PostgresStore, _ query: PostgresQuery) async throws -> Int {
        try await store.withConnection { connection in
            var value = 0
            for try await row in try await connection.query(query, logger: Self.quiet) {
                value = try row.decode(Int.self)
            }
            return value
        }
    }

    /// A stock-keeping participant on PostgreSQL: `available` drops on try, comes back on cancel
    /// or expiry, `sold` grows on confirm.
    struct Stock: TCCParticipant {
        let name: String
        let store: PostgresStore
        let clock: ManualWallClock
        let amount: Int
        let refuse: Bool

        static var migrations: PostgresMigrations {
            var migrations = PostgresMigrations()
            migrations.add("stock v1") { connection, logger in
                try await connection.query(
                    "CREATE TABLE stock (id INTEGER PRIMARY KEY, available BIGINT NOT NULL, sold BIGINT NOT NULL)",
                    logger: logger)
                try await connection.query("INSERT INTO stock VALUES (1, 10, 0)", logger: logger)
            }
            PostgresTCCReservations.addMigrations(to: &migrations)
            return migrations
        }

        func tryReserve(_ request: TCCRequest) async throws {
            if self.refuse { throw TestFailure("\(self.name) refuses") }
            let (now, amount) = (self.clock.now, self.amount)
            try await self.store.withTransaction { connection in
                if try await PostgresTCCReservations.reserve(
                    request, resource: "item", amount: amount, now: now, on: connection)
                {
                    try await connection.query(
                        "UPDATE stock SET available = available - \(amount)", logger: PostgresTCCTests.quiet)
                }
            }
        }

        func confirm(_ transactionID: String) async throws {
            let (now, amount) = (self.clock.now, self.amount)
            try await self.store.withTransaction { connection in
                if try await PostgresTCCReservations.confirm(transactionID, now: now, on: connection) {
                    try await connection.query(
                        "UPDATE stock SET sold = sold + \(amount)", logger: PostgresTCCTests.quiet)
                }
            }
        }

        func cancel(_ transactionID: String) async throws {
            try await self.store.withTransaction { connection in
                if let released = try await PostgresTCCReservations.cancel(transactionID, on: connection) {
                    try await connection.query(
                        "UPDATE stock SET available = available + \(released.amount)", logger: PostgresTCCTests.quiet)
                }
            }
        }

        func sweep() async throws -> Int {
            let now = self.clock.now
            return try await self.store.withTransaction { connection in
                let lapsed = try await PostgresTCCReservations.expire(now: now, on: connection)
                for reservation in lapsed {
                    try await connection.query(
                        "UPDATE stock SET available = available + \(reservation.amount)",
                        logger: PostgresTCCTests.quiet)
                }
                return lapsed.count
            }
        }

        /// `[available, sold]`.
        var counts: [Int] {
            get async throws {
                [
                    try await PostgresTCCTests.int(self.store, "SELECT available::INT8 FROM stock"),
                    try await PostgresTCCTests.int(self.store, "SELECT sold::INT8 FROM stock"),
                ]
            }
        }
    }

    static var coordinatorMigrations: PostgresMigrations {
        var migrations = PostgresMigrations()
        PostgresTCCCoordinator.addMigrations(to: &migrations)
        return migrations
    }

    @Test("all reserve then confirm; one refusal cancels all; recovery finishes an interrupted try")
    func coordinator() async throws {
        let clock = ManualWallClock()
        try await Self.withStore(Stock.migrations) { aStore in
            try await Self.withStore(Stock.migrations) { bStore in
                try await Self.withStore(Self.coordinatorMigrations) { tccStore in
                    let a = Stock(name: "a", store: aStore, clock: clock, amount: 2, refuse: false)
                    let b = Stock(name: "b", store: bStore, clock: clock, amount: 3, refuse: false)
                    let coordinator = PostgresTCCCoordinator(store: tccStore, wallClock: clock)
                    #expect(
                        try await coordinator.execute("tx1", participants: [a, b], reservationTTL: .seconds(30))
                            == .confirmed)
                    #expect(try await a.counts == [8, 2])
                    #expect(try await b.counts == [7, 3])
                    try await a.confirm("tx1")  // idempotent
                    #expect(try await a.counts == [8, 2])
                    clock.advance(by: .seconds(60))
                    #expect(try await a.sweep() == 0)  // confirmed reservations never expire

                    let refusing = Stock(name: "b", store: bStore, clock: clock, amount: 3, refuse: true)
                    #expect(
                        try await coordinator.execute("tx2", participants: [a, refusing], reservationTTL: .seconds(30))
                            == .cancelled)
                    #expect(try await a.counts == [8, 2])
                    #expect(try await coordinator.status("tx2") == .cancelled)

                    // A crash after `a` reserved: the row says trying.
                    _ = try await tccStore.withConnection { connection in
                        try await connection.query(
                            "INSERT INTO aviary_tcc VALUES ('tx3', 'trying', 'a,b', 0, NULL, 0)", logger: Self.quiet)
                    }
                    try await a.tryReserve(
                        TCCRequest(transactionID: "tx3", expiresAt: clock.now.addingTimeInterval(30)))
                    #expect(try await a.counts == [6, 2])
                    #expect(try await coordinator.recover(["a": a, "b": b]) == 1)
                    #expect(try await coordinator.status("tx3") == .cancelled)
                    #expect(try await a.counts == [8, 2])
                    // `b` got the cancel first: its late try is refused.
                    await #expect(throws: TCCReservations.Refused.self) {
                        try await b.tryReserve(
                            TCCRequest(transactionID: "tx3", expiresAt: clock.now.addingTimeInterval(30)))
                    }
                    #expect(try await b.counts == [7, 3])
                }
            }
        }
    }

    @Test("a reservation never confirmed expires and is released; a late confirm is refused; racing tries reserve once")
    func expiry() async throws {
        let clock = ManualWallClock()
        try await Self.withStore(Stock.migrations) { store in
            let a = Stock(name: "a", store: store, clock: clock, amount: 2, refuse: false)
            let request = TCCRequest(transactionID: "tx1", expiresAt: clock.now.addingTimeInterval(30))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 { group.addTask { try await a.tryReserve(request) } }
                try await group.waitForAll()
            }
            #expect(try await a.counts == [8, 0])
            clock.advance(by: .seconds(29))
            #expect(try await a.sweep() == 0)
            clock.advance(by: .seconds(1))
            #expect(try await a.sweep() == 1)
            #expect(try await a.counts == [10, 0])
            await #expect(throws: TCCReservations.Refused.self) { try await a.confirm("tx1") }
            #expect(try await a.counts == [10, 0])
        }
    }

    @Test("a saga's command goes through the PostgreSQL outbox; the callee replies once through its inbox")
    func requestReplyThroughTheOutbox() async throws {
        var ordersMigrations = PostgresMigrations()
        PostgresSagaStore.addMigrations(to: &ordersMigrations)
        Outbox.addMigrations(to: &ordersMigrations)
        var paymentsMigrations = PostgresMigrations()
        paymentsMigrations.add("charges v1") { connection, logger in
            try await connection.query(
                "CREATE TABLE charges (order_id TEXT PRIMARY KEY, amount BIGINT NOT NULL)", logger: logger)
        }
        PostgresInbox.addMigrations(to: &paymentsMigrations)
        Outbox.addMigrations(to: &paymentsMigrations)
        let logURL = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(
            url: logURL, configuration: PostgresMessageLog.Configuration(pollInterval: .milliseconds(50)),
            logger: Self.quiet)
        do {
            try await Self.roundTrip(log: log, ordersMigrations, paymentsMigrations)
        } catch {
            try? await log.close()
            throw error
        }
        try await log.close()
    }

    static func roundTrip(
        log: PostgresMessageLog, _ ordersMigrations: PostgresMigrations, _ paymentsMigrations: PostgresMigrations
    ) async throws {
        struct Order: Codable, Sendable {
            var amount: Int
            var receipt: String?
        }
        let topics = ["payments": TopicOptions(partitions: 2), "orders-replies": TopicOptions(partitions: 2)]
        for (topic, options) in topics { try await log.createTopic(topic, options) }
        try await Self.withStore(ordersMigrations) { orders in
            try await Self.withStore(paymentsMigrations) { payments in
                let sagas = PostgresSagaStore(store: orders)
                let runner = SagaRunner(store: sagas, logger: Self.quiet)
                let saga = Saga<Order>(
                    "order",
                    steps: [
                        .request("charge", replyTimeout: .seconds(60)) { order, context in
                            let command = try SagaCommand.message(
                                topic: "payments", replyTopic: "orders-replies", type: "payment.charge",
                                source: "/orders", payload: order.amount, context: context)
                            try await orders.withTransaction { connection in
                                try await Outbox.enqueue(command, in: connection)
                            }
                        } onReply: { order, reply in
                            var order = order
                            order.receipt = try reply.decodeData(as: String.self)
                            return order
                        }
                    ])
                runner.register(saga)
                let inbox = PostgresInbox(store: payments, group: "payments")
                let charges = Locked(0)
                let paymentsConsumer = MessageConsumer(
                    log: log, configuration: .init(group: "payments", topic: "payments"), logger: Self.quiet
                ) { delivery in
                    // Delivered twice on purpose: the inbox applies it once.
                    for _ in 0..<2 {
                        try await Choreography.react(to: delivery.message, inbox: inbox) { connection, message in
                            charges.withLock { $0 += 1 }
                            let amount = try message.event.decodeData(as: Int.self)
                            try await connection.query(
                                "INSERT INTO charges VALUES (\(message.key), \(amount))", logger: Self.quiet)
                            return [
                                try SagaCommand.reply(
                                    to: message, type: "payment.charged", source: "/payments", payload: "r-\(amount)")
                            ]
                        }
                    }
                }
                let replies = MessageConsumer(
                    log: log, configuration: .init(group: "orders-sagas", topic: "orders-replies"), logger: Self.quiet,
                    handler: runner.replyHandler())
                let relayConfiguration = OutboxRelay.Configuration(pollInterval: .milliseconds(50))
                let services: [@Sendable () async throws -> Void] = [
                    {
                        try await OutboxRelay(
                            store: orders, log: log, configuration: relayConfiguration, logger: Self.quiet
                        ).run()
                    },
                    {
                        try await OutboxRelay(
                            store: payments, log: log, configuration: relayConfiguration, logger: Self.quiet
                        ).run()
                    },
                    { try await paymentsConsumer.run() },
                    { try await replies.run() },
                ]
                try await withThrowingTaskGroup(of: Void.self) { group in
                    // Stopped by cancellation at the end; how each one ends does not matter here.
                    for service in services { group.addTask { try? await service() } }
                    let waiting = try await runner.start(saga, id: "order-1", state: Order(amount: 42))
                    #expect(waiting.awaitingReply && waiting.status == .running)
                    let deadline = ContinuousClock.now.advanced(by: .seconds(30))
                    while try await sagas.instance("order-1")?.status != .completed, ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    group.cancelAll()
                }
                #expect(try await sagas.instance("order-1")?.status == .completed)
                #expect(try await runner.state(of: "order-1", as: Order.self).receipt == "r-42")
                #expect(charges.value == 1)
                #expect(try await Self.int(payments, "SELECT count(*) FROM charges") == 1)
                #expect(try await Self.int(payments, "SELECT amount FROM charges WHERE order_id = 'order-1'") == 42)
            }
        }
    }
}
