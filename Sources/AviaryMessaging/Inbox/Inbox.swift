//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
public import GRDB

/// The idempotent-consumer inbox: a handler's own writes and the record "group G processed the
/// event (source, id)" commit in **one transaction** of the consumer's own database, so each
/// message has its effect exactly once, however often the log delivers it.
///
/// The log delivers at least once: a consumer killed after its effect and before its ack sees
/// the message again, and an ``OutboxRelay`` killed after publishing and before marking
/// publishes it again (same CloudEvent id). ``process(_:_:)`` inserts the record first; if it is
/// already there the delivery is a duplicate and the effect does not run; if the effect throws,
/// the record rolls back with it and the next delivery tries again.
///
/// ```swift
/// var migrations = NotificationsService.migrations
/// Inbox.addMigrations(to: &migrations)
/// let store = try SQLiteStore(url: url, migrations: migrations)
/// let inbox = Inbox(store: store, group: "notifications")
///
/// let outcome = try await inbox.process(delivery.message) { db in
///     try db.execute(sql: "INSERT INTO notifications (user_id, text) VALUES (?, ?)", arguments: [user, text])
/// }
/// try await log.ack(delivery)   // .processed or .duplicate: either way the effect is there once
/// ```
///
/// Only the effect's writes to this store are exactly once. A call to anything else (an e-mail, an
/// HTTP request) made in the effect can happen again after a crash; make it idempotent itself.
///
/// Records are kept until ``prune(processedBefore:)`` removes them; keep them longer than the log
/// retains messages and the outbox may hold them, or an old duplicate could be applied again.
public struct Inbox: Sendable {
    /// The table's name.
    public static let table = "aviary_inbox"

    /// Adds the inbox table to the consumer's migrations (once; the names are stable).
    ///
    /// ```swift
    /// Inbox.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout Migrations) {
        migrations.add("aviary-inbox v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE aviary_inbox (
                        consumer_group TEXT NOT NULL,
                        event_source TEXT NOT NULL,
                        event_id TEXT NOT NULL,
                        topic TEXT NOT NULL,
                        partition INTEGER NOT NULL,
                        message_offset INTEGER NOT NULL,
                        processed_at REAL NOT NULL,
                        PRIMARY KEY (consumer_group, event_source, event_id)
                    ) WITHOUT ROWID
                    """)
            try db.execute(sql: "CREATE INDEX aviary_inbox_processed_at ON aviary_inbox (processed_at)")
        }
    }

    /// The consumer's store, whose migrations include ``addMigrations(to:)``.
    public let store: SQLiteStore
    /// The consumer group the records belong to: two groups consuming into one store each apply
    /// a message once.
    public let group: String

    /// Creates an inbox for `group` in `store`.
    ///
    /// ```swift
    /// let inbox = Inbox(store: store, group: "notifications")
    /// ```
    public init(store: SQLiteStore, group: String) {
        self.store = store
        self.group = group
    }

    /// Applies `effect` to the store for `message` unless this group already did, in one write
    /// transaction with the record.
    ///
    /// ```swift
    /// switch try await inbox.process(message, { db in try apply(message, db) }) {
    /// case .processed: break
    /// case .duplicate: logger.debug("duplicate delivery skipped")
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - message: the delivered message; its event's `source` and `id` identify it.
    ///   - effect: the handler's writes; it runs at most once per committed record, inside the
    ///     transaction (do not call out of the process from it).
    /// - Returns: ``InboxOutcome/processed`` when the effect ran and committed,
    ///   ``InboxOutcome/duplicate`` when the record was already there (the effect did not run).
    /// - Throws: whatever `effect` throws, or the store's error; then nothing was recorded and
    ///   the message should be nacked (it will be delivered again).
    @discardableResult
    public func process(
        _ message: Message, _ effect: @escaping @Sendable (Database) throws -> Void
    ) async throws -> InboxOutcome {
        let group = self.group
        return try await self.store.write("inbox \(message.event.type)") { db -> InboxOutcome in
            try db.execute(
                sql: """
                    INSERT INTO aviary_inbox (
                        consumer_group, event_source, event_id, topic, partition, message_offset, processed_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (consumer_group, event_source, event_id) DO NOTHING
                    """,
                arguments: [
                    group, message.event.source, message.event.id, message.position.topic,
                    message.position.partition, message.position.offset, Date().timeIntervalSince1970,
                ])
            guard db.changesCount == 1 else { return .duplicate }
            try effect(db)
            return .processed
        }
    }

    /// Whether this group has processed the event (`source`, `id`).
    ///
    /// ```swift
    /// let done = try await inbox.hasProcessed(source: "/shop/orders", id: event.id)
    /// ```
    public func hasProcessed(source: String, id: String) async throws -> Bool {
        let group = self.group
        return try await self.store.read { db in
            try Bool.fetchOne(
                db,
                sql: "SELECT 1 FROM aviary_inbox WHERE consumer_group = ? AND event_source = ? AND event_id = ?",
                arguments: [group, source, id]) ?? false
        }
    }

    /// Deletes this group's records of messages processed before `date`, and returns how many.
    ///
    /// ```swift
    /// try await inbox.prune(processedBefore: Date().addingTimeInterval(-30 * 24 * 3600))
    /// ```
    @discardableResult
    public func prune(processedBefore date: Date) async throws -> Int {
        let group = self.group
        return try await self.store.write { db -> Int in
            try db.execute(
                sql: "DELETE FROM aviary_inbox WHERE consumer_group = ? AND processed_at < ?",
                arguments: [group, date.timeIntervalSince1970])
            return db.changesCount
        }
    }
}

/// What ``Inbox/process(_:_:)`` did.
public enum InboxOutcome: Sendable, Hashable {
    /// The effect ran and committed with the record.
    case processed
    /// The group had processed this event before; the effect did not run.
    case duplicate
}
