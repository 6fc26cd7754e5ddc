//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a service's logs and metrics say about it, and where they go.
///
/// Every field has a default; ``applyEnvironment(_:)`` overrides them from `AVIARY_*` variables.
///
/// ```swift
/// var configuration = TelemetryConfiguration(service: "orders")
/// try configuration.applyEnvironment()   // AVIARY_LOG_LEVEL=debug, AVIARY_LOG_FORMAT=json, ...
/// let telemetry = Telemetry.bootstrap(configuration)
/// ```
public struct TelemetryConfiguration: Sendable {
    /// The service name on every log line (`service`).
    public var service: String
    /// The replica name on every log line (`instance`); `<host>:<pid>` by default.
    public var instance: String
    /// The lowest level logged; `.info` by default.
    public var logLevel: Logger.Level
    /// JSON, console, or automatic (console in a terminal); automatic by default.
    public var logFormat: LogFormat
    /// Where log lines go; standard output by default.
    public var logSink: LogSink
    /// Whether `/metrics` includes the `process_*` families (Linux only); on by default.
    public var processMetrics: Bool
    /// Histogram buckets of every swift-metrics `Timer`; ``HTTPMetrics/durationBuckets`` by default.
    public var durationBuckets: [Duration]

    /// Creates a configuration.
    ///
    /// ```swift
    /// let configuration = TelemetryConfiguration(service: "payments", logLevel: .debug, logFormat: .console)
    /// ```
    ///
    /// - Parameters:
    ///   - service: the service name on every log line.
    ///   - instance: the replica name; `<host>:<pid>` by default.
    ///   - logLevel: the lowest level logged.
    ///   - logFormat: JSON, console, or automatic.
    ///   - logSink: where log lines go.
    ///   - processMetrics: whether `/metrics` includes the `process_*` families.
    ///   - durationBuckets: histogram buckets of every swift-metrics `Timer`, ascending.
    public init(
        service: String,
        instance: String = TelemetryConfiguration.defaultInstance(),
        logLevel: Logger.Level = .info,
        logFormat: LogFormat = .automatic,
        logSink: LogSink = .standardOutput,
        processMetrics: Bool = true,
        durationBuckets: [Duration] = HTTPMetrics.durationBuckets
    ) {
        self.service = service
        self.instance = instance
        self.logLevel = logLevel
        self.logFormat = logFormat
        self.logSink = logSink
        self.processMetrics = processMetrics
        self.durationBuckets = durationBuckets
    }

    /// The environment variables ``applyEnvironment(_:)`` reads.
    ///
    /// ```swift
    /// try configuration.applyEnvironment([TelemetryConfiguration.EnvironmentKey.logLevel: "debug"])
    /// ```
    public enum EnvironmentKey {
        /// Overrides ``TelemetryConfiguration/service``.
        public static let service = "AVIARY_SERVICE_NAME"
        /// Overrides ``TelemetryConfiguration/instance``.
        public static let instance = "AVIARY_INSTANCE_ID"
        /// Overrides ``TelemetryConfiguration/logLevel``: trace, debug, info, notice, warning, error, critical.
        public static let logLevel = "AVIARY_LOG_LEVEL"
        /// Overrides ``TelemetryConfiguration/logFormat``: json, console, auto.
        public static let logFormat = "AVIARY_LOG_FORMAT"
    }

    /// Overrides fields from `AVIARY_*` environment variables (twelve-factor).
    ///
    /// ```swift
    /// var configuration = TelemetryConfiguration(service: "orders")
    /// try configuration.applyEnvironment(["AVIARY_LOG_LEVEL": "debug"])
    /// // configuration.logLevel == .debug
    /// ```
    ///
    /// - Parameter environment: the variables; the process environment by default.
    /// - Throws: `AviaryError` with code `.invalidArgument` naming every invalid variable, its value
    ///   and what was expected; the configuration is left unchanged then.
    public mutating func applyEnvironment(
        _ environment: [String: String] = TelemetryConfiguration.processEnvironment()
    ) throws(AviaryError) {
        var updated = self
        var problems: [String] = []
        if let service = environment[EnvironmentKey.service] {
            if service.isEmpty {
                problems.append("\(EnvironmentKey.service): expected a service name, got \"\"")
            } else {
                updated.service = service
            }
        }
        if let instance = environment[EnvironmentKey.instance], !instance.isEmpty {
            updated.instance = instance
        }
        if let level = environment[EnvironmentKey.logLevel] {
            if let parsed = Logger.Level(rawValue: level.lowercased()) {
                updated.logLevel = parsed
            } else {
                let expected = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
                problems.append("\(EnvironmentKey.logLevel): expected one of \(expected), got \"\(level)\"")
            }
        }
        if let format = environment[EnvironmentKey.logFormat] {
            if let parsed = LogFormat(parsing: format) {
                updated.logFormat = parsed
            } else {
                problems.append("\(EnvironmentKey.logFormat): expected one of json, console, auto, got \"\(format)\"")
            }
        }
        guard problems.isEmpty else {
            throw AviaryError(.invalidArgument, problems.joined(separator: "; "))
        }
        self = updated
    }

    /// `<hostname>:<pid>`, the default instance name.
    ///
    /// ```swift
    /// TelemetryConfiguration.defaultInstance() // "build-box:4242"
    /// ```
    public static func defaultInstance() -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host: String
        if gethostname(&name, name.count - 1) == 0 {
            host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            host = "localhost"
        }
        return "\(host):\(getpid())"
    }

    /// The `AVIARY_*` variables of ``EnvironmentKey`` that are set in the process environment.
    ///
    /// ```swift
    /// let level = TelemetryConfiguration.processEnvironment()["AVIARY_LOG_LEVEL"]
    /// ```
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        for key in [EnvironmentKey.service, EnvironmentKey.instance, EnvironmentKey.logLevel, EnvironmentKey.logFormat]
        {
            if let value = getenv(key) {
                result[key] = String(cString: value)
            }
        }
        return result
    }
}
