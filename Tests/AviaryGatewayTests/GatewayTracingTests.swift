//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import AviaryTestSupport
import Logging
import OTel
import ServiceLifecycle
import Synchronization
import Testing

@testable import AviaryGateway

/// A server span per request, exported over OTLP to a real collector, with W3C `traceparent`
/// propagated to the upstream.
@Suite("Gateway tracing", .timeLimit(.minutes(2)))
struct GatewayTracingTests {
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let callerSpanID = "00f067aa0ba902b7"

    /// The `traceparent` the origin received, from its echo of the request headers.
    static func traceparent(_ response: RawResponse) -> (trace: String, span: String)? {
        for line in response.text.split(separator: "\n") where line.hasPrefix("traceparent: ") {
            let parts = line.dropFirst("traceparent: ".count).split(separator: "-")
            guard parts.count == 4 else { return nil }
            return (String(parts[1]), String(parts[2]))
        }
        return nil
    }

    @Test(
        "a span per request: a new trace without traceparent, the caller's trace with it; the upstream gets the gateway's span as parent"
    )
    func spans() async throws {
        let receiver = OTLPReceiver()
        try await receiver.run { collector in
            var configuration = TracingConfiguration(service: "gateway", endpoint: collector, protocol: .httpJSON)
            configuration.otel.traces.batchSpanProcessor.scheduleDelay = .milliseconds(10)
            let backend = try TracingBackend(configuration, logger: quietLogger)
            let group = ServiceGroup(services: [backend.service], logger: quietLogger)
            let exporting = Task { try await group.run() }
            defer { exporting.cancel() }
            try await withOrigins(["a"]) { origins in
                let yaml = """
                    listen: {address: 127.0.0.1:0}
                    clusters:
                      backend: {endpoints: [127.0.0.1:\(origins[0].port)]}
                    routes:
                      - match: {path_prefix: /api/}
                        cluster: backend
                    """
                try await withGateway(yaml, tracer: backend.tracer) { gateway in
                    let fresh = try await gateway.get("/api/fresh")
                    let created = try #require(Self.traceparent(fresh))
                    #expect(created.trace.count == 32)
                    #expect(created.trace != Self.traceID)

                    let continued = try await gateway.get(
                        "/api/continued", headers: "traceparent: 00-\(Self.traceID)-\(Self.callerSpanID)-01\r\n")
                    let propagated = try #require(Self.traceparent(continued))
                    #expect(propagated.trace == Self.traceID)
                    #expect(propagated.span != Self.callerSpanID)

                    await eventually("both spans exported") {
                        !receiver.spans(inTrace: created.trace).isEmpty
                            && !receiver.spans(inTrace: Self.traceID).isEmpty
                    }
                    let root = try #require(receiver.spans(inTrace: created.trace).first)
                    #expect(root.spanID == created.span)
                    #expect(root.parentSpanID.isEmpty)
                    #expect(root.kind == 2)
                    #expect(root.name == "GET /api/")
                    #expect(root.service == "gateway")
                    #expect(root.attributes["http.response.status_code"] == "200")
                    #expect(root.attributes["http.route"] == "/api/")
                    let child = try #require(receiver.spans(inTrace: Self.traceID).first)
                    #expect(child.parentSpanID == Self.callerSpanID)
                    #expect(child.spanID == propagated.span)
                }
            }
            await group.triggerGracefulShutdown()
            try? await exporting.value
        }
    }
}
