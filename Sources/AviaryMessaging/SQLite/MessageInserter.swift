//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB
import GRDBSQLite

/// The `INSERT INTO messages` of a publish, bound and stepped through SQLite's C API.
///
/// Through GRDB, each row built a `StatementArguments` of eight boxed values and bound them
/// through its generic binding layer, which a profile of batches of 1,000 showed taking about a
/// sixth of the publish; here the values are bound directly. A batch is inserted up to
/// ``rowsPerStatement`` rows per statement (`VALUES (…), (…), …`): SQLite then starts one
/// statement, opens the table's and the index's cursors once, and is stepped once for them all,
/// which took the insert's CPU time per row of batches of 1,000 from about 2.7 to 2.1 µs in a C
/// program with this schema (the plain insert of scripts/bench-broker.sh's floor takes 1.3).
///
/// The statements are GRDB's cached statements of the connection (prepared once per connection
/// and size, not per publish); only this type runs them, and it leaves them reset with no
/// bindings. Use it only inside a write transaction of `db`.
enum MessageInserter {
    /// A message of the batch and the position it goes to.
    struct Row {
        /// Its index in the batch's messages.
        var message: Int
        var partition: Int
        var offset: Int64
    }

    /// The most rows one statement inserts (8 parameters each, far below SQLite's limit of 32,766).
    static let rowsPerStatement = 32

    /// The statement sizes a batch is cut into, largest first: 1,000 rows are 31 statements of 32
    /// and one of 8; one message is one statement of one row.
    private static let sizes = [Self.rowsPerStatement, 8, 1]

    private static let sql: [Int: String] = Dictionary(
        uniqueKeysWithValues: Self.sizes.map { size in
            let rows = repeatElement("(?, ?, ?, ?, ?, ?, ?, ?)", count: size).joined(separator: ", ")
            return (
                size,
                "INSERT INTO messages (topic, partition, offset, key, event, headers, appended_at, bytes) VALUES \(rows)"
            )
        })

    /// Inserts `rows` (messages of `messages` at the positions taken for them), in their order.
    static func insert(
        _ db: Database, _ messages: [SQLiteMessageLog.Encoded], _ rows: [Row], now: Int64
    ) throws {
        guard let connection = db.sqliteConnection else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database connection is closed")
        }
        var next = 0
        while next < rows.count {
            let left = rows.count - next
            let size = Self.sizes.first { $0 <= left } ?? 1
            guard let sql = Self.sql[size] else { preconditionFailure("no statement for \(size) rows") }
            let statement = try db.cachedStatement(sql: sql).sqliteStatement
            var code = SQLITE_OK
            for slot in 0..<size where code == SQLITE_OK {
                let row = rows[next + slot]
                let message = messages[row.message]
                let base = Int32(slot * 8)
                code = Self.bind(statement, message.topic, at: base + 1)
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 2, Int64(row.partition)) }
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 3, row.offset) }
                if code == SQLITE_OK { code = Self.bind(statement, message.key, at: base + 4) }
                if code == SQLITE_OK { code = Self.bind(statement, message.event, at: base + 5) }
                if code == SQLITE_OK { code = Self.bind(statement, message.headers, at: base + 6) }
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 7, now) }
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 8, Int64(message.bytes)) }
            }
            if code == SQLITE_OK {
                code = sqlite3_step(statement)
                if code == SQLITE_DONE { code = SQLITE_OK }
            }
            let error = code == SQLITE_OK ? nil : Self.error(code, connection)
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
            if let error { throw error }
            next += size
        }
    }

    /// Binds `text` at `index` (SQLite copies the bytes).
    private static func bind(_ statement: OpaquePointer, _ text: String, at index: Int32) -> Int32 {
        var text = text
        return text.withUTF8 { utf8 in
            // An empty buffer may have no address, and a null pointer would bind NULL, not "".
            guard let address = utf8.baseAddress, !utf8.isEmpty else {
                return sqlite3_bind_text(statement, index, "", 0, Self.transient)
            }
            return address.withMemoryRebound(to: CChar.self, capacity: utf8.count) {
                sqlite3_bind_text(statement, index, $0, Int32(utf8.count), Self.transient)
            }
        }
    }

    /// SQLite's `SQLITE_TRANSIENT`: copy the bytes before `sqlite3_bind_text` returns.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    private static func error(_ code: Int32, _ connection: OpaquePointer) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(connection)))
    }
}
