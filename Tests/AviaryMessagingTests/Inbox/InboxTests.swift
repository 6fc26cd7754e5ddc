//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import Foundation
import GRDB
import Testing

@Suite("Idempotent consumer inbox", .timeLimit(.minutes(2)))
struct InboxTests {
    struct EffectFailed: Error {}

    static func message(_ id: String, source: String = "/tests/things", offset: Int64 = 1) throws -> Message {
        Message(
            position: MessagePosition(topic: "things", partition: 0, offset: offset), key: "k",
            event: try CloudEvent(id: id, source: source, type: "thing.created", json: ["id": id]), headers: [:],
            appendedAt: Date())
    }

    static func applied(_ store: SQLiteStore) async throws -> [String: Int] {
        try await store.read { db in
            Dictionary(
                uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT id, applied FROM things").map {
                    ($0["id"] as String, $0["applied"] as Int)
                })
        }
    }

    static let increment: @Sendable (Database, Message) throws -> Void = { db, message in
        try db.execute(
            sql: "INSERT INTO things (id) VALUES (?) ON CONFLICT (id) DO UPDATE SET applied = applied + 1",
            arguments: [message.event.id])
    }

    @Test("a redelivered message is acknowledged as a duplicate without its effect running again")
    func duplicateSkipped() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let inbox = Inbox(store: store, group: "g")
        let message = try Self.message("e1")
        #expect(try await inbox.process(message) { db in try Self.increment(db, message) } == .processed)
        // Delivered again, at another offset (republished by a relay that crashed before marking).
        let again = try Self.message("e1", offset: 9)
        #expect(try await inbox.process(again) { db in try Self.increment(db, again) } == .duplicate)
        #expect(try await Self.applied(store) == ["e1": 1])
        #expect(try await inbox.hasProcessed(source: "/tests/things", id: "e1"))
        // Same id from another source is another event.
        let other = try Self.message("e1", source: "/tests/elsewhere")
        #expect(try await inbox.process(other) { _ in } == .processed)
    }

    @Test("a failing effect records nothing, so the next delivery applies it")
    func failureRollsBack() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let inbox = Inbox(store: store, group: "g")
        let message = try Self.message("e1")
        await #expect(throws: EffectFailed.self) {
            try await inbox.process(message) { db in
                try Self.increment(db, message)
                throw EffectFailed()
            }
        }
        #expect(try await Self.applied(store) == [:])
        #expect(try await inbox.hasProcessed(source: "/tests/things", id: "e1") == false)
        #expect(try await inbox.process(message) { db in try Self.increment(db, message) } == .processed)
        #expect(try await Self.applied(store) == ["e1": 1])
    }

    @Test("two groups consuming into one store each apply a message once")
    func groupsAreSeparate() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let message = try Self.message("e1")
        for group in ["a", "b", "a", "b"] {
            try await Inbox(store: store, group: group).process(message) { db in try Self.increment(db, message) }
        }
        #expect(try await Self.applied(store) == ["e1": 2])
    }

    @Test("prune removes the group's records processed before a date")
    func prune() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let inbox = Inbox(store: store, group: "g")
        try await inbox.process(try Self.message("e1")) { _ in }
        try await Inbox(store: store, group: "other").process(try Self.message("e1")) { _ in }
        #expect(try await inbox.prune(processedBefore: Date().addingTimeInterval(-3600)) == 0)
        #expect(try await inbox.prune(processedBefore: Date().addingTimeInterval(60)) == 1)
        #expect(try await inbox.hasProcessed(source: "/tests/things", id: "e1") == false)
        #expect(try await Inbox(store: store, group: "other").hasProcessed(source: "/tests/things", id: "e1"))
    }

    @Test("consume nacks a failed message, leaves the rest of its partition, and applies it on redelivery")
    func consumeKeepsOrderOnFailure() async throws {
        let fixture = OutboxFixture()
        defer { fixture.remove() }
        let store = try fixture.store()
        let clock = ManualWallClock()
        let log = try fixture.log(clock: clock)
        try await log.createTopic("things", TopicOptions(partitions: 1))
        try await log.subscribe(group: "g", topic: "things", options: GroupOptions())
        try await log.publish(try ["m1", "m2", "m3"].map { try OutboxFixture.message($0, key: "k") })
        let inbox = Inbox(store: store, group: "g")
        let request = ReceiveRequest(group: "g", topic: "things", consumer: "c1")

        // m2 fails the first time: m1 is applied, m2 nacked, m3 not touched.
        let failing = try await inbox.consume(try await log.receive(request), from: log, redeliverAfter: .seconds(5)) {
            db, message in
            if message.event.id == "evt-m2" { throw EffectFailed() }
            try Self.increment(db, message)
        }
        #expect(failing == InboxSummary(processed: 1, duplicates: 0, failed: 1))
        #expect(try await Self.applied(store) == ["evt-m1": 1])
        #expect(try await log.receive(request).deliveries.isEmpty)  // the partition waits for m2

        clock.advance(by: .seconds(6))
        let retried = try await log.receive(request)
        #expect(retried.deliveries.map(\.message.event.id) == ["evt-m2", "evt-m3"])
        #expect(retried.deliveries.first?.deliveryCount == 2)
        let summary = try await inbox.consume(retried, from: log, Self.increment)
        #expect(summary == InboxSummary(processed: 2, duplicates: 0, failed: 0))
        #expect(try await Self.applied(store) == ["evt-m1": 1, "evt-m2": 1, "evt-m3": 1])
        #expect(try await log.receive(request).deliveries.isEmpty)
    }
}

extension InboxSummary {
    init(processed: Int, duplicates: Int, failed: Int) {
        self.init()
        self.processed = processed
        self.duplicates = duplicates
        self.failed = failed
    }
}
