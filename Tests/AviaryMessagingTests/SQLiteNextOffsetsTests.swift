//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import GRDB
import GRDBSQLite
import Testing

@testable import AviaryMessaging

/// A SQLite log's publish takes the next offsets its previous publish left (`NextOffsets`) only
/// while nothing else wrote the file: other connections' commits, this log's other writes and a
/// publish that failed after taking offsets all make it read them again, so offsets stay dense.
@Suite("SQLite next offsets", .timeLimit(.minutes(5)))
struct SQLiteNextOffsetsTests {
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("aviary-next-offsets-\(UUID().uuidString).db")
            .path
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-wakeups"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    static func message(_ topic: String, _ key: String, _ id: String, deliverAt: Date? = nil) -> OutgoingMessage {
        OutgoingMessage(
            topic: topic, key: key, event: CloudEvent(id: id, source: "/t", type: "t"), deliverAt: deliverAt)
    }

    /// The messages of `topic` by partition, in offset order, read by a new log on `path` (until
    /// `count` came, or a deadline).
    static func stored(_ path: String, topic: String, count: Int) async throws -> [Int: [(offset: Int64, id: String)]] {
        let reader = try SQLiteMessageLog(path: path)
        try await reader.subscribe(group: "check", topic: topic, options: GroupOptions())
        var stored: [Int: [(offset: Int64, id: String)]] = [:]
        var read = 0
        let deadline = ContinuousClock.now + .seconds(60)
        while read < count && ContinuousClock.now < deadline {
            let batch = try await reader.receive(
                ReceiveRequest(group: "check", topic: topic, consumer: "c", maxMessages: 100))
            read += batch.deliveries.count
            for delivery in batch.deliveries {
                let position = delivery.message.position
                stored[position.partition, default: []].append((position.offset, delivery.message.event.id))
                try await reader.ack(delivery)
            }
        }
        try await reader.close()
        return stored
    }

    @Test(
        "a due message promoted and a dead letter replayed by the same log between its publishes get their own offsets, and the publishes go on after them"
    )
    func sameConnectionWrites() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let clock = ManualWallClock()
        let log = try SQLiteMessageLog(path: path, clock: clock)
        try await log.createTopic("t", TopicOptions(partitions: 2))
        try await log.subscribe(group: "g", topic: "t", options: GroupOptions(maxDeliveries: 1))
        var published: [String] = []
        func publish(_ prefix: String) async throws {
            let batch = (0..<6).map { Self.message("t", "k\($0)", "\(prefix)\($0)") }
            try await log.publish(batch)
            published += batch.map(\.event.id)
        }
        try await publish("a")
        // Scheduled, then promoted inside the next publish's transaction, before it takes offsets.
        try await log.publish([Self.message("t", "k0", "due", deliverAt: clock.now.addingTimeInterval(1))])
        published.append("due")
        clock.advance(by: .seconds(2))
        try await publish("b")
        // A dead letter of "t", replayed to "t" (appended through the log's own connection).
        let batch = try await log.receive(ReceiveRequest(group: "g", topic: "t", consumer: "c", maxMessages: 1))
        let delivery = try #require(batch.deliveries.first)
        try await log.nack(delivery, redeliverAfter: .zero, error: "failed")
        let letter = try #require(try await log.deadLetters(topic: "t.g.dlq", limit: 10).first)
        try await log.replayDeadLetter(letter.message.position)
        published.append(delivery.message.event.id)
        try await publish("c")
        try await log.close()

        let stored = try await Self.stored(path, topic: "t", count: published.count)
        for (partition, messages) in stored {
            #expect(
                messages.map(\.offset) == Array(1...Int64(messages.count)), "partition \(partition): \(messages)")
        }
        #expect(stored.values.flatMap { $0.map(\.id) }.sorted() == published.sorted())
    }

    @Test(
        "a batch whose insert fails after it took the offsets keeps nothing, and the next publish takes the same offsets"
    )
    func failedInsert() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("t", TopicOptions(partitions: 1))
        let first = try await log.publish((0..<3).map { Self.message("t", "k", "a\($0)") })
        #expect(first.map(\.offset) == [1, 2, 3])
        // Values longer than 2,000 bytes fail to bind (SQLITE_TOOBIG) on the writer connection.
        let limit = try await log.pool.writeWithoutTransaction { db in
            sqlite3_limit(db.sqliteConnection, SQLITE_LIMIT_LENGTH, 2000)
        }
        let big = CloudEvent(id: "big", source: "/t", type: "t", data: Data(String(repeating: "x", count: 3000).utf8))
        await #expect(throws: MessagingError.self) {
            // 35 rows: the first statement (32 rows) is inserted, the next one fails.
            try await log.publish(
                (0..<34).map { Self.message("t", "k", "lost\($0)") }
                    + [OutgoingMessage(topic: "t", key: "k", event: big)])
        }
        _ = try await log.pool.writeWithoutTransaction { db in
            sqlite3_limit(db.sqliteConnection, SQLITE_LIMIT_LENGTH, limit)
        }
        let next = try await log.publish((0..<2).map { Self.message("t", "k", "b\($0)") })
        #expect(next.map(\.offset) == [4, 5])
        try await log.close()

        let stored = try await Self.stored(path, topic: "t", count: 5)
        #expect(stored[0]?.map(\.offset) == [1, 2, 3, 4, 5])
        #expect(stored[0]?.map(\.id) == ["a0", "a1", "a2", "b0", "b1"])
    }
}
