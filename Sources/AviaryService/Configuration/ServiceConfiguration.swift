//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// Where a configuration value came from.
///
/// ```swift
/// configuration.source(of: "port")   // .environment("PORT"), printed as PORT
/// ```
public enum ConfigurationSource: Sendable, Hashable, CustomStringConvertible {
    /// The key's default in the ``ConfigurationSchema``.
    case `default`
    /// A line of a YAML file.
    case file(path: String, line: Int)
    /// An environment variable.
    case environment(String)

    /// `default`, `aviary.yaml:3` or the variable's name.
    public var description: String {
        switch self {
        case .default: "default"
        case .file(let path, let line): "\(path):\(line)"
        case .environment(let name): name
        }
    }
}

/// A service's effective configuration: defaults, then its section of `aviary.yaml`, then the
/// environment, validated against its ``ConfigurationSchema``.
///
/// ```swift
/// let schema = ConfigurationSchema(ServiceOptions(name: "orders", port: 8102), keys: [
///     .url("database_url", secret: true, "Where the orders database is"),
///     .int("pool_size", in: 1...100, default: 10, "Connections in the database pool"),
/// ])
/// let configuration = try ServiceConfiguration.load(schema, file: "aviary.yaml")
/// var app = AviaryApplication(configuration.serviceOptions)
/// let database = configuration.url("database_url")
/// let poolSize = configuration.int("pool_size")
/// ```
///
/// See ``load(_:file:environment:)`` for the rules and ``rendered()`` for `--print-config`.
public struct ServiceConfiguration: Sendable {
    /// The keys and the service's name.
    public let schema: ConfigurationSchema
    private let entries: [String: Entry]

    /// A key's value and where it came from.
    struct Entry: Sendable {
        var value: ConfigurationValue
        var source: ConfigurationSource
    }

    init(schema: ConfigurationSchema, entries: [String: Entry]) {
        self.schema = schema
        self.entries = entries
    }

    /// The service's name.
    public var service: String { self.schema.service }

    /// The value of `key`, or `nil` when no such key is declared.
    ///
    /// ```swift
    /// if case .int(let port) = configuration["port"] { print(port) }
    /// ```
    public subscript(key: String) -> ConfigurationValue? {
        self.entries[key]?.value
    }

    /// Where the value of `key` came from, or `nil` when no such key is declared.
    ///
    /// ```swift
    /// configuration.source(of: "port")?.description   // "aviary.yaml:2"
    /// ```
    public func source(of key: String) -> ConfigurationSource? {
        self.entries[key]?.source
    }

    /// The value of a ``ConfigurationType/string`` or ``ConfigurationType/oneOf(_:)`` key.
    ///
    /// ```swift
    /// let region = configuration.string("region")
    /// ```
    ///
    /// - Precondition: `key` is declared with that type.
    public func string(_ key: String) -> String {
        guard case .string(let value) = self.require(key) else { self.wrongType(key, "string") }
        return value
    }

    /// The value of an integer key.
    ///
    /// ```swift
    /// let poolSize = configuration.int("pool_size")
    /// ```
    ///
    /// - Precondition: `key` is declared as an integer.
    public func int(_ key: String) -> Int {
        guard case .int(let value) = self.require(key) else { self.wrongType(key, "int") }
        return value
    }

    /// The value of a boolean key.
    ///
    /// ```swift
    /// let dryRun = configuration.bool("dry_run")
    /// ```
    ///
    /// - Precondition: `key` is declared as a boolean.
    public func bool(_ key: String) -> Bool {
        guard case .bool(let value) = self.require(key) else { self.wrongType(key, "bool") }
        return value
    }

    /// The value of a duration key.
    ///
    /// ```swift
    /// let timeout = configuration.duration("request_timeout")
    /// ```
    ///
    /// - Precondition: `key` is declared as a duration.
    public func duration(_ key: String) -> Duration {
        guard case .duration(let value) = self.require(key) else { self.wrongType(key, "duration") }
        return value
    }

    /// The value of a URL key.
    ///
    /// ```swift
    /// let database = configuration.url("database_url")
    /// ```
    ///
    /// - Precondition: `key` is declared as a URL.
    public func url(_ key: String) -> URL {
        guard case .url(let value) = self.require(key) else { self.wrongType(key, "URL") }
        return value
    }

    /// The built-in keys as ``ServiceOptions`` for ``AviaryApplication``.
    ///
    /// ```swift
    /// var app = AviaryApplication(configuration.serviceOptions)
    /// ```
    public var serviceOptions: ServiceOptions {
        ServiceOptions(
            name: self.service,
            version: self.string("version"),
            host: self.string("host"),
            port: self.int("port"),
            drainDelay: self.duration("drain_delay"),
            gracePeriod: self.duration("grace_period")
        )
    }

    private func require(_ key: String) -> ConfigurationValue {
        guard let entry = self.entries[key] else {
            preconditionFailure("\(self.service): configuration key \(key) is not declared in the schema")
        }
        return entry.value
    }

    private func wrongType(_ key: String, _ type: String) -> Never {
        preconditionFailure("\(self.service): configuration key \(key) is not a \(type)")
    }
}
