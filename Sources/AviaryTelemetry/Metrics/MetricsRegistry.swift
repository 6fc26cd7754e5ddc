//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import CoreMetrics
import Prometheus

/// A Prometheus registry with Aviary's defaults, the swift-metrics factory that feeds it, and the
/// `/metrics` exposition text.
///
/// Libraries record through swift-metrics; the executable bootstraps ``factory`` (through
/// ``Telemetry/bootstrap(_:metadataProvider:)``) and serves ``exposition()`` at `/metrics` with
/// ``contentType``. The exposition adds `# HELP` lines for the families in ``help`` (the HTTP
/// metrics by default) and, on Linux, the `process_*` families read at scrape time.
///
/// ```swift
/// let metrics = MetricsRegistry()
/// Counter(label: HTTPMetrics.serverRequestsTotal,
///         dimensions: HTTPMetrics.serverDimensions(service: "orders", route: "/orders", method: "GET", statusCode: 200),
///         factory: metrics.factory).increment()
/// let body = metrics.exposition()   // serve with content type MetricsRegistry.contentType
/// ```
public struct MetricsRegistry: Sendable {
    /// The content type of ``exposition()``: Prometheus text format 0.0.4.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The swift-prometheus registry that holds every metric.
    public let registry: PrometheusCollectorRegistry
    /// The swift-metrics factory that records into ``registry``; `Timer`s become histograms with
    /// ``TelemetryConfiguration/durationBuckets``.
    public let factory: PrometheusMetricsFactory
    /// `# HELP` text by metric name, added to families that have none.
    public let help: [String: String]
    /// Whether ``exposition()`` appends the ``ProcessMetrics`` families.
    public let includesProcessMetrics: Bool

    /// Creates a registry; nothing global is touched.
    ///
    /// ```swift
    /// let metrics = MetricsRegistry(durationBuckets: [.milliseconds(1), .milliseconds(10), .seconds(1)])
    /// ```
    ///
    /// - Parameters:
    ///   - registry: the registry to record into; a new one by default.
    ///   - durationBuckets: buckets of every `Timer` histogram, ascending.
    ///   - help: `# HELP` text by metric name.
    ///   - processMetrics: whether ``exposition()`` appends the `process_*` families.
    public init(
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        durationBuckets: [Duration] = HTTPMetrics.durationBuckets,
        help: [String: String] = HTTPMetrics.help,
        processMetrics: Bool = true
    ) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = durationBuckets
        self.factory = factory
        self.help = help
        self.includesProcessMetrics = processMetrics
    }

    /// The Prometheus text exposition of every metric, as served at `/metrics`.
    ///
    /// ```swift
    /// router.get("/metrics") { _, _ in
    ///     Response(status: .ok, headers: [.contentType: MetricsRegistry.contentType],
    ///              body: .init(byteBuffer: ByteBuffer(bytes: metrics.expositionBytes())))
    /// }
    /// ```
    public func exposition() -> String {
        String(decoding: self.expositionBytes(), as: UTF8.self)
    }

    /// ``exposition()`` as UTF-8 bytes, for a response body.
    ///
    /// ```swift
    /// let body: [UInt8] = metrics.expositionBytes()
    /// ```
    public func expositionBytes() -> [UInt8] {
        var emitted: [UInt8] = []
        self.registry.emit(into: &emitted)
        var output = Self.addingHelp(self.help, to: emitted)
        if self.includesProcessMetrics, let process = ProcessMetrics.collect() {
            process.render(into: &output)
        }
        return output
    }

    /// Inserts `# HELP name text` before each `# TYPE name …` line whose family has help text and
    /// no `# HELP` line yet. swift-metrics handles carry no help text, and swift-prometheus stops
    /// the process when one family is registered with two different help texts, so help is added
    /// here instead of at registration.
    static func addingHelp(_ help: [String: String], to exposition: [UInt8]) -> [UInt8] {
        guard !help.isEmpty else { return exposition }
        var output: [UInt8] = []
        output.reserveCapacity(exposition.count + 512)
        var previousLine: ArraySlice<UInt8> = []
        let typePrefix = Array("# TYPE ".utf8)
        let helpPrefix = Array("# HELP ".utf8)
        for line in exposition.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            if line.starts(with: typePrefix) {
                let rest = line.dropFirst(typePrefix.count)
                let name = String(decoding: rest.prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
                let hasHelp = previousLine.starts(with: helpPrefix + Array(name.utf8) + [UInt8(ascii: " ")])
                if !hasHelp, let text = help[name] {
                    output.append(contentsOf: helpPrefix)
                    output.append(contentsOf: name.utf8)
                    output.append(UInt8(ascii: " "))
                    output.append(contentsOf: Self.escapedHelp(text))
                    output.append(UInt8(ascii: "\n"))
                }
            }
            output.append(contentsOf: line)
            output.append(UInt8(ascii: "\n"))
            previousLine = line
        }
        // `split` yields an empty last piece after the final newline; do not double it.
        if exposition.last == UInt8(ascii: "\n") || exposition.isEmpty {
            output.removeLast()
        }
        return output
    }

    /// Help text escaping of the text format: `\` as `\\`, line feed as `\n`.
    private static func escapedHelp(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): bytes.append(contentsOf: "\\\\".utf8)
            case UInt8(ascii: "\n"): bytes.append(contentsOf: "\\n".utf8)
            default: bytes.append(byte)
            }
        }
        return bytes
    }
}
