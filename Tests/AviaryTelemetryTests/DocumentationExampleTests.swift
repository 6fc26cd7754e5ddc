//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import CoreMetrics
import Logging
import Testing

/// The landing page's example, minus the global bootstrap and the HTTP server (tests never
/// bootstrap: every test target shares one process).
@Suite("Documentation example", .timeLimit(.minutes(1)))
struct DocumentationExampleTests {
    @Test("configure from the environment, log a line, render /metrics")
    func landingPageExample() throws {
        let capture = LineCapture()
        var configuration = TelemetryConfiguration(service: "orders", logSink: capture.sink)
        try configuration.applyEnvironment(["AVIARY_LOG_FORMAT": "json", "AVIARY_INSTANCE_ID": "box:4242"])
        let telemetry = Telemetry(configuration: configuration)

        let logger = telemetry.makeLogger(label: "aviary.orders")
        logger.info("starting", metadata: ["server.port": "8102"])
        let line = try #require(try capture.json().first)
        #expect(line["instance"] as? String == "box:4242")
        #expect((line["metadata"] as? [String: String]) == ["server.port": "8102"])

        CoreMetrics.Counter(
            label: HTTPMetrics.serverRequestsTotal,
            dimensions: HTTPMetrics.serverDimensions(
                service: "orders", route: "/orders/{id}", method: "GET", statusCode: 200),
            factory: telemetry.metrics.factory
        ).increment(by: 3)
        let text = telemetry.metrics.exposition()
        #expect(
            text.contains(
                """
                # HELP aviary_http_server_requests_total HTTP requests served, by route template, method and status code.
                # TYPE aviary_http_server_requests_total counter
                aviary_http_server_requests_total{service="orders",route="/orders/{id}",method="GET",status_code="200"} 3

                """
            ),
            "\(text)"
        )
        #if os(Linux)
        #expect(text.contains("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes "))
        #endif
    }
}
