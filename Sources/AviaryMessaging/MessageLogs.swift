//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryStorage

/// Opens a ``MessageLog`` for a store URL: the backend is chosen by configuration, never by code.
///
/// ```swift
/// let log = try await MessageLogs.open(url: "sqlite://.aviary/shop/broker.db")
/// defer { Task { try await log.close() } }
/// ```
public enum MessageLogs {
    /// Opens the log at `url` (`sqlite:///abs/path.db`, `sqlite://relative.db`, `postgres://...`).
    ///
    /// - Parameters:
    ///   - url: where the log lives.
    ///   - clock: the wall clock for leases, delays and retention (tests pass a ``ManualWallClock``).
    ///   - sqlite: settings for a SQLite file.
    /// - Throws: ``MessagingError`` (`.invalidArgument`) for a URL that is not a store URL or names
    ///   an in-memory database (a log is shared by processes, so it needs a file); `.unavailable`
    ///   when the store cannot be opened (for PostgreSQL: naming the address and the cause).
    public static func open(
        url: String, clock: any WallClock = SystemWallClock(),
        sqlite: SQLiteMessageLog.Configuration = SQLiteMessageLog.Configuration()
    ) async throws -> any MessageLog {
        let parsed: StoreURL
        do {
            parsed = try StoreURL(parsing: url)
        } catch {
            throw MessagingError(.invalidArgument, error.message)
        }
        return try await Self.open(url: parsed, clock: clock, sqlite: sqlite)
    }

    /// Opens the log at a parsed store URL; see ``open(url:clock:sqlite:)-(String,_,_)``.
    public static func open(
        url: StoreURL, clock: any WallClock = SystemWallClock(),
        sqlite: SQLiteMessageLog.Configuration = SQLiteMessageLog.Configuration()
    ) async throws -> any MessageLog {
        switch url.kind {
        case .sqlite(let path):
            return try SQLiteMessageLog(path: path, clock: clock, configuration: sqlite)
        case .sqliteInMemory:
            throw MessagingError(
                .invalidArgument,
                "store URL \(url): a message log is shared by processes and needs a file, e.g. sqlite:///tmp/broker.db")
        case .postgres:
            return try await PostgresMessageLog(url: url, clock: clock)
        }
    }
}
