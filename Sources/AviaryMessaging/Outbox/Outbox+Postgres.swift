//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
import Foundation
import Logging
public import PostgresNIO

/// The outbox on PostgreSQL.
///
/// ## Order per key with concurrent producers
/// A `BIGSERIAL` value is taken when the row is inserted, not when its transaction commits, so
/// two producers can commit `seq` 6 before `seq` 5: a relay that read committed rows in `seq`
/// order could publish 6, and 5 after it. `Outbox.enqueue(_:in: PostgresConnection)`
/// therefore takes a transaction-scoped advisory lock per (topic, key) *before* inserting: a
/// second producer of the same key waits until the first commits or rolls back, and only then
/// takes its `seq`. Per key, `seq` order is then commit order, and a committed row never has an
/// uncommitted predecessor of its key. Producers of different keys do not wait for each other.
/// (The alternative — the relay reading only rows older than `pg_snapshot_xmin` — delays every
/// row by the longest running transaction of the whole database; the lock costs only producers
/// of the same key, which are rare and short.)
///
/// ## Several relays
/// Each batch runs in one transaction that first takes a transaction-scoped advisory lock of the
/// outbox with `pg_try_advisory_xact_lock`: one relay publishes at a time and the others skip
/// their turn, so no row is published twice in normal operation and a later batch never
/// overtakes an earlier one (which `FOR UPDATE SKIP LOCKED` alone would allow: a second relay
/// would skip the locked head of a key and publish the key's next row first). The batch is
/// deleted in the same transaction after the log accepted it; a crash between the two publishes
/// it again (same event ids, absorbed by an ``Inbox`` or ``PostgresInbox``).
extension Outbox {
    /// The advisory lock class (first `int4` of the two-key form) of the per-key producer locks.
    static let postgresKeyLockClass: Int32 = 0x6176_6f6b  // "avok"
    /// The advisory lock class of the relays' turn (second key 0).
    static let postgresRelayLockClass: Int32 = 0x6176_6f72  // "avor"

    /// Adds the outbox table to a PostgreSQL service's migrations (once; the names are stable).
    ///
    /// ```swift
    /// var migrations = PostgresMigrations()
    /// migrations.add("v1: orders") { connection, logger in
    ///     try await connection.query("CREATE TABLE orders (id TEXT PRIMARY KEY)", logger: logger)
    /// }
    /// Outbox.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout PostgresMigrations) {
        migrations.add("aviary-outbox v1") { connection, logger in
            try await connection.query(
                """
                CREATE TABLE aviary_outbox (
                    seq BIGSERIAL PRIMARY KEY,
                    topic TEXT NOT NULL,
                    message_key TEXT NOT NULL,
                    event_id TEXT NOT NULL,
                    event_source TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    event_subject TEXT,
                    event_time DOUBLE PRECISION,
                    data_content_type TEXT,
                    data_schema TEXT,
                    data BYTEA,
                    extensions TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    deliver_at DOUBLE PRECISION,
                    enqueued_at DOUBLE PRECISION NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT
                )
                """, logger: logger)
        }
    }

    /// Adds `message` to the outbox, inside the caller's PostgreSQL transaction
    /// (``AviaryStorage/PostgresStore/withTransaction(_:isolation:_:)``).
    ///
    /// It holds a lock on the message's (topic, key) until the transaction ends, so that the
    /// relay publishes the key's messages in commit order (see the discussion of this
    /// extension). The relay finds the row at its next poll after the commit.
    ///
    /// ```swift
    /// try await store.withTransaction { connection in
    ///     try await connection.query("INSERT INTO orders (id) VALUES (\(order.id))", logger: store.logger)
    ///     try await Outbox.enqueue(OutgoingMessage(topic: "orders", key: order.id, event: placed), in: connection)
    /// }
    /// ```
    ///
    /// - Throws: ``MessagingError`` (`.invalidArgument`) for an invalid topic or event (roll back);
    ///   PostgreSQL's error when the table is missing or the insert fails.
    public static func enqueue(_ message: OutgoingMessage, in connection: PostgresConnection) async throws {
        try await self.enqueue([message], in: connection)
    }

    /// Adds several messages to the outbox, in order, inside the caller's PostgreSQL transaction.
    ///
    /// ```swift
    /// try await Outbox.enqueue([placed, reserved], in: connection)
    /// ```
    ///
    /// - Throws: as the single-message `enqueue(_:in:)`.
    public static func enqueue(_ messages: [OutgoingMessage], in connection: PostgresConnection) async throws {
        let logger = Logger(label: "aviary.messaging.outbox")
        for message in messages { try self.validate(message) }
        // Locks in one sorted order, so two producers of the same keys cannot deadlock here.
        let keys = Set(messages.map { "\($0.topic)\u{1F}\($0.key)" }).sorted()
        for key in keys {
            _ = try await connection.complete(
                "SELECT pg_advisory_xact_lock(\(self.postgresKeyLockClass), hashtext(\(key)))", logger: logger)
        }
        let now = Date().timeIntervalSince1970
        for message in messages {
            let event = message.event
            let extensions = try OutboxCoding.encode(event.extensions)
            let headers = try OutboxCoding.encode(message.headers)
            _ = try await connection.complete(
                """
                INSERT INTO aviary_outbox (
                    topic, message_key, event_id, event_source, event_type, event_subject, event_time,
                    data_content_type, data_schema, data, extensions, headers, deliver_at, enqueued_at)
                VALUES (\(message.topic), \(message.key), \(event.id), \(event.source), \(event.type),
                    \(event.subject), \(event.time?.timeIntervalSince1970), \(event.dataContentType),
                    \(event.dataSchema), \(event.data), \(extensions), \(headers),
                    \(message.deliverAt?.timeIntervalSince1970), \(now))
                """, logger: logger)
        }
    }

    /// The oldest pending messages on PostgreSQL, in `seq` order.
    ///
    /// ```swift
    /// let waiting = try await store.withConnection { connection in try await Outbox.pending(in: connection) }
    /// ```
    public static func pending(
        in connection: PostgresConnection, limit: Int = 100
    ) async throws
        -> [PendingOutboxMessage]
    {
        let rows = try await PostgresMessageLog.rows(
            connection, "SELECT * FROM aviary_outbox ORDER BY seq LIMIT \(limit)",
            Logger(label: "aviary.messaging.outbox"))
        return try rows.map(PendingOutboxMessage.init(row:))
    }

    /// How many messages wait to be published on PostgreSQL.
    ///
    /// ```swift
    /// let depth = try await store.withConnection { connection in try await Outbox.pendingCount(in: connection) }
    /// ```
    public static func pendingCount(in connection: PostgresConnection) async throws -> Int {
        let rows = try await PostgresMessageLog.rows(
            connection, "SELECT count(*) AS n FROM aviary_outbox", Logger(label: "aviary.messaging.outbox"))
        return Int(try rows.first?["n"].decode(Int64.self) ?? 0)
    }
}

extension PendingOutboxMessage {
    init(row: PostgresRandomAccessRow) throws {
        let sequence = try row["seq"].decode(Int64.self)
        let event = CloudEvent(
            id: try row["event_id"].decode(String.self), source: try row["event_source"].decode(String.self),
            type: try row["event_type"].decode(String.self), subject: try row["event_subject"].decode(String?.self),
            time: try row["event_time"].decode(Double?.self).map { Date(timeIntervalSince1970: $0) },
            dataContentType: try row["data_content_type"].decode(String?.self),
            dataSchema: try row["data_schema"].decode(String?.self), data: try row["data"].decode(Data?.self),
            extensions: try OutboxCoding.decode(
                try row["extensions"].decode(String.self), column: "extensions", sequence: sequence))
        self.init(
            sequence: sequence,
            message: OutgoingMessage(
                topic: try row["topic"].decode(String.self), key: try row["message_key"].decode(String.self),
                event: event,
                headers: try OutboxCoding.decode(
                    try row["headers"].decode(String.self), column: "headers", sequence: sequence),
                deliverAt: try row["deliver_at"].decode(Double?.self).map { Date(timeIntervalSince1970: $0) }),
            enqueuedAt: Date(timeIntervalSince1970: try row["enqueued_at"].decode(Double.self)),
            attempts: Int(try row["attempts"].decode(Int32.self)),
            lastError: try row["last_error"].decode(String?.self))
    }
}
