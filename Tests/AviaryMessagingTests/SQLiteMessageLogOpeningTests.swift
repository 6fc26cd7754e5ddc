//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryTestSupport
import Foundation
import GRDB
import Testing

/// Opening a log whose file another connection (as another process would) holds locked for
/// longer than one busy timeout: opening waits for it instead of failing, up to the retry limit.
@Suite("SQLiteMessageLog opening", .timeLimit(.minutes(2)))
struct SQLiteMessageLogOpeningTests {
    enum Event: Sendable {
        case busy(Int)
        case opened(Result<SQLiteMessageLog, any Error>)
    }

    /// Opens the log on a thread of its own (opening blocks while it waits), reporting each busy
    /// retry and then the outcome.
    static func open(path: String, configuration: SQLiteMessageLog.Configuration) -> AsyncStream<Event> {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        DispatchQueue.global().async {
            let result = Result<SQLiteMessageLog, any Error> {
                try SQLiteMessageLog(
                    path: path, clock: SystemWallClock(), configuration: configuration,
                    onBusyOpen: { continuation.yield(.busy($0)) })
            }
            continuation.yield(.opened(result))
            continuation.finish()
        }
        return events
    }

    @Test(
        "a file locked past the busy timeout is waited for; the log opens once the lock goes and keeps what was there")
    func waitsForLock() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let holder = try SQLiteLockHolder(path: path)
        await SQLiteLockHolder.wait(holder.locked)
        var events = Self.open(
            path: path,
            configuration: SQLiteMessageLog.Configuration(
                busyTimeout: .milliseconds(2), busyRetryLimit: .seconds(60))
        ).makeAsyncIterator()
        // Without the retry, opening fails here: the first event is the error, not a retry.
        guard case .busy(1) = try #require(await events.next()) else {
            Issue.record("opening a locked file did not wait for it")
            holder.release.signal()
            return
        }
        holder.release.signal()
        await SQLiteLockHolder.wait(holder.done)
        var outcome: Result<SQLiteMessageLog, any Error>?
        while let event = await events.next() {
            if case .opened(let result) = event { outcome = result }
        }
        let log = try #require(try outcome?.get())
        try await log.createTopic("t", TopicOptions(partitions: 1))
        try await log.publish([
            OutgoingMessage(topic: "t", key: "k", event: CloudEvent(id: "1", source: "/s", type: "t"))
        ])
        #expect(try await log.topics().first?.partitions.first?.depth == 1)
        try await log.close()
        let queue = try DatabaseQueue(path: path)
        #expect(
            try await queue.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master WHERE name = 'made_by_holder'")
            } == 1)
        #expect(try await queue.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        try queue.close()
    }

    @Test("a file that stays locked past the retry limit is a clear error naming the file")
    func givesUpAfterLimit() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let holder = try SQLiteLockHolder(path: path)
        await SQLiteLockHolder.wait(holder.locked)
        defer { holder.release.signal() }
        var busy = 0
        var outcome: Result<SQLiteMessageLog, any Error>?
        for await event in Self.open(
            path: path,
            configuration: SQLiteMessageLog.Configuration(
                busyTimeout: .milliseconds(2), busyRetryLimit: .milliseconds(100)))
        {
            switch event {
            case .busy: busy += 1
            case .opened(let result): outcome = result
            }
        }
        #expect(busy >= 1)
        let result = try #require(outcome)
        guard case .failure(let error) = result else {
            Issue.record("opened a file another connection holds locked")
            return
        }
        let failure = try #require(error as? MessagingError)
        #expect(failure.kind == .unavailable)
        #expect(failure.message.contains(path))
    }

    @Test(
        "a file of schema version 1 (one messages table) is upgraded to 3 with its messages; a file of a newer version is refused, named, untouched"
    )
    func schemaVersions() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("t", TopicOptions(partitions: 1))
        try await log.publish([
            OutgoingMessage(topic: "t", key: "k", event: CloudEvent(id: "1", source: "/s", type: "t"))
        ])
        try await log.close()
        func setVersion(_ version: Int) throws {
            let queue = try DatabaseQueue(path: path)
            try queue.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA user_version = \(version)") }
            try queue.close()
        }

        // Version 1's layout is version 2's (only what a publish writes differs).
        try SQLiteOlderSchema.downgradeToVersion2(path: path)
        try setVersion(1)
        let upgraded = try SQLiteMessageLog(path: path)
        #expect(try SQLiteOlderSchema.version(path: path) == 3)
        let positions = try await upgraded.publish([
            OutgoingMessage(topic: "t", key: "k", event: CloudEvent(id: "2", source: "/s", type: "t"))
        ])
        #expect(positions.map(\.offset) == [2])
        let stored = try SQLiteOlderSchema.read(path: path) { try SQLiteOlderSchema.messages($0) }
        #expect(stored.map(\.offset) == [1, 2])
        try await upgraded.close()

        try setVersion(4)
        do {
            _ = try SQLiteMessageLog(path: path)
            Issue.record("opened a file of a newer schema version")
        } catch let error as MessagingError {
            #expect(error.kind == .unavailable)
            #expect(error.message.contains(path))
            #expect(error.message.contains("schema is version 4, newer than this build's 3"))
        }
        #expect(try SQLiteOlderSchema.version(path: path) == 4)
    }
}
