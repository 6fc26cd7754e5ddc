//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryStorage
import Foundation
import GRDB
import Logging
import MetricsTestKit
import ServiceLifecycle
import Testing

@Suite("Transactional outbox and relay", .timeLimit(.minutes(2)))
struct OutboxTests {
    struct Rollback: Error {}

    @Test("an enqueued message commits with the data, and a rolled-back transaction leaves neither")
    func commitsWithData() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let message = try OutboxFixture.message("t1", key: "k1")
        await #expect(throws: Rollback.self) {
            try await store.write { db in
                try db.execute(sql: "INSERT INTO things (id) VALUES ('t0')")
                try Outbox.enqueue(try OutboxFixture.message("t0", key: "k0"), in: db)
                throw Rollback()
            }
        }
        try await store.write { db in
            try db.execute(sql: "INSERT INTO things (id) VALUES ('t1')")
            try Outbox.enqueue(message, in: db)
        }
        let (things, pending) = try await store.read { db in
            (try String.fetchAll(db, sql: "SELECT id FROM things"), try Outbox.pending(in: db))
        }
        #expect(things == ["t1"])
        // Every field survives the table; the time to the microsecond (it is stored as seconds).
        var stored = try #require(pending.first?.message)
        let storedTime = try #require(stored.event.time)
        #expect(abs(storedTime.timeIntervalSince(try #require(message.event.time))) < 1e-6)
        stored.event.time = message.event.time
        #expect(pending.count == 1)
        #expect(stored == message)
        #expect(pending.first?.attempts == 0)
    }

    @Test("enqueue refuses to run outside a transaction, a bad topic and an invalid event")
    func refusesBadInput() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let good = try OutboxFixture.message("t1", key: "k1")
        var badTopic = good
        badTopic.topic = "no spaces"
        var badEvent = good
        badEvent.event.source = ""
        for (message, fragment) in [(badTopic, "topic \"no spaces\""), (badEvent, "source")] {
            let error = await #expect(throws: MessagingError.self) {
                try await store.write { db in try Outbox.enqueue(message, in: db) }
            }
            #expect(error?.kind == .invalidArgument)
            #expect(error?.message.contains(fragment) == true, "\(String(describing: error))")
        }
        let outside = #expect(throws: MessagingError.self) {
            try store.database.writeWithoutTransaction { db in try Outbox.enqueue(good, in: db) }
        }
        #expect(outside?.message.contains("inside the write transaction") == true)
        #expect(try await store.read { db in try Outbox.pendingCount(in: db) } == 0)
    }

    @Test("the relay publishes in batches, in order per key, and empties the outbox")
    func relaysInOrder() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let log = try fixture.log()
        try await log.createTopic("things", TopicOptions(partitions: 3))
        try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
        // 250 messages over 5 keys, in transactions of various sizes.
        var sent: [String] = []
        var next = 0
        for size in [1, 7, 42, 100, 3, 97] {
            let numbers = Array(next..<(next + size))
            next += size
            sent += numbers.map { "t\($0)" }
            try await store.write { db in
                for number in numbers {
                    try Outbox.enqueue(try OutboxFixture.message("t\(number)", key: "k\(number % 5)"), in: db)
                }
            }
        }
        let relay = OutboxRelay(store: store, log: log, configuration: .init(batchSize: 40))
        #expect(try await relay.relayPending() == 250)
        #expect(try await store.read { db in try Outbox.pendingCount(in: db) } == 0)

        let received = try await OutboxFixture.drain(log)
        #expect(received.count == 250)
        #expect(Set(received.map(\.event.id)) == Set(sent.map { "evt-\($0)" }))
        // Per key, the order of enqueueing.
        let position = Dictionary(uniqueKeysWithValues: sent.enumerated().map { ("evt-\($0.element)", $0.offset) })
        for key in Set(received.map(\.key)) {
            let order = received.filter { $0.key == key }.map { position[$0.event.id]! }
            #expect(order == order.sorted(), "key \(key) out of order")
        }
        // Headers and data arrive as enqueued.
        let first = try #require(received.first { $0.event.id == "evt-t0" })
        #expect(first.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        #expect(try first.event.decodeData(as: [String: String].self) == ["id": "t0"])
    }

    @Test("a running relay publishes a local enqueue at once, without waiting for its poll")
    func wakesOnLocalEnqueue() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let log = try fixture.log()
        try await log.createTopic("things", TopicOptions(partitions: 2))
        try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
        // A poll interval no test waits for: only the in-process signal can wake the relay.
        let relay = OutboxRelay(store: store, log: log, configuration: .init(pollInterval: .seconds(3600)))
        let running = Task { try await relay.run() }
        defer { running.cancel() }
        for round in 0..<3 {
            try await store.write { db in
                try Outbox.enqueue(try OutboxFixture.message("w\(round)", key: "k"), in: db)
            }
            try await outboxEventually("the relay published w\(round)") {
                try await store.read { db in try Outbox.pendingCount(in: db) } == 0
            }
        }
        #expect(try await OutboxFixture.drain(log).map(\.event.id) == ["evt-w0", "evt-w1", "evt-w2"])
    }

    @Test("while the log is down the relay keeps the rows, records the error and retries with growing delays")
    func retriesWithBackoff() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let base = try fixture.log()
        try await base.createTopic("things", TopicOptions(partitions: 2))
        try await base.subscribe(group: "readers", topic: "things", options: GroupOptions())
        let log = FlakyLog(base, failures: 2)
        let clock = ManualClock()
        let metrics = TestMetrics()
        func count(_ label: String) -> Int64 { (try? metrics.expectCounter(label).totalValue) ?? 0 }
        try await store.write { db in try Outbox.enqueue(try OutboxFixture.message("r1", key: "k"), in: db) }
        let relay = OutboxRelay(
            store: store, log: log,
            configuration: .init(
                pollInterval: .seconds(3600),
                backoff: .exponential(base: .seconds(1), multiplier: 2, cap: .seconds(8), jitter: .none)),
            logger: Logger(label: "outbox-tests", factory: { _ in SwiftLogNoOpLogHandler() }), clock: clock,
            metricsFactory: metrics)
        let running = Task { try await relay.run() }
        defer { running.cancel() }

        // First failure: the row stays with its error; the relay waits 1 s.
        await clock.waitForSleepers(count: 1)
        #expect(log.publishCalls == 1)
        #expect(clock.nextDeadline == clock.now.advanced(by: .seconds(1)))
        let pending = try await store.read { db in try Outbox.pending(in: db) }
        #expect(pending.count == 1)
        #expect(pending.first?.attempts == 1)
        #expect(pending.first?.lastError?.contains("the broker is down") == true)
        #expect(count("aviary_outbox_publish_failures_total") == 1)
        #expect(count("aviary_outbox_published_total") == 0)

        // Second failure: the delay doubles.
        clock.advance(by: .seconds(1))
        try await outboxEventually("the second attempt") { log.publishCalls == 2 && clock.sleeperCount == 1 }
        #expect(clock.nextDeadline == clock.now.advanced(by: .seconds(2)))

        // The log is back: the message goes, once, and the outbox is empty.
        clock.advance(by: .seconds(2))
        try await outboxEventually("the outbox emptied") {
            try await store.read { db in try Outbox.pendingCount(in: db) } == 0
        }
        #expect(log.publishCalls == 3)
        #expect(try await OutboxFixture.drain(base).map(\.event.id) == ["evt-r1"])
        #expect(count("aviary_outbox_publish_failures_total") == 2)
        #expect(count("aviary_outbox_published_total") == 1)
    }

    @Test("at graceful shutdown an idle relay returns at once, leaving nothing unpublished")
    func gracefulShutdown() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let log = try fixture.log()
        try await store.write { db in try Outbox.enqueue(try OutboxFixture.message("s1", key: "k"), in: db) }
        let relay = OutboxRelay(
            store: store, log: log,
            configuration: .init(pollInterval: .seconds(3600), topics: ["things": TopicOptions(partitions: 1)]))
        let quiet = Logger(label: "outbox-tests", factory: { _ in SwiftLogNoOpLogHandler() })
        let group = ServiceGroup(services: [relay], logger: quiet)
        let running = Task { try await group.run() }
        try await outboxEventually("the relay published s1") {
            try await store.read { db in try Outbox.pendingCount(in: db) } == 0
        }
        // Only the shutdown can end its hour-long idle wait.
        await group.triggerGracefulShutdown()
        try await running.value
        try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
        #expect(try await OutboxFixture.drain(log).map(\.event.id) == ["evt-s1"])
    }

    @Test("a relay without the outbox table fails at once and names the fix")
    func missingTable() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try SQLiteStore(url: StoreURL(.sqlite(path: "\(fixture.directory)/plain.db")))
        let relay = OutboxRelay(store: store, log: try fixture.log())
        let error = await #expect(throws: MessagingError.self) { try await relay.run() }
        #expect(error?.message.contains("Outbox.addMigrations(to:)") == true)
    }

    @Test("a publish repeated after a crash before the delete reaches consumers once through the inbox")
    func republishIsAbsorbed() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let producer = try fixture.store("producer")
        let consumer = try fixture.store("consumer")
        let log = try fixture.log()
        try await log.createTopic("things", TopicOptions(partitions: 2))
        try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
        try await producer.write { db in
            for id in ["a", "b", "c"] { try Outbox.enqueue(try OutboxFixture.message(id, key: "k"), in: db) }
        }
        // The relay's publish went through, then the process died before deleting the rows.
        let pending = try await producer.read { db in try Outbox.pending(in: db) }
        try await log.publish(pending.map(\.message))
        // Restarted, the relay publishes the same rows again.
        #expect(try await OutboxRelay(store: producer, log: log).relayPending() == 3)

        let inbox = Inbox(store: consumer, group: "readers")
        var summary = InboxSummary()
        while true {
            let batch = try await log.receive(ReceiveRequest(group: "readers", topic: "things", consumer: "c1"))
            if batch.deliveries.isEmpty { break }
            let part = try await inbox.consume(batch, from: log) { db, message in
                try db.execute(
                    sql: "INSERT INTO things (id) VALUES (?) ON CONFLICT (id) DO UPDATE SET applied = applied + 1",
                    arguments: [message.event.id])
            }
            summary.processed += part.processed
            summary.duplicates += part.duplicates
        }
        #expect(summary.processed == 3)
        #expect(summary.duplicates == 3)
        let applied = try await consumer.read { db in
            try Row.fetchAll(db, sql: "SELECT id, applied FROM things ORDER BY id").map {
                "\($0["id"] as String)=\($0["applied"] as Int)"
            }
        }
        #expect(applied == ["evt-a=1", "evt-b=1", "evt-c=1"])
    }
}
