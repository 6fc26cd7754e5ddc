//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import GRDB
import Synchronization
import Testing

@testable import AviaryMessaging

@Suite("SQLite group commit", .timeLimit(.minutes(3)))
struct SQLiteGroupCommitTests {
    struct Failure: Error, Equatable {}

    /// Holds the log's writer thread busy until ``release()``, so that writes submitted meanwhile
    /// wait for it together.
    struct Blocker {
        final class Flags: Sendable {
            let running = Atomic<Bool>(false)
            let released = Atomic<Bool>(false)
        }

        let flags = Flags()
        let task: Task<Void, any Error>

        init(_ log: SQLiteMessageLog) async throws {
            let flags = self.flags
            self.task = Task {
                try await log.writer.run {
                    flags.running.store(true, ordering: .relaxed)
                    let deadline = ContinuousClock.now + .seconds(60)
                    while !flags.released.load(ordering: .relaxed), ContinuousClock.now < deadline { sched_yield() }
                }
            }
            try await MessageConsumerTests.eventually(.seconds(30)) { flags.running.load(ordering: .relaxed) }
        }

        func release() async throws {
            self.flags.released.store(true, ordering: .relaxed)
            try await self.task.value
        }
    }

    static func withLog(_ body: (SQLiteMessageLog) async throws -> Void) async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await body(log)
        try await log.close()
    }

    /// Consumes `orders` through group `g` until `count` messages came (or a minute passed) and
    /// expects each once, every partition's offsets dense from 1.
    static func expectEachOnce(
        _ log: SQLiteMessageLog, count: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        var ids: [String: Int] = [:]
        var offsets: [Int: [Int64]] = [:]
        let deadline = ContinuousClock.now + .seconds(60)
        while ids.values.reduce(0, +) < count, ContinuousClock.now < deadline {
            let batch = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "c", maxMessages: 100))
            for delivery in batch.deliveries {
                ids[delivery.message.event.id, default: 0] += 1
                offsets[delivery.message.position.partition, default: []].append(delivery.message.position.offset)
                try await log.ack(delivery)
            }
        }
        #expect(ids.count == count, sourceLocation: sourceLocation)
        #expect(ids.values.allSatisfy { $0 == 1 }, sourceLocation: sourceLocation)
        for (_, partitionOffsets) in offsets {
            #expect(
                partitionOffsets.sorted() == Array(1...Int64(partitionOffsets.count)), sourceLocation: sourceLocation)
        }
    }

    static func message(_ id: String, topic: String = "orders") -> OutgoingMessage {
        OutgoingMessage(topic: topic, key: id, event: CloudEvent(id: id, source: "/test", type: "t"))
    }

    @Test("publishes that wait for the writer commit as one group; one that fails is rolled back alone")
    func publishesShareACommit() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let before = log.groupCommit.statistics
            let blocker = try await Blocker(log)
            let good = (0..<4).map { index in
                Task { try await log.publish([Self.message("m\(index)")]).first?.offset }
            }
            let bad = Task { try await log.publish([Self.message("lost", topic: "missing")]) }
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 5 }
            try await blocker.release()
            for task in good { #expect(try await task.value != nil) }
            await #expect(throws: MessagingError.self) { try await bad.value }
            let after = log.groupCommit.statistics
            #expect(after.groups == before.groups + 1)
            #expect(after.writes == before.writes + 5)
            #expect(after.largestGroup == 5)
            // Publishes after the group take the offsets that follow it (the log's kept next
            // offsets, `NextOffsets`, must hold after a group commit as after a single one).
            for index in 4..<8 { try await log.publish([Self.message("m\(index)")]) }
            // The eight committed, each partition's offsets dense from 1.
            let batch = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "c", maxMessages: 100, maxPartitions: 2))
            #expect(Set(batch.deliveries.map(\.message.event.id)) == Set((0..<8).map { "m\($0)" }))
            for partition in 0..<2 {
                let offsets = batch.deliveries.filter { $0.message.position.partition == partition }
                    .map(\.message.position.offset)
                #expect(offsets == offsets.indices.map { Int64($0 + 1) })
            }
        }
    }

    @Test("a grouped body that wrote and then failed leaves nothing; the bodies around it commit")
    func failedBodyRollsBackToItsSavepoint() async throws {
        try await Self.withLog { log in
            try await log.pool.writeWithoutTransaction { db in try db.execute(sql: "CREATE TABLE scratch (v INTEGER)") }
            let blocker = try await Blocker(log)
            func insert(_ value: Int, thenFail: Bool = false) -> Task<Int, any Error> {
                Task {
                    try await log.groupCommit.run { db in
                        try db.execute(sql: "INSERT INTO scratch (v) VALUES (?)", arguments: [value])
                        if thenFail { throw Failure() }
                        return value
                    }
                }
            }
            let first = insert(1)
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 1 }
            let second = insert(2, thenFail: true)
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 2 }
            let third = insert(3)
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 3 }
            try await blocker.release()
            #expect(try await first.value == 1)
            await #expect(throws: Failure.self) { try await second.value }
            #expect(try await third.value == 3)
            let values = try await log.pool.read { db in try Int.fetchAll(db, sql: "SELECT v FROM scratch ORDER BY v") }
            #expect(values == [1, 3])
            #expect(log.groupCommit.statistics.largestGroup == 3)
        }
    }

    @Test("when SQLite rolls a group's transaction back, every caller of the group gets an error and nothing stays")
    func lostTransactionFailsTheGroup() async throws {
        try await Self.withLog { log in
            try await log.pool.writeWithoutTransaction { db in try db.execute(sql: "CREATE TABLE scratch (v INTEGER)") }
            let blocker = try await Blocker(log)
            let first = Task {
                try await log.groupCommit.run { db in try db.execute(sql: "INSERT INTO scratch (v) VALUES (1)") }
            }
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 1 }
            // As SQLite does after an I/O error or a full disk: the whole transaction is gone.
            let second = Task {
                try await log.groupCommit.run { db in
                    try db.execute(sql: "ROLLBACK")
                    throw Failure()
                }
            }
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 2 }
            let third = Task {
                try await log.groupCommit.run { db in try db.execute(sql: "INSERT INTO scratch (v) VALUES (3)") }
            }
            try await MessageConsumerTests.eventually(.seconds(30)) { log.groupCommit.pendingCount == 3 }
            try await blocker.release()
            await #expect(throws: MessagingError.self) { try await first.value }
            await #expect(throws: MessagingError.self) { try await second.value }
            await #expect(throws: MessagingError.self) { try await third.value }
            let count = try await log.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM scratch") }
            #expect(count == 0)
            // The log goes on: the next write commits.
            try await log.groupCommit.run { db in try db.execute(sql: "INSERT INTO scratch (v) VALUES (4)") }
            #expect(try await log.pool.read { db in try Int.fetchAll(db, sql: "SELECT v FROM scratch") } == [4])
        }
    }

    @Test("many tasks publishing one message at a time: each message once, offsets dense")
    func concurrentSinglePublishes() async throws {
        try await Self.withLog { log in
            try await log.createTopic("orders", TopicOptions(partitions: 4))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let tasks = 8
            let perTask = 50
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<tasks {
                    group.addTask {
                        for index in 0..<perTask { try await log.publish([Self.message("t\(task)-\(index)")]) }
                    }
                }
                try await group.waitForAll()
            }
            try await Self.expectEachOnce(log, count: tasks * perTask)
            #expect(log.groupCommit.statistics.writes >= tasks * perTask)
        }
    }
}
