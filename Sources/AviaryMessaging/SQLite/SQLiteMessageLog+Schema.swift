//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB

extension SQLiteMessageLog {
    /// The schema version this build writes (`PRAGMA user_version`).
    ///
    /// - 1: one `messages` table for every topic and partition, with a unique index on
    ///   (topic, partition, offset).
    /// - 2: the same tables; a publish no longer writes `partitions.last_offset`, which became a
    ///   lower bound (``newestOffset(_:table:topic:partition:)``). A build at version 1 does not
    ///   check the version, so it must not share a file with this one (its publishes fail on the
    ///   position index, its consumers stop at the counter); builds from version 2 on refuse files
    ///   of a newer version than their own, so that such a change is a clear error instead.
    /// - 3: each partition's messages in a table of its own, `messages_<n>` (``messageTable(_:)``),
    ///   whose rowid is the offset, with no index: a publish appends to the end of one b-tree
    ///   instead of writing a row and an entry of a shared index. `n` is `partitions.table_id`,
    ///   given when the topic is created and never changed. Files of versions 1 and 2 are
    ///   upgraded in place (``upgradeToPartitionTables(_:)``).
    static let schemaVersion = 3

    /// A file written by a newer build than this one.
    struct NewerSchema: Error, CustomStringConvertible {
        var found: Int
        var description: String {
            "its schema is version \(found), newer than this build's \(SQLiteMessageLog.schemaVersion): open it with the newer Aviary that wrote it"
        }
    }

    /// Creates or upgrades the schema. Times are milliseconds since 1970 (wall clock, shared by
    /// processes). The version check and the changes run in one `BEGIN IMMEDIATE` transaction, so
    /// that processes opening a new file at the same moment run them once, one after the other.
    /// (GRDB's `DatabaseMigrator` reads the applied migrations before its transaction starts, which
    /// two processes can both do.)
    static func migrate(_ pool: DatabasePool) throws {
        // A log already at this version needs no write lock: every process opening it at once
        // (consumers starting together) would otherwise queue for one just to read the version.
        let current = try pool.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0 }
        guard current <= Self.schemaVersion else { throw NewerSchema(found: current) }
        guard current < Self.schemaVersion else { return }
        try pool.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                let version = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
                guard version <= Self.schemaVersion else { throw NewerSchema(found: version) }
                guard version < Self.schemaVersion else { return .commit }
                // A file of version 1 or 2 has its messages in one table; a new file has none.
                if try db.tableExists("messages") {
                    try Self.upgradeToPartitionTables(db)
                } else {
                    try db.execute(sql: Self.sharedTablesSQL)
                    try db.execute(sql: Self.partitionsSQL)
                }
                try db.execute(sql: "PRAGMA user_version = \(Self.schemaVersion)")
                return .commit
            }
        }
    }

    /// A partition's table of messages: its offset is the rowid (``MessageInserter`` appends to
    /// it in offset order); the topic and partition are those of the `partitions` row whose
    /// `table_id` is `table`. The name is made from the integer only, never from a topic's name.
    static func messageTable(_ table: Int64) -> String { "messages_\(table)" }

    /// Creates the message table `table` (in a write transaction).
    static func createMessageTable(_ db: Database, _ table: Int64) throws {
        try db.execute(
            sql: """
                CREATE TABLE \(Self.messageTable(table)) (
                    offset INTEGER PRIMARY KEY,
                    key TEXT NOT NULL,
                    event TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    appended_at INTEGER NOT NULL,
                    bytes INTEGER NOT NULL
                )
                """)
    }

    /// `partitions` as version 3 creates it.
    private static let partitionsSQL = """
        -- last_offset: at least the newest offset given whose message was deleted; the newest
        -- offset given is the larger of it and the highest offset in the partition's table
        -- (SQLiteMessageLog.newestOffset; offsets are never reused);
        -- start_offset: the lowest offset retention has not deleted;
        -- table_id: the partition's messages are in messages_<table_id> (given once, never reused).
        CREATE TABLE IF NOT EXISTS partitions (
            topic TEXT NOT NULL,
            partition INTEGER NOT NULL,
            last_offset INTEGER NOT NULL DEFAULT 0,
            start_offset INTEGER NOT NULL DEFAULT 1,
            table_id INTEGER NOT NULL,
            PRIMARY KEY (topic, partition)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX IF NOT EXISTS partitions_table ON partitions (table_id);
        """

    /// `partitions` and `messages` as versions 1 and 2 created them (created here only when a
    /// file of those versions lacks them, as those versions did).
    private static let version2TablesSQL = """
        CREATE TABLE IF NOT EXISTS partitions (
            topic TEXT NOT NULL,
            partition INTEGER NOT NULL,
            last_offset INTEGER NOT NULL DEFAULT 0,
            start_offset INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (topic, partition)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            partition INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            key TEXT NOT NULL,
            event TEXT NOT NULL,
            headers TEXT NOT NULL,
            appended_at INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS messages_position ON messages (topic, partition, offset);
        """

    /// The tables every version has had unchanged.
    private static let sharedTablesSQL = """
        CREATE TABLE IF NOT EXISTS topics (
            name TEXT PRIMARY KEY,
            partitions INTEGER NOT NULL,
            max_age_ms INTEGER,
            max_bytes INTEGER,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS schedule (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL,
            key TEXT NOT NULL,
            event TEXT NOT NULL,
            headers TEXT NOT NULL,
            deliver_at INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS schedule_due ON schedule (topic, deliver_at, id);
        CREATE TABLE IF NOT EXISTS groups (
            name TEXT NOT NULL,
            topic TEXT NOT NULL,
            max_deliveries INTEGER NOT NULL,
            on_poison TEXT NOT NULL,
            dead_letter_topic TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (name, topic)
        ) WITHOUT ROWID;
        -- One row per (group, topic, partition): the group's cursor and the lease.
        -- next_offset: the first offset the group has not acknowledged (the head);
        -- lease_through: the last offset handed out under the current lease;
        -- deliveries: how often the unacknowledged offsets were delivered (DeliveryCounts);
        -- available_at: a nack's delay; stopped: stop-partition poison policy.
        CREATE TABLE IF NOT EXISTS group_partitions (
            group_name TEXT NOT NULL,
            topic TEXT NOT NULL,
            partition INTEGER NOT NULL,
            next_offset INTEGER NOT NULL,
            lease_owner TEXT,
            lease_id TEXT,
            lease_expires_at INTEGER,
            lease_through INTEGER,
            leased_at INTEGER NOT NULL DEFAULT 0,
            available_at INTEGER NOT NULL DEFAULT 0,
            deliveries TEXT NOT NULL DEFAULT '',
            last_error TEXT,
            stopped INTEGER NOT NULL DEFAULT 0,
            stop_reason TEXT,
            lost_to_retention INTEGER NOT NULL DEFAULT 0,
            dead_lettered INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (group_name, topic, partition)
        ) WITHOUT ROWID;
        """

    /// Moves a file of version 1 or 2 to version 3, inside the migration's transaction: gives
    /// every partition a table id (in the order of topic and partition), copies the partition's
    /// messages into its table in offset order, and drops `messages` and its index. Every message
    /// keeps its offset; `partitions` keeps its bounds and the groups their cursors. A message
    /// whose topic or partition has no `partitions` row (none should exist) stops the upgrade
    /// rather than being dropped.
    static func upgradeToPartitionTables(_ db: Database) throws {
        try db.execute(sql: Self.sharedTablesSQL)
        try db.execute(sql: Self.version2TablesSQL)
        try db.execute(sql: "ALTER TABLE partitions ADD COLUMN table_id INTEGER NOT NULL DEFAULT 0")
        let partitions = try Row.fetchAll(db, sql: "SELECT topic, partition FROM partitions ORDER BY topic, partition")
        var copied = 0
        for (index, row) in partitions.enumerated() {
            let table = Int64(index + 1)
            let topic: String = row["topic"]
            let partition: Int = row["partition"]
            try db.execute(
                sql: "UPDATE partitions SET table_id = ? WHERE topic = ? AND partition = ?",
                arguments: [table, topic, partition])
            try Self.createMessageTable(db, table)
            try db.execute(
                sql: """
                    INSERT INTO \(Self.messageTable(table)) (offset, key, event, headers, appended_at, bytes)
                    SELECT offset, key, event, headers, appended_at, bytes FROM messages
                    WHERE topic = ? AND partition = ? ORDER BY offset
                    """,
                arguments: [topic, partition])
            copied += db.changesCount
        }
        let stored = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM messages") ?? 0
        guard stored == copied else {
            throw MessagingError(
                .unavailable,
                "cannot upgrade the schema to version \(Self.schemaVersion): \(stored - copied) of \(stored) messages belong to no partition"
            )
        }
        try db.execute(sql: "DROP INDEX IF EXISTS messages_position")
        try db.execute(sql: "DROP TABLE messages")
        try db.execute(sql: "CREATE UNIQUE INDEX partitions_table ON partitions (table_id)")
    }
}
