//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import Foundation
import GRDB
import Synchronization
import Testing

/// What only the SQLite backend has: a file shared by several connections (as several processes
/// share it), its pragmas, in-process wake-ups and the URL factory.
@Suite("SQLiteMessageLog", .timeLimit(.minutes(5)))
struct SQLiteMessageLogTests {
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("aviary-sqlite-log-\(UUID().uuidString).db").path
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-wakeups"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    @Test(
        "two logs on one file (separate connections and locks) publish and consume concurrently; nothing lost or doubled"
    )
    func sharedFile() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        // A short busy timeout makes SQLITE_BUSY surface often; the retry loop must absorb it.
        let configuration = SQLiteMessageLog.Configuration(busyTimeout: .milliseconds(1))
        let first = try SQLiteMessageLog(path: path, configuration: configuration)
        let second = try SQLiteMessageLog(path: path, configuration: configuration)
        try await first.createTopic("orders", TopicOptions(partitions: 4))
        try await second.subscribe(group: "g", topic: "orders", options: GroupOptions())
        let producers = 4
        let perProducer = 100
        let seen = Locked<[String: Int]>([:])
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for producer in 0..<producers {
                let log = producer.isMultiple(of: 2) ? first : second
                tasks.addTask {
                    for index in 0..<perProducer {
                        try await log.publish([
                            OutgoingMessage(
                                topic: "orders", key: "p\(producer)-k\(index % 5)",
                                event: CloudEvent(id: "p\(producer)-\(index)", source: "/test", type: "t"))
                        ])
                    }
                }
            }
            for consumer in 0..<4 {
                let log = consumer.isMultiple(of: 2) ? first : second
                tasks.addTask {
                    let deadline = ContinuousClock.now + .seconds(180)
                    while ContinuousClock.now < deadline {
                        if seen.withLock({ $0.count }) == producers * perProducer { return }
                        let batch = try await log.receive(
                            ReceiveRequest(group: "g", topic: "orders", consumer: "c\(consumer)", maxMessages: 16))
                        for delivery in batch.deliveries {
                            seen.withLock { $0[delivery.message.event.id, default: 0] += 1 }
                            try await log.ack(delivery)
                        }
                        if batch.deliveries.isEmpty { await Task.yield() }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        let counts = seen.withLock { $0 }
        #expect(counts.count == producers * perProducer)
        #expect(counts.values.allSatisfy { $0 == 1 })
        let topic = try #require(try await first.topics().first { $0.name == "orders" })
        #expect(topic.partitions.map(\.depth).reduce(0, +) == Int64(producers * perProducer))
        #expect(topic.groups.first?.lag == 0)
        try await first.close()
        try await second.close()
    }

    @Test("WAL and synchronous=FULL by default; synchronous is configurable")
    func pragmas() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("t", TopicOptions(partitions: 1))
        try await log.close()
        let queue = try DatabaseQueue(path: path)
        #expect(try await queue.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        try queue.close()
        // synchronous is per connection: read it on the log's own writer (GRDB turns WAL on with
        // synchronous=NORMAL; the log must set its own value after that).
        for (setting, expected) in [(SQLiteMessageLog.Configuration.Synchronous.full, 2), (.normal, 1), (.off, 0)] {
            let configured = try SQLiteMessageLog(
                path: path, configuration: SQLiteMessageLog.Configuration(synchronous: setting))
            #expect(try configured.currentSynchronous() == expected)
            try await configured.close()
        }
    }

    @Test(
        "single publishes commit one at a time: consecutive offsets per partition in publish order, a failed publish keeps nothing and holds no lock, and another log on the file reads every message"
    )
    func singlePublishesCommit() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("t", TopicOptions(partitions: 3))
        var published: [(id: String, position: MessagePosition)] = []
        for index in 0..<30 {
            let id = "e\(index)"
            let position = try #require(
                try await log.publish([
                    OutgoingMessage(
                        topic: "t", key: "k\(index % 7)", event: CloudEvent(id: id, source: "/t", type: "t"))
                ]).first)
            #expect(position.partition == Partitioner.partition(forKey: "k\(index % 7)", partitions: 3))
            published.append((id, position))
            if index == 14 {
                // Fails inside the transaction (no such topic): nothing of it stays, and the
                // transaction is over (another connection can write at once).
                await #expect(throws: MessagingError.self) {
                    try await log.publish([
                        OutgoingMessage(topic: "t", key: "k0", event: CloudEvent(id: "lost", source: "/t", type: "t")),
                        OutgoingMessage(topic: "missing", key: "k0", event: CloudEvent(source: "/t", type: "t")),
                    ])
                }
                let other = try SQLiteMessageLog(
                    path: path, configuration: SQLiteMessageLog.Configuration(busyTimeout: .milliseconds(1)))
                try await other.createTopic("other", TopicOptions(partitions: 1))
                try await other.close()
            }
        }
        #expect(try log.currentSynchronous() == 2)
        for partition in 0..<3 {
            let offsets = published.filter { $0.position.partition == partition }.map(\.position.offset)
            #expect(offsets == Array(1...Int64(offsets.count)), "partition \(partition): \(offsets)")
        }
        try await log.close()
        // What a publish returned is on the file, for a log opened afterwards.
        let reader = try SQLiteMessageLog(path: path)
        try await reader.subscribe(group: "g", topic: "t", options: GroupOptions())
        var read: [(id: String, position: MessagePosition)] = []
        let deadline = ContinuousClock.now + .seconds(60)
        while read.count < published.count && ContinuousClock.now < deadline {
            let batch = try await reader.receive(
                ReceiveRequest(group: "g", topic: "t", consumer: "c", maxMessages: 100))
            for delivery in batch.deliveries {
                read.append((delivery.message.event.id, delivery.message.position))
                try await reader.ack(delivery)
            }
        }
        #expect(read.count == published.count)
        #expect(!read.contains { $0.id == "lost" })
        let byPosition = Dictionary(uniqueKeysWithValues: published.map { ($0.position, $0.id) })
        for (id, position) in read { #expect(byPosition[position] == id, "\(position)") }
        try await reader.close()
    }

    @Test(
        "a publish writes no partition row: offsets follow the stored messages, and another log on the file continues them"
    )
    func offsetsFromPositionIndex() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let first = try SQLiteMessageLog(path: path)
        let second = try SQLiteMessageLog(path: path)
        try await first.createTopic("t", TopicOptions(partitions: 2))
        var offsets: [Int: [Int64]] = [:]
        for index in 0..<20 {
            let log = index.isMultiple(of: 2) ? first : second
            let batch = try await log.publish(
                (0..<(1 + index % 3)).map { n in
                    OutgoingMessage(topic: "t", key: "k\(index + n)", event: CloudEvent(source: "/t", type: "t"))
                })
            for position in batch { offsets[position.partition, default: []].append(position.offset) }
        }
        for (partition, given) in offsets {
            #expect(given == Array(1...Int64(given.count)), "partition \(partition): \(given)")
        }
        try await first.close()
        try await second.close()
        // The counters stayed as the topic was created: publishes did not write them.
        let queue = try DatabaseQueue(path: path)
        let counters = try await queue.read { db in
            try Int64.fetchAll(db, sql: "SELECT last_offset FROM partitions WHERE topic = 't' ORDER BY partition")
        }
        try queue.close()
        #expect(counters == [0, 0])
        let reader = try SQLiteMessageLog(path: path)
        let topic = try #require(try await reader.topics().first { $0.name == "t" })
        #expect(topic.partitions.map(\.lastOffset) == (0..<2).map { Int64(offsets[$0]?.count ?? 0) })
        try await reader.close()
    }

    @Test(
        "a file whose partition counters an earlier version kept (exact, with messages deleted below and at them) goes on after them"
    )
    func earlierVersionCounters() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        var log = try SQLiteMessageLog(path: path)
        try await log.createTopic("t", TopicOptions(partitions: 1))
        try await log.subscribe(group: "g", topic: "t", options: GroupOptions())
        try await log.publish(
            (1...7).map {
                OutgoingMessage(topic: "t", key: "k", event: CloudEvent(id: "e\($0)", source: "/t", type: "t"))
            })
        try await log.close()
        // As the earlier version left it: the counter at the newest offset, retention having
        // deleted 1...4 (and recorded it in start_offset).
        var queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            let table = try Int64.fetchOne(db, sql: "SELECT table_id FROM partitions WHERE topic = 't'") ?? 0
            try db.execute(sql: "UPDATE partitions SET last_offset = 7, start_offset = 5 WHERE topic = 't'")
            try db.execute(sql: "DELETE FROM messages_\(table) WHERE offset <= 4")
        }
        try queue.close()
        log = try SQLiteMessageLog(path: path)
        #expect(
            try await log.publish([OutgoingMessage(topic: "t", key: "k", event: CloudEvent(source: "/t", type: "t"))])
                .map(\.offset) == [8])
        try await log.close()
        // Every message deleted, the counter past them: the earlier version's counter is the bound.
        queue = try DatabaseQueue(path: path)
        try await queue.write { db in
            let table = try Int64.fetchOne(db, sql: "SELECT table_id FROM partitions WHERE topic = 't'") ?? 0
            try db.execute(sql: "UPDATE partitions SET last_offset = 12, start_offset = 13 WHERE topic = 't'")
            try db.execute(sql: "DELETE FROM messages_\(table)")
        }
        try queue.close()
        log = try SQLiteMessageLog(path: path)
        var topic = try #require(try await log.topics().first { $0.name == "t" })
        #expect(topic.partitions.map(\.lastOffset) == [12])
        #expect(topic.partitions.map(\.depth) == [0])
        try await log.subscribe(group: "late", topic: "t", options: GroupOptions(start: .latest))
        let positions = try await log.publish(
            (1...2).map {
                OutgoingMessage(topic: "t", key: "k", event: CloudEvent(id: "n\($0)", source: "/t", type: "t"))
            })
        #expect(positions.map(\.offset) == [13, 14])
        topic = try #require(try await log.topics().first { $0.name == "t" })
        #expect(topic.partitions.map(\.lastOffset) == [14])
        let late = try await log.receive(ReceiveRequest(group: "late", topic: "t", consumer: "c"))
        #expect(late.deliveries.map(\.message.event.id) == ["n1", "n2"])
        #expect(late.gaps.isEmpty)
        let behind = try await log.receive(ReceiveRequest(group: "g", topic: "t", consumer: "c"))
        #expect(behind.gaps.map(\.firstMissed) == [1])
        #expect(behind.gaps.map(\.lastMissed) == [12])
        #expect(behind.deliveries.map(\.message.event.id) == ["n1", "n2"])
        try await log.close()
    }

    @Test("a topic another log creates after this one found it missing is published to with its partition count")
    func topicCreatedElsewhere() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        let message = OutgoingMessage(topic: "late", key: "k", event: CloudEvent(source: "/t", type: "t"))
        let missing = try await #require(throws: MessagingError.self) { try await log.publish([message]) }
        #expect(missing.kind == .notFound)
        let other = try SQLiteMessageLog(path: path)
        try await other.createTopic("late", TopicOptions(partitions: 5))
        try await other.close()
        let positions = try await log.publish([message, message])
        #expect(
            positions.map(\.partition) == Array(repeating: Partitioner.partition(forKey: "k", partitions: 5), count: 2))
        #expect(positions.map(\.offset) == [1, 2])
        try await log.close()
    }

    @Test(
        "receive, ack, nack and a failed ack leave the writer at synchronous=FULL for the next publish",
        arguments: [SQLiteMessageLog.Configuration.Synchronous.normal, .full])
    func acknowledgementsRestoreSynchronous(acknowledgements: SQLiteMessageLog.Configuration.Synchronous) async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(
            path: path, configuration: SQLiteMessageLog.Configuration(acknowledgementSynchronous: acknowledgements))
        try await log.createTopic("t", TopicOptions(partitions: 1))
        try await log.subscribe(group: "g", topic: "t", options: GroupOptions())
        try await log.publish(
            (1...3).map { _ in OutgoingMessage(topic: "t", event: CloudEvent(source: "/t", type: "t")) })
        let batch = try await log.receive(ReceiveRequest(group: "g", topic: "t", consumer: "c", maxMessages: 2))
        #expect(batch.deliveries.count == 2)
        #expect(try log.currentSynchronous() == 2)
        try await log.ack(batch.deliveries[0])
        #expect(try log.currentSynchronous() == 2)
        try await log.nack(batch.deliveries[1], redeliverAfter: .zero, error: "boom")
        #expect(try log.currentSynchronous() == 2)
        // The nack ended the lease: acking under it fails inside the transaction.
        await #expect(throws: MessagingError.self) { try await log.ack(batch.deliveries[1]) }
        #expect(try log.currentSynchronous() == 2)
        let again = try await log.receive(ReceiveRequest(group: "g", topic: "t", consumer: "c"))
        #expect(again.deliveries.map(\.message.position.offset) == [2, 3])
        try await log.close()
    }

    @Test("a receive with nothing to lease does not wait for the write lock; one with work does")
    func emptyReceiveSkipsWriteLock() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        // Retries give up after 300 ms, so a receive that needs the lock fails while it is held.
        let log = try SQLiteMessageLog(
            path: path, configuration: .init(busyTimeout: .milliseconds(1), busyRetryLimit: .milliseconds(300)))
        try await log.createTopic("t", TopicOptions(partitions: 2))
        try await log.subscribe(group: "g", topic: "t", options: GroupOptions())
        let request = ReceiveRequest(group: "g", topic: "t", consumer: "c")
        // Another connection (as another process would) holds SQLite's write lock across calls.
        var holder = GRDB.Configuration()
        holder.allowsUnsafeTransactions = true
        let other = try DatabaseQueue(path: path, configuration: holder)
        try await other.writeWithoutTransaction { db in try db.execute(sql: "BEGIN IMMEDIATE") }
        let empty = try await log.receive(request)
        #expect(empty.deliveries.isEmpty && empty.gaps.isEmpty)
        try await other.writeWithoutTransaction { db in try db.execute(sql: "COMMIT") }

        // With a message to lease, receive needs the lock: held, it is retried until the limit.
        try await log.publish([OutgoingMessage(topic: "t", key: "k", event: CloudEvent(source: "/t", type: "t"))])
        try await other.writeWithoutTransaction { db in try db.execute(sql: "BEGIN IMMEDIATE") }
        await #expect(throws: MessagingError.self) { try await log.receive(request) }
        try await other.writeWithoutTransaction { db in try db.execute(sql: "COMMIT") }
        #expect(try await log.receive(request).deliveries.count == 1)
        // A group that does not exist still gets the transaction's error, not an empty batch.
        await #expect(throws: MessagingError.self) {
            try await log.receive(ReceiveRequest(group: "nobody", topic: "t", consumer: "c"))
        }
        try other.close()
        try await log.close()
    }

    @Test("a publish in this process wakes consumers at once, without waiting for the poll timer")
    func wakeUpOnPublish() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let configuration = SQLiteMessageLog.Configuration(pollInterval: .seconds(3600))
        let consumerSide = try SQLiteMessageLog(path: path, configuration: configuration)
        let producerSide = try SQLiteMessageLog(path: path, configuration: configuration)
        try await producerSide.createTopic("orders", TopicOptions(partitions: 1))
        try await producerSide.createTopic("other", TopicOptions(partitions: 1))
        let wakeUps = consumerSide.wakeUps(topic: "orders")
        let woken = Task {
            var iterator = wakeUps.makeAsyncIterator()
            return await iterator.next() != nil
        }
        try await producerSide.publish([OutgoingMessage(topic: "other", event: CloudEvent(source: "/t", type: "t"))])
        try await producerSide.publish([OutgoingMessage(topic: "orders", event: CloudEvent(source: "/t", type: "t"))])
        #expect(await woken.value)
        // Closing the log ends its streams.
        let other = consumerSide.wakeUps(topic: "other")
        try await consumerSide.close()
        var iterator = other.makeAsyncIterator()
        #expect(await iterator.next() == nil)
        try await producerSide.close()
    }

    @Test("MessageLogs.open: sqlite URLs open a log; memory URLs and an absent PostgreSQL server are clear errors")
    func factory() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try await MessageLogs.open(url: "sqlite://\(path)", clock: ManualWallClock())
        try await log.createTopic("t", TopicOptions(partitions: 1))
        #expect(try await log.topics().map(\.name) == ["t"])
        try await log.close()
        for (url, kind) in [
            ("sqlite::memory:", MessagingError.Kind.invalidArgument), ("postgres://u@127.0.0.1/db", .unavailable),
            ("redis://x", .invalidArgument),
        ] {
            await expectMessagingError(kind) { _ = try await MessageLogs.open(url: url) }
        }
    }
}

extension SQLiteMessageLogTests {
    @Test("several openers of a new file at once create the schema once and all work")
    func concurrentOpen() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let logs = try await withThrowingTaskGroup(of: SQLiteMessageLog.self) { tasks in
            for _ in 0..<6 { tasks.addTask { try SQLiteMessageLog(path: path) } }
            return try await tasks.reduce(into: []) { $0.append($1) }
        }
        try await logs[0].createTopic("t", TopicOptions(partitions: 1))
        for (index, log) in logs.enumerated() {
            try await log.publish([OutgoingMessage(topic: "t", key: "k", event: try numbered(index))])
        }
        #expect(try await logs[5].topics().first?.partitions.first?.depth == 6)
        for log in logs { try await log.close() }
    }
}
