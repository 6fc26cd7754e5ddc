//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import AviaryMessaging
@testable import AviaryStorage

/// Whether the producers of a test still run.
private final class Running: Sendable {
    let value = Mutex(true)
}

/// What a batched publish for now (`aviary_publish_now`, one statement and its own transaction)
/// guarantees on PostgreSQL beyond the conformance suite: dense offsets in publish order under
/// concurrent producers as a reader sees them, payloads with every awkward byte stored as given,
/// a NUL refused, due scheduled messages first, and nothing written by a publish whose connection
/// is killed in the middle of its insert. Written in the twentieth session for a `COPY` path
/// (see the performance notes), which did not pay; they hold for any way of publishing a batch.
@Suite("PostgresMessageLog batched publish", .timeLimit(.minutes(5)))
struct PostgresBatchPublishTests {
    let logger = Logger(label: "aviary.test")

    func makeLog(
        url: StoreURL, clock: any WallClock = SystemWallClock(), connections: Int? = nil
    ) async throws -> PostgresMessageLog {
        var configuration = PostgresMessageLog.Configuration()
        if let connections { configuration.store.maximumConnections = connections }
        return try await PostgresMessageLog(url: url, clock: clock, configuration: configuration)
    }

    func execute(_ log: PostgresMessageLog, _ sql: String) async throws {
        try await log.store.withConnection { connection in
            _ = try await connection.complete(PostgresQuery(unsafeSQL: sql), logger: self.logger)
        }
    }

    func integers(_ log: PostgresMessageLog, _ sql: String) async throws -> [Int64] {
        try await log.store.withConnection { connection in
            var values: [Int64] = []
            for try await value in try await connection.query(PostgresQuery(unsafeSQL: sql), logger: self.logger)
                .decode(Int64.self)
            {
                values.append(value)
            }
            return values
        }
    }

    /// The stored rows of `topic`: partition, offset, key, event, headers, bytes, in key order.
    func rows(_ log: PostgresMessageLog, topic: String) async throws -> [[String]] {
        try await log.store.withConnection { connection in
            var rows: [[String]] = []
            for try await (partition, offset, key, event, headers, bytes) in try await connection.query(
                """
                SELECT m.partition, m.msg_offset, m.key, m.event, m.headers, m.bytes
                FROM aviary_messages m JOIN aviary_topics t ON t.id = m.topic_id WHERE t.name = \(topic)
                ORDER BY m.partition, m.msg_offset
                """, logger: self.logger
            ).decode((Int32, Int64, String, String, String, Int32).self) {
                rows.append(["\(partition)", "\(offset)", key, event, headers, "\(bytes)"])
            }
            return rows
        }
    }

    func event(_ n: Int, data: String? = nil) throws -> CloudEvent {
        if let data {
            return CloudEvent(
                id: "e-\(n)", source: "/test", type: "test.placed", subject: "o-\(n)",
                time: Date(timeIntervalSince1970: 1),
                dataContentType: "text/plain", data: Data(data.utf8), extensions: ["note": data])
        }
        return try CloudEvent(
            id: "e-\(n)", source: "/test", type: "test.placed", subject: "o-\(n)", time: Date(timeIntervalSince1970: 1),
            json: ["n": n])
    }

    @Test("a batch over two topics and several partitions gets dense offsets in publish order per partition")
    func denseInOrder() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await self.makeLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 3))
        try await log.createTopic("audit", TopicOptions(partitions: 1))
        var messages: [OutgoingMessage] = []
        for n in 1...60 {
            messages.append(
                OutgoingMessage(topic: n % 4 == 0 ? "audit" : "orders", key: "k-\(n % 7)", event: try self.event(n)))
        }
        for round in 0..<3 {
            let positions = try await log.publish(messages)
            #expect(positions.count == messages.count)
            // Per (topic, partition): offsets 1, 2, 3, ... continuing from the last round, in
            // the order the messages were given.
            var next: [MessagePosition: Int64] = [:]
            for (message, position) in zip(messages, positions) {
                #expect(position.topic == message.topic)
                let partitions = message.topic == "orders" ? 3 : 1
                #expect(position.partition == Partitioner.partition(forKey: message.key, partitions: partitions))
                let slot = MessagePosition(topic: position.topic, partition: position.partition, offset: 0)
                let expected = (next[slot] ?? 0) + 1
                next[slot] = expected
                let perRound = Int64(
                    messages.filter {
                        $0.topic == message.topic
                            && Partitioner.partition(forKey: $0.key, partitions: partitions) == position.partition
                    }.count)
                #expect(position.offset == Int64(round) * perRound + expected)
            }
        }
        // What was stored is what the positions said.
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        var delivered: [Delivery] = []
        while true {
            let batch = try await log.receive(
                ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 100))
            if batch.deliveries.isEmpty { break }
            for delivery in batch.deliveries { try await log.ack(delivery) }
            delivered += batch.deliveries
        }
        let orders = messages.filter { $0.topic == "orders" }
        #expect(delivered.count == 3 * orders.count)
        for partition in 0..<3 {
            let inPartition = delivered.filter { $0.message.position.partition == partition }
            #expect(inPartition.map(\.message.position.offset) == (1...Int64(inPartition.count)).map { $0 })
            let sent = orders.filter { Partitioner.partition(forKey: $0.key, partitions: 3) == partition }
            #expect(inPartition.map(\.message.event.id) == (sent + sent + sent).map(\.event.id))
        }
        try await log.close()
    }

    @Test(
        "keys, payloads and headers with tabs, newlines, backslashes, control and non-ASCII characters are stored and read back as given"
    )
    func awkwardPayloads() async throws {
        let texts = [
            "tab\there", "line\nbreak", "carriage\rreturn", "back\\slash", "\\N", "\\.", "\\", "\t\n\r\\",
            "ünïcødé € 😀 日本語", "\u{1}\u{8}\u{B}\u{C}\u{1F}\u{7F}", "", " trailing space ",
            String(repeating: "x\\y\tz\n", count: 300),
        ]
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await self.makeLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 2))
        let sent = try texts.enumerated().map { n, text in
            OutgoingMessage(
                topic: "orders", key: "key-\(n)-" + text, event: try self.event(n, data: text),
                headers: ["h\t\(n)": text, "plain": "v"])
        }
        let positions = try await log.publish(sent)
        // The key column holds each key's exact text at the message's position.
        let stored = try await self.rows(log, topic: "orders")
        #expect(stored.count == sent.count)
        for (message, position) in zip(sent, positions) {
            let row = stored.first { $0[0] == "\(position.partition)" && $0[1] == "\(position.offset)" }
            #expect(row?[2] == message.key)
        }
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        var delivered: [Delivery] = []
        for _ in 0..<4 where delivered.count < texts.count {
            delivered += try await log.receive(
                ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 100)
            ).deliveries
        }
        #expect(delivered.count == sent.count)
        for delivery in delivered {
            let original = try #require(sent.first { $0.event.id == delivery.message.event.id })
            #expect(delivery.message.key == original.key)
            #expect(delivery.message.headers == original.headers)
            #expect(delivery.message.event.data == original.event.data)
            #expect(delivery.message.event.extensions == original.event.extensions)
        }
        try await log.close()
    }

    @Test(
        "a NUL in a key (PostgreSQL's text cannot hold one) fails the whole batch as unavailable, naming the byte, and writes nothing"
    )
    func nulRefused() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await self.makeLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let messages = [
            OutgoingMessage(topic: "orders", key: "fine", event: try self.event(1)),
            OutgoingMessage(topic: "orders", key: "nul\u{0}inside", event: try self.event(2)),
        ]
        let error = await #expect(throws: MessagingError.self) { try await log.publish(messages) }
        #expect(error?.kind == .unavailable)
        #expect(error?.message.contains("0x00") == true, "\(String(describing: error))")
        #expect(try await self.integers(log, "SELECT count(*) FROM aviary_messages") == [0])
        #expect(try await self.integers(log, "SELECT last_offset FROM aviary_partitions") == [0])
        // The log goes on.
        let positions = try await log.publish(Array(messages.prefix(1)) + Array(messages.prefix(1)))
        #expect(positions.map(\.offset) == [1, 2])
        try await log.close()
    }

    @Test("two producers publishing batches at once never leave a gap that a reader could see, and offsets stay dense")
    func concurrentPublishers() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await self.makeLog(url: url, connections: 4)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let batches = 30
        let size = 25
        let running = Running()
        // A reader checks committed snapshots while they publish: a committed row above a
        // missing offset is what a consumer would skip past.
        async let checks: [String] = {
            var problems: [String] = []
            var looks = 0
            while running.value.withLock({ $0 }) || looks == 0 {
                looks += 1
                // One statement, one snapshot: rows committed against the highest offset committed.
                let missing = try await self.integers(
                    log, "SELECT coalesce(max(msg_offset), 0) - count(*) FROM aviary_messages")
                if missing != [0] { problems.append("\(missing) offsets missing below the highest") }
            }
            return problems
        }()
        let producers = try await withThrowingTaskGroup(of: (Int, [[MessagePosition]]).self) { group in
            for producer in 0..<2 {
                group.addTask {
                    var published: [[MessagePosition]] = []
                    for batch in 0..<batches {
                        let messages = try (0..<size).map { n in
                            OutgoingMessage(
                                topic: "orders", key: "p\(producer)",
                                event: try self.event(producer * 100_000 + batch * 1000 + n))
                        }
                        published.append(try await log.publish(messages))
                    }
                    return (producer, published)
                }
            }
            var all: [Int: [[MessagePosition]]] = [:]
            for try await (producer, published) in group { all[producer] = published }
            return all
        }
        running.value.withLock { $0 = false }
        #expect(try await checks == [])
        var offsets: [Int64] = []
        for (_, published) in producers {
            for batch in published {
                // A batch's offsets are consecutive (its transaction held the partition row).
                #expect(batch.map(\.offset) == (0..<Int64(size)).map { batch[0].offset + $0 })
            }
            // Each producer's batches in the order it published them.
            #expect(published.map { $0[0].offset } == published.map { $0[0].offset }.sorted())
            offsets += published.flatMap { $0.map(\.offset) }
        }
        #expect(offsets.sorted() == (1...Int64(2 * batches * size)).map { $0 })
        #expect(try await self.integers(log, "SELECT count(*) FROM aviary_messages") == [Int64(2 * batches * size)])
        try await log.close()
    }

    @Test("a batch for now when the topic has due scheduled messages appends those first, then the batch")
    func dueScheduledFirst() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let clock = ManualWallClock()
        let log = try await self.makeLog(url: url, clock: clock)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let events = try (1...4).map { try self.event($0) }
        try await log.publish([
            OutgoingMessage(topic: "orders", key: "o-1", event: events[0], deliverAt: clock.now + 10),
            OutgoingMessage(topic: "orders", key: "o-2", event: events[1], deliverAt: clock.now + 5),
        ])
        clock.advance(by: .seconds(11))
        let positions = try await log.publish([
            OutgoingMessage(topic: "orders", key: "o-3", event: events[2]),
            OutgoingMessage(topic: "orders", key: "o-4", event: events[3]),
        ])
        #expect(positions.map(\.offset) == [3, 4])
        let batch = try await log.receive(
            ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 10))
        #expect(batch.deliveries.map(\.message.event.id) == [events[1], events[0], events[2], events[3]].map(\.id))
        #expect(batch.deliveries.map(\.message.position.offset) == [1, 2, 3, 4])
        // Nothing is left scheduled, and the next batch goes through aviary_publish_now again.
        #expect(try await self.integers(log, "SELECT count(*) FROM aviary_schedule") == [0])
        let next = try await log.publish([
            OutgoingMessage(topic: "orders", key: "o-5", event: try self.event(5)),
            OutgoingMessage(topic: "orders", key: "o-6", event: try self.event(6)),
        ])
        #expect(next.map(\.offset) == [5, 6])
        try await log.close()
    }

    @Test(
        "a connection killed in the middle of a batch's insert fails the publish as unavailable and leaves nothing written"
    )
    func killedMidInsert() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await self.makeLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        // The third row of the insert waits for an advisory lock that the test holds, so the
        // backend is inside the publish, two rows in, when it is terminated.
        try await self.execute(
            log,
            """
            CREATE FUNCTION test_hold_third() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.msg_offset = 3 THEN PERFORM pg_advisory_lock(4242); END IF;
                RETURN NEW;
            END
            $$
            """)
        try await self.execute(
            log,
            "CREATE TRIGGER test_hold_third BEFORE INSERT ON aviary_messages FOR EACH ROW EXECUTE FUNCTION test_hold_third()"
        )
        // The holder's store has one connection, whose session holds the lock until it unlocks.
        var holderConfiguration = PostgresMessageLog.Configuration()
        holderConfiguration.store.maximumConnections = 1
        let holderLog = try await PostgresMessageLog(url: url, configuration: holderConfiguration)
        try await self.execute(holderLog, "SELECT pg_advisory_lock(4242)")
        let messages = try (1...5).map { OutgoingMessage(topic: "orders", key: "o", event: try self.event($0)) }
        async let published: Result<[MessagePosition], any Error> = {
            do { return .success(try await log.publish(messages)) } catch { return .failure(error) }
        }()
        // Poll (with a deadline) for the backend waiting inside its publish.
        var waiting: Int64?
        let deadline = ContinuousClock.now + .seconds(30)
        while waiting == nil, ContinuousClock.now < deadline {
            waiting = try await self.integers(
                holderLog,
                """
                SELECT pid::BIGINT FROM pg_stat_activity
                WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE '%aviary_publish_now%'
                """
            ).first
            if waiting == nil { await Task.yield() }
        }
        let pid = try #require(waiting)
        try await self.execute(holderLog, "SELECT pg_terminate_backend(\(pid))")
        let result = await published
        try await self.execute(holderLog, "SELECT pg_advisory_unlock(4242)")
        try await holderLog.close()
        guard case .failure(let error) = result else {
            Issue.record("the publish returned \(result) from a terminated connection")
            return
        }
        let messagingError = try #require(error as? MessagingError, "\(error)")
        #expect(messagingError.kind == .unavailable)
        #expect(messagingError.message.contains("message log"), "\(messagingError)")
        // Rolled back: no row, no offset taken.
        #expect(try await self.integers(log, "SELECT count(*) FROM aviary_messages") == [0])
        #expect(try await self.integers(log, "SELECT last_offset FROM aviary_partitions") == [0])
        // A new connection publishes from offset 1.
        let positions = try await log.publish(messages)
        #expect(positions.map(\.offset) == [1, 2, 3, 4, 5])
        try await log.close()
    }

}
