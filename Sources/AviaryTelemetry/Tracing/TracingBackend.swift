//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Logging
import OTel
public import ServiceLifecycle
public import Tracing

/// A service's tracer and the background service that batches and exports its spans (OTLP over
/// HTTP, through swift-otel).
///
/// A backend belongs to one service: several services in one process (the Shop in development)
/// each get their own, so that their spans carry their own `service.name`. Nothing here touches
/// the process-wide `InstrumentationSystem`.
///
/// ```swift
/// if let tracing = try TracingConfiguration(service: "orders") {
///     let backend = try TracingBackend(tracing, logger: logger)
///     let app = AviaryApplication(options, tracing: backend)   // spans per request, exported
/// }
/// ```
public struct TracingBackend: Sendable {
    /// Starts spans; pass it to ``TracingBackend`` users such as `ServiceClient` and `SQLiteStore`.
    public let tracer: any Tracer
    /// Batches and exports spans; run it in the service's `ServiceGroup` and stop it last, so that
    /// it flushes what the server recorded while draining.
    public let service: any Service
    /// The `service.name` of the spans.
    public let serviceName: String

    /// Creates the tracer and exporter described by `configuration`.
    ///
    /// - Parameters:
    ///   - configuration: where and how to export.
    ///   - logger: where swift-otel reports export failures.
    /// - Throws: swift-otel's error for a configuration it cannot use.
    public init(_ configuration: TracingConfiguration, logger: Logger? = nil) throws {
        var otel = configuration.otel
        if let logger { otel.diagnosticLogger = .custom(logger) }
        let backend = try OTel.makeTracingBackend(configuration: otel)
        self.tracer = backend.factory
        self.service = backend.service
        self.serviceName = configuration.serviceName
    }
}

extension Logger.MetadataProvider {
    /// Adds `trace_id` and `span_id` of the current span (an OTel span in the task's
    /// `ServiceContext`) to every log line; ``JSONLogHandler`` lifts them to top-level fields.
    ///
    /// ```swift
    /// let telemetry = Telemetry.bootstrap(configuration, metadataProvider: .traceIDs)
    /// ```
    public static var traceIDs: Logger.MetadataProvider {
        let otel = OTel.makeLoggingMetadataProvider()
        return Logger.MetadataProvider {
            var metadata = otel.get()
            metadata.removeValue(forKey: "trace_flags")
            return metadata
        }
    }
}
