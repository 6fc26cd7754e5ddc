//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryTelemetry
import Logging
import Testing

@Suite("Telemetry and TelemetryConfiguration", .timeLimit(.minutes(1)))
struct TelemetryTests {
    @Test("AVIARY_* variables override the defaults")
    func environmentOverrides() throws {
        var configuration = TelemetryConfiguration(service: "orders", instance: "default")
        try configuration.applyEnvironment([
            "AVIARY_SERVICE_NAME": "payments",
            "AVIARY_INSTANCE_ID": "payments-2",
            "AVIARY_LOG_LEVEL": "DEBUG",
            "AVIARY_LOG_FORMAT": "console",
            "UNRELATED": "x",
        ])
        #expect(configuration.service == "payments")
        #expect(configuration.instance == "payments-2")
        #expect(configuration.logLevel == .debug)
        #expect(configuration.logFormat == .console)
    }

    @Test("invalid variables are all reported with key, value and what was expected, and change nothing")
    func invalidEnvironment() {
        var configuration = TelemetryConfiguration(service: "orders", logLevel: .notice)
        let error = #expect(throws: AviaryError.self) {
            try configuration.applyEnvironment([
                "AVIARY_LOG_LEVEL": "loud", "AVIARY_LOG_FORMAT": "xml", "AVIARY_SERVICE_NAME": "renamed",
            ])
        }
        #expect(error?.code == .invalidArgument)
        let message = error?.message ?? ""
        #expect(
            message.contains(
                #"AVIARY_LOG_LEVEL: expected one of trace, debug, info, notice, warning, error, critical, got "loud""#))
        #expect(message.contains(#"AVIARY_LOG_FORMAT: expected one of json, console, auto, got "xml""#))
        #expect(configuration.logLevel == .notice)
        #expect(configuration.service == "orders")
    }

    @Test("the default instance is host:pid")
    func defaultInstance() {
        let instance = TelemetryConfiguration.defaultInstance()
        #expect(instance.wholeMatch(of: /[^:]+:\d+/) != nil, "\(instance)")
    }

    @Test("makeLogger writes in the configured format, level, service and instance")
    func makeLogger() throws {
        let json = LineCapture()
        let jsonTelemetry = Telemetry(
            configuration: .init(
                service: "orders", instance: "o-1", logLevel: .notice, logFormat: .json, logSink: json.sink)
        )
        let logger = jsonTelemetry.makeLogger(label: "aviary.orders")
        logger.info("dropped")
        logger.notice("kept")
        let lines = try json.json()
        try #require(lines.count == 1)
        #expect(lines[0]["service"] as? String == "orders")
        #expect(lines[0]["instance"] as? String == "o-1")
        #expect(lines[0]["message"] as? String == "kept")

        let console = LineCapture()
        let consoleTelemetry = Telemetry(
            configuration: .init(
                service: "orders", logFormat: .automatic, logSink: LogSink(isTerminal: true, write: console.sink.write))
        )
        consoleTelemetry.makeLogger(label: "aviary.orders").info("hello")
        #expect(console.text.first?.hasSuffix(" info [aviary.orders] hello") == true, "\(console.text)")
    }
}
