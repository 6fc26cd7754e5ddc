//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import GRDB
import GRDBSQLite

/// The next offset of each partition (by message table) a log's publishes left, kept for its next
/// publish while nothing else has changed the file since, so that the publish does not read each
/// partition's newest offset (``SQLiteMessageLog/newestOffset(_:table:topic:partition:)``: a
/// statement per partition of a batch, eight for the benchmark's batches).
///
/// Whether they still hold is checked inside the publish's write transaction, after it took the
/// write lock and before it takes offsets, with two counters of the writer connection:
///
/// - `PRAGMA data_version`, which changes when another connection (of this process or another)
///   committed since this connection last looked, and not for this connection's own commits;
/// - `sqlite3_total_changes64`, the rows this connection's `INSERT`, `UPDATE` and `DELETE`
///   statements changed since it opened, which moves with anything else this log wrote (a due
///   message promoted, a dead letter replayed, retention raising a partition's lower bound, a
///   consumer's acknowledgement), and with a rolled-back statement too.
///
/// A publish records both after its inserts; only when both are the same at the next publish did
/// nothing but that publish write the file in between, and each partition's next offset is then
/// the one it left. Otherwise the offsets are dropped and read again. The record is made valid
/// only after the commit succeeded (``committed()``): until then ``stamp`` is `nil`, so a
/// publish that failed anywhere (its rows rolled back) leaves nothing to reuse, and no offset is
/// skipped or given twice. Offsets are the tables' rowids, so even a wrong offset could not
/// duplicate a message: its insert would fail on the key.
///
/// Used only inside write transactions of the log's writer connection (on its writer thread).
struct NextOffsets: Sendable {
    /// The writer connection's two counters.
    struct Stamp: Equatable, Sendable {
        var dataVersion: Int64
        var changes: Int64
    }

    /// When ``next`` holds; `nil` while a publish runs and after one that did not commit.
    private var stamp: Stamp?
    /// What ``stamp`` becomes when the running publish commits.
    private var pending: Stamp?
    private var next: [Int64: Int64] = [:]

    /// The writer connection's counters now (inside a write transaction).
    static func stamp(_ db: Database) throws -> Stamp {
        guard let connection = db.sqliteConnection else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database connection is closed")
        }
        // Stepped through the C API: one integer, without GRDB's cursor and row.
        let statement = try db.cachedStatement(sql: "PRAGMA data_version").sqliteStatement
        let code = sqlite3_step(statement)
        let dataVersion = code == SQLITE_ROW ? sqlite3_column_int64(statement, 0) : 0
        let error =
            code == SQLITE_ROW
            ? nil
            : DatabaseError(
                resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(connection)))
        sqlite3_reset(statement)
        if let error { throw error }
        return Stamp(dataVersion: dataVersion, changes: sqlite3_total_changes64(connection))
    }

    /// The rows the connection changed since it opened (``Stamp/changes``); within a write
    /// transaction the data version stays what ``stamp(_:)`` read at its start.
    static func changes(_ db: Database) -> Int64 {
        db.sqliteConnection.map { sqlite3_total_changes64($0) } ?? -1
    }

    /// Starts a publish at `stamp` (the connection's counters before it takes offsets): returns
    /// the next offsets that hold (none when anything else wrote since the last publish), which
    /// are no longer kept until ``keep(_:at:)`` and ``committed()``.
    mutating func take(at stamp: Stamp) -> [Int64: Int64] {
        var taken: [Int64: Int64] = [:]
        if self.stamp == stamp { swap(&taken, &self.next) }
        self.next = [:]
        self.stamp = nil
        self.pending = nil
        return taken
    }

    /// Keeps `next` (the next offset of every table the publish wrote to, and those it took
    /// unchanged) for after the commit; `stamp` is the connection's counters after the publish's
    /// inserts.
    mutating func keep(_ next: [Int64: Int64], at stamp: Stamp) {
        self.next = next
        self.pending = stamp
    }

    /// The publish's transaction committed: its offsets hold until something else writes.
    ///
    /// In a group commit (``SQLiteGroupCommit``) every publish of the group that succeeded calls
    /// this after the one commit, in order, while only the last of them that kept offsets left
    /// them pending (each ``take(at:)`` drops what the one before kept): the first call makes
    /// those valid, and the others find nothing pending and change nothing.
    mutating func committed() {
        guard let pending = self.pending else { return }
        self.stamp = pending
        self.pending = nil
    }
}
