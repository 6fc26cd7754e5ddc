//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
public import OTel

/// Whether and where a service exports traces, from the standard OpenTelemetry variables.
///
/// Tracing is **on** when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// names a collector, and off otherwise, or when `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`. Off means no tracer, no middleware and no exporter: nothing is
/// created per request.
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; spans go to `<url>/v1/traces` | unset: off |
/// | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the traces URL, as is | |
/// | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` or `http/json` | `http/protobuf` |
/// | `OTEL_SERVICE_NAME` | `service.name` of the spans | the service's name |
/// | `OTEL_TRACES_SAMPLER` | `parentbased_traceidratio`, `traceidratio`, `always_on`, `always_off`, `parentbased_always_on`, `parentbased_always_off` | `parentbased_traceidratio` |
/// | `OTEL_TRACES_SAMPLER_ARG` | the ratio, 0...1 | `1.0` |
/// | `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, ... | as in the OpenTelemetry specification (read by swift-otel) | |
///
/// ```swift
/// if let tracing = try TracingConfiguration(service: "orders", version: "1.4.0") {
///     let backend = try tracing.makeBackend()
///     // backend.tracer starts spans; run backend.service beside the server.
/// }
/// ```
public struct TracingConfiguration: Sendable {
    /// The swift-otel configuration behind it: adjust batching, headers or timeouts here.
    public var otel: OTel.Configuration

    /// Reads the variables; `nil` when tracing is off.
    ///
    /// - Parameters:
    ///   - service: the service's name, the default `service.name`.
    ///   - version: the service's version (`service.version`).
    ///   - instance: the replica's name (`service.instance.id`).
    ///   - environment: the variables; the process's by default.
    /// - Throws: ``AviaryError`` (`invalidArgument`) naming every invalid variable, its value and
    ///   what was expected.
    public init?(
        service: String,
        version: String? = nil,
        instance: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        let env = environment.filter { !$0.value.isEmpty }
        if env["OTEL_SDK_DISABLED"]?.lowercased() == "true" { return nil }
        if env["OTEL_TRACES_EXPORTER"]?.lowercased() == "none" { return nil }
        let base = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        let traces = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        guard base != nil || traces != nil else { return nil }

        var problems: [String] = []
        var configuration = Self.tracesOnly(service: env["OTEL_SERVICE_NAME"] ?? service)
        if let version { configuration.resourceAttributes["service.version"] = version }
        if let instance { configuration.resourceAttributes["service.instance.id"] = instance }

        for (name, value) in [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces), ("OTEL_EXPORTER_OTLP_ENDPOINT", base)] {
            guard let value else { continue }
            guard let url = URL(string: value), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
                problems.append("\(name): expected an http(s) URL, got \"\(value)\"")
                continue
            }
        }
        if let traces {
            configuration.traces.otlpExporter.endpoint = traces
        } else if let base {
            // The specification's rule: the base URL gets the signal's path appended.
            configuration.traces.otlpExporter.endpoint = base.hasSuffix("/") ? "\(base)v1/traces" : "\(base)/v1/traces"
        }

        let protocolName = env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? env["OTEL_EXPORTER_OTLP_PROTOCOL"]
        switch protocolName {
        case nil, "http/protobuf": configuration.traces.otlpExporter.protocol = .httpProtobuf
        case "http/json": configuration.traces.otlpExporter.protocol = .httpJSON
        case let other?:
            problems.append(
                "OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or http/json (gRPC is not built in), got \"\(other)\""
            )
        }

        let ratio: Double
        if let argument = env["OTEL_TRACES_SAMPLER_ARG"] {
            if let value = Double(argument), (0...1).contains(value) {
                ratio = value
            } else {
                problems.append("OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got \"\(argument)\"")
                ratio = 1
            }
        } else {
            ratio = 1
        }
        switch env["OTEL_TRACES_SAMPLER"]?.lowercased() {
        case nil, "parentbased_traceidratio":
            configuration.traces.sampler = .parentBasedTraceIDRatio(ratio: ratio) ?? .parentBasedAlwaysOn
        case "traceidratio": configuration.traces.sampler = .traceIDRatio(ratio: ratio) ?? .alwaysOn
        case "always_on": configuration.traces.sampler = .alwaysOn
        case "always_off": configuration.traces.sampler = .alwaysOff
        case "parentbased_always_on": configuration.traces.sampler = .parentBasedAlwaysOn
        case "parentbased_always_off": configuration.traces.sampler = .parentBasedAlwaysOff
        case let other?:
            problems.append(
                "OTEL_TRACES_SAMPLER: expected parentbased_traceidratio, traceidratio, always_on, always_off, "
                    + "parentbased_always_on or parentbased_always_off, got \"\(other)\""
            )
        }
        if !problems.isEmpty {
            throw AviaryError(.invalidArgument, problems.joined(separator: "\n"))
        }
        self.otel = configuration
    }

    /// A configuration exporting to `endpoint` (the full traces URL), for tests and embedding.
    ///
    /// ```swift
    /// var tracing = TracingConfiguration(service: "orders", endpoint: "http://127.0.0.1:4318/v1/traces")
    /// tracing.otel.traces.batchSpanProcessor.scheduleDelay = .milliseconds(50)
    /// ```
    public init(
        service: String, endpoint: String,
        protocol: OTel.Configuration.OTLPExporterConfiguration.`Protocol` = .httpProtobuf
    ) {
        var configuration = Self.tracesOnly(service: service)
        configuration.traces.sampler = .parentBasedAlwaysOn
        configuration.traces.otlpExporter.endpoint = endpoint
        configuration.traces.otlpExporter.protocol = `protocol`
        self.otel = configuration
    }

    /// swift-otel's configuration with traces exported over OTLP and its metrics and logs off:
    /// metrics are Prometheus at `/metrics`, logs are JSON lines on stdout.
    private static func tracesOnly(service: String) -> OTel.Configuration {
        var configuration = OTel.Configuration.default
        configuration.serviceName = service
        configuration.metrics.enabled = false
        configuration.logs.enabled = false
        configuration.traces.enabled = true
        configuration.traces.exporter = .otlp
        return configuration
    }

    /// The `service.name` the spans carry.
    public var serviceName: String { self.otel.serviceName }
}
