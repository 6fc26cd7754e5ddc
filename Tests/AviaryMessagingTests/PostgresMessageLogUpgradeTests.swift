//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import AviaryMessaging
@testable import AviaryStorage

@Suite("PostgresMessageLog schema upgrades", .timeLimit(.minutes(5)))
struct PostgresMessageLogUpgradeTests {
    @Test(
        "a database of the v2 layout (before aviary_listeners and aviary_publish_now) upgrades, keeping messages and offsets"
    )
    func upgradeFromV2() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        var v2 = PostgresMigrations()
        for migration in PostgresMessageLog.migrations.list.prefix(2) { v2.add(migration.name, migration.migrate) }
        #expect(v2.list.map(\.name).last == "aviary messaging v2: one-statement publish")
        let store = try PostgresStore(url: url, migrations: v2)
        let running = Task { try await store.run() }
        try await store.ready()
        let logger = Logger(label: "aviary.test")
        let events = try (1...2).map { n in
            try CloudEvent(source: "/test", type: "test.placed", subject: "o-\(n)", json: ["n": n])
        }
        let stored = try events.map(StoredJSON.event)
        // What a process of that version did: a topic, then a publish through aviary_publish.
        try await store.withTransaction { connection in
            try await connection.query(
                "INSERT INTO aviary_topics (name, partitions, created_at) VALUES ('orders', 1, 0)", logger: logger)
            try await connection.query(
                "INSERT INTO aviary_partitions (topic, partition) VALUES ('orders', 0)", logger: logger)
            _ = try await connection.complete(
                """
                SELECT * FROM aviary_publish(ARRAY['orders', 'orders'], ARRAY[0, 0]::BIGINT[], ARRAY[0, 0]::BIGINT[],
                    ARRAY['o-1', 'o-2'], \(stored), ARRAY['{}', '{}'], ARRAY[10, 10]::BIGINT[], 1, 'aviary_message_log')
                """, logger: logger)
        }
        running.cancel()
        _ = try? await running.value

        let log = try await PostgresMessageLog(url: url)
        try await log.subscribe(group: "mail", topic: "orders", options: GroupOptions())
        let third = try CloudEvent(source: "/test", type: "test.placed", subject: "o-3", json: ["n": 3])
        let positions = try await log.publish([OutgoingMessage(topic: "orders", key: "o-3", event: third)])
        #expect(positions == [MessagePosition(topic: "orders", partition: 0, offset: 3)])
        let batch = try await log.receive(
            ReceiveRequest(group: "mail", topic: "orders", consumer: "c", maxMessages: 10))
        #expect(batch.deliveries.map(\.message.event.id) == (events + [third]).map(\.id))
        #expect(batch.deliveries.map(\.message.position.offset) == [1, 2, 3])
        try await log.close()
    }
}
