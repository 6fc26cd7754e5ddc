//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
public import GRDB
public import Tracing

/// A service's own SQLite database: a GRDB pool in WAL mode with versioned migrations.
///
/// Opening creates the parent folder, turns on WAL (readers never block the writer), sets a busy
/// timeout so that several processes can share the file, and applies the migrations that have not
/// run yet, each in its own transaction. A failure names the path and the migration.
///
/// ```swift
/// var migrations = Migrations()
/// migrations.add("create orders") { db in
///     try db.execute(sql: "CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
/// }
/// let store = try SQLiteStore(url: StoreURL(parsing: "sqlite://.aviary/shop/orders.db"), migrations: migrations)
/// try await store.write { db in try db.execute(sql: "INSERT INTO orders VALUES (?, ?)", arguments: ["o1", 4200]) }
/// ```
public final class SQLiteStore: Sendable {
    /// The underlying GRDB database (a `DatabasePool` for files, a `DatabaseQueue` in memory).
    public let database: any DatabaseWriter
    /// Where the store lives.
    public let url: StoreURL
    /// The owning service's tracer: reads and writes made inside a traced request get a child span.
    public let tracer: (any Tracer)?

    /// How long opening keeps retrying a file another process holds locked (see ``SQLiteOpening``).
    static let busyOpenLimit = Duration.seconds(60)

    /// Opens (creating if needed) the store at `url` and migrates it.
    ///
    /// Another process holding the file locked (creating or migrating it too) is waited for, up
    /// to a minute, rather than reported.
    ///
    /// - Parameters:
    ///   - url: where the store lives.
    ///   - migrations: the schema migrations, applied in order.
    ///   - tracer: the owning service's tracer (`AviaryApplication.tracer`), for database spans.
    /// - Throws: ``AviaryCore/AviaryError`` when the URL is not a SQLite URL, the folder cannot be
    ///   created, or a migration fails (the cause is GRDB's error).
    public init(url: StoreURL, migrations: Migrations = Migrations(), tracer: (any Tracer)? = nil) throws {
        self.url = url
        self.tracer = tracer
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        switch url.kind {
        case .sqlite(let path):
            let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
            do {
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            } catch {
                throw AviaryError(
                    .internal, "cannot create the folder of \(path): \(error.localizedDescription)", cause: error)
            }
            do {
                self.database = try SQLiteOpening.retryingBusy(for: Self.busyOpenLimit) {
                    try DatabasePool(path: path, configuration: configuration)
                }
            } catch {
                throw AviaryError(.unavailable, "cannot open SQLite database \(path): \(error)", cause: error)
            }
        case .sqliteInMemory:
            self.database = try DatabaseQueue(configuration: configuration)
        case .postgres:
            throw AviaryError(.invalidArgument, "SQLiteStore cannot open \(url); use a sqlite:// URL")
        }
        do {
            let database = self.database
            try SQLiteOpening.retryingBusy(for: Self.busyOpenLimit) { try migrations.migrator.migrate(database) }
        } catch {
            throw AviaryError(.internal, "migrating \(url) failed: \(error)", cause: error)
        }
    }

    /// Runs `body` in a write transaction; it commits when `body` returns and rolls back when it throws.
    ///
    /// ```swift
    /// try await store.write("insert order") { db in try order.insert(db) }
    /// ```
    ///
    /// - Parameters:
    ///   - operation: the span's name inside a traced request (`sqlite write` by default).
    ///   - body: the transaction.
    public func write<T: Sendable>(
        _ operation: String? = nil, _ body: @Sendable @escaping (Database) throws -> T
    ) async throws -> T {
        guard let tracer = self.tracer, let parent = ServiceContext.current else {
            return try await self.database.write(body)
        }
        return try await self.traced(tracer, parent, operation ?? "sqlite write") {
            try await self.database.write(body)
        }
    }

    /// Runs `body` with a consistent read-only view.
    ///
    /// - Parameters:
    ///   - operation: the span's name inside a traced request (`sqlite read` by default).
    ///   - body: the reads.
    public func read<T: Sendable>(
        _ operation: String? = nil, _ body: @Sendable @escaping (Database) throws -> T
    ) async throws -> T {
        guard let tracer = self.tracer, let parent = ServiceContext.current else {
            return try await self.database.read(body)
        }
        return try await self.traced(tracer, parent, operation ?? "sqlite read") { try await self.database.read(body) }
    }

    /// A client span (OpenTelemetry database conventions) around one database call. Calls made
    /// outside any trace (migrations, background loops) get none, so that they do not start traces.
    private func traced<T>(
        _ tracer: any Tracer, _ parent: ServiceContext, _ name: String, _ call: () async throws -> T
    ) async throws -> T {
        let span = tracer.startSpan(name, context: parent, ofKind: .client)
        defer { span.end() }
        span.attributes["db.system.name"] = "sqlite"
        span.attributes["db.namespace"] = self.url.description
        do {
            return try await call()
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            throw error
        }
    }

    /// Checks that the database answers a query; used by readiness probes.
    ///
    /// - Throws: GRDB's error when the database cannot be read.
    public func ping() async throws {
        _ = try await self.database.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }
}

/// An ordered list of named schema migrations; each runs once, in its own transaction.
///
/// ```swift
/// var migrations = Migrations()
/// migrations.add("v1: users") { db in try db.execute(sql: "CREATE TABLE users (id TEXT PRIMARY KEY)") }
/// ```
public struct Migrations: Sendable {
    var migrator = DatabaseMigrator()

    /// An empty list.
    public init() {}

    /// Appends a migration. Names must be unique and never change once released.
    ///
    /// - Precondition: `name` was not added before.
    public mutating func add(_ name: String, _ migrate: @escaping @Sendable (Database) throws -> Void) {
        self.migrator.registerMigration(name, migrate: migrate)
    }
}
