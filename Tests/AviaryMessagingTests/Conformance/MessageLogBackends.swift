//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryTestSupport
import Foundation
import Synchronization
import Testing

/// A backend the conformance suite runs against: it opens a fresh, empty log on a manual clock.
///
/// To add a backend, add one entry to ``MessageLogBackends/all``:
/// ```swift
/// static let postgres = MessageLogBackend(name: "postgres") { clock in
///     let database = try await TestPostgres.shared.freshDatabase()
///     return OpenedLog(log: try await PostgresMessageLog(url: database.url, clock: clock)) { await database.drop() }
/// }
/// ```
struct MessageLogBackend: Sendable, CustomTestStringConvertible {
    /// Shown in test names.
    var name: String
    /// Opens a fresh, empty log that reads time from `clock`.
    var open: @Sendable (ManualWallClock) async throws -> OpenedLog

    var testDescription: String { self.name }
}

/// A log under test and how to throw it away.
struct OpenedLog: Sendable {
    var log: any MessageLog
    var cleanup: @Sendable () async -> Void

    init(log: any MessageLog, cleanup: @escaping @Sendable () async -> Void = {}) {
        self.log = log
        self.cleanup = cleanup
    }
}

/// Every backend the conformance suite runs against.
enum MessageLogBackends {
    static let all: [MessageLogBackend] = [.sqlite, .postgres]
}

extension MessageLogBackend {
    /// A SQLite file in the temporary folder, with the default (durable) settings.
    static let sqlite = MessageLogBackend(name: "sqlite") { clock in
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-messaging-\(UUID().uuidString).db").path
        let log = try SQLiteMessageLog(path: path, clock: clock)
        return OpenedLog(log: log) {
            for suffix in ["", "-wal", "-shm", "-wakeups"] {
                try? FileManager.default.removeItem(atPath: path + suffix)
            }
        }
    }

    /// A fresh database on the test process's PostgreSQL server (`PostgresTestServer`, started
    /// once; `AVIARY_TEST_POSTGRES_URL` names another), polled every 50 ms besides LISTEN/NOTIFY.
    static let postgres = MessageLogBackend(name: "postgres") { clock in
        let url = try await PostgresTestServer.shared().makeDatabase()
        let log = try await PostgresMessageLog(
            url: url, clock: clock, configuration: PostgresMessageLog.Configuration(pollInterval: .milliseconds(50)))
        return OpenedLog(log: log)
    }

    /// Runs `body` with a fresh log and its clock, then closes and removes the log.
    func withLog<T>(_ body: (any MessageLog, ManualWallClock) async throws -> T) async throws -> T {
        let clock = ManualWallClock()
        let opened = try await self.open(clock)
        do {
            let result = try await body(opened.log, clock)
            try? await opened.log.close()
            await opened.cleanup()
            return result
        } catch {
            try? await opened.log.close()
            await opened.cleanup()
            throw error
        }
    }
}

/// A small event whose data is `{"n": n}`, at a whole second (the JSON time keeps milliseconds, so
/// events compare equal after a round trip through a store).
struct Numbered: Codable, Equatable {
    var n: Int
}

func numbered(_ n: Int, subject: String? = nil) throws -> CloudEvent {
    try CloudEvent(
        source: "/test", type: "test.numbered", subject: subject, time: Date(timeIntervalSince1970: 1_800_000_000),
        json: Numbered(n: n))
}

extension Delivery {
    /// The `n` of a ``numbered(_:subject:)`` event.
    var n: Int {
        (try? self.message.event.decodeData(as: Numbered.self).n) ?? -1
    }
}

/// Two keys that land in different partitions of a topic with `partitions` partitions.
func keysInDifferentPartitions(_ partitions: Int) -> (String, String) {
    let first = "key-0"
    let firstPartition = Partitioner.partition(forKey: first, partitions: partitions)
    for index in 1..<1000 where Partitioner.partition(forKey: "key-\(index)", partitions: partitions) != firstPartition
    {
        return (first, "key-\(index)")
    }
    preconditionFailure("FNV-1a spreads keys over partitions")
}

/// Expects `body` to throw a ``MessagingError`` of `kind`.
func expectMessagingError(
    _ kind: MessagingError.Kind, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected MessagingError.\(kind), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as MessagingError {
        #expect(error.kind == kind, "\(error.message)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected MessagingError.\(kind), got \(error)", sourceLocation: sourceLocation)
    }
}

/// A value shared by concurrent tasks (a `Mutex` in a class, so escaping closures can hold it).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        self.mutex = Mutex(value)
    }

    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result {
        self.mutex.withLock { value in body(&value) }
    }

    var value: Value { self.withLock { $0 } }

    func set(_ value: Value) { self.withLock { $0 = value } }
}
