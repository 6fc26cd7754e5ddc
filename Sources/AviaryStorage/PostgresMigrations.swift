//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Logging
public import PostgresNIO

/// An ordered list of named PostgreSQL schema migrations, the counterpart of ``Migrations`` for
/// ``PostgresStore``.
///
/// Each migration runs once per database, in its own transaction, together with the row that
/// records it in `aviary_migrations`; starters of the same database (several replicas booting at
/// once) are serialised by an advisory lock, so a migration never runs twice.
///
/// ```swift
/// var migrations = PostgresMigrations()
/// migrations.add("v1: orders") { connection, logger in
///     try await connection.query("CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)", logger: logger)
/// }
/// ```
public struct PostgresMigrations: Sendable {
    /// One migration: its name and what it does.
    struct Migration: Sendable {
        var name: String
        var migrate: @Sendable (PostgresConnection, Logger) async throws -> Void
    }

    private(set) var list: [Migration] = []

    /// An empty list.
    public init() {}

    /// Appends a migration. Names must be unique and never change once released.
    ///
    /// - Parameters:
    ///   - name: the migration's name, recorded in `aviary_migrations`.
    ///   - migrate: the schema change; it runs inside the migration's transaction (do not commit).
    /// - Precondition: `name` was not added before.
    public mutating func add(
        _ name: String, _ migrate: @escaping @Sendable (PostgresConnection, Logger) async throws -> Void
    ) {
        precondition(!self.list.contains { $0.name == name }, "migration \"\(name)\" is added twice")
        self.list.append(Migration(name: name, migrate: migrate))
    }

    /// Appends the migrations of `other` (a module's own schema, for example) after these.
    ///
    /// - Precondition: no name of `other` was added before.
    public mutating func append(contentsOf other: PostgresMigrations) {
        for migration in other.list {
            self.add(migration.name, migration.migrate)
        }
    }
}
