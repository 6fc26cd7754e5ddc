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
    ///
    /// ```swift
    /// headers[.contentType] = MetricsRegistry.contentType
    /// ```
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
        // One allocation with room for the help and process lines, so that appending them never
        // regrows (and copies) a buffer of the whole exposition.
        var output: [UInt8] = []
        output.reserveCapacity(emitted.count + 8192)
        Self.appendAddingHelp(self.help, to: emitted, into: &output)
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
        var output: [UInt8] = []
        output.reserveCapacity(exposition.count + 1024)
        Self.appendAddingHelp(help, to: exposition, into: &output)
        return output
    }

    /// ``addingHelp(_:to:)`` appending to an existing buffer.
    static func appendAddingHelp(_ help: [String: String], to exposition: [UInt8], into output: inout [UInt8]) {
        guard !help.isEmpty else {
            output.append(contentsOf: exposition)
            return
        }
        let typePrefix = Array("# TYPE ".utf8)
        let helpPrefix = Array("# HELP ".utf8)
        exposition.withUnsafeBufferPointer { text in
            // Unchanged runs of lines are copied in bulk; only `# TYPE` lines are looked at.
            var copiedUpTo = 0
            var previousLineStart: Int? = nil
            var lineStart = 0
            while lineStart < text.count {
                let lineEnd = Self.index(of: UInt8(ascii: "\n"), in: text, from: lineStart)
                let line = text[lineStart..<lineEnd]
                if line.starts(with: typePrefix) {
                    let nameBytes = line.dropFirst(typePrefix.count).prefix { $0 != UInt8(ascii: " ") }
                    let name = String(decoding: nameBytes, as: UTF8.self)
                    if let description = help[name] {
                        let hasHelp = previousLineStart.map { start in
                            text[start..<lineStart].starts(with: helpPrefix + nameBytes + [UInt8(ascii: " ")])
                        }
                        if hasHelp != true {
                            output.append(contentsOf: text[copiedUpTo..<lineStart])
                            copiedUpTo = lineStart
                            output.append(contentsOf: helpPrefix)
                            output.append(contentsOf: nameBytes)
                            output.append(UInt8(ascii: " "))
                            output.append(contentsOf: Self.escapedHelp(description))
                            output.append(UInt8(ascii: "\n"))
                        }
                    }
                }
                previousLineStart = lineStart
                lineStart = lineEnd + 1
            }
            output.append(contentsOf: text[copiedUpTo...])
        }
    }

    /// The index of the first `byte` at or after `start`, or `text.count`.
    private static func index(of byte: UInt8, in text: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var index = start
        while index < text.count && text[index] != byte {
            index += 1
        }
        return index
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
