//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import Foundation
import GRDB
import Synchronization
import Testing

/// Real files in a fresh temporary folder for one outbox or inbox test.
struct OutboxFixture {
    let directory: String

    init() {
        self.directory =
            FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-outbox-\(UUID().uuidString)").path
    }

    /// A service store with a `things` table and the outbox and inbox tables.
    func store(_ name: String = "service") throws -> SQLiteStore {
        var migrations = Migrations()
        migrations.add("v1: things") { db in
            try db.execute(sql: "CREATE TABLE things (id TEXT PRIMARY KEY, applied INTEGER NOT NULL DEFAULT 1)")
        }
        Outbox.addMigrations(to: &migrations)
        Inbox.addMigrations(to: &migrations)
        return try SQLiteStore(url: StoreURL(.sqlite(path: "\(self.directory)/\(name).db")), migrations: migrations)
    }

    /// A real SQLite message log in the folder.
    func log(clock: any WallClock = SystemWallClock()) throws -> SQLiteMessageLog {
        try SQLiteMessageLog(path: "\(self.directory)/broker.db", clock: clock)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    /// An event about thing `id`, keyed by `key`.
    static func message(_ id: String, key: String, topic: String = "things") throws -> OutgoingMessage {
        OutgoingMessage(
            topic: topic, key: key,
            event: try CloudEvent(
                id: "evt-\(id)", source: "/tests/things", type: "thing.created", subject: id, json: ["id": id]),
            headers: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
    }

    /// Receives everything deliverable on `topic` for `group`, acknowledging as it goes.
    static func drain(
        _ log: any MessageLog, topic: String = "things", group: String = "readers"
    ) async throws
        -> [Message]
    {
        var messages: [Message] = []
        while true {
            let batch = try await log.receive(ReceiveRequest(group: group, topic: topic, consumer: "drain"))
            if batch.deliveries.isEmpty { return messages }
            for delivery in batch.deliveries { messages.append(delivery.message) }
            for delivery in batch.deliveries { try await log.ack(delivery) }
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes (real time; generous for a loaded machine).
func outboxEventually(
    timeout: Duration = .seconds(20), _ what: String, _ condition: () async throws -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    Issue.record("timed out waiting until \(what)")
    throw CancellationError()
}

/// A real log in front of which a test changes one call: every requirement forwards to `base`
/// unless the conforming type implements it.
protocol ForwardingLog: MessageLog {
    var base: any MessageLog { get }
}

extension ForwardingLog {
    func publish(_ messages: [OutgoingMessage]) async throws -> [MessagePosition] {
        try await self.base.publish(messages)
    }
    func createTopic(_ topic: String, _ options: TopicOptions) async throws {
        try await self.base.createTopic(topic, options)
    }
    func subscribe(group: String, topic: String, options: GroupOptions) async throws {
        try await self.base.subscribe(group: group, topic: topic, options: options)
    }
    func receive(_ request: ReceiveRequest) async throws -> ReceivedBatch { try await self.base.receive(request) }
    func ack(_ delivery: Delivery) async throws { try await self.base.ack(delivery) }
    func nack(_ delivery: Delivery, redeliverAfter: Duration, error: String) async throws {
        try await self.base.nack(delivery, redeliverAfter: redeliverAfter, error: error)
    }
    func release(_ deliveries: [Delivery]) async throws { try await self.base.release(deliveries) }
    func extendLeases(_ deliveries: [Delivery], by duration: Duration) async throws {
        try await self.base.extendLeases(deliveries, by: duration)
    }
    func wakeUps(topic: String) -> AsyncStream<Void> { self.base.wakeUps(topic: topic) }
    func applyRetention() async throws -> Int { try await self.base.applyRetention() }
    func topics() async throws -> [TopicInfo] { try await self.base.topics() }
    func deadLetters(topic: String, limit: Int) async throws -> [DeadLetter] {
        try await self.base.deadLetters(topic: topic, limit: limit)
    }
    func replayDeadLetter(_ position: MessagePosition) async throws { try await self.base.replayDeadLetter(position) }
    func purgeDeadLetters(topic: String, positions: [MessagePosition]?) async throws -> Int {
        try await self.base.purgeDeadLetters(topic: topic, positions: positions)
    }
    func resumePartition(group: String, topic: String, partition: Int, skipHead: Bool) async throws {
        try await self.base.resumePartition(group: group, topic: topic, partition: partition, skipHead: skipHead)
    }
    func close() async throws { try await self.base.close() }
}

/// A real log whose next `failures` publishes fail as unavailable: a broker that is down for a
/// while, in front of the real thing.
final class FlakyLog: ForwardingLog {
    let base: any MessageLog
    private let failuresLeft: Mutex<Int>
    private let publishes = Mutex(0)

    init(_ base: any MessageLog, failures: Int) {
        self.base = base
        self.failuresLeft = Mutex(failures)
    }

    var publishCalls: Int { self.publishes.withLock { $0 } }

    func publish(_ messages: [OutgoingMessage]) async throws -> [MessagePosition] {
        self.publishes.withLock { $0 += 1 }
        let fail = self.failuresLeft.withLock { left in
            guard left > 0 else { return false }
            left -= 1
            return true
        }
        if fail { throw MessagingError(.unavailable, "the broker is down (injected)") }
        return try await self.base.publish(messages)
    }
}
