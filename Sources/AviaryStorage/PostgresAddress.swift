//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Foundation

/// Where a PostgreSQL database is and how to log in: the parsed form of a
/// `postgres://user:password@host:port/database?sslmode=prefer` store URL.
///
/// User and password are percent-decoded (`p%40ss` is `p@ss`); the port defaults to 5432 and
/// `sslmode` (`disable`, `prefer`, `require`) to `prefer`, as libpq does. IPv6 hosts are written in
/// brackets (`postgres://u@[::1]/db`).
///
/// ```swift
/// let address = try PostgresAddress(parsing: "postgres://shop:secret@127.0.0.1:5432/orders")
/// print(address.host, address.port, address.database)   // 127.0.0.1 5432 orders
/// print(address)                                          // postgres://shop:***@127.0.0.1:5432/orders
/// ```
public struct PostgresAddress: Sendable, Hashable, CustomStringConvertible {
    /// How the connection uses TLS.
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it, plain TCP otherwise (libpq's default).
        case prefer
        /// TLS or no connection.
        case require
    }

    /// The server's host name or address.
    public var host: String
    /// The server's TCP port.
    public var port: Int
    /// The role to log in as.
    public var username: String
    /// The password, when the URL has one.
    public var password: String?
    /// The database to open.
    public var database: String
    /// How the connection uses TLS.
    public var tls: TLSMode

    /// Creates an address from its parts.
    public init(
        host: String, port: Int = 5432, username: String, password: String? = nil, database: String,
        tls: TLSMode = .prefer
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// Parses a `postgres://` (or `postgresql://`) URL.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (invalid argument) that quotes the URL with its password
    ///   masked and says which part is wrong and what was expected.
    public init(parsing text: String) throws(AviaryError) {
        let shown = Self.masked(text)
        func bad(_ problem: String) -> AviaryError {
            AviaryError(
                .invalidArgument,
                "store URL \"\(shown)\": \(problem); expected postgres://user:password@host:port/database")
        }
        guard text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") else {
            throw bad("the scheme must be postgres:// or postgresql://")
        }
        guard let components = URLComponents(string: text) else {
            throw bad("not a valid URL (characters such as @ : / ? # in the password must be percent-encoded)")
        }
        guard let user = components.user, !user.isEmpty else {
            throw bad("no user name")
        }
        guard var host = components.host, !host.isEmpty else {
            throw bad("no host")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        // URLComponents refuses a non-numeric port outright (caught above); a numeric one may be out of range.
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else {
            throw bad("port \(port) is not in 1...65535")
        }
        var path = components.path
        if path.hasPrefix("/") { path.removeFirst() }
        guard !path.isEmpty else {
            throw bad("no database name after the host")
        }
        guard !path.contains("/") else {
            throw bad("the database name \"\(path)\" contains a /")
        }
        var tls = TLSMode.prefer
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, let mode = TLSMode(rawValue: value) else {
                    throw bad(
                        "sslmode=\(item.value ?? "") is not one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                tls = mode
            default:
                throw bad("unknown parameter \"\(item.name)\" (the only parameter is sslmode)")
            }
        }
        self.init(
            host: host, port: port, username: user, password: components.password, database: path, tls: tls)
    }

    /// The address as a URL with the password masked, fit for logs and error messages.
    public var description: String {
        var text = "postgres://\(self.username)"
        if self.password != nil { text += ":***" }
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        text += "@\(host):\(self.port)/\(self.database)"
        if self.tls != .prefer { text += "?sslmode=\(self.tls.rawValue)" }
        return text
    }

    /// `text` with the password between `user:` and `@` replaced by `***`, for messages about URLs
    /// that may not parse.
    static func masked(_ text: String) -> String {
        guard let schemeEnd = text.range(of: "://") else { return text }
        let rest = text[schemeEnd.upperBound...]
        guard let at = rest.lastIndex(of: "@") else { return text }
        let credentials = rest[..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return text }
        return String(text[..<credentials.index(after: colon)]) + "***" + String(rest[at...])
    }
}

extension StoreURL {
    /// The PostgreSQL address of a `postgres://` store URL.
    ///
    /// ```swift
    /// let address = try StoreURL(parsing: "postgres://shop@db/orders").postgresAddress()
    /// ```
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (invalid argument) when the URL is not a valid
    ///   PostgreSQL URL or names another backend.
    public func postgresAddress() throws(AviaryError) -> PostgresAddress {
        guard case .postgres(let url) = self.kind else {
            throw AviaryError(.invalidArgument, "store URL \"\(self)\" is not a postgres:// URL")
        }
        return try PostgresAddress(parsing: url)
    }
}
