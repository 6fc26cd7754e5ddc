//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB

extension SQLiteMessageLog {
    /// The schema version this build writes (`PRAGMA user_version`).
    ///
    /// - 1: the tables below.
    /// - 2: the same tables; a publish no longer writes `partitions.last_offset`, which became a
    ///   lower bound (``newestOffset``). A build at version 1 does not check the version, so it
    ///   must not share a file with this one (its publishes fail on the position index, its
    ///   consumers stop at the counter); this build refuses files of a newer version than its
    ///   own, so that the next such change is a clear error instead.
    static let schemaVersion = 2

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
                try db.execute(
                    sql: """
                        CREATE TABLE IF NOT EXISTS topics (
                            name TEXT PRIMARY KEY,
                            partitions INTEGER NOT NULL,
                            max_age_ms INTEGER,
                            max_bytes INTEGER,
                            created_at INTEGER NOT NULL
                        );
                        -- last_offset: at least the newest offset given whose message was deleted; the
                        -- newest offset given is the larger of it and the partition's highest stored
                        -- offset (SQLiteMessageLog.newestOffset; offsets are never reused);
                        -- start_offset: the lowest offset retention has not deleted.
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
                        """)
                try db.execute(sql: "PRAGMA user_version = \(Self.schemaVersion)")
                return .commit
            }
        }
    }
}
