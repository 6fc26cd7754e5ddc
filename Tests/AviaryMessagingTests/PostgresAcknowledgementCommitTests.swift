//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

@testable import AviaryMessaging

/// Acknowledgement transactions turn `synchronous_commit` off through their first statement
/// instead of a `SET LOCAL` round trip: the first statements of a receive and of an ack must
/// carry it, and nothing else may.
@Suite("PostgresMessageLog acknowledgement commits", .timeLimit(.minutes(5)))
struct PostgresAcknowledgementCommitTests {
    @Test("the first statement of a receive and of an ack turns synchronous_commit off; publishes keep it on")
    func firstStatementRelaxes() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await Self.prepare(log)
        let request = ReceiveRequest(group: "g", topic: "orders", consumer: "c")
        let afterReceive = try await log.acknowledging { connection, relax, logger in
            // On the log's loop, where the connection's socket is served (a hop from the pool).
            #expect(log.executor.eventLoop.inEventLoop)
            let free = try await PostgresMessageLog.FreePartitions.fetch(
                connection, request, now: log.nowMillis, relax: relax, logger)
            #expect(free.states.count == 2)
            return try await Self.setting(connection, logger)
        }
        #expect(afterReceive == "off")
        let afterAck = try await log.acknowledging { connection, relax, logger in
            _ = try await PostgresMessageLog.PartitionState.fetch(
                connection, group: "g", topic: "orders", partition: 0, relax: relax, logger)
            return try await Self.setting(connection, logger)
        }
        #expect(afterAck == "off")
        #expect(!log.executor.eventLoop.inEventLoop)
        // The setting ends with its transaction, and other writes wait for their flush.
        #expect(try await log.write { connection, logger in try await Self.setting(connection, logger) } == "on")
        try await log.close()
    }

    @Test("with synchronousAcknowledgements, acknowledgement transactions keep synchronous_commit on")
    func synchronousAcknowledgements() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(
            url: url, configuration: PostgresMessageLog.Configuration(synchronousAcknowledgements: true))
        try await Self.prepare(log)
        let request = ReceiveRequest(group: "g", topic: "orders", consumer: "c")
        let setting = try await log.acknowledging { connection, relax, logger in
            #expect(relax.isEmpty)
            _ = try await PostgresMessageLog.FreePartitions.fetch(
                connection, request, now: log.nowMillis, relax: relax, logger)
            return try await Self.setting(connection, logger)
        }
        #expect(setting == "on")
        try await log.close()
    }

    static func prepare(_ log: PostgresMessageLog) async throws {
        try await log.createTopic("orders", TopicOptions(partitions: 2))
        try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
    }

    static func setting(_ connection: PostgresConnection, _ logger: Logger) async throws -> String {
        let rows = try await PostgresMessageLog.rows(connection, "SHOW synchronous_commit", logger)
        return try rows.first?["synchronous_commit"].decode(String.self) ?? ""
    }
}
