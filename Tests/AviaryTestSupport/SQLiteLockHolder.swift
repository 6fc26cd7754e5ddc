//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Dispatch
import GRDB

/// Holds an exclusive lock on a SQLite file, as another process creating or migrating it would,
/// until the test lets go: for tests of what opening a locked file does.
///
/// The file is new (rollback journal), so the lock keeps readers out too. The holder creates the
/// table `made_by_holder` inside its transaction, so a test can check that what it wrote survived.
///
/// ```swift
/// let holder = try SQLiteLockHolder(path: path)
/// await SQLiteLockHolder.wait(holder.locked)
/// // ... open the file; it is busy ...
/// holder.release.signal()
/// await SQLiteLockHolder.wait(holder.done)
/// ```
public final class SQLiteLockHolder: Sendable {
    /// Signalled once the lock is held.
    public let locked = DispatchSemaphore(value: 0)
    /// Signal it to commit and let go.
    public let release = DispatchSemaphore(value: 0)
    /// Signalled once the lock is gone and the connection closed.
    public let done = DispatchSemaphore(value: 0)

    /// Starts holding the lock on a thread of its own (not the concurrency pool).
    ///
    /// - Parameter path: the file; it should not exist yet.
    public init(path: String) throws {
        let queue = try DatabaseQueue(path: path)
        DispatchQueue(label: "SQLite lock holder").async {
            try? queue.inDatabase { db in
                try db.execute(sql: "BEGIN EXCLUSIVE")
                try db.execute(sql: "CREATE TABLE made_by_holder (x INTEGER)")
                self.locked.signal()
                self.release.wait()
                try db.execute(sql: "COMMIT")
            }
            try? queue.close()
            self.done.signal()
        }
    }

    /// Waits, off the concurrency pool, until `semaphore` is signalled.
    public static func wait(_ semaphore: DispatchSemaphore) async {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                semaphore.wait()
                continuation.resume()
            }
        }
    }
}
