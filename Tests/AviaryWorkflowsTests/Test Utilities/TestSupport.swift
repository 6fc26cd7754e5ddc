//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import AviaryTestSupport
import AviaryWorkflows
import Foundation
import GRDB
import Synchronization
import Testing

/// A fresh folder under the temporary directory, removed by the test.
struct TemporaryDirectory: Sendable {
    let url: URL
    /// What tests opened in the folder that must be closed before it goes (PostgreSQL pools).
    let closers = Locked<[@Sendable () async -> Void]>([])

    init() throws {
        self.url = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-sagas-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String {
        self.url.appendingPathComponent(name).path
    }

    func remove() {
        try? FileManager.default.removeItem(at: self.url)
    }

    /// Runs the closers registered with ``onClose(_:)``, newest first.
    func close() async {
        let closers = self.closers.withLock { closers -> [@Sendable () async -> Void] in
            defer { closers = [] }
            return closers
        }
        for close in closers.reversed() { await close() }
    }

    /// Registers work for ``close()``.
    func onClose(_ close: @escaping @Sendable () async -> Void) {
        self.closers.withLock { $0.append(close) }
    }
}

/// A saga store backend for the conformance suite: a factory that opens the store for a folder
/// (opening twice for the same folder re-opens the same data, as after a restart).
struct SagaStoreBackend: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable (TemporaryDirectory) async throws -> any SagaStore

    var testDescription: String { self.name }

    static let sqlite = SagaStoreBackend(name: "sqlite") { directory in
        try SQLiteSagaStore(url: StoreURL(.sqlite(path: directory.path("sagas.db"))))
    }

    /// A database on the test process's PostgreSQL server (`PostgresTestServer`, started once):
    /// the first open in a folder makes a fresh database and notes its URL in the folder, later
    /// opens (a restart) open the same database with a pool of their own.
    static let postgres = SagaStoreBackend(name: "postgres") { directory in
        try await directory.openPostgresSagaStore()
    }

    /// Every backend the conformance suite runs on.
    static let all: [SagaStoreBackend] = [.sqlite, .postgres]
}

/// A value shared by tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        self.mutex = Mutex(value)
    }

    @discardableResult
    func withLock<T: Sendable>(_ body: (inout Value) throws -> T) rethrows -> T {
        try self.mutex.withLock { try body(&$0) }
    }

    var value: Value { self.mutex.withLock { $0 } }
}

/// A callee with a real idempotency table in its own SQLite database: an operation carries an
/// idempotency key; the first call with a key applies its effect (moves `balance`), later calls
/// with the same key return without applying. `calls` counts every call per key.
struct IdempotentCallee: Sendable {
    let store: SQLiteStore

    init(path: String) throws {
        var migrations = Migrations()
        migrations.add("callee v1") { db in
            try db.execute(sql: "CREATE TABLE applied (key TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
            try db.execute(sql: "CREATE TABLE calls (key TEXT PRIMARY KEY, count INTEGER NOT NULL)")
            try db.execute(sql: "CREATE TABLE balance (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)")
            try db.execute(sql: "INSERT INTO balance VALUES (1, 0)")
        }
        self.store = try SQLiteStore(url: StoreURL(.sqlite(path: path)), migrations: migrations)
    }

    /// Applies `amount` once per key.
    func apply(key: String, amount: Int) async throws {
        try await self.store.write { db in
            try db.execute(
                sql: "INSERT INTO calls VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET count = count + 1",
                arguments: [key])
            try db.execute(
                sql: "INSERT INTO applied VALUES (?, ?) ON CONFLICT (key) DO NOTHING", arguments: [key, amount])
            if db.changesCount == 1 {
                try db.execute(sql: "UPDATE balance SET value = value + ?", arguments: [amount])
            }
        }
    }

    var balance: Int {
        get async throws {
            try await self.store.read { db in try Int.fetchOne(db, sql: "SELECT value FROM balance") ?? 0 }
        }
    }

    func calls(_ key: String) async throws -> Int {
        try await self.store.read { db in
            try Int.fetchOne(db, sql: "SELECT count FROM calls WHERE key = ?", arguments: [key]) ?? 0
        }
    }

    func appliedKeys() async throws -> [String] {
        try await self.store.read { db in try String.fetchAll(db, sql: "SELECT key FROM applied ORDER BY rowid") }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension TemporaryDirectory {
    /// The URL of this folder's PostgreSQL database, made on first use.
    func postgresURL() async throws -> StoreURL {
        let file = self.path("postgres-url")
        if let text = try? String(contentsOfFile: file, encoding: .utf8) {
            return try StoreURL(parsing: text)
        }
        let url = try await PostgresTestServer.shared().makeDatabase()
        try url.description.write(toFile: file, atomically: true, encoding: .utf8)
        return url
    }

    /// A ``PostgresSagaStore`` on this folder's database, closed by ``close()``.
    func openPostgresSagaStore() async throws -> PostgresSagaStore {
        let store = try await PostgresSagaStore(url: try await self.postgresURL())
        self.onClose { await store.close() }
        return store
    }
}
