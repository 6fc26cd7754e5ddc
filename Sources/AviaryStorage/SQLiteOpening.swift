//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
public import GRDB

/// Opening a SQLite file that other processes may be using at the same moment.
///
/// Opening a ``SQLiteStore`` or a message log turns WAL on and migrates: both need a lock on the
/// file. When another process holds it longer than the busy timeout (it is creating the same file,
/// running a long migration, or recovering the WAL after a process was killed mid-write), SQLite
/// answers `SQLITE_BUSY` or `SQLITE_LOCKED`. That is a reason to wait, not an error worth
/// reporting, so ``retryingBusy(for:onRetry:_:)`` tries again with a growing pause until a limit.
///
/// ```swift
/// let pool = try SQLiteOpening.retryingBusy(for: .seconds(30)) {
///     try DatabasePool(path: "/var/lib/shop/orders.db")
/// }
/// ```
public enum SQLiteOpening {
    /// Whether `error` means another connection holds a lock that will be let go.
    ///
    /// ```swift
    /// if SQLiteOpening.isBusy(error) { /* try again later */ }
    /// ```
    public static func isBusy(_ error: any Error) -> Bool {
        guard let error = error as? DatabaseError else { return false }
        return error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED
    }

    /// Runs `open` until it returns, retrying while it fails because the file is busy or locked.
    ///
    /// The pauses grow from 1 ms to 100 ms. Any other error is rethrown as it was, and so is a
    /// busy error once `limit` has passed since the first try; a busy first try is retried even
    /// when it alone took longer than `limit` (on a loaded machine). The pauses block the calling
    /// thread, as opening the file itself does: open stores at start-up, not on a hot path.
    ///
    /// ```swift
    /// let pool = try SQLiteOpening.retryingBusy(for: .seconds(30)) { try DatabasePool(path: path) }
    /// ```
    ///
    /// - Parameters:
    ///   - limit: how long to keep trying.
    ///   - onRetry: called before each pause with the number of busy failures so far and the error.
    ///   - open: opens (and sets up) the database; it may run several times, so it must be safe to
    ///     repeat (a migration that failed busy rolled back).
    /// - Returns: what `open` returned.
    public static func retryingBusy<T>(
        for limit: Duration, onRetry: ((Int, DatabaseError) -> Void)? = nil, _ open: () throws -> T
    ) throws -> T {
        let clock = ContinuousClock()
        let start = clock.now
        var failures = 0
        func mayRetry() -> Bool { failures == 0 || clock.now - start < limit }
        while true {
            do {
                return try open()
            } catch let error as DatabaseError where Self.isBusy(error) && mayRetry() {
                failures += 1
                onRetry?(failures, error)
                let pause = min(100_000, 1000 << min(failures - 1, 7))
                usleep(useconds_t(pause))
            }
        }
    }
}
