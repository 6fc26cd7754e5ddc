//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
import Logging
public import PostgresNIO

/// The idempotent-consumer inbox in a PostgreSQL store: the counterpart of ``Inbox``. The
/// handler's writes and the record "group G processed the event (source, id)" commit in one
/// transaction, so each message has its effect once however often the log delivers it.
///
/// ``process(_:_:)`` inserts the record first (`ON CONFLICT DO NOTHING`); a second delivery
/// racing the first waits on the record's key until the first commits (then it is a duplicate)
/// or rolls back (then it applies).
///
/// ```swift
/// var migrations = NotificationsService.migrations
/// PostgresInbox.addMigrations(to: &migrations)
/// let inbox = PostgresInbox(store: store, group: "notifications")
/// let outcome = try await inbox.process(delivery.message) { connection in
///     try await connection.query("INSERT INTO notifications (user_id) VALUES (\(user))", logger: store.logger)
/// }
/// try await log.ack(delivery)
/// ```
public struct PostgresInbox: Sendable {
    /// The table's name (as ``Inbox/table``).
    public static let table = Inbox.table

    /// Adds the inbox table to a PostgreSQL consumer's migrations (once; the names are stable).
    ///
    /// ```swift
    /// PostgresInbox.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary-inbox v1") { connection, logger in
            try await connection.query(
                """
                CREATE TABLE aviary_inbox (
                    consumer_group TEXT NOT NULL,
                    event_source TEXT NOT NULL,
                    event_id TEXT NOT NULL,
                    topic TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    message_offset BIGINT NOT NULL,
                    processed_at DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (consumer_group, event_source, event_id)
                )
                """, logger: logger)
            try await connection.query(
                "CREATE INDEX aviary_inbox_processed_at ON aviary_inbox (processed_at)", logger: logger)
        }
    }

    /// The consumer's store, whose migrations include ``addMigrations(to:)``.
    public let store: PostgresStore
    /// The consumer group the records belong to.
    public let group: String

    /// Creates an inbox for `group` in `store`.
    ///
    /// ```swift
    /// let inbox = PostgresInbox(store: store, group: "notifications")
    /// ```
    public init(store: PostgresStore, group: String) {
        self.store = store
        self.group = group
    }

    /// Applies `effect` for `message` unless this group already did, in one transaction with the
    /// record.
    ///
    /// ```swift
    /// switch try await inbox.process(message, { connection in try await apply(message, connection) }) {
    /// case .processed: break
    /// case .duplicate: logger.debug("duplicate delivery skipped")
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - message: the delivered message; its event's `source` and `id` identify it.
    ///   - effect: the handler's writes on the transaction's connection; it may run again when
    ///     the store retries a serialization failure, so it must not act outside the database.
    /// - Returns: ``InboxOutcome/processed`` when the effect ran and committed,
    ///   ``InboxOutcome/duplicate`` when the record was already there (the effect did not run).
    /// - Throws: whatever `effect` throws, or the store's error; then nothing was recorded.
    @discardableResult
    public func process(
        _ message: Message, _ effect: @escaping @Sendable (PostgresConnection) async throws -> Void
    ) async throws -> InboxOutcome {
        let group = self.group
        let logger = self.store.logger
        return try await self.store.withTransaction("inbox \(message.event.type)") { connection -> InboxOutcome in
            let inserted = try await PostgresMessageLog.execute(
                connection,
                """
                INSERT INTO aviary_inbox (
                    consumer_group, event_source, event_id, topic, partition, message_offset, processed_at)
                VALUES (\(group), \(message.event.source), \(message.event.id), \(message.position.topic),
                    \(message.position.partition), \(message.position.offset), \(Date().timeIntervalSince1970))
                ON CONFLICT (consumer_group, event_source, event_id) DO NOTHING
                """, logger)
            guard inserted == 1 else { return .duplicate }
            try await effect(connection)
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
        let logger = self.store.logger
        return try await self.store.withConnection { connection in
            let rows = try await PostgresMessageLog.rows(
                connection,
                """
                SELECT 1 AS one FROM aviary_inbox
                WHERE consumer_group = \(group) AND event_source = \(source) AND event_id = \(id)
                """, logger)
            return !rows.isEmpty
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
        let logger = self.store.logger
        return try await self.store.withConnection { connection in
            try await PostgresMessageLog.execute(
                connection,
                "DELETE FROM aviary_inbox WHERE consumer_group = \(group) AND processed_at < \(date.timeIntervalSince1970)",
                logger)
        }
    }
}
