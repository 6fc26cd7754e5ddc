//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import CoreMetrics
import Testing

@testable import AviaryTelemetry

@Suite("MetricsRegistry", .timeLimit(.minutes(1)))
struct MetricsRegistryTests {
    /// Records one sample of each kind through swift-metrics, as a middleware would.
    static func record(into metrics: MetricsRegistry) {
        let ok = HTTPMetrics.serverDimensions(service: "orders", route: "/orders/{id}", method: "GET", statusCode: 200)
        CoreMetrics.Counter(label: HTTPMetrics.serverRequestsTotal, dimensions: ok, factory: metrics.factory).increment(
            by: 3)
        let odd = HTTPMetrics.serverDimensions(
            service: "orders",
            route: #"/say/"hi"\n"#,
            method: "POST",
            statusCode: 500
        )
        CoreMetrics.Counter(label: HTTPMetrics.serverRequestsTotal, dimensions: odd, factory: metrics.factory)
            .increment()
        let timer = CoreMetrics.Timer(
            label: HTTPMetrics.serverRequestDuration, dimensions: ok, factory: metrics.factory)
        timer.recordMilliseconds(3)  // 0.005 bucket
        timer.recordMilliseconds(120)  // 0.25 bucket
        timer.recordSeconds(20)  // +Inf only
        let active = CoreMetrics.Meter(
            label: HTTPMetrics.serverActiveRequests,
            dimensions: HTTPMetrics.activeDimensions(service: "orders", method: "GET"),
            factory: metrics.factory
        )
        active.set(4)
        let client = HTTPMetrics.clientDimensions(
            service: "orders", upstream: "payments", route: "/payments", statusCode: 503)
        CoreMetrics.Counter(label: HTTPMetrics.clientRequestsTotal, dimensions: client, factory: metrics.factory)
            .increment()
        CoreMetrics.Timer(label: HTTPMetrics.clientRequestDuration, dimensions: client, factory: metrics.factory)
            .recordMilliseconds(40)
    }

    @Test("the exposition has counters, histogram buckets in seconds, gauges and escaped labels")
    func exposition() {
        let metrics = MetricsRegistry(processMetrics: false)
        Self.record(into: metrics)
        let lines = metrics.exposition().split(separator: "\n").map(String.init)

        #expect(lines.contains("# TYPE aviary_http_server_requests_total counter"))
        #expect(
            lines.contains(
                #"aviary_http_server_requests_total{service="orders",route="/orders/{id}",method="GET",status_code="200"} 3"#
            )
        )
        #expect(
            lines.contains(
                #"aviary_http_server_requests_total{service="orders",route="/say/\"hi\"\\n",method="POST",status_code="500"} 1"#
            ),
            "quotes and backslashes in label values are escaped"
        )
        #expect(lines.contains("# TYPE aviary_http_server_request_duration_seconds histogram"))
        let labels = #"service="orders",route="/orders/{id}",method="GET",status_code="200""#
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_bucket{\#(labels),le="0.005"} 1"#))
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_bucket{\#(labels),le="0.1"} 1"#))
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_bucket{\#(labels),le="0.25"} 2"#))
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_bucket{\#(labels),le="10.0"} 2"#))
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_bucket{\#(labels),le="+Inf"} 3"#))
        #expect(lines.contains(#"aviary_http_server_request_duration_seconds_count{\#(labels)} 3"#))
        #expect(lines.contains(#"aviary_http_server_active_requests{service="orders",method="GET"} 4.0"#))
        #expect(!lines.contains { $0.hasPrefix("process_") }, "process metrics were switched off")
    }

    @Test("declared metrics get one # HELP line right before their # TYPE line")
    func helpLines() {
        let metrics = MetricsRegistry(processMetrics: false)
        Self.record(into: metrics)
        let lines = metrics.exposition().split(separator: "\n").map(String.init)
        for name in [
            HTTPMetrics.serverRequestsTotal, HTTPMetrics.serverRequestDuration, HTTPMetrics.serverActiveRequests,
            HTTPMetrics.clientRequestsTotal, HTTPMetrics.clientRequestDuration,
        ] {
            let help = lines.indices.filter { lines[$0].hasPrefix("# HELP \(name) ") }
            let type = lines.firstIndex { $0.hasPrefix("# TYPE \(name) ") }
            #expect(help.count == 1, "\(name)")
            #expect(help.first.map { $0 + 1 } == type, "\(name): HELP immediately before TYPE")
        }
    }

    @Test("help is added only where missing and is escaped")
    func addingHelp() {
        let input = Array("# HELP a_total Mine.\n# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 2\n".utf8)
        let output = MetricsRegistry.addingHelp(["a_total": "Other.", "b": "Back\\slash\nnewline"], to: input)
        #expect(
            String(decoding: output, as: UTF8.self)
                == "# HELP a_total Mine.\n# TYPE a_total counter\na_total 1\n# HELP b Back\\\\slash\\nnewline\n# TYPE b gauge\nb 2\n"
        )
    }

    #if os(Linux)
    @Test("process metrics are appended with HELP and TYPE")
    func processFamilies() {
        let text = MetricsRegistry().exposition()
        for (name, type) in [
            ("process_cpu_seconds_total", "counter"), ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"), ("process_open_fds", "gauge"), ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ] {
            #expect(text.contains("\n# TYPE \(name) \(type)\n\(name) "), "\(name)")
            #expect(text.contains("# HELP \(name) "), "\(name)")
        }
    }
    #endif

    @Test("the content type is the Prometheus text format 0.0.4")
    func contentType() {
        #expect(MetricsRegistry.contentType.hasPrefix("text/plain; version=0.0.4"))
    }
}
