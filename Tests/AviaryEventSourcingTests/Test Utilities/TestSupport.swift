//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import AviaryTestSupport
import Foundation
import Logging
import Synchronization
import Testing

/// A folder under the system's temporary directory, removed by `remove()`.
struct TemporaryDirectory: Sendable {
    let url: URL

    init() throws {
        self.url = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-events-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String {
        self.url.appendingPathComponent(name).path
    }

    func remove() {
        try? FileManager.default.removeItem(at: self.url)
    }
}

/// Wall-clock time that moves only when told to (lock expiry, timestamps).
final class TestWallClock: Sendable {
    private let current: Mutex<Date>

    init(start: Date = Date(timeIntervalSince1970: 1_800_000_000.123456)) {
        self.current = Mutex(start)
    }

    var now: Date { self.current.withLock { $0 } }

    var function: @Sendable () -> Date { { self.now } }

    func advance(seconds: Double) {
        self.current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }
}

/// A backend under the conformance suite: `make(directory, now)` opens the backend's store
/// for that directory; calling it twice with the same directory opens the same database twice
/// (two "processes").
struct EventStoreBackend: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable (TemporaryDirectory, @escaping @Sendable () -> Date) async throws -> any EventStore

    var testDescription: String { self.name }

    static let sqlite = EventStoreBackend(name: "sqlite") { directory, now in
        try SQLiteEventStore(url: StoreURL(.sqlite(path: directory.path("events.db"))), now: now)
    }

    /// A database on the test process's PostgreSQL server (`PostgresTestServer`, started once;
    /// `AVIARY_TEST_POSTGRES_URL` names another), one per directory: the first `make` for a
    /// directory creates it, later ones open it again (another pool: another "process").
    static let postgres = EventStoreBackend(name: "postgres") { directory, now in
        let url = try await PostgresDatabases.url(for: directory)
        return try await PostgresEventStore(url: url, logger: quietLogger, now: now)
    }

    /// Every backend the conformance suite runs on.
    static let all: [EventStoreBackend] = [.sqlite, .postgres]
}

/// Closes what a backend opened (a PostgreSQL store's pool); nothing for SQLite.
func close(_ store: any EventStore) async {
    await (store as? PostgresEventStore)?.close()
}

let quietLogger = Logger(label: "aviary-events-tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// The PostgreSQL database of each test directory.
enum PostgresDatabases {
    private static let urls = Mutex<[String: Task<StoreURL, any Error>]>([:])

    static func url(for directory: TemporaryDirectory) async throws -> StoreURL {
        let task = Self.urls.withLock { urls in
            if let task = urls[directory.url.path] { return task }
            let task = Task { try await PostgresTestServer.shared().makeDatabase() }
            urls[directory.url.path] = task
            return task
        }
        return try await task.value
    }
}

/// A value shared by tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        self.mutex = Mutex(value)
    }

    func withLock<T: Sendable>(_ body: (inout Value) throws -> T) rethrows -> T {
        try self.mutex.withLock { try body(&$0) }
    }

    var value: Value { self.mutex.withLock { $0 } }
}
