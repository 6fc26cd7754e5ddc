//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB
import GRDBSQLite

/// The `INSERT INTO messages` of a publish, bound and stepped through SQLite's C API.
///
/// A batched publish runs this statement once per message. Through GRDB, each run built a
/// `StatementArguments` of eight boxed values and bound them through its generic binding layer,
/// which a profile of batches of 1,000 showed taking about a sixth of the publish; here the
/// values are bound directly (strings copied by SQLite, `SQLITE_TRANSIENT`). The statement is
/// prepared on the transaction's connection and finalized when the inserter goes away; GRDB's
/// own statement cache is left alone.
///
/// Use it only inside the write transaction whose `Database` made it.
final class MessageInserter {
    private let connection: OpaquePointer
    private let statement: OpaquePointer

    /// Prepares the insert on `db`'s connection.
    init(_ db: Database) throws {
        guard let connection = db.sqliteConnection else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database connection is closed")
        }
        var statement: OpaquePointer?
        let sql = """
            INSERT INTO messages (topic, partition, offset, key, event, headers, appended_at, bytes)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """
        let code = sqlite3_prepare_v2(connection, sql, -1, &statement, nil)
        guard code == SQLITE_OK, let statement else {
            sqlite3_finalize(statement)
            throw Self.error(code, connection)
        }
        self.connection = connection
        self.statement = statement
    }

    deinit {
        sqlite3_finalize(self.statement)
    }

    /// Inserts `message` at `offset` of `partition`.
    func insert(
        _ message: SQLiteMessageLog.Encoded, partition: Int, offset: Int64, now: Int64
    ) throws {
        let statement = self.statement
        sqlite3_reset(statement)
        var code = self.bind(message.topic, at: 1)
        if code == SQLITE_OK { code = sqlite3_bind_int64(statement, 2, Int64(partition)) }
        if code == SQLITE_OK { code = sqlite3_bind_int64(statement, 3, offset) }
        if code == SQLITE_OK { code = self.bind(message.key, at: 4) }
        if code == SQLITE_OK { code = self.bind(message.event, at: 5) }
        if code == SQLITE_OK { code = self.bind(message.headers, at: 6) }
        if code == SQLITE_OK { code = sqlite3_bind_int64(statement, 7, now) }
        if code == SQLITE_OK { code = sqlite3_bind_int64(statement, 8, Int64(message.bytes)) }
        guard code == SQLITE_OK else { throw Self.error(code, self.connection) }
        code = sqlite3_step(statement)
        guard code == SQLITE_DONE else {
            let error = Self.error(code, self.connection)
            sqlite3_reset(statement)
            throw error
        }
    }

    private func bind(_ text: String, at index: Int32) -> Int32 {
        var text = text
        return text.withUTF8 { utf8 in
            // An empty buffer may have no address, and a null pointer would bind NULL, not "".
            guard let address = utf8.baseAddress, !utf8.isEmpty else {
                return sqlite3_bind_text(self.statement, index, "", 0, Self.transient)
            }
            return address.withMemoryRebound(to: CChar.self, capacity: utf8.count) {
                sqlite3_bind_text(self.statement, index, $0, Int32(utf8.count), Self.transient)
            }
        }
    }

    /// SQLite's `SQLITE_TRANSIENT`: copy the bytes before `sqlite3_bind_text` returns.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    private static func error(_ code: Int32, _ connection: OpaquePointer) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(connection)))
    }
}
