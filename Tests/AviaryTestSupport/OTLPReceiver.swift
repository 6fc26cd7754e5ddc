//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A logger that drops everything.
private let silent = Logger(label: "aviary.test-support", factory: { _ in SwiftLogNoOpLogHandler() })

/// One span as an OTLP/HTTP (JSON encoding) collector received it.
public struct ReceivedSpan: Sendable, CustomStringConvertible {
    public var service: String
    public var traceID: String
    public var spanID: String
    /// Empty for a root span.
    public var parentSpanID: String
    public var name: String
    /// OTLP's `SpanKind`: 2 server, 3 client.
    public var kind: Int
    public var attributes: [String: String]

    public var description: String {
        "\(self.service) \(self.name) kind=\(self.kind) \(self.spanID)<-\(self.parentSpanID)"
    }
}

/// A small OTLP/HTTP trace collector on 127.0.0.1: `POST /v1/traces` with the JSON encoding of
/// `ExportTraceServiceRequest`, parsed with Foundation's JSON parser (not with swift-otel's code).
public final class OTLPReceiver: Sendable {
    /// Every span received, each once.
    public let spans = Mutex<[ReceivedSpan]>([])
    /// Requests that could not be parsed.
    public let problems = Mutex<[String]>([])

    public init() {}

    /// The spans of one trace.
    public func spans(inTrace traceID: String) -> [ReceivedSpan] {
        self.spans.withLock { $0.filter { $0.traceID == traceID } }
    }

    /// Runs the collector for the duration of `body`, which gets its traces URL.
    public func run(_ body: (String) async throws -> Void) async throws {
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let bytes = try await request.body.collect(upTo: 16 << 20)
            do {
                try self.ingest(Data(bytes.readableBytesView))
            } catch {
                self.problems.withLock { $0.append("\(error)") }
                return Response(status: .badRequest)
            }
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: "{}"))
            )
        }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) },
            logger: silent
        )
        let group = ServiceGroup(services: [app], logger: silent)
        let running = Task { try await group.run() }
        var port = 0
        for await value in ports {
            port = value
            break
        }
        do {
            try await body("http://127.0.0.1:\(port)/v1/traces")
        } catch {
            await group.triggerGracefulShutdown()
            try? await running.value
            throw error
        }
        await group.triggerGracefulShutdown()
        try await running.value
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    private func ingest(_ data: Data) throws {
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Malformed(description: "not a JSON object")
        }
        var received: [ReceivedSpan] = []
        for resourceSpans in root["resourceSpans"] as? [[String: Any]] ?? [] {
            let resource = Self.attributes((resourceSpans["resource"] as? [String: Any])?["attributes"])
            for scopeSpans in resourceSpans["scopeSpans"] as? [[String: Any]] ?? [] {
                for span in scopeSpans["spans"] as? [[String: Any]] ?? [] {
                    received.append(
                        ReceivedSpan(
                            service: resource["service.name"] ?? "",
                            traceID: try Self.id(span["traceId"], bytes: 16),
                            spanID: try Self.id(span["spanId"], bytes: 8),
                            parentSpanID: try Self.id(span["parentSpanId"], bytes: 8, optional: true),
                            name: span["name"] as? String ?? "",
                            kind: span["kind"] as? Int ?? 0,
                            attributes: Self.attributes(span["attributes"])
                        ))
                }
            }
        }
        // An exporter may send a batch again when an answer is late: keep each span once.
        self.spans.withLock { spans in
            for span in received where !spans.contains(where: { $0.spanID == span.spanID }) {
                spans.append(span)
            }
        }
    }

    /// OTLP/JSON ids are hex; protobuf's generic JSON mapping writes bytes as base64. Both are
    /// accepted and returned as lowercase hex.
    private static func id(_ value: Any?, bytes: Int, optional: Bool = false) throws -> String {
        guard let text = value as? String, !text.isEmpty else {
            if optional { return "" }
            throw Malformed(description: "missing id")
        }
        if text.count == bytes * 2, text.allSatisfy(\.isHexDigit) { return text.lowercased() }
        guard let decoded = Data(base64Encoded: text), decoded.count == bytes else {
            throw Malformed(description: "bad id \(text)")
        }
        return decoded.map { String(format: "%02x", $0) }.joined()
    }

    private static func attributes(_ value: Any?) -> [String: String] {
        var result: [String: String] = [:]
        for attribute in value as? [[String: Any]] ?? [] {
            guard let key = attribute["key"] as? String, let value = attribute["value"] as? [String: Any] else {
                continue
            }
            if let string = value["stringValue"] as? String {
                result[key] = string
            } else if let int = value["intValue"] {
                result[key] = "\(int)"
            } else if let bool = value["boolValue"] as? Bool {
                result[key] = "\(bool)"
            }
        }
        return result
    }
}
