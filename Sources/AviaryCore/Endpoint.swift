//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A network address where one replica of a service listens: a host and a port.
///
/// Parses `host:port`, `[v6]:port` and plain `host` with a default port.
///
/// ```swift
/// let endpoint = try Endpoint(parsing: "127.0.0.1:8101")
/// endpoint.host   // "127.0.0.1"
/// endpoint.port   // 8101
/// endpoint.url    // "http://127.0.0.1:8101"
/// ```
public struct Endpoint: Sendable, Hashable, Codable, CustomStringConvertible {
    /// A host name or an IP address (IPv6 without brackets).
    public var host: String
    /// A TCP port in 1...65535, or 0 for "any" when binding.
    public var port: Int

    /// Creates an endpoint.
    ///
    /// - Precondition: `port` is in 0...65535.
    public init(host: String, port: Int) {
        precondition((0...65535).contains(port), "port out of range: \(port)")
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (or `[v6]:port`; a missing port takes `defaultPort`).
    ///
    /// - Throws: ``AviaryError`` (``AviaryError/Code/invalidArgument``) naming what is wrong.
    public init(parsing text: String, defaultPort: Int? = nil) throws(AviaryError) {
        var host = Substring(text)
        var portText: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else {
                throw AviaryError(.invalidArgument, "invalid endpoint \"\(text)\": expected ']' after an IPv6 address")
            }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if rest.hasPrefix(":") {
                portText = rest.dropFirst()
            } else if !rest.isEmpty {
                throw AviaryError(.invalidArgument, "invalid endpoint \"\(text)\": expected ':port' after ']'")
            }
        } else if let colon = host.lastIndex(of: ":") {
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        if host.isEmpty {
            throw AviaryError(.invalidArgument, "invalid endpoint \"\(text)\": expected a host before the port")
        }
        let port: Int
        if let portText {
            guard let value = Int(portText), (0...65535).contains(value) else {
                throw AviaryError(
                    .invalidArgument, "invalid endpoint \"\(text)\": expected a port in 0...65535, got \"\(portText)\"")
            }
            port = value
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw AviaryError(.invalidArgument, "invalid endpoint \"\(text)\": expected host:port")
        }
        self.init(host: String(host), port: port)
    }

    /// `host:port`, with brackets around an IPv6 host.
    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    /// The `http://` base URL of this endpoint.
    public var url: String { "http://\(self.description)" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        do {
            try self.init(parsing: raw)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.message)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.description)
    }
}
