//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import GRDB
import Testing

@Suite("SQLiteStore", .timeLimit(.minutes(1)))
struct SQLiteStoreTests {
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-storage-\(UUID().uuidString)/nested/test.db").path
    }

    static var migrations: Migrations {
        var migrations = Migrations()
        migrations.add("v1") { db in try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)") }
        return migrations
    }

    @Test("store URLs parse the documented forms and refuse others")
    func urls() throws {
        #expect(try StoreURL(parsing: "sqlite:///tmp/a.db").kind == .sqlite(path: "/tmp/a.db"))
        #expect(try StoreURL(parsing: "sqlite://.aviary/a.db").kind == .sqlite(path: ".aviary/a.db"))
        #expect(try StoreURL(parsing: "sqlite::memory:").kind == .sqliteInMemory)
        #expect(try StoreURL(parsing: "postgres://u@h/db").kind == .postgres(url: "postgres://u@h/db"))
        #expect(throws: AviaryError.self) { try StoreURL(parsing: "mysql://x") }
        #expect(throws: AviaryError.self) { try StoreURL(parsing: "sqlite://") }
    }

    @Test("opening creates the folder, turns on WAL and migrates once")
    func openAndMigrate() async throws {
        let path = Self.temporaryPath()
        defer {
            try? FileManager.default.removeItem(
                atPath: URL(fileURLWithPath: path).deletingLastPathComponent().deletingLastPathComponent().path)
        }
        let store = try SQLiteStore(url: StoreURL(.sqlite(path: path)), migrations: Self.migrations)
        let mode = try await store.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
        #expect(mode == "wal")
        try await store.write { db in try db.execute(sql: "INSERT INTO items (name) VALUES ('a')") }
        // Reopening applies no migration twice and keeps the data.
        let reopened = try SQLiteStore(url: StoreURL(.sqlite(path: path)), migrations: Self.migrations)
        let count = try await reopened.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM items") }
        #expect(count == 1)
        try await reopened.ping()
    }

    @Test("a failing transaction rolls back everything it wrote")
    func rollback() async throws {
        let store = try SQLiteStore(url: StoreURL(.sqliteInMemory), migrations: Self.migrations)
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await store.write { db in
                try db.execute(sql: "INSERT INTO items (name) VALUES ('lost')")
                throw Boom()
            }
        }
        let count = try await store.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM items") }
        #expect(count == 0)
    }

    @Test("a failing migration is reported with the store's URL")
    func failingMigration() throws {
        var migrations = Migrations()
        migrations.add("broken") { db in try db.execute(sql: "CREATE TABLE (") }
        #expect {
            try SQLiteStore(url: StoreURL(.sqliteInMemory), migrations: migrations)
        } throws: { error in
            "\(error)".contains("migrating sqlite::memory: failed")
        }
    }
}
