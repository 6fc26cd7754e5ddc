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

/// `PostgresMessageLog.executor`: a task that prefers it publishes on the event loop of the log's
/// connections, from the lease to its resumption, beside callers on the concurrency pool.
@Suite("PostgresMessageLog executor", .timeLimit(.minutes(5)))
struct PostgresLoopExecutorTests {
    let logger = Logger(label: "aviary.test")

    struct Row: Sendable {
        var partition: Int
        var offset: Int64
        var key: String
    }

    func event(_ n: Int) throws -> CloudEvent {
        try CloudEvent(source: "/test", type: "test.placed", subject: "o-\(n)", json: ["n": n])
    }

    @Test("a task preferring the executor runs the store's calls on the log's loop, on a connection of that loop")
    func callsStayOnTheLoop() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let loop = log.executor.eventLoop
        let event = try self.event(1)
        let seen = try await withTaskExecutorPreference(log.executor) {
            var seen: [String: Bool] = ["task": loop.inEventLoop]
            let (body, connection) = try await log.store.withConnection { connection in
                (loop.inEventLoop, connection.eventLoop.inEventLoop)
            }
            seen["withConnection body"] = body
            seen["connection's loop"] = connection
            seen["withTransaction body"] = try await log.store.withTransaction { _ in loop.inEventLoop }
            let position = try await log.publish([OutgoingMessage(topic: "orders", key: "o-1", event: event)])
            seen["after publish"] = loop.inEventLoop
            seen["published"] = position == [MessagePosition(topic: "orders", partition: 0, offset: 1)]
            return seen
        }
        #expect(seen.filter { !$0.value }.keys.sorted() == [])
        // A caller on the concurrency pool is not moved onto the loop.
        let pool = try await log.store.withConnection { _ in loop.inEventLoop }
        #expect(!pool)
        try await log.close()
    }

    @Test("a producer on the executor beside one on the pool: offsets dense per partition, each message once")
    func pinnedBesidePool() async throws {
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(url: url)
        try await log.createTopic("orders", TopicOptions(partitions: 3))
        let count = 150
        let messages: @Sendable (String) throws -> [OutgoingMessage] = { prefix in
            try (0..<count).map { n in
                OutgoingMessage(
                    topic: "orders", key: "\(prefix)-\(n)",
                    event: try CloudEvent(
                        source: "/test", type: "test.placed", subject: "\(prefix)-\(n)", json: ["n": n])
                )
            }
        }
        let pinned = try messages("loop")
        let pooled = try messages("pool")
        let loop = log.executor.eventLoop
        async let onLoop: ([MessagePosition], Bool) = withTaskExecutorPreference(log.executor) {
            var positions: [MessagePosition] = []
            var stayed = true
            // Singly, then in batches of ten: both publish paths.
            for message in pinned.prefix(100) {
                positions += try await log.publish([message])
                stayed = stayed && loop.inEventLoop
            }
            for start in stride(from: 100, to: count, by: 10) {
                positions += try await log.publish(Array(pinned[start..<start + 10]))
                stayed = stayed && loop.inEventLoop
            }
            return (positions, stayed)
        }
        // A single publish from the pool sends its statement from the loop, but its caller goes on
        // off it.
        async let onPool: ([MessagePosition], Bool) = {
            var positions: [MessagePosition] = []
            var stayedOff = true
            for message in pooled.prefix(100) {
                positions += try await log.publish([message])
                stayedOff = stayedOff && !loop.inEventLoop
            }
            for start in stride(from: 100, to: count, by: 10) {
                positions += try await log.publish(Array(pooled[start..<start + 10]))
                stayedOff = stayedOff && !loop.inEventLoop
            }
            return (positions, stayedOff)
        }()
        let (loopPositions, stayed) = try await onLoop
        let (poolPositions, stayedOff) = try await onPool
        #expect(stayed)
        #expect(stayedOff)
        let stored = try await log.store.withConnection { connection in
            var rows: [Row] = []
            for try await (partition, offset, key) in try await connection.query(
                "SELECT partition, msg_offset, key FROM aviary_messages ORDER BY partition, msg_offset",
                logger: self.logger
            ).decode((Int32, Int64, String).self) {
                rows.append(Row(partition: Int(partition), offset: offset, key: key))
            }
            return rows
        }
        #expect(stored.count == 2 * count)
        #expect(Set(stored.map(\.key)) == Set((pinned + pooled).map(\.key)))
        for partition in 0..<3 {
            let offsets = stored.filter { $0.partition == partition }.map(\.offset)
            #expect(offsets == (0..<offsets.count).map { Int64($0) + 1 }, "partition \(partition)")
        }
        // Each publish reported where its message is.
        let byKey = Dictionary(stored.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        for (message, position) in zip(pinned + pooled, loopPositions + poolPositions) {
            let row = byKey[message.key]
            #expect(row?.partition == position.partition && row?.offset == position.offset, "\(message.key)")
        }
        try await log.close()
    }

    @Test("after its connection is dropped, a producer on the executor publishes on a new connection of the same loop")
    func reconnectsOnTheLoop() async throws {
        let server = try await PostgresTestServer.shared()
        let url = try await server.makeDatabase()
        var configuration = PostgresMessageLog.Configuration()
        configuration.store.applicationName = "aviary-loop-\(UInt32.random(in: 0...UInt32.max))"
        let log = try await PostgresMessageLog(url: url, configuration: configuration)
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        let loop = log.executor.eventLoop
        let event = try self.event(1)
        let message = OutgoingMessage(topic: "orders", key: "o-1", event: event)
        try await withTaskExecutorPreference(log.executor) {
            _ = try await log.publish([message])
        }
        let application = configuration.store.applicationName
        let terminated = try await server.withAdminConnection { connection, logger in
            var count = 0
            for try await ok in try await connection.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \(application)",
                logger: logger
            ).decode(Bool.self) where ok {
                count += 1
            }
            return count
        }
        #expect(terminated >= 1)
        // Publishes may fail until the pool notices the closed connection; poll with a deadline.
        let (published, onLoop) = try await withTaskExecutorPreference(log.executor) {
            let deadline = ContinuousClock.now + .seconds(30)
            var published = 0
            while published < 3, ContinuousClock.now < deadline {
                do {
                    _ = try await log.publish([message])
                    published += 1
                } catch {
                    await Task.yield()
                }
            }
            let onLoop = try await log.store.withConnection { connection in
                loop.inEventLoop && connection.eventLoop.inEventLoop
            }
            return (published, onLoop)
        }
        #expect(published == 3)
        #expect(onLoop)
        try await log.close()
    }
}
