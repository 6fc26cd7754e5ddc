//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage
public import Foundation
public import GRDB

/// The transactional outbox: a service writes its own data and the events it emits in **one
/// transaction** of its own database; an ``OutboxRelay`` publishes the events to a ``MessageLog``
/// afterwards.
///
/// Add the outbox table to the service's migrations, then enqueue inside the write transaction
/// that changes the data. Either both commit or neither does: there is no window in which the
/// order exists and its event is lost, or the event is published for an order that was rolled
/// back.
///
/// ```swift
/// var migrations = Migrations()
/// migrations.add("v1: orders") { db in try db.execute(sql: "CREATE TABLE orders (id TEXT PRIMARY KEY)") }
/// Outbox.addMigrations(to: &migrations)
/// let store = try SQLiteStore(url: StoreURL(parsing: "sqlite://.aviary/orders.db"), migrations: migrations)
///
/// try await store.write { db in
///     try db.execute(sql: "INSERT INTO orders (id) VALUES (?)", arguments: ["order-17"])
///     let placed = try CloudEvent(source: "/shop/orders", type: "order.placed", subject: "order-17",
///                                 json: ["orderId": "order-17"])
///     try Outbox.enqueue(OutgoingMessage(topic: "orders", event: placed), in: db)
/// }
/// ```
///
/// ## The table
/// `aviary_outbox` holds one row per pending message, in enqueue order (`seq`). SQLite has one
/// writer at a time, so `seq` order is commit order, and the relay publishes rows in that order
/// (which keeps the order per key). The relay deletes a row once the log has it; a row that could
/// not be published yet records `attempts` and `last_error`.
///
/// ## PostgreSQL
/// The same API works in a ``AviaryStorage/PostgresStore`` transaction:
/// `Outbox.addMigrations(to: &postgresMigrations)` and
/// `try await Outbox.enqueue(message, in: connection)` inside `withTransaction`. There, enqueue
/// also locks the message's (topic, key) until commit, so that per key `seq` order is commit
/// order (see `Outbox+Postgres.swift`).
public enum Outbox {
    /// The table's name.
    public static let table = "aviary_outbox"

    /// Adds the outbox table to a service's migrations (once; the names are stable).
    ///
    /// ```swift
    /// var migrations = OrdersService.migrations
    /// Outbox.addMigrations(to: &migrations)
    /// ```
    public static func addMigrations(to migrations: inout Migrations) {
        migrations.add("aviary-outbox v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE aviary_outbox (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        topic TEXT NOT NULL,
                        message_key TEXT NOT NULL,
                        event_id TEXT NOT NULL,
                        event_source TEXT NOT NULL,
                        event_type TEXT NOT NULL,
                        event_subject TEXT,
                        event_time REAL,
                        data_content_type TEXT,
                        data_schema TEXT,
                        data BLOB,
                        extensions TEXT NOT NULL,
                        headers TEXT NOT NULL,
                        deliver_at REAL,
                        enqueued_at REAL NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        last_error TEXT
                    )
                    """)
        }
    }

    /// Adds `message` to the outbox, inside the caller's write transaction.
    ///
    /// The message is published by the ``OutboxRelay`` after the transaction commits (the relays
    /// of this process are woken at once); if the transaction rolls back, it never is. The
    /// event's `id` stays the same however often the relay publishes it, so consumers deduplicate
    /// on it (see ``Inbox``).
    ///
    /// ```swift
    /// try await store.write { db in
    ///     try saveOrder(order, db)
    ///     try Outbox.enqueue(OutgoingMessage(topic: "orders", key: order.id, event: placed), in: db)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - message: the message; its topic must exist in the log by the time the relay publishes.
    ///   - db: the open write transaction of the service's store.
    /// - Throws: ``MessagingError`` (`.invalidArgument`) when `db` is not inside a transaction,
    ///   the topic name is not valid, or the event breaks a CloudEvents rule (the caller's
    ///   transaction should then roll back); GRDB's error when the outbox table is missing
    ///   (``addMigrations(to:)`` was not called) or the write fails.
    public static func enqueue(_ message: OutgoingMessage, in db: Database) throws {
        try self.enqueue([message], in: db)
    }

    /// Adds several messages to the outbox, in order, inside the caller's write transaction.
    ///
    /// ```swift
    /// try Outbox.enqueue([placed, reserved], in: db)
    /// ```
    ///
    /// - Throws: as ``enqueue(_:in:)``.
    public static func enqueue(_ messages: [OutgoingMessage], in db: Database) throws {
        guard db.isInsideTransaction else {
            throw MessagingError(
                .invalidArgument,
                "Outbox.enqueue must run inside the write transaction that changes the service's data "
                    + "(SQLiteStore.write), so that both commit together")
        }
        let now = Date().timeIntervalSince1970
        for message in messages {
            try self.validate(message)
            let event = message.event
            try db.execute(
                sql: """
                    INSERT INTO aviary_outbox (
                        topic, message_key, event_id, event_source, event_type, event_subject, event_time,
                        data_content_type, data_schema, data, extensions, headers, deliver_at, enqueued_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    message.topic, message.key, event.id, event.source, event.type, event.subject,
                    event.time?.timeIntervalSince1970, event.dataContentType, event.dataSchema, event.data,
                    try OutboxCoding.encode(event.extensions), try OutboxCoding.encode(message.headers),
                    message.deliverAt?.timeIntervalSince1970, now,
                ])
        }
        if !messages.isEmpty {
            // Wake this process's relays once the data and the events are durable.
            db.afterNextTransaction(onCommit: { _ in OutboxSignal.shared.notify() })
        }
    }

    /// Checks a message before it goes into the outbox.
    static func validate(_ message: OutgoingMessage) throws {
        guard Partitioner.isValidName(message.topic) else {
            throw MessagingError(
                .invalidArgument,
                "outbox message \(message.event.id): topic \"\(message.topic)\" is not a valid name "
                    + "(1-200 letters, digits, '.', '_' or '-')")
        }
        let problems = message.event.validate()
        guard problems.isEmpty else {
            throw MessagingError(
                .invalidArgument,
                "outbox message \(message.event.id): invalid CloudEvent: \(problems.joined(separator: "; "))")
        }
    }

    /// The oldest pending messages, in the order the relay publishes them.
    ///
    /// ```swift
    /// let waiting = try await store.read { db in try Outbox.pending(in: db, limit: 10) }
    /// ```
    ///
    /// - Throws: GRDB's error; ``MessagingError`` (`.invalidArgument`) for a row that cannot be
    ///   decoded (its JSON columns were edited by hand).
    public static func pending(in db: Database, limit: Int = 100) throws -> [PendingOutboxMessage] {
        try Row.fetchAll(db, sql: "SELECT * FROM aviary_outbox ORDER BY seq LIMIT ?", arguments: [limit])
            .map(PendingOutboxMessage.init(row:))
    }

    /// How many messages wait to be published.
    ///
    /// ```swift
    /// let depth = try await store.read { db in try Outbox.pendingCount(in: db) }
    /// ```
    public static func pendingCount(in db: Database) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM aviary_outbox") ?? 0
    }
}

/// A message waiting in the outbox.
public struct PendingOutboxMessage: Sendable, Hashable {
    /// Its place in the outbox (enqueue order).
    public var sequence: Int64
    /// The message to publish.
    public var message: OutgoingMessage
    /// When it was enqueued.
    public var enqueuedAt: Date
    /// Failed attempts to publish it.
    public var attempts: Int
    /// The last failure, if any.
    public var lastError: String?

    init(sequence: Int64, message: OutgoingMessage, enqueuedAt: Date, attempts: Int, lastError: String?) {
        self.sequence = sequence
        self.message = message
        self.enqueuedAt = enqueuedAt
        self.attempts = attempts
        self.lastError = lastError
    }

    init(row: Row) throws {
        let sequence: Int64 = row["seq"]
        let time: Double? = row["event_time"]
        let event = CloudEvent(
            id: row["event_id"], source: row["event_source"], type: row["event_type"], subject: row["event_subject"],
            time: time.map { Date(timeIntervalSince1970: $0) }, dataContentType: row["data_content_type"],
            dataSchema: row["data_schema"], data: row["data"],
            extensions: try OutboxCoding.decode(row["extensions"], column: "extensions", sequence: sequence))
        let deliverAt: Double? = row["deliver_at"]
        self.sequence = sequence
        self.message = OutgoingMessage(
            topic: row["topic"], key: row["message_key"], event: event,
            headers: try OutboxCoding.decode(row["headers"], column: "headers", sequence: sequence),
            deliverAt: deliverAt.map { Date(timeIntervalSince1970: $0) })
        self.enqueuedAt = Date(timeIntervalSince1970: row["enqueued_at"])
        self.attempts = row["attempts"]
        self.lastError = row["last_error"]
    }
}

/// String dictionaries as JSON text in the outbox's columns (keys sorted), written and read as
/// the log's headers are (``StoredJSON``, ``StoredEventReader``), without `JSONEncoder`.
enum OutboxCoding {
    static func encode(_ dictionary: [String: String]) throws -> String {
        StoredJSON.headers(dictionary)
    }

    static func decode(_ text: String, column: String, sequence: Int64) throws -> [String: String] {
        do {
            return try StoredEventReader.decodeHeaders(text)
        } catch {
            throw MessagingError(
                .invalidArgument,
                "aviary_outbox row \(sequence): column \(column) is not a JSON object of strings: \(error)")
        }
    }
}
