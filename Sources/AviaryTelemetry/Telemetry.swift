//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import CoreMetrics
import Logging

/// A service's logging and metrics, built from one ``TelemetryConfiguration``.
///
/// Executables call ``bootstrap(_:metadataProvider:)`` once, first thing in `main`; libraries
/// never bootstrap, they take a `Logger` and record through swift-metrics. Tests build a
/// `Telemetry` with ``init(configuration:)``, which touches nothing global.
///
/// ```swift
/// @main struct OrdersMain {
///     static func main() async throws {
///         var configuration = TelemetryConfiguration(service: "orders")
///         try configuration.applyEnvironment()
///         let telemetry = Telemetry.bootstrap(configuration)
///         let logger = Logger(label: "aviary.orders")
///         logger.info("starting", metadata: ["server.port": "8102"])
///         // serve telemetry.metrics.exposition() at GET /metrics
///     }
/// }
/// ```
public struct Telemetry: Sendable {
    /// The configuration this telemetry was built from.
    public let configuration: TelemetryConfiguration
    /// The Prometheus registry behind swift-metrics, and the `/metrics` text.
    public let metrics: MetricsRegistry

    /// Builds handlers and the registry without bootstrapping anything.
    ///
    /// ```swift
    /// let telemetry = Telemetry(configuration: .init(service: "orders", logSink: testSink))
    /// let logger = telemetry.makeLogger(label: "aviary.orders")
    /// ```
    public init(configuration: TelemetryConfiguration) {
        self.configuration = configuration
        self.metrics = MetricsRegistry(
            durationBuckets: configuration.durationBuckets,
            processMetrics: configuration.processMetrics
        )
    }

    /// The handler for a label, in the configured format (``LogFormat/automatic`` resolved for
    /// the sink), level, service and instance.
    ///
    /// ```swift
    /// let handler = telemetry.makeLogHandler(label: "aviary.orders", metadataProvider: nil)
    /// ```
    public func makeLogHandler(label: String, metadataProvider: Logger.MetadataProvider?) -> any LogHandler {
        let configuration = self.configuration
        switch configuration.logFormat.resolved(for: configuration.logSink) {
        case .console:
            return ConsoleLogHandler(
                label: label,
                logLevel: configuration.logLevel,
                metadataProvider: metadataProvider,
                sink: configuration.logSink
            )
        default:
            return JSONLogHandler(
                label: label,
                service: configuration.service,
                instance: configuration.instance,
                logLevel: configuration.logLevel,
                metadataProvider: metadataProvider,
                sink: configuration.logSink
            )
        }
    }

    /// A logger with this telemetry's handler, without the global logging system.
    ///
    /// ```swift
    /// let logger = telemetry.makeLogger(label: "aviary.orders")
    /// logger.info("ready")
    /// ```
    public func makeLogger(label: String, metadataProvider: Logger.MetadataProvider? = nil) -> Logger {
        Logger(label: label) { label in self.makeLogHandler(label: label, metadataProvider: metadataProvider) }
    }

    /// Bootstraps `LoggingSystem` and `MetricsSystem` for the whole process. Executables only.
    ///
    /// ```swift
    /// let telemetry = Telemetry.bootstrap(TelemetryConfiguration(service: "orders"))
    /// Logger(label: "aviary.orders").info("bootstrapped")
    /// ```
    ///
    /// - Parameters:
    ///   - configuration: service, instance, level, format and sink of logs; metric options.
    ///   - metadataProvider: contextual metadata for every log line; by default the current
    ///     trace and span ids (`trace_id`, `span_id`, see `Logger.MetadataProvider.traceIDs`).
    /// - Returns: the telemetry, whose ``metrics`` serve `/metrics`.
    /// - Precondition: called at most once per process (swift-log and swift-metrics stop the
    ///   process on a second bootstrap).
    public static func bootstrap(
        _ configuration: TelemetryConfiguration,
        metadataProvider: Logger.MetadataProvider? = .traceIDs
    ) -> Telemetry {
        let telemetry = Telemetry(configuration: configuration)
        LoggingSystem.bootstrap(
            { label, provider in telemetry.makeLogHandler(label: label, metadataProvider: provider) },
            metadataProvider: metadataProvider
        )
        MetricsSystem.bootstrap(telemetry.metrics.factory)
        return telemetry
    }
}
