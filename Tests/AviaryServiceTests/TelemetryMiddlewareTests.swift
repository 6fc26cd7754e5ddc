//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryService
import AviaryTelemetry
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

/// Keeps every log record's message and metadata.
final class LogRecords: Sendable {
    let records = Mutex<[(message: String, metadata: Logger.Metadata)]>([])

    var logger: Logger {
        Logger(label: "aviary.tests") { _ in Handler(records: self) }
    }

    struct Handler: LogHandler {
        let records: LogRecords
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
            self.records.records.withLock { $0.append(("\(event.message)", merged)) }
        }
    }
}

@Suite("TelemetryMiddleware", .timeLimit(.minutes(3)))
struct TelemetryMiddlewareTests {
    /// The value of the sample of `name` whose labels include every pair in `labels`.
    func sample(_ exposition: String, _ name: String, _ labels: [String: String]) -> Double? {
        for line in exposition.split(separator: "\n") where line.hasPrefix(name + "{") {
            guard labels.allSatisfy({ line.contains("\($0.key)=\"\($0.value)\"") }) else { continue }
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }

    @Test("requests are counted by route template, method and status, and each gets an access log line")
    func redMetricsAndAccessLog() async throws {
        let registry = MetricsRegistry(processMetrics: false)
        let logs = LogRecords()
        let router = Router()
        router.add(middleware: TelemetryMiddleware(service: "orders", metrics: registry, logger: logs.logger))
        router.add(middleware: ProblemMiddleware(logger: logs.logger))
        router.get("/orders/:id") { _, _ in "order" }
        router.get("/down") { _, _ -> String in
            throw HTTPProblem(status: 503, slug: "dependency-unavailable", detail: "payments is down")
        }
        router.on("/orders/:id", method: HTTPRequest.Method("PURGE")!) { _, _ in "purged" }
        let app = Application(router: router)
        try await app.test(.router) { client in
            for id in ["1", "2"] {
                try await client.execute(uri: "/orders/\(id)", method: .get) { #expect($0.status == .ok) }
            }
            try await client.execute(uri: "/down", method: .get) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/nowhere", method: .get) { #expect($0.status == .notFound) }
            try await client.execute(uri: "/orders/3", method: HTTPRequest.Method("PURGE")!) {
                #expect($0.status == .ok)
            }
        }
        let text = registry.exposition()
        let total = HTTPMetrics.serverRequestsTotal
        #expect(sample(text, total, ["route": "/orders/{id}", "method": "GET", "status_code": "200"]) == 2)
        #expect(sample(text, total, ["route": "/down", "status_code": "503"]) == 1)
        #expect(sample(text, total, ["route": "unmatched", "status_code": "404"]) == 1)
        #expect(sample(text, total, ["method": "_OTHER", "status_code": "200"]) == 1)
        #expect(sample(text, total, ["service": "orders", "route": "/orders/{id}"]) != nil)
        #expect(!text.contains("/orders/1"), "raw paths never become labels")
        #expect(
            sample(text, HTTPMetrics.serverRequestDuration + "_count", ["route": "/orders/{id}", "method": "GET"]) == 2)
        #expect(sample(text, HTTPMetrics.serverActiveRequests, ["method": "GET"]) == 0)

        let lines = logs.records.withLock { $0 }.filter { $0.message == "request" }
        #expect(lines.count == 5)
        let down = lines.first { $0.metadata["http.route"] == "/down" }
        #expect(down?.metadata["http.response.status_code"] == "503")
        #expect(down?.metadata["http.request.method"] == "GET")
        #expect(down?.metadata["aviary.duration_ms"] != nil)
        #expect(lines.first?.metadata["url.path"] == "/orders/1")
    }
}
