//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import Foundation

/// A typed configuration value: what a ``ConfigurationType`` parses text into.
///
/// ```swift
/// let value = ConfigurationValue.duration(.seconds(5))
/// print(value)   // 5s
/// ```
public enum ConfigurationValue: Sendable, Hashable, CustomStringConvertible {
    /// Text; also the value of an enumeration (``ConfigurationType/oneOf(_:)``).
    case string(String)
    /// An integer.
    case int(Int)
    /// A boolean.
    case bool(Bool)
    /// A non-negative duration, written `250ms`, `5s`, `2m` or `1h`.
    case duration(Duration)
    /// An absolute URL.
    case url(URL)

    /// The value as it is written in `aviary.yaml` or the environment.
    public var description: String {
        switch self {
        case .string(let value): value
        case .int(let value): String(value)
        case .bool(let value): value ? "true" : "false"
        case .duration(let value): Self.render(value)
        case .url(let value): value.absoluteString
        }
    }

    /// Renders a duration in the largest unit that divides it exactly, milliseconds at least.
    static func render(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        if milliseconds == 0 { return "0s" }
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000)] where milliseconds % size == 0 {
            return "\(milliseconds / size)\(unit)"
        }
        return "\(milliseconds)ms"
    }
}

/// The type of a configuration key: how its text is parsed and what is expected of it.
///
/// ```swift
/// let port = ConfigurationType.int(in: 1...65535)
/// port.parse("8102")   // .int(8102)
/// port.parse("80a")    // nil
/// port.expectation     // "an integer in 1...65535"
/// ```
public struct ConfigurationType: Sendable, Hashable, CustomStringConvertible {
    private enum Wrapped: Sendable, Hashable {
        case string
        case int(ClosedRange<Int>)
        case bool
        case duration
        case url
        case oneOf([String])
    }
    private let wrapped: Wrapped
    private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

    /// Any text.
    public static let string = ConfigurationType(.string)
    /// Any integer.
    public static let int = ConfigurationType(.int(Int.min...Int.max))
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), in any case.
    public static let bool = ConfigurationType(.bool)
    /// A non-negative duration: an integer and a unit, `ms`, `s`, `m` or `h` (`250ms`, `5s`, `2m`).
    public static let duration = ConfigurationType(.duration)
    /// An absolute URL: a scheme, `://` and the rest (`postgres://db:5432/orders`).
    public static let url = ConfigurationType(.url)

    /// An integer in `range`.
    ///
    /// ```swift
    /// let poolSize = ConfigurationType.int(in: 1...100)
    /// ```
    public static func int(in range: ClosedRange<Int>) -> ConfigurationType {
        ConfigurationType(.int(range))
    }

    /// One of `allowed`, compared exactly.
    ///
    /// ```swift
    /// let region = ConfigurationType.oneOf(["eu", "us"])
    /// ```
    ///
    /// - Precondition: `allowed` is not empty.
    public static func oneOf(_ allowed: [String]) -> ConfigurationType {
        precondition(!allowed.isEmpty, "ConfigurationType.oneOf needs at least one allowed value")
        return ConfigurationType(.oneOf(allowed))
    }

    /// What a valid value looks like, for error messages: `an integer in 1...65535`.
    public var expectation: String {
        switch self.wrapped {
        case .string: "a string"
        case .int(let range) where range == Int.min...Int.max: "an integer"
        case .int(let range): "an integer in \(range.lowerBound)...\(range.upperBound)"
        case .bool: "true or false"
        case .duration: "a duration such as 250ms, 5s or 2m"
        case .url: "an absolute URL"
        case .oneOf(let allowed): "one of \(allowed.joined(separator: ", "))"
        }
    }

    public var description: String { self.expectation }

    /// Parses text from `aviary.yaml` or the environment; `nil` when it is not valid.
    ///
    /// ```swift
    /// ConfigurationType.duration.parse("250ms")   // .duration(.milliseconds(250))
    /// ```
    public func parse(_ text: String) -> ConfigurationValue? {
        switch self.wrapped {
        case .string:
            return .string(text)
        case .int(let range):
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else { return nil }
            return .int(value)
        case .bool:
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "true", "yes", "on", "1": return .bool(true)
            case "false", "no", "off", "0": return .bool(false)
            default: return nil
            }
        case .duration:
            return Duration(aviaryText: text.trimmingCharacters(in: .whitespaces)).map { .duration($0) }
        case .url:
            guard let url = URL(string: text), let scheme = url.scheme, !scheme.isEmpty, text.contains("://")
            else { return nil }
            return .url(url)
        case .oneOf(let allowed):
            return allowed.contains(text) ? .string(text) : nil
        }
    }

    /// Whether `value` is of this type (defaults are checked with it).
    func accepts(_ value: ConfigurationValue) -> Bool {
        switch (self.wrapped, value) {
        case (.string, .string), (.bool, .bool), (.url, .url): true
        case (.duration, .duration(let value)): value >= .zero
        case (.int(let range), .int(let value)): range.contains(value)
        case (.oneOf(let allowed), .string(let value)): allowed.contains(value)
        default: false
        }
    }
}

/// One declared configuration key: its name, type, default, description and whether it is secret.
///
/// ```swift
/// let keys: [ConfigurationKey] = [
///     .url("database_url", secret: true, "Where the orders database is"),
///     .int("pool_size", in: 1...100, default: 10, "Connections in the database pool"),
///     .oneOf("region", ["eu", "us"], default: "eu", "Where the service's data lives"),
/// ]
/// ```
///
/// A key without a default is required: loading fails when neither `aviary.yaml` nor the
/// environment sets it. A secret key's value never appears in errors or `--print-config`.
public struct ConfigurationKey: Sendable, Hashable {
    /// The name in `aviary.yaml`, snake_case (`drain_delay`); upper-cased in the environment.
    public var name: String
    /// How the value is parsed and what is expected of it.
    public var type: ConfigurationType
    /// The value when neither `aviary.yaml` nor the environment sets one; `nil` for a required key.
    public var defaultValue: ConfigurationValue?
    /// A one-line description for people.
    public var description: String
    /// Whether the value is shown as `<redacted>` in errors and `--print-config`.
    public var isSecret: Bool

    /// Creates a key.
    ///
    /// ```swift
    /// let key = ConfigurationKey("pool_size", .int(in: 1...100), default: .int(10), description: "Pool size")
    /// ```
    ///
    /// - Parameters:
    ///   - name: snake_case: lower-case letters, digits and `_`, starting with a letter.
    ///   - type: how the value is parsed.
    ///   - default: the default value; `nil` makes the key required.
    ///   - secret: whether the value is redacted wherever it is shown.
    ///   - description: a one-line description.
    /// - Precondition: `name` is snake_case and `default`, if any, is of `type`.
    public init(
        _ name: String,
        _ type: ConfigurationType,
        default: ConfigurationValue? = nil,
        secret: Bool = false,
        description: String
    ) {
        precondition(Self.isSnakeCase(name), "ConfigurationKey name must be snake_case, got \"\(name)\"")
        if let value = `default` {
            precondition(type.accepts(value), "the default of \(name), \(value), is not \(type.expectation)")
        }
        self.name = name
        self.type = type
        self.defaultValue = `default`
        self.description = description
        self.isSecret = secret
    }

    /// A text key.
    ///
    /// ```swift
    /// .string("region_label", default: "Europe", "Shown on invoices")
    /// ```
    public static func string(
        _ name: String,
        default: String? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(
            name, .string, default: `default`.map { .string($0) }, secret: secret, description: description)
    }

    /// An integer key, in `range`.
    ///
    /// ```swift
    /// .int("pool_size", in: 1...100, default: 10, "Connections in the database pool")
    /// ```
    public static func int(
        _ name: String,
        in range: ClosedRange<Int> = Int.min...Int.max,
        default: Int? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(
            name,
            .int(in: range),
            default: `default`.map { .int($0) },
            secret: secret,
            description: description
        )
    }

    /// A boolean key.
    ///
    /// ```swift
    /// .bool("dry_run", default: false, "Log payments instead of making them")
    /// ```
    public static func bool(
        _ name: String,
        default: Bool? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(name, .bool, default: `default`.map { .bool($0) }, secret: secret, description: description)
    }

    /// A duration key (`250ms`, `5s`, `2m`, `1h`).
    ///
    /// ```swift
    /// .duration("request_timeout", default: .seconds(2), "How long a call to payments may take")
    /// ```
    public static func duration(
        _ name: String,
        default: Duration? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(
            name,
            .duration,
            default: `default`.map { .duration($0) },
            secret: secret,
            description: description
        )
    }

    /// An absolute URL key.
    ///
    /// ```swift
    /// .url("database_url", secret: true, "Where the orders database is")
    /// ```
    public static func url(
        _ name: String,
        default: URL? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(name, .url, default: `default`.map { .url($0) }, secret: secret, description: description)
    }

    /// A key whose value is one of `allowed`.
    ///
    /// ```swift
    /// .oneOf("region", ["eu", "us"], default: "eu", "Where the service's data lives")
    /// ```
    public static func oneOf(
        _ name: String,
        _ allowed: [String],
        default: String? = nil,
        secret: Bool = false,
        _ description: String
    ) -> ConfigurationKey {
        ConfigurationKey(
            name,
            .oneOf(allowed),
            default: `default`.map { .string($0) },
            secret: secret,
            description: description
        )
    }

    static func isSnakeCase(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, ("a"..."z").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }
    }
}
