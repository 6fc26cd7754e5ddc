//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
import Logging
import Testing

@testable import AviaryTelemetry

@Suite("JSONLogHandler", .timeLimit(.minutes(1)))
struct JSONLogHandlerTests {
    let capture = LineCapture()

    func makeLogger(
        level: Logger.Level = .trace,
        metadata: Logger.Metadata = [:],
        provider: Logger.MetadataProvider? = nil
    ) -> Logger {
        let sink = self.capture.sink
        return Logger(label: "aviary.test") { label in
            JSONLogHandler(
                label: label,
                service: "orders",
                instance: "orders-1",
                logLevel: level,
                metadata: metadata,
                metadataProvider: provider,
                sink: sink
            )
        }
    }

    @Test("a line carries time, level, service, instance, message, logger and source")
    func standardFields() throws {
        let before = Date()
        self.makeLogger().info("order placed")
        let after = Date()

        let lines = try self.capture.json()
        try #require(lines.count == 1)
        let line = lines[0]
        #expect(line["level"] as? String == "info")
        #expect(line["service"] as? String == "orders")
        #expect(line["instance"] as? String == "orders-1")
        #expect(line["message"] as? String == "order placed")
        #expect(line["logger"] as? String == "aviary.test")
        #expect(line["source"] as? String == "AviaryTelemetryTests")
        #expect(line["trace_id"] == nil)
        #expect(line["span_id"] == nil)
        #expect(line["metadata"] == nil, "no metadata object when there is no metadata")

        let time = try #require(line["time"] as? String)
        #expect(time.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "RFC 3339 UTC: \(time)")
        let parsed = try #require(try? Date(time, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
        #expect(parsed.timeIntervalSince(before) > -0.002)
        #expect(parsed.timeIntervalSince(after) < 0.002)
    }

    @Test("the key order is stable: time, level, service, instance, message, logger, source, metadata")
    func keyOrder() {
        self.makeLogger().warning("slow", metadata: ["a": "b"])
        let text = self.capture.text.first ?? ""
        let keys = ["\"time\"", "\"level\"", "\"service\"", "\"instance\"", "\"message\"", "\"logger\"", "\"source\""]
        let positions = keys.compactMap { text.range(of: $0)?.lowerBound }
        #expect(positions.count == keys.count)
        #expect(positions == positions.sorted(), "\(text)")
    }

    @Test(
        "timestamps are RFC 3339 UTC with milliseconds",
        arguments: [
            (0, 5, "1970-01-01T00:00:00.005Z"),
            (1_709_294_096, 789, "2024-03-01T11:54:56.789Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000Z"),
        ])
    func timestampFormat(seconds: Int, milliseconds: Int, expected: String) {
        #expect(LogTimestamp.string(seconds: seconds, milliseconds: milliseconds) == expected)
    }

    @Test("trace_id and span_id come from metadata or the provider and leave the metadata object")
    func traceContext() throws {
        let provider = Logger.MetadataProvider { ["trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "tenant": "acme"] }
        let logger = self.makeLogger(provider: provider)
        logger.info("charged", metadata: ["span_id": "00f067aa0ba902b7"])
        self.makeLogger().info("no context")

        let lines = try self.capture.json()
        try #require(lines.count == 2)
        #expect(lines[0]["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(lines[0]["span_id"] as? String == "00f067aa0ba902b7")
        let metadata = try #require(lines[0]["metadata"] as? [String: Any])
        #expect(metadata.keys.sorted() == ["tenant"])
        #expect(lines[1]["trace_id"] == nil)
        #expect(lines[1]["span_id"] == nil)
    }

    @Test(
        "strings escape quotes, backslashes and control characters and keep non-ASCII",
        arguments: [
            #"say "hi""#,
            #"C:\path\to"#,
            "two\nlines\r\n",
            "tab\there",
            "bell\u{07} nul\u{00} esc\u{1B} del\u{7F}",
            "zürich 東京 🚀 \u{2028}",
            "",
        ]
    )
    func escaping(text: String) throws {
        self.makeLogger().info("\(text)", metadata: [text: .string(text), "k": .array([.string(text)])])
        let lines = try self.capture.json()
        try #require(lines.count == 1)
        #expect(lines[0]["message"] as? String == text)
        let metadata = try #require(lines[0]["metadata"] as? [String: Any])
        #expect(metadata[text] as? String == text)
        #expect(metadata["k"] as? [String] == [text])
        let raw = try #require(self.capture.raw.first)
        #expect(!raw.dropLast().contains(where: { $0 < 0x20 }), "no raw control characters in a line")
    }

    @Test("nested metadata is rendered as JSON arrays and objects")
    func nestedMetadata() throws {
        struct Port: CustomStringConvertible, Sendable {
            var description: String { "8102" }
        }
        self.makeLogger().info(
            "nested",
            metadata: [
                "server.port": .stringConvertible(Port()),
                "routes": ["/orders", "/orders/{id}"],
                "upstream": ["name": "payments", "endpoints": ["10.0.0.1:8103", "10.0.0.2:8103"], "ok": "true"],
                "empty": [:],
            ]
        )
        let line = try #require(try self.capture.json().first)
        let metadata = try #require(line["metadata"] as? [String: Any])
        #expect(metadata["server.port"] as? String == "8102")
        #expect(metadata["routes"] as? [String] == ["/orders", "/orders/{id}"])
        let upstream = try #require(metadata["upstream"] as? [String: Any])
        #expect(upstream["name"] as? String == "payments")
        #expect(upstream["endpoints"] as? [String] == ["10.0.0.1:8103", "10.0.0.2:8103"])
        #expect(upstream["ok"] as? String == "true")
        #expect((metadata["empty"] as? [String: Any])?.isEmpty == true)
    }

    @Test("metadata merges handler, provider and call; the call wins")
    func metadataMerging() throws {
        let provider = Logger.MetadataProvider { ["from": "provider", "provider.only": "p", "shared": "provider"] }
        var logger = self.makeLogger(metadata: ["from": "handler", "handler.only": "h"], provider: provider)
        logger[metadataKey: "logger.only"] = "l"
        logger.info("merged", metadata: ["shared": "call", "call.only": "c"])

        let line = try #require(try self.capture.json().first)
        let metadata = try #require(line["metadata"] as? [String: String])
        #expect(
            metadata == [
                "from": "provider", "handler.only": "h", "provider.only": "p", "logger.only": "l",
                "shared": "call", "call.only": "c",
            ]
        )
    }

    @Test("the call's metadata wins over the handler's", arguments: ["call", ""])
    func callWins(value: String) throws {
        let logger = self.makeLogger(metadata: ["aviary.request_id": "from-handler"])
        logger.info("x", metadata: ["aviary.request_id": .string(value)])
        let line = try #require(try self.capture.json().first)
        #expect((line["metadata"] as? [String: String])?["aviary.request_id"] == value)
    }

    @Test("levels below the handler's level are dropped", arguments: Logger.Level.allCases)
    func levelFiltering(threshold: Logger.Level) throws {
        let logger = self.makeLogger(level: threshold)
        for level in Logger.Level.allCases {
            logger.log(level: level, "at \(level.rawValue)")
        }
        let levels = try self.capture.json().compactMap { $0["level"] as? String }
        #expect(levels == Logger.Level.allCases.filter { $0 >= threshold }.map(\.rawValue))
    }

    @Test("an error passed to the call is written as error")
    func errorField() throws {
        struct Broken: Error, CustomStringConvertible {
            var description: String { "disk \"full\"" }
        }
        let handler = JSONLogHandler(label: "aviary.test", service: "orders", metadataProvider: nil, sink: capture.sink)
        handler.log(
            event: LogEvent(
                level: .error,
                message: "write failed",
                error: Broken(),
                metadata: nil,
                source: "Storage",
                file: #fileID,
                function: #function,
                line: #line
            )
        )
        let line = try #require(try self.capture.json().first)
        #expect(line["error"] as? String == "disk \"full\"")
        #expect(line["source"] as? String == "Storage")
    }
}
