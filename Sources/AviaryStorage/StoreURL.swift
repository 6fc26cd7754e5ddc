//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore

/// Where a store lives, chosen by configuration, never by code: `sqlite:///abs/path.db`,
/// `sqlite://relative/path.db`, `sqlite::memory:` or `postgres://user:pass@host:port/db`.
///
/// ```swift
/// let url = try StoreURL(parsing: "sqlite://.aviary/shop/orders.db")
/// if case .sqlite(let path) = url.kind { print(path) }   // ".aviary/shop/orders.db"
/// ```
public struct StoreURL: Sendable, Hashable, CustomStringConvertible {
    /// The backend and its address.
    public enum Kind: Sendable, Hashable {
        /// A SQLite file at a path (relative paths are relative to the working directory).
        case sqlite(path: String)
        /// A private in-memory SQLite database (tests).
        case sqliteInMemory
        /// A PostgreSQL server; the URL is kept as written.
        case postgres(url: String)
    }

    /// The backend and its address.
    public var kind: Kind

    /// Creates a store URL for `kind`.
    public init(_ kind: Kind) {
        self.kind = kind
    }

    /// Parses a store URL.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (invalid argument) naming the accepted forms; for a
    ///   `postgres://` URL, naming the part that is wrong (see ``PostgresAddress/init(parsing:)``).
    public init(parsing text: String) throws(AviaryError) {
        if text == "sqlite::memory:" {
            self.kind = .sqliteInMemory
        } else if text.hasPrefix("sqlite://") {
            let path = String(text.dropFirst("sqlite://".count))
            if path.isEmpty {
                throw AviaryError(.invalidArgument, "store URL \"\(text)\": expected a file path after sqlite://")
            }
            self.kind = .sqlite(path: path)
        } else if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            // Checked now, so that a bad URL fails where configuration is read, naming what is wrong.
            _ = try PostgresAddress(parsing: text)
            self.kind = .postgres(url: text)
        } else {
            throw AviaryError(
                .invalidArgument,
                "store URL \"\(text)\": expected sqlite:///path.db, sqlite://relative.db, sqlite::memory: or postgres://..."
            )
        }
    }

    /// The URL as it would be written in configuration.
    public var description: String {
        switch self.kind {
        case .sqlite(let path): "sqlite://\(path)"
        case .sqliteInMemory: "sqlite::memory:"
        case .postgres(let url): url
        }
    }
}
