//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The outbox, its relay and the inbox on a real PostgreSQL server (`PostgresTestServer`), with
/// a real SQLite log as the broker.
@Suite("Transactional outbox and inbox on PostgreSQL", .timeLimit(.minutes(3)))
struct PostgresOutboxTests {
    struct Rollback: Error {}

    /// How often an effect ran, shared by the effect closures.
    final class RunCounter: Sendable {
        let count = Mutex(0)
    }

    static let quiet = Logger(label: "pg-outbox-tests", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Runs `body` with a store on a fresh database holding `things`, the outbox and the inbox.
    static func withStore<T: Sendable>(_ body: @Sendable (PostgresStore) async throws -> T) async throws -> T {
        let url = try await PostgresTestServer.shared().makeDatabase()
        var migrations = PostgresMigrations()
        migrations.add("v1: things") { connection, logger in
            try await connection.query(
                "CREATE TABLE things (id TEXT PRIMARY KEY, applied INTEGER NOT NULL DEFAULT 1)", logger: logger)
        }
        Outbox.addMigrations(to: &migrations)
        PostgresInbox.addMigrations(to: &migrations)
        return try await PostgresStore.withStore(url: url, migrations: migrations, logger: Self.quiet, body)
    }

    static func strings(_ store: PostgresStore, _ query: PostgresQuery) async throws -> [String] {
        try await store.withConnection { connection in
            var values: [String] = []
            for try await value in try await connection.query(query, logger: Self.quiet).decode(String.self) {
                values.append(value)
            }
            return values
        }
    }

    static func pendingCount(_ store: PostgresStore) async throws -> Int {
        try await store.withConnection { connection in try await Outbox.pendingCount(in: connection) }
    }

    @Test("an enqueued message commits with the data, and a rolled-back transaction leaves neither")
    func commitsWithData() async throws {
        try await Self.withStore { store in
            let message = try OutboxFixture.message("t1", key: "k1")
            await #expect(throws: Rollback.self) {
                try await store.withTransaction { connection in
                    try await connection.query("INSERT INTO things (id) VALUES ('t0')", logger: Self.quiet)
                    try await Outbox.enqueue(try OutboxFixture.message("t0", key: "k0"), in: connection)
                    throw Rollback()
                }
            }
            try await store.withTransaction { connection in
                try await connection.query("INSERT INTO things (id) VALUES ('t1')", logger: Self.quiet)
                try await Outbox.enqueue(message, in: connection)
            }
            #expect(try await Self.strings(store, "SELECT id FROM things") == ["t1"])
            let pending = try await store.withConnection { connection in try await Outbox.pending(in: connection) }
            #expect(pending.count == 1)
            var stored = try #require(pending.first?.message)
            let storedTime = try #require(stored.event.time)
            #expect(abs(storedTime.timeIntervalSince(try #require(message.event.time))) < 1e-6)
            stored.event.time = message.event.time
            #expect(stored == message)
            #expect(pending.first?.attempts == 0)

            // An invalid message is refused before anything is written.
            var bad = message
            bad.topic = "no spaces"
            let badMessage = bad
            let error = await #expect(throws: MessagingError.self) {
                try await store.withTransaction { connection in try await Outbox.enqueue(badMessage, in: connection) }
            }
            #expect(error?.kind == .invalidArgument)
            #expect(try await Self.pendingCount(store) == 1)
        }
    }

    @Test("a later producer of a key waits for the earlier one, so the relay never publishes a key out of commit order")
    func orderPerKeyWithConcurrentProducers() async throws {
        try await Self.withStore { store in
            let fixture = OutboxFixture()
            defer { fixture.remove() }
            let log = try fixture.log()
            try await log.createTopic("things", TopicOptions(partitions: 2))
            try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
            let relay = OutboxRelay(store: store, log: log, logger: Self.quiet)

            let (enqueued, enqueuedContinuation) = AsyncStream<Void>.makeStream()
            let (release, releaseContinuation) = AsyncStream<Void>.makeStream()
            // Producer 1 enqueues "first" for key k and keeps its transaction open.
            let first = Task {
                try await store.withTransaction { connection in
                    try await Outbox.enqueue(try OutboxFixture.message("first", key: "k"), in: connection)
                    enqueuedContinuation.yield()
                    var waiting = release.makeAsyncIterator()
                    _ = await waiting.next()
                }
            }
            var enqueuedIterator = enqueued.makeAsyncIterator()
            _ = await enqueuedIterator.next()
            // Producer 2 enqueues "second" for the same key: it must wait for producer 1 (without
            // the lock it would take a larger seq and commit first).
            let second = Task {
                try await store.withTransaction { connection in
                    try await Outbox.enqueue(try OutboxFixture.message("second", key: "k"), in: connection)
                }
            }
            try await outboxEventually("producer 2 waits on the key's lock") {
                try await Self.strings(
                    store,
                    """
                    SELECT count(*)::TEXT FROM pg_locks
                    WHERE locktype = 'advisory' AND NOT granted AND objsubid = 2 AND classid = 1635151723
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """) == ["1"]
            }
            // Another key is not held up.
            try await store.withTransaction { connection in
                try await Outbox.enqueue(try OutboxFixture.message("other", key: "j"), in: connection)
            }
            #expect(try await relay.relayPending() == 1)
            #expect(try await OutboxFixture.drain(log).map(\.event.id) == ["evt-other"])

            releaseContinuation.yield()
            try await first.value
            try await second.value
            #expect(try await relay.relayPending() == 2)
            #expect(try await OutboxFixture.drain(log).map(\.event.id) == ["evt-first", "evt-second"])
            #expect(try await Self.pendingCount(store) == 0)
        }
    }

    @Test("two relays on one database publish every row exactly once, in order per producer and key")
    func twoRelays() async throws {
        try await Self.withStore { store in
            let fixture = OutboxFixture()
            defer { fixture.remove() }
            let log = try fixture.log()
            try await log.createTopic("things", TopicOptions(partitions: 3))
            try await log.subscribe(group: "readers", topic: "things", options: GroupOptions())
            let configuration = OutboxRelay.Configuration(batchSize: 7, pollInterval: .milliseconds(10))
            let relays = (0..<2).map { _ in
                OutboxRelay(store: store, log: log, configuration: configuration, logger: Self.quiet)
            }
            let running = relays.map { relay in Task { try await relay.run() } }
            defer { for task in running { task.cancel() } }

            // Three producers, each with 30 transactions over 3 keys, while both relays run.
            let producers = 3
            let perProducer = 30
            try await withThrowingTaskGroup(of: Void.self) { group in
                for producer in 0..<producers {
                    group.addTask {
                        for number in 0..<perProducer {
                            try await store.withTransaction { connection in
                                try await Outbox.enqueue(
                                    try OutboxFixture.message("p\(producer)-\(number)", key: "k\(number % 3)"),
                                    in: connection)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await outboxEventually(timeout: .seconds(60), "the relays emptied the outbox") {
                try await Self.pendingCount(store) == 0
            }
            let received = try await OutboxFixture.drain(log)
            let ids = received.map(\.event.id)
            #expect(ids.count == producers * perProducer, "published \(ids.count)")
            #expect(Set(ids).count == ids.count, "a row was published twice")
            for producer in 0..<producers {
                for key in 0..<3 {
                    let numbers = received.filter { $0.key == "k\(key)" && $0.event.id.hasPrefix("evt-p\(producer)-") }
                        .map { Int($0.event.id.split(separator: "-").last!)! }
                    #expect(numbers == numbers.sorted(), "producer \(producer), key k\(key) out of order: \(numbers)")
                }
            }
        }
    }

    @Test("while the log is down the relay keeps the rows, records the error and publishes once it is back")
    func survivesLogOutage() async throws {
        try await Self.withStore { store in
            let fixture = OutboxFixture()
            defer { fixture.remove() }
            let base = try fixture.log()
            try await base.createTopic("things", TopicOptions(partitions: 2))
            try await base.subscribe(group: "readers", topic: "things", options: GroupOptions())
            let log = FlakyLog(base, failures: 2)
            let clock = ManualClock()
            try await store.withTransaction { connection in
                try await Outbox.enqueue(try OutboxFixture.message("r1", key: "k"), in: connection)
            }
            let relay = OutboxRelay(
                store: store, log: log,
                configuration: .init(
                    pollInterval: .seconds(3600),
                    backoff: .exponential(base: .seconds(1), multiplier: 2, cap: .seconds(8), jitter: .none)),
                logger: Self.quiet, clock: clock)
            let running = Task { try await relay.run() }
            defer { running.cancel() }

            await clock.waitForSleepers(count: 1)
            #expect(log.publishCalls == 1)
            #expect(clock.nextDeadline == clock.now.advanced(by: .seconds(1)))
            let pending = try await store.withConnection { connection in try await Outbox.pending(in: connection) }
            #expect(pending.count == 1)
            #expect(pending.first?.attempts == 1)
            #expect(pending.first?.lastError?.contains("the broker is down") == true)

            clock.advance(by: .seconds(1))
            try await outboxEventually("the second attempt") { log.publishCalls == 2 && clock.sleeperCount == 1 }
            #expect(clock.nextDeadline == clock.now.advanced(by: .seconds(2)))

            clock.advance(by: .seconds(2))
            try await outboxEventually("the outbox emptied") { try await Self.pendingCount(store) == 0 }
            #expect(log.publishCalls == 3)
            #expect(try await OutboxFixture.drain(base).map(\.event.id) == ["evt-r1"])
        }
    }

    @Test("a relay without the outbox table fails at once and names the fix")
    func missingTable() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        try await PostgresStore.withStore(url: url, logger: Self.quiet) { store in
            let fixture = OutboxFixture()
            defer { fixture.remove() }
            let relay = OutboxRelay(store: store, log: try fixture.log(), logger: Self.quiet)
            let error = await #expect(throws: MessagingError.self) { try await relay.run() }
            #expect(error?.message.contains("Outbox.addMigrations(to:)") == true)
        }
    }

    @Test("the inbox applies a message once: a duplicate skips the effect, a failed effect records nothing")
    func inboxDuplicatesAndRollback() async throws {
        try await Self.withStore { store in
            let inbox = PostgresInbox(store: store, group: "readers")
            let message = Message(
                position: MessagePosition(topic: "things", partition: 0, offset: 1), key: "k",
                event: try OutboxFixture.message("i1", key: "k").event, headers: [:], appendedAt: Date())
            let runs = RunCounter()
            let apply: @Sendable (PostgresConnection) async throws -> Void = { connection in
                runs.count.withLock { $0 += 1 }
                try await connection.query(
                    "INSERT INTO things (id) VALUES (\(message.event.id)) ON CONFLICT (id) DO UPDATE SET applied = things.applied + 1",
                    logger: Self.quiet)
            }
            // A failing effect rolls back its writes and the record.
            await #expect(throws: Rollback.self) {
                try await inbox.process(message) { connection in
                    try await apply(connection)
                    throw Rollback()
                }
            }
            #expect(try await inbox.hasProcessed(source: message.event.source, id: message.event.id) == false)
            #expect(try await Self.strings(store, "SELECT id FROM things").isEmpty)

            #expect(try await inbox.process(message, apply) == .processed)
            #expect(try await inbox.process(message, apply) == .duplicate)
            // Two deliveries racing: one applies, the other waits for it and is a duplicate.
            var raced = message
            raced.event.id = "evt-i2"
            let racedMessage = raced
            let outcomes = try await withThrowingTaskGroup(of: InboxOutcome.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        try await inbox.process(racedMessage) { connection in
                            runs.count.withLock { $0 += 1 }
                            try await connection.query(
                                "INSERT INTO things (id) VALUES (\(racedMessage.event.id))", logger: Self.quiet)
                        }
                    }
                }
                return try await group.reduce(into: [InboxOutcome]()) { $0.append($1) }
            }
            #expect(outcomes.sorted { "\($0)" < "\($1)" } == [.duplicate, .processed])
            #expect(runs.count.withLock { $0 } == 3)  // the failed run, the first apply, one raced apply
            #expect(
                try await Self.strings(store, "SELECT id || '=' || applied FROM things ORDER BY id")
                    == ["evt-i1=1", "evt-i2=1"])
            #expect(try await inbox.hasProcessed(source: message.event.source, id: "evt-i2"))
            // Another group applies it for itself.
            #expect(try await PostgresInbox(store: store, group: "auditors").process(message) { _ in } == .processed)
            #expect(try await inbox.prune(processedBefore: Date().addingTimeInterval(60)) == 2)
        }
    }
}
