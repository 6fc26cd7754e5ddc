//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// The name of a service: lowercase letters, digits and `-`, starting with a letter, at most 63
/// characters (a DNS label, so that it can name a Kubernetes Service unchanged).
///
/// ```swift
/// let orders = try ServiceName("orders")
/// let literal: ServiceName = "payments"   // checked at run time; for literals in code
/// ```
public struct ServiceName: Sendable, Hashable, Comparable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    /// The validated name.
    public let rawValue: String

    /// Creates a service name, validating it.
    ///
    /// - Throws: ``AviaryError`` with code ``AviaryError/Code/invalidArgument`` naming the rule
    ///   that `name` breaks.
    public init(_ name: String) throws(AviaryError) {
        if let problem = ServiceName.validate(name) {
            throw AviaryError(.invalidArgument, "invalid service name \"\(name)\": \(problem)")
        }
        self.rawValue = name
    }

    /// Creates a service name from a literal.
    ///
    /// - Precondition: the literal is a valid name (a programmer error otherwise).
    public init(stringLiteral value: String) {
        if let problem = ServiceName.validate(value) {
            preconditionFailure("invalid service name literal \"\(value)\": \(problem)")
        }
        self.rawValue = value
    }

    /// Returns why `name` is not a valid service name, or `nil` if it is.
    public static func validate(_ name: String) -> String? {
        if name.isEmpty { return "expected 1 to 63 characters, got an empty string" }
        if name.utf8.count > 63 { return "expected at most 63 characters, got \(name.utf8.count)" }
        guard let first = name.utf8.first, first >= UInt8(ascii: "a"), first <= UInt8(ascii: "z") else {
            return "expected a lowercase letter first"
        }
        if name.utf8.last == UInt8(ascii: "-") { return "expected a letter or digit last" }
        for byte in name.utf8 {
            let ok =
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-")
            if !ok { return "expected only lowercase letters, digits and '-'" }
        }
        return nil
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        do {
            try self.init(raw)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.message)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.rawValue)
    }

    public var description: String { self.rawValue }

    public static func < (lhs: ServiceName, rhs: ServiceName) -> Bool { lhs.rawValue < rhs.rawValue }
}
