//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryDiscovery
import AviaryResilience
import AviaryStorage
import AviaryTelemetry
import AviaryTestSupport
import Foundation
import GRDB
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import OTel
import ServiceLifecycle
import Synchronization
import Testing

@testable import AviaryService

/// Endpoints known only once the upstream listens (port 0).
final class LateEndpoints: EndpointProvider {
    let list = Mutex<[Endpoint]>([])
    func endpoints() -> [Endpoint] { self.list.withLock { $0 } }
    func set(_ endpoint: Endpoint) { self.list.withLock { $0 = [endpoint] } }
}

/// A tracing backend exporting OTLP/JSON to the test's collector, in small quick batches.
func testTracing(
    _ service: String, collector: String, sampler: OTelSampler = .parentBasedAlwaysOn
) throws
    -> TracingBackend
{
    var configuration = TracingConfiguration(service: service, endpoint: collector, protocol: .httpJSON)
    configuration.otel.traces.batchSpanProcessor.scheduleDelay = .milliseconds(10)
    configuration.otel.traces.sampler = sampler
    return try TracingBackend(configuration, logger: quiet)
}

typealias OTelSampler = OTel.Configuration.TracesConfiguration.SamplerConfiguration

extension ResiliencePipeline<ClientResponse> {
    /// No retries and no per-try timeout: on a loaded machine the default pipeline's 500 ms per
    /// try can time out and retry, which adds spans and calls these tests count exactly.
    static var plain: ResiliencePipeline<ClientResponse> { ResiliencePipeline { Timeout(.seconds(30)) } }
}

/// Runs the applications in one service group until `body` returns, then shuts them down.
func withApplications<Context>(
    _ apps: [AviaryApplication<Context>],
    _ body: ([Endpoint]) async throws -> Void
) async throws {
    let (listening, continuation) = AsyncStream.makeStream(of: (Int, Endpoint).self)
    var services: [any Service] = []
    for (index, var app) in apps.enumerated() {
        app.onListening = { continuation.yield((index, $0)) }
        services += await app.makeServices().services
    }
    let group = ServiceGroup(services: services, logger: quiet)
    let running = Task { try await group.run() }
    var endpoints = Array(repeating: Endpoint(host: "127.0.0.1", port: 0), count: apps.count)
    var started = 0
    for await (index, endpoint) in listening {
        endpoints[index] = endpoint
        started += 1
        if started == apps.count { break }
    }
    do {
        try await body(endpoints)
    } catch {
        await group.triggerGracefulShutdown()
        try? await running.value
        throw error
    }
    await group.triggerGracefulShutdown()
    try await running.value
}

@Suite("Tracing", .timeLimit(.minutes(3)))
struct TracingTests {
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let callerSpanID = "00f067aa0ba902b7"

    @Test("one trace across three services: server, client and database spans with correct parents")
    func traceAcrossThreeServices() async throws {
        let receiver = OTLPReceiver()
        let lines = Mutex<[String]>([])
        let sink = LogSink { bytes in lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
        let edgeLogger = Telemetry(configuration: .init(service: "edge", logFormat: .json, logSink: sink))
            .makeLogger(label: "aviary.edge", metadataProvider: .traceIDs)
        try await receiver.run { collector in
            let options = { (name: String) in ServiceOptions(name: name, port: 0, drainDelay: .zero) }
            let payments = AviaryApplication<BasicRequestContext>(
                options("payments"), logger: quiet, tracing: try testTracing("payments", collector: collector))
            var migrations = Migrations()
            migrations.add("charges") { db in try db.execute(sql: "CREATE TABLE charges (id TEXT PRIMARY KEY)") }
            let store = try SQLiteStore(
                url: StoreURL(parsing: "sqlite::memory:"), migrations: migrations, tracer: payments.tracer)
            payments.router.post("/charges") { _, _ -> String in
                try await store.write("insert charge") { db in
                    try db.execute(sql: "INSERT INTO charges VALUES (?)", arguments: [UUID().uuidString])
                }
                return "charged"
            }

            let orders = AviaryApplication<BasicRequestContext>(
                options("orders"), logger: quiet, tracing: try testTracing("orders", collector: collector))
            let paymentsEndpoints = LateEndpoints()
            let paymentsClient = ServiceClient(
                service: "orders", upstream: "payments", endpoints: paymentsEndpoints, pipeline: .plain,
                tracer: orders.tracer)
            orders.router.post("/orders") { _, _ -> String in
                let response = try await paymentsClient.execute(
                    .POST, "/charges", headers: [("idempotency-key", "o-1")])
                return "ordered after \(response.status)"
            }

            let edge = AviaryApplication<BasicRequestContext>(
                options("edge"), logger: edgeLogger, tracing: try testTracing("edge", collector: collector))
            let ordersEndpoints = LateEndpoints()
            let ordersClient = ServiceClient(
                service: "edge", upstream: "orders", endpoints: ordersEndpoints, pipeline: .plain, tracer: edge.tracer)
            edge.router.get("/checkout") { _, _ -> String in
                let response = try await ordersClient.execute(.POST, "/orders", headers: [("idempotency-key", "c-1")])
                return String(buffer: response.body)
            }

            try await withApplications([payments, orders, edge]) { endpoints in
                paymentsEndpoints.set(endpoints[0])
                ordersEndpoints.set(endpoints[1])
                var request = HTTPClientRequest(url: endpoints[2].url + "/checkout")
                request.headers.add(name: "traceparent", value: "00-\(Self.traceID)-\(Self.callerSpanID)-01")
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                let body = try await response.body.collect(upTo: 1024)
                #expect(response.status == .ok)
                #expect(String(buffer: body) == "ordered after 200")

                await eventually("six spans of the trace arrive") { receiver.spans(inTrace: Self.traceID).count >= 6 }
            }
        }
        #expect(receiver.problems.withLock { $0 }.isEmpty)
        let spans = receiver.spans(inTrace: Self.traceID)
        #expect(spans.count == 6, "\(spans)")
        func span(_ service: String, _ kind: Int) throws -> ReceivedSpan {
            try #require(
                spans.first { $0.service == service && $0.kind == kind }, "no \(service) kind \(kind) in \(spans)")
        }
        let edgeServer = try span("edge", 2)
        let edgeClient = try span("edge", 3)
        let ordersServer = try span("orders", 2)
        let ordersClient = try span("orders", 3)
        let paymentsServer = try span("payments", 2)
        let database = try #require(spans.first { $0.name == "insert charge" })

        // The caller's traceparent is continued; every hop is a child of the one before.
        #expect(edgeServer.parentSpanID == Self.callerSpanID)
        #expect(edgeClient.parentSpanID == edgeServer.spanID)
        #expect(ordersServer.parentSpanID == edgeClient.spanID)
        #expect(ordersClient.parentSpanID == ordersServer.spanID)
        #expect(paymentsServer.parentSpanID == ordersClient.spanID)
        #expect(database.parentSpanID == paymentsServer.spanID)
        #expect(database.service == "payments")
        #expect(database.attributes["db.system.name"] == "sqlite")

        // Names and attributes follow the route template and OpenTelemetry's HTTP conventions.
        #expect(edgeServer.name == "GET /checkout")
        #expect(edgeServer.attributes["http.route"] == "/checkout")
        #expect(edgeServer.attributes["http.response.status_code"] == "200")
        #expect(ordersServer.name == "POST /orders")
        #expect(edgeClient.name == "POST orders")
        #expect(ordersClient.attributes["peer.service"] == "payments")

        // The edge's access log line carries the trace and its server span.
        let access = lines.withLock { $0 }.first { $0.contains("\"message\":\"request\"") } ?? ""
        #expect(access.contains("\"trace_id\":\"\(Self.traceID)\""), "\(access)")
        #expect(access.contains("\"span_id\":\"\(edgeServer.spanID)\""), "\(access)")
    }

    @Test("parent-based ratio 0: new traces are dropped, a sampled caller's trace is kept")
    func parentBasedSampling() async throws {
        let receiver = OTLPReceiver()
        try await receiver.run { collector in
            let app = AviaryApplication<BasicRequestContext>(
                ServiceOptions(name: "edge", port: 0, drainDelay: .zero),
                logger: quiet,
                tracing: try testTracing("edge", collector: collector, sampler: .parentBasedTraceIDRatio(ratio: 0)!)
            )
            app.router.get("/hello") { _, _ in "hello" }
            try await withApplications([app]) { endpoints in
                // A request without a caller starts a new trace, which ratio 0 drops.
                let unsampled = try await HTTPClient.shared.execute(
                    HTTPClientRequest(url: endpoints[0].url + "/hello"), timeout: .seconds(30))
                #expect(unsampled.status == .ok)
                // A caller that sampled its trace (flags 01) is followed.
                var request = HTTPClientRequest(url: endpoints[0].url + "/hello")
                request.headers.add(name: "traceparent", value: "00-\(Self.traceID)-\(Self.callerSpanID)-01")
                let sampled = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                #expect(sampled.status == .ok)
                await eventually("the sampled span arrives") { !receiver.spans(inTrace: Self.traceID).isEmpty }
            }
        }
        // Spans are exported in the order they end, so the first request's span, had it been
        // recorded, would have arrived by now.
        let all = receiver.spans.withLock { $0 }
        #expect(all.count == 1, "\(all)")
        #expect(all.first?.traceID == Self.traceID)
    }

    @Test("an error answer marks the server span, and the client sends no traceparent without a tracer")
    func errorsAndUntracedClients() async throws {
        let receiver = OTLPReceiver()
        let seen = Mutex<[String]>([])
        try await receiver.run { collector in
            let upstream = AviaryApplication<BasicRequestContext>(
                ServiceOptions(name: "upstream", port: 0, drainDelay: .zero), logger: quiet)
            upstream.router.get("/echo") { request, _ -> String in
                seen.withLock { $0.append(request.headers[.init("traceparent")!] ?? "none") }
                return "ok"
            }
            let app = AviaryApplication<BasicRequestContext>(
                ServiceOptions(name: "edge", port: 0, drainDelay: .zero), logger: quiet,
                tracing: try testTracing("edge", collector: collector))
            let endpoints = LateEndpoints()
            let untraced = ServiceClient(service: "edge", upstream: "upstream", endpoints: endpoints, pipeline: .plain)
            app.router.get("/fail") { _, _ -> String in
                _ = try await untraced.execute(.GET, "/echo")
                throw HTTPError(.serviceUnavailable)
            }
            try await withApplications([upstream, app]) { listening in
                endpoints.set(listening[0])
                var request = HTTPClientRequest(url: listening[1].url + "/fail")
                request.headers.add(name: "traceparent", value: "00-\(Self.traceID)-\(Self.callerSpanID)-01")
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                #expect(response.status == .serviceUnavailable)
                await eventually("the span arrives") { !receiver.spans(inTrace: Self.traceID).isEmpty }
            }
        }
        #expect(seen.withLock { $0 } == ["none"])
        let span = try #require(receiver.spans(inTrace: Self.traceID).first)
        #expect(span.name == "GET /fail")
        #expect(span.attributes["http.response.status_code"] == "503")
    }
}

@Suite("TracingConfiguration", .timeLimit(.minutes(3)))
struct TracingConfigurationTests {
    @Test("off without an endpoint, when the SDK is disabled, or with the none exporter")
    func offCases() throws {
        #expect(try TracingConfiguration(service: "orders", environment: [:]) == nil)
        let endpoint = ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"]
        #expect(try TracingConfiguration(service: "orders", environment: endpoint) != nil)
        #expect(
            try TracingConfiguration(
                service: "orders", environment: endpoint.merging(["OTEL_SDK_DISABLED": "true"]) { $1 })
                == nil)
        #expect(
            try TracingConfiguration(
                service: "orders", environment: endpoint.merging(["OTEL_TRACES_EXPORTER": "none"]) { $1 }) == nil)
    }

    @Test("the base endpoint gets /v1/traces, the traces endpoint is used as is; OTEL_SERVICE_NAME wins")
    func endpointsAndName() throws {
        let base = try #require(
            try TracingConfiguration(
                service: "orders", version: "1.2.3",
                environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"]))
        #expect(base.otel.traces.otlpExporter.endpoint == "http://collector:4318/v1/traces")
        #expect(base.serviceName == "orders")
        #expect(base.otel.resourceAttributes["service.version"] == "1.2.3")
        #expect(!base.otel.metrics.enabled && !base.otel.logs.enabled)
        let exact = try #require(
            try TracingConfiguration(
                service: "orders",
                environment: [
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:9999/traces",
                    "OTEL_SERVICE_NAME": "orders-canary",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                ]))
        #expect(exact.otel.traces.otlpExporter.endpoint == "http://other:9999/traces")
        #expect(exact.serviceName == "orders-canary")
        #expect(exact.otel.traces.otlpExporter.protocol == .httpJSON)
    }

    @Test("every invalid variable is reported at once, naming the value and what was expected")
    func invalidVariables() throws {
        let error = #expect(throws: AviaryError.self) {
            try TracingConfiguration(
                service: "orders",
                environment: [
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                    "OTEL_TRACES_SAMPLER": "sometimes",
                    "OTEL_TRACES_SAMPLER_ARG": "1.5",
                ])
        }
        let lines = error?.message.split(separator: "\n").map(String.init) ?? []
        #expect(
            lines == [
                "OTEL_EXPORTER_OTLP_ENDPOINT: expected an http(s) URL, got \"collector:4318\"",
                "OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or http/json (gRPC is not built in), got \"grpc\"",
                "OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got \"1.5\"",
                "OTEL_TRACES_SAMPLER: expected parentbased_traceidratio, traceidratio, always_on, always_off, "
                    + "parentbased_always_on or parentbased_always_off, got \"sometimes\"",
            ])
    }
}
