//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB
import GRDBSQLite

/// The inserts of a publish into its partitions' tables (`messages_<n>`), bound and stepped
/// through SQLite's C API.
///
/// Through GRDB, each row built a `StatementArguments` of boxed values and bound them through its
/// generic binding layer, which a profile of batches of 1,000 showed taking about a sixth of the
/// publish; here the values are bound directly. A partition's rows are inserted up to
/// ``rowsPerStatement`` per statement (`VALUES (…), (…), …`): SQLite then starts one statement,
/// opens the table's cursor once, and is stepped once for them all (with schema version 2's
/// shared table and index, that took the insert's CPU time per row of batches of 1,000 from about
/// 2.7 to 2.1 µs in a C program; the plain insert of scripts/bench-broker.sh's floor takes 1.3).
/// Offsets are the tables' rowids, given in increasing order, so each statement appends to the
/// end of one b-tree.
///
/// The statements are GRDB's cached statements of the connection (prepared once per connection,
/// table and size, not per publish); only this type runs them, and it leaves them reset with no
/// bindings. Text is bound with `SQLITE_STATIC` from a buffer that outlives the step (see
/// `TextBuffer`). Use it only inside a write transaction of `db`.
enum MessageInserter {
    /// A message of the batch and the position it goes to.
    struct Row {
        /// Its index in the batch's messages.
        var message: Int
        /// Its partition's table id (``SQLiteMessageLog/messageTable(_:)``).
        var table: Int64
        var offset: Int64
    }

    /// The most rows one statement inserts (6 parameters each, far below SQLite's limit of 32,766).
    static let rowsPerStatement = 32

    /// The statement sizes a partition's rows are cut into, largest first: 125 rows (a batch of
    /// 1,000 over 8 partitions) are 3 statements of 32 and one each of 16, 8, 4 and 1; 12 rows are
    /// one of 8 and one of 4; one message is one statement of one row. (With one table for all
    /// partitions, a batch's rows were one run, and sizes of 32, 8 and 1 cut it as well; a
    /// partition's share of a batch of 100 is about 12 rows, which those sizes cut into five
    /// statements.)
    private static let sizes = [Self.rowsPerStatement, 16, 8, 4, 2, 1]

    private static let parameters = 6

    /// The `VALUES` lists of the statement sizes.
    private static let values: [Int: String] = Dictionary(
        uniqueKeysWithValues: Self.sizes.map { size in
            (size, repeatElement("(?, ?, ?, ?, ?, ?)", count: size).joined(separator: ", "))
        })

    /// The insert of `size` rows into table `table` (its text is the key of GRDB's statement cache).
    private static func sql(table: Int64, size: Int) -> String {
        guard let values = Self.values[size] else { preconditionFailure("no statement for \(size) rows") }
        return
            "INSERT INTO \(SQLiteMessageLog.messageTable(table)) (offset, key, event, headers, appended_at, bytes) VALUES \(values)"
    }

    /// Inserts `rows` (messages of `messages` at the positions taken for them), in their order;
    /// the rows of one table come one after the other, in increasing offsets.
    static func insert<Messages: RandomAccessCollection<SQLiteMessageLog.Encoded>, Rows: RandomAccessCollection<Row>>(
        _ db: Database, _ messages: Messages, _ rows: Rows, now: Int64
    ) throws where Messages.Index == Int, Rows.Index == Int {
        guard let connection = db.sqliteConnection else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database connection is closed")
        }
        // The text of one statement's rows, copied into one buffer that SQLite reads in place
        // (`SQLITE_STATIC`, where `SQLITE_TRANSIENT` made SQLite allocate a copy of each value):
        // the buffer is neither reused nor freed before the statement's bindings are cleared.
        var text = TextBuffer(capacity: 16 * 1024)
        defer { text.deallocate() }
        var next = 0
        while next < rows.count {
            // The rows of the same table from `next` on (up to one statement's).
            let table = rows[next].table
            var run = 1
            while run < Self.rowsPerStatement, next + run < rows.count, rows[next + run].table == table { run += 1 }
            let size = Self.sizes.first { $0 <= run } ?? 1
            let statement = try db.cachedStatement(sql: Self.sql(table: table, size: size)).sqliteStatement
            var needed = 0
            for slot in 0..<size {
                let message = messages[rows[next + slot].message]
                needed += message.key.utf8.count + message.event.utf8.count + message.headers.utf8.count
            }
            text.clear(reserving: needed)
            var code = SQLITE_OK
            for slot in 0..<size where code == SQLITE_OK {
                let row = rows[next + slot]
                let message = messages[row.message]
                let base = Int32(slot * Self.parameters)
                code = sqlite3_bind_int64(statement, base + 1, row.offset)
                if code == SQLITE_OK { code = text.bind(message.key, to: statement, at: base + 2) }
                if code == SQLITE_OK { code = text.bind(message.event, to: statement, at: base + 3) }
                if code == SQLITE_OK { code = text.bind(message.headers, to: statement, at: base + 4) }
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 5, now) }
                if code == SQLITE_OK { code = sqlite3_bind_int64(statement, base + 6, Int64(message.bytes)) }
            }
            if code == SQLITE_OK {
                code = sqlite3_step(statement)
                if code == SQLITE_DONE { code = SQLITE_OK }
            }
            let error = code == SQLITE_OK ? nil : Self.error(code, connection)
            sqlite3_reset(statement)
            // Before `text` is written again or freed: no binding may point into it.
            sqlite3_clear_bindings(statement)
            if let error { throw error }
            next += size
        }
    }

    /// Bytes of text bound with `SQLITE_STATIC`: each value is copied in after the previous one,
    /// and the buffer grows only in ``clear(reserving:)``, so that an address handed to SQLite
    /// stays valid until the next `clear` or `deallocate`.
    private struct TextBuffer {
        private var start: UnsafeMutablePointer<CChar>
        private var capacity: Int
        private var used = 0

        init(capacity: Int) {
            self.capacity = max(1, capacity)
            self.start = .allocate(capacity: self.capacity)
        }

        /// Forgets the bytes written and makes room for `count` more (the caller's bindings into
        /// the buffer must have been cleared).
        mutating func clear(reserving count: Int) {
            self.used = 0
            guard count > self.capacity else { return }
            self.start.deallocate()
            self.capacity = max(count, 2 * self.capacity)
            self.start = .allocate(capacity: self.capacity)
        }

        /// Copies `value` in and binds it (room for it was reserved by ``clear(reserving:)``).
        mutating func bind(_ value: String, to statement: OpaquePointer, at index: Int32) -> Int32 {
            var value = value
            return value.withUTF8 { utf8 in
                precondition(self.used + utf8.count <= self.capacity, "text beyond the room reserved")
                let address = self.start + self.used
                if let source = utf8.baseAddress, !utf8.isEmpty {
                    UnsafeMutableRawPointer(address).copyMemory(from: source, byteCount: utf8.count)
                }
                self.used += utf8.count
                // A non-null address with a length of 0 binds "", not NULL.
                return sqlite3_bind_text(statement, index, address, Int32(utf8.count), nil)
            }
        }

        func deallocate() {
            self.start.deallocate()
        }
    }

    /// Whether `topic` has scheduled messages due at `now`: the check every publish makes before
    /// it promotes them, which mostly finds none. Bound and stepped through the C API like the
    /// insert (through GRDB, a `Row.fetchAll` of the due rows built a cursor and boxed its
    /// arguments for an empty answer).
    static func hasDue(_ db: Database, topic: String, now: Int64) throws -> Bool {
        guard let connection = db.sqliteConnection else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database connection is closed")
        }
        let statement = try db.cachedStatement(
            sql: "SELECT 1 FROM schedule WHERE topic = ? AND deliver_at <= ? LIMIT 1"
        ).sqliteStatement
        var topic = topic
        let code = topic.withUTF8 { utf8 -> Int32 in
            // Topics are never empty; an empty name has nothing due.
            guard let base = utf8.baseAddress else { return SQLITE_DONE }
            // SQLITE_STATIC: the bytes are read by the step, before this closure returns.
            let text = UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self)
            var code = sqlite3_bind_text(statement, 1, text, Int32(utf8.count), nil)
            if code == SQLITE_OK { code = sqlite3_bind_int64(statement, 2, now) }
            if code == SQLITE_OK { code = sqlite3_step(statement) }
            return code
        }
        let error = code == SQLITE_ROW || code == SQLITE_DONE ? nil : Self.error(code, connection)
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
        if let error { throw error }
        return code == SQLITE_ROW
    }

    private static func error(_ code: Int32, _ connection: OpaquePointer) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(connection)))
    }
}
