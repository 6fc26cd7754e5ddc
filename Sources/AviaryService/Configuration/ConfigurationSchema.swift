//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// The keys a service accepts: the built-in keys of ``ServiceOptions`` and the service's own.
///
/// ```swift
/// let schema = ConfigurationSchema(
///     ServiceOptions(name: "orders", port: 8102),   // the service's name and built-in defaults
///     keys: [
///         .url("database_url", secret: true, "Where the orders database is"),
///         .int("pool_size", in: 1...100, default: 10, "Connections in the database pool"),
///     ]
/// )
/// ```
///
/// The built-in keys, with their defaults taken from the ``ServiceOptions`` passed in:
///
/// | key | type |
/// | --- | --- |
/// | `host` | string; also `HOST` |
/// | `port` | integer in 1...65535; also `PORT` |
/// | `drain_delay` | duration |
/// | `grace_period` | duration, longer than `drain_delay` |
/// | `version` | string |
public struct ConfigurationSchema: Sendable {
    /// The service's name: its section in `aviary.yaml` and its `AVIARY_<SERVICE>_` prefix.
    public var service: String
    /// Every key, built-in keys first.
    public private(set) var keys: [ConfigurationKey]

    /// The names of the built-in keys, those that make up ``ServiceOptions``.
    ///
    /// ```swift
    /// ConfigurationSchema.builtInKeyNames   // ["host", "port", "drain_delay", "grace_period", "version"]
    /// ```
    public static let builtInKeyNames = ["host", "port", "drain_delay", "grace_period", "version"]

    /// The environment variables read besides `AVIARY_<SERVICE>_<KEY>`, by key; the
    /// `AVIARY_<SERVICE>_<KEY>` variable wins when both are set.
    ///
    /// ```swift
    /// ConfigurationSchema.standardEnvironmentNames["port"]   // "PORT"
    /// ```
    public static let standardEnvironmentNames = ["port": "PORT", "host": "HOST"]

    /// Creates a schema with the built-in keys, defaulting to `defaults`, and the service's own keys.
    ///
    /// ```swift
    /// let schema = ConfigurationSchema(ServiceOptions(name: "orders"), keys: [
    ///     .bool("dry_run", default: false, "Log payments instead of making them"),
    /// ])
    /// ```
    ///
    /// - Parameters:
    ///   - defaults: the service's name and the defaults of the built-in keys.
    ///   - keys: the service's own keys.
    /// - Precondition: the service name is not empty, `defaults.port` is in 1...65535 (a
    ///   configured service listens on a known port) and no two keys have the same name.
    public init(_ defaults: ServiceOptions, keys: [ConfigurationKey] = []) {
        precondition(!defaults.name.isEmpty, "ConfigurationSchema needs a service name")
        let builtIn: [ConfigurationKey] = [
            .string("host", default: defaults.host, "The address to listen on"),
            .int("port", in: 1...65535, default: defaults.port, "The port to listen on"),
            .duration(
                "drain_delay",
                default: defaults.drainDelay,
                "How long /readyz fails at shutdown before the server stops accepting connections"
            ),
            .duration("grace_period", default: defaults.gracePeriod, "How long shutdown may take in all"),
            .string("version", default: defaults.version, "The service's version"),
        ]
        let all = builtIn + keys
        precondition(
            Set(all.map(\.name)).count == all.count,
            "ConfigurationSchema keys must have distinct names (the built-in ones are \(Self.builtInKeyNames))"
        )
        self.service = defaults.name
        self.keys = all
    }

    /// The key named `name`, if declared.
    ///
    /// ```swift
    /// schema.key("port")?.type.expectation   // "an integer in 1...65535"
    /// ```
    public func key(_ name: String) -> ConfigurationKey? {
        self.keys.first { $0.name == name }
    }

    /// The prefix of the service's environment variables: `AVIARY_ORDERS_` for `orders`.
    ///
    /// ```swift
    /// ConfigurationSchema(ServiceOptions(name: "order-api")).environmentPrefix   // "AVIARY_ORDER_API_"
    /// ```
    public var environmentPrefix: String {
        "AVIARY_\(Self.environmentName(self.service))_"
    }

    /// The environment variable of `key`: `AVIARY_ORDERS_DRAIN_DELAY` for `drain_delay`.
    ///
    /// ```swift
    /// schema.environmentVariable(for: "drain_delay")   // "AVIARY_ORDERS_DRAIN_DELAY"
    /// ```
    public func environmentVariable(for key: String) -> String {
        self.environmentPrefix + Self.environmentName(key)
    }

    /// Upper-cased, with `-` and `.` as `_`.
    static func environmentName(_ name: String) -> String {
        String(name.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 })
    }
}
