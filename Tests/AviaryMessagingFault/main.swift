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

// A producer and a consumer for the messaging fault tests (FaultTests), which run them as
// child processes, SIGKILL them at random moments and start them again, over and over:
//
//   aviary-messaging-fault produce --store PATH --broker PATH --count N
//     Writes business rows `items` 1...N, a few per transaction, each with its event in the
//     outbox (same transaction), while an OutboxRelay publishes the outbox to topic `fault` of
//     the log. Resumes after the last committed row; exits 0 once all N rows exist and the
//     outbox is empty.
//
//   aviary-messaging-fault consume --store PATH --broker PATH --count N [--runtime direct|consumer]
//     Consumes topic `fault` as group `fault-group` through an Inbox whose effect increments
//     `effects.applied` of the event's item (and records the order of first application), either
//     straight on the log (receive + Inbox.consume) or with the MessageConsumer runtime and
//     Inbox.handler. Exits 0 once every item 1...N has an effect row.

let topic = "fault"
let group = "fault-group"

struct Item: Codable {
    var id: Int
    var key: String
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("aviary-messaging-fault: \(message)\n".utf8))
    exit(2)
}

func key(of id: Int) -> String { "key-\(id % 13)" }

var arguments = Array(CommandLine.arguments.dropFirst())
guard let mode = arguments.first else {
    fail("usage: aviary-messaging-fault produce|consume --store PATH --broker PATH --count N")
}
arguments.removeFirst()
var options: [String: String] = [:]
while arguments.count >= 2 {
    options[arguments[0]] = arguments[1]
    arguments.removeFirst(2)
}
guard let storePath = options["--store"], let brokerPath = options["--broker"],
    let count = options["--count"].flatMap(Int.init), count > 0
else {
    fail("expected --store PATH --broker PATH --count N")
}

var logger = Logger(label: "aviary.messaging.fault")
logger.logLevel = .error

let log: any MessageLog
do {
    log = try await MessageLogs.open(url: "sqlite://\(brokerPath)")
    try await log.createTopic(topic, TopicOptions(partitions: 4, retention: .forever))
} catch {
    fail("cannot open the log at \(brokerPath): \(error)")
}

switch mode {
case "produce":
    var migrations = Migrations()
    migrations.add("v1: items") { db in
        try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL)")
    }
    Outbox.addMigrations(to: &migrations)
    let store = try SQLiteStore(url: StoreURL(.sqlite(path: storePath)), migrations: migrations)
    let relay = OutboxRelay(
        store: store, log: log,
        configuration: .init(
            batchSize: 20, pollInterval: .milliseconds(20),
            backoff: .exponential(base: .milliseconds(5), cap: .milliseconds(200))),
        logger: logger)
    let relaying = Task { try await relay.run() }
    while true {
        let written = try await store.write { db -> Int in
            let last = try Int.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) FROM items") ?? 0
            guard last < count else { return last }
            let upTo = min(count, last + Int.random(in: 1...5))
            for id in (last + 1)...upTo {
                let item = Item(id: id, key: key(of: id))
                try db.execute(sql: "INSERT INTO items (id, key) VALUES (?, ?)", arguments: [id, item.key])
                let event = try CloudEvent(
                    id: "item-\(id)", source: "/fault/producer", type: "fault.item", subject: item.key, json: item)
                try Outbox.enqueue(OutgoingMessage(topic: topic, key: item.key, event: event), in: db)
            }
            return upTo
        }
        if written >= count { break }
    }
    // The relay empties the outbox; look every few milliseconds.
    while try await store.read(nil, { db in try Outbox.pendingCount(in: db) }) > 0 {
        try await Task.sleep(for: .milliseconds(10))
    }
    relaying.cancel()
    print("produced \(count)")
    exit(0)

case "consume":
    var migrations = Migrations()
    migrations.add("v1: effects") { db in
        try db.execute(
            sql: """
                CREATE TABLE effects (
                    id INTEGER PRIMARY KEY, key TEXT NOT NULL, applied INTEGER NOT NULL,
                    applied_order INTEGER NOT NULL)
                """)
        try db.execute(sql: "CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    }
    Inbox.addMigrations(to: &migrations)
    let store = try SQLiteStore(url: StoreURL(.sqlite(path: storePath)), migrations: migrations)
    let inbox = Inbox(store: store, group: group)
    // Poison is not part of this test: a message survives many killed consumers' leases.
    try await log.subscribe(group: group, topic: topic, options: GroupOptions(maxDeliveries: 1000))
    let effect: @Sendable (Database, Message) throws -> Void = { db, message in
        let item = try message.event.decodeData(as: Item.self)
        try db.execute(
            sql: """
                INSERT INTO effects (id, key, applied, applied_order)
                VALUES (?, ?, 1, (SELECT COALESCE(MAX(applied_order), 0) + 1 FROM effects))
                ON CONFLICT (id) DO UPDATE SET applied = applied + 1
                """,
            arguments: [item.id, item.key])
    }
    @Sendable func applied() async throws -> Int {
        try await store.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM effects") ?? 0 }
    }
    if options["--runtime"] == "consumer" {
        // The consumer runtime (MessageConsumer) with the inbox as its handler: several partitions
        // at once, an ack per message.
        let runtime = MessageConsumer(
            log: log,
            configuration: .init(
                group: group, topic: topic, groupOptions: GroupOptions(maxDeliveries: 1000), batchSize: 25,
                lease: .milliseconds(1500), backoff: .init(initial: .milliseconds(10), maximum: .milliseconds(100))),
            logger: logger, handler: inbox.handler(effect))
        let running = Task { try await runtime.run() }
        while try await applied() < count {
            try await Task.sleep(for: .milliseconds(10))
        }
        running.cancel()
    } else {
        // Straight on the log: receive, Inbox.consume (cumulative acks per partition).
        let consumer = "fault-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString.prefix(8))"
        while true {
            let batch = try await log.receive(
                ReceiveRequest(
                    group: group, topic: topic, consumer: consumer, maxMessages: 25, lease: .milliseconds(1500)))
            if batch.deliveries.isEmpty {
                if try await applied() >= count { break }
                try await Task.sleep(for: .milliseconds(10))
                continue
            }
            let summary = try await inbox.consume(batch, from: log, effect)
            if summary.duplicates > 0 || summary.failed > 0 {
                try await store.write { db in
                    for (name, value) in [("duplicates", summary.duplicates), ("failed", summary.failed)]
                    where value > 0 {
                        try db.execute(
                            sql: """
                                INSERT INTO stats (name, value) VALUES (?, ?)
                                ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
                                """,
                            arguments: [name, value])
                    }
                }
            }
        }
    }
    print("consumed \(count)")
    exit(0)

default:
    fail("unknown mode \"\(mode)\"; expected produce or consume")
}
