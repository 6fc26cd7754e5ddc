//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ServiceConfiguration: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// ``rendered()``, so that printing, interpolating or dumping a configuration never shows a secret.
    ///
    /// ```swift
    /// logger.debug("configuration:\n\(configuration)")   // database_url = <redacted>  (...)
    /// ```
    public var description: String { self.rendered() }

    /// ``rendered()``, as ``description``.
    public var debugDescription: String { self.rendered() }

    /// The rendered configuration only, so that `dump` and debuggers do not show secrets.
    public var customMirror: Mirror {
        Mirror(self, children: ["configuration": self.rendered()], displayStyle: .struct)
    }

    /// The effective configuration for `--print-config`: one `key = value  (source)` line per
    /// key, sorted by key, with secrets as `<redacted>`.
    ///
    /// ```swift
    /// print(configuration.rendered())
    /// // database_url = <redacted>  (AVIARY_ORDERS_DATABASE_URL)
    /// // drain_delay = 5s  (aviary.yaml:3)
    /// // grace_period = 30s  (default)
    /// // host = 127.0.0.1  (default)
    /// // port = 8102  (aviary.yaml:2)
    /// // version = 0.0.0  (default)
    /// ```
    public func rendered() -> String {
        self.schema.keys.sorted { $0.name < $1.name }.compactMap { key in
            guard let value = self[key.name], let source = self.source(of: key.name) else { return nil }
            return "\(key.name) = \(key.isSecret ? "<redacted>" : value.description)  (\(source))"
        }.joined(separator: "\n")
    }

    /// What the command line asks of the configuration: the file to read and whether to print
    /// the configuration and exit.
    ///
    /// ```swift
    /// let request = ServiceConfiguration.CommandLineRequest(["orders", "--config", "prod.yaml", "--print-config"])
    /// // request.file == "prod.yaml", request.printConfig == true
    /// ```
    public struct CommandLineRequest: Sendable, Hashable {
        /// The YAML file: the value of `--config PATH` (or `--config=PATH`), ``defaultFile`` otherwise.
        public var file: String
        /// Whether `--print-config` was given.
        public var printConfig: Bool

        /// Reads `--config` and `--print-config` from `arguments`, ignoring every other argument.
        ///
        /// ```swift
        /// let request = ServiceConfiguration.CommandLineRequest(CommandLine.arguments)
        /// ```
        public init(_ arguments: [String]) {
            self.file = ServiceConfiguration.defaultFile
            self.printConfig = false
            var remaining = arguments.dropFirst()[...]
            while let argument = remaining.popFirst() {
                if argument == "--print-config" {
                    self.printConfig = true
                } else if argument == "--config", let path = remaining.popFirst() {
                    self.file = path
                } else if argument.hasPrefix("--config=") {
                    self.file = String(argument.dropFirst("--config=".count))
                }
            }
        }
    }

    /// Loads the configuration for an executable: reads the file named by `--config` (or
    /// `aviary.yaml`), and handles `--print-config` by printing ``rendered()`` and exiting 0.
    ///
    /// ```swift
    /// @main
    /// struct Orders {
    ///     static func main() async throws {
    ///         let configuration = ServiceConfiguration.loadOrExit(schema)   // reads CommandLine.arguments
    ///         try await AviaryApplication(configuration.serviceOptions).run()
    ///     }
    /// }
    /// ```
    ///
    /// When the configuration is invalid, it writes the problems to standard error, one a line,
    /// and exits 78 (`EX_CONFIG`), with no stack trace. Tests call
    /// ``load(_:file:environment:)`` and ``rendered()`` instead, which never exit.
    ///
    /// - Parameters:
    ///   - schema: the keys and the service's name.
    ///   - arguments: the command line; `CommandLine.arguments` by default.
    ///   - environment: the variables; the process environment by default.
    /// - Returns: the configuration, unless the process exits.
    public static func loadOrExit(
        _ schema: ConfigurationSchema,
        arguments: [String] = CommandLine.arguments,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> ServiceConfiguration {
        let request = CommandLineRequest(arguments)
        let configuration: ServiceConfiguration
        do {
            configuration = try Self.load(schema, file: request.file, environment: environment)
        } catch {
            FileHandle.standardError.write(Data((error.message + "\n").utf8))
            exit(78)
        }
        if request.printConfig {
            print(configuration.rendered())
            exit(0)
        }
        return configuration
    }
}
