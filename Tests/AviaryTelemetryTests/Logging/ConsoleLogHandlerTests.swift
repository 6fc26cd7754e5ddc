//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Logging
import Testing

@testable import AviaryTelemetry

@Suite("ConsoleLogHandler", .timeLimit(.minutes(1)))
struct ConsoleLogHandlerTests {
    let capture = LineCapture()

    func makeLogger(level: Logger.Level = .info, metadata: Logger.Metadata = [:]) -> Logger {
        let sink = self.capture.sink
        return Logger(label: "aviary.orders") { label in
            ConsoleLogHandler(label: label, logLevel: level, metadata: metadata, metadataProvider: nil, sink: sink)
        }
    }

    @Test("a line is time level [label] message key=value, keys sorted")
    func lineShape() throws {
        self.makeLogger(metadata: ["z.last": "1"]).info("listening", metadata: ["server.address": "127.0.0.1:8102"])
        let line = try #require(self.capture.text.first)
        let match = try #require(line.wholeMatch(of: /(\S+) info \[aviary\.orders\] listening (.*)/))
        #expect(match.1.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil)
        #expect(match.2 == "server.address=127.0.0.1:8102 z.last=1")
    }

    @Test("values with spaces, quotes, = or nothing are quoted; nested values are JSON")
    func quoting() throws {
        self.makeLogger().info(
            "x",
            metadata: ["a": "two words", "b": #"say "hi""#, "c": "k=v", "d": "", "e": ["1", "2"], "f": ["k": "v"]]
        )
        let line = try #require(self.capture.text.first)
        #expect(line.hasSuffix(#" x a="two words" b="say \"hi\"" c="k=v" d="" e=["1","2"] f={"k":"v"}"#), "\(line)")
    }

    @Test("a message with line breaks stays on one line")
    func oneLine() throws {
        self.makeLogger().error("first\nsecond\tthird")
        #expect(self.capture.raw.count == 1)
        let line = try #require(self.capture.text.first)
        #expect(line.hasSuffix(#"error [aviary.orders] first\nsecond\tthird"#), "\(line)")
    }

    @Test("levels below the handler's level are dropped")
    func levelFiltering() {
        let logger = self.makeLogger(level: .warning)
        logger.info("dropped")
        logger.debug("dropped")
        logger.warning("kept")
        logger.critical("kept")
        #expect(self.capture.text.map { $0.contains(" kept") } == [true, true])
    }

    @Test("automatic format is console for a terminal sink and JSON otherwise")
    func automaticFormat() {
        let terminal = LogSink(isTerminal: true) { _ in }
        let pipe = LogSink(isTerminal: false) { _ in }
        #expect(LogFormat.automatic.resolved(for: terminal) == .console)
        #expect(LogFormat.automatic.resolved(for: pipe) == .json)
        #expect(LogFormat.json.resolved(for: terminal) == .json)
        #expect(LogFormat.console.resolved(for: pipe) == .console)
        #expect(LogFormat(parsing: "JSON") == .json)
        #expect(LogFormat(parsing: "auto") == .automatic)
        #expect(LogFormat(parsing: "xml") == nil)
    }
}
