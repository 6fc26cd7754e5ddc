//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryMessaging
import Foundation
import GRDB

/// The SQLite log's older layouts, made from a file of the current one, for the upgrade tests;
/// and the stored state the tests compare before and after an upgrade, read from either layout.
enum SQLiteOlderSchema {
    /// One stored message, as either layout keeps it.
    struct StoredMessage: Hashable {
        var topic: String
        var partition: Int
        var offset: Int64
        var key: String
        var event: String
        var headers: String
        var appendedAt: Int64
        var bytes: Int64
    }

    /// Rewrites the file at `path` (of schema version 3, closed by every log) to version 2's
    /// layout: one `messages` table with its position index, `partitions` without table ids,
    /// `PRAGMA user_version = 2`. Every message keeps its position and columns.
    static func downgradeToVersion2(path: String) throws {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        try queue.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try db.execute(
                    sql: """
                        CREATE TABLE messages (
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
                        CREATE UNIQUE INDEX messages_position ON messages (topic, partition, offset);
                        """)
                for row in try Row.fetchAll(db, sql: "SELECT topic, partition, table_id FROM partitions") {
                    let table: Int64 = row["table_id"]
                    try db.execute(
                        sql: """
                            INSERT INTO messages (topic, partition, offset, key, event, headers, appended_at, bytes)
                            SELECT ?, ?, offset, key, event, headers, appended_at, bytes FROM messages_\(table)
                            ORDER BY offset
                            """, arguments: [row["topic"], row["partition"]])
                    try db.execute(sql: "DROP TABLE messages_\(table)")
                }
                try db.execute(
                    sql: """
                        DROP INDEX partitions_table;
                        CREATE TABLE partitions_v2 (
                            topic TEXT NOT NULL,
                            partition INTEGER NOT NULL,
                            last_offset INTEGER NOT NULL DEFAULT 0,
                            start_offset INTEGER NOT NULL DEFAULT 1,
                            PRIMARY KEY (topic, partition)
                        ) WITHOUT ROWID;
                        INSERT INTO partitions_v2 SELECT topic, partition, last_offset, start_offset FROM partitions;
                        DROP TABLE partitions;
                        ALTER TABLE partitions_v2 RENAME TO partitions;
                        """)
                return .commit
            }
            try db.execute(sql: "PRAGMA user_version = 2")
        }
    }

    /// Every stored message of the file, in the order of topic, partition and offset.
    static func messages(_ db: Database) throws -> [StoredMessage] {
        func stored(_ row: Row, topic: String, partition: Int) -> StoredMessage {
            StoredMessage(
                topic: topic, partition: partition, offset: row["offset"], key: row["key"], event: row["event"],
                headers: row["headers"], appendedAt: row["appended_at"], bytes: row["bytes"])
        }
        let columns = "offset, key, event, headers, appended_at, bytes"
        if try db.tableExists("messages") {
            return try Row.fetchAll(
                db, sql: "SELECT topic, partition, \(columns) FROM messages ORDER BY topic, partition, offset"
            ).map { stored($0, topic: $0["topic"], partition: $0["partition"]) }
        }
        var result: [StoredMessage] = []
        for row in try Row.fetchAll(
            db, sql: "SELECT topic, partition, table_id FROM partitions ORDER BY topic, partition")
        {
            let table: Int64 = row["table_id"]
            result += try Row.fetchAll(db, sql: "SELECT \(columns) FROM messages_\(table) ORDER BY offset").map {
                stored($0, topic: row["topic"], partition: row["partition"])
            }
        }
        return result
    }

    /// The rows of `partitions` (without table ids) and `group_partitions`, in key order.
    static func cursors(_ db: Database) throws -> [Row] {
        try Row.fetchAll(
            db, sql: "SELECT topic, partition, last_offset, start_offset FROM partitions ORDER BY topic, partition")
            + Row.fetchAll(db, sql: "SELECT * FROM group_partitions ORDER BY group_name, topic, partition")
    }

    /// The table ids of every partition, by topic and partition.
    static func tableIDs(_ db: Database) throws -> [String: [Int64]] {
        var ids: [String: [Int64]] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT topic, table_id FROM partitions ORDER BY topic, partition") {
            ids[row["topic"], default: []].append(row["table_id"])
        }
        return ids
    }

    /// The file's `PRAGMA user_version`.
    static func version(path: String) throws -> Int {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0 }
    }

    /// Reads the file at `path` through a connection of its own.
    static func read<T>(path: String, _ body: (Database) throws -> T) throws -> T {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read(body)
    }

    /// Keys that go to each of `partitions` partitions, one per partition.
    static func keys(partitions: Int) -> [String] {
        var keys = [String?](repeating: nil, count: partitions)
        var n = 0
        while keys.contains(nil) {
            let key = "k\(n)"
            let partition = Partitioner.partition(forKey: key, partitions: partitions)
            if keys[partition] == nil { keys[partition] = key }
            n += 1
        }
        return keys.compactMap { $0 }
    }
}
