//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import GRDB
import Synchronization

/// Group commit of a ``SQLiteMessageLog``'s publishes: the transactions that callers submit while
/// the writer thread is busy run together in one transaction, each inside a savepoint of its own,
/// and one commit (one `fdatasync`) makes all of them durable.
///
/// A durable commit waits for the disk, and the disk takes about as long to sync one page as a
/// few dozen; so when several tasks publish one message at a time, one commit each leaves them
/// all waiting for syncs in turn, and the log's throughput is that of one publisher. Here the
/// first caller schedules a flush job on the writer thread; callers that come before that job
/// starts join its group. The flush job opens one `BEGIN IMMEDIATE` transaction, runs each body
/// between `SAVEPOINT` and `RELEASE` (a body that throws is rolled back to its savepoint and only
/// its caller gets the error), commits once, and only then resumes the callers: nobody hears of
/// a publish before it is durable. A group of one runs without a savepoint, like a plain write.
/// If the group's transaction cannot go on (its `BEGIN`, its `COMMIT`, or an error after which
/// SQLite rolled the whole transaction back), nothing of it committed and every caller of the
/// group gets that error; `SQLITE_BUSY` then reaches each caller's own retry loop
/// (``SQLiteMessageLog/write(acknowledgement:grouped:shortcut:_:)``).
final class SQLiteGroupCommit: Sendable {
    /// One caller's transaction body in a group.
    struct Entry: Sendable {
        /// Runs the body in the group's transaction; returns whether it succeeded.
        let perform: @Sendable (Database) -> Bool
        /// Runs right after the group committed, if the body succeeded (see `committed` of
        /// ``SQLiteMessageLog/write(acknowledgement:grouped:shortcut:committed:_:)``).
        let committed: (@Sendable () -> Void)?
        /// Resumes the caller: with its body's outcome when `error` is `nil` (the group
        /// committed), else with `error` (nothing of the group committed).
        let finish: @Sendable ((any Error)?) -> Void
    }

    /// A body's outcome, kept from ``Entry/perform`` until ``Entry/finish``.
    private final class Outcome<T: Sendable>: Sendable {
        let value = Mutex<Result<T, any Error>?>(nil)
    }

    private struct Pending {
        var entries: [Entry] = []
        /// A flush job is on the writer thread's queue and has not taken the entries yet.
        var scheduled = false
    }

    /// Groups flushed so far, for tests and measurements.
    struct Statistics: Sendable, Equatable {
        var groups = 0
        var writes = 0
        var largestGroup = 0
    }

    private let pool: DatabasePool
    private let writer: SQLiteWriterThread
    private let pending = Mutex(Pending())
    private let counts = Mutex(Statistics())

    init(pool: DatabasePool, writer: SQLiteWriterThread) {
        self.pool = pool
        self.writer = writer
    }

    /// The groups flushed so far.
    var statistics: Statistics { self.counts.withLock { $0 } }

    /// How many bodies wait for the next flush, for tests.
    var pendingCount: Int { self.pending.withLock { $0.entries.count } }

    /// Runs `body` in the next group's transaction on the writer thread and returns its result
    /// once the group committed; `committed` runs on the writer thread right after the commit
    /// (before the next transaction) if `body` succeeded. The caller waits as the writer thread's
    /// ``CommitWait`` says.
    func run<T: Sendable>(
        _ body: @escaping @Sendable (Database) throws -> T, committed: (@Sendable () -> Void)? = nil
    ) async throws -> T {
        let handOff = CommitHandOff<T>(self.writer.commitWait)
        let outcome = Outcome<T>()
        let entry = Entry(
            perform: { db in
                let result = Result { try body(db) }
                outcome.value.withLock { $0 = result }
                if case .success = result { return true }
                return false
            },
            committed: committed,
            finish: { error in
                if let error {
                    handOff.complete(.failure(error))
                } else if let result = outcome.value.withLock({ $0 }) {
                    handOff.complete(result)
                } else {
                    handOff.complete(.failure(MessagingError(.unavailable, "a grouped write never ran")))
                }
            })
        let schedules = self.pending.withLock { pending -> Bool in
            pending.entries.append(entry)
            guard !pending.scheduled else { return false }
            pending.scheduled = true
            return true
        }
        if schedules { self.writer.submit { self.flush() } }
        return try await handOff.value()
    }

    /// The flush job (on the writer thread): the entries submitted so far, in one transaction.
    private func flush() {
        let entries = self.pending.withLock { pending -> [Entry] in
            pending.scheduled = false
            var entries: [Entry] = []
            swap(&entries, &pending.entries)
            return entries
        }
        guard !entries.isEmpty else { return }
        self.counts.withLock {
            $0.groups += 1
            $0.writes += entries.count
            $0.largestGroup = max($0.largestGroup, entries.count)
        }
        let succeeded: [Bool]
        do {
            succeeded = try self.pool.writeWithoutTransaction { db in
                try Self.transaction(db, entries)
            }
        } catch {
            for entry in entries { entry.finish(error) }
            return
        }
        for (entry, succeeded) in zip(entries, succeeded) where succeeded { entry.committed?() }
        for entry in entries { entry.finish(nil) }
    }

    /// Runs `entries` in one `BEGIN IMMEDIATE` transaction, each in a savepoint when there are
    /// several, and commits; returns which bodies succeeded (and committed); throws when nothing
    /// of them committed.
    private static func transaction(_ db: Database, _ entries: [Entry]) throws -> [Bool] {
        var succeeded: [Bool] = []
        succeeded.reserveCapacity(entries.count)
        try db.cachedStatement(sql: "BEGIN IMMEDIATE").execute()
        do {
            if entries.count == 1 {
                // As a write of its own: a failed body rolls the transaction back.
                guard entries[0].perform(db) else {
                    if db.isInsideTransaction { try db.execute(sql: "ROLLBACK") }
                    return [false]
                }
                succeeded.append(true)
            } else {
                for entry in entries {
                    try db.cachedStatement(sql: "SAVEPOINT aviary_grouped").execute()
                    let success = entry.perform(db)
                    succeeded.append(success)
                    if !success {
                        guard db.isInsideTransaction else {
                            // SQLite rolled the whole transaction back (an I/O error, a full disk):
                            // the bodies before this one are gone too.
                            throw MessagingError(
                                .unavailable, "a grouped write's transaction was rolled back by SQLite")
                        }
                        try db.cachedStatement(sql: "ROLLBACK TO aviary_grouped").execute()
                    }
                    try db.cachedStatement(sql: "RELEASE aviary_grouped").execute()
                }
            }
            try db.cachedStatement(sql: "COMMIT").execute()
            return succeeded
        } catch {
            // A failed COMMIT can leave the transaction open (SQLITE_BUSY, I/O errors).
            if db.isInsideTransaction { try? db.execute(sql: "ROLLBACK") }
            throw error
        }
    }
}
