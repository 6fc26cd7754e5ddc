//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("LogSink", .timeLimit(.minutes(1)))
struct LogSinkTests {
    @Test("concurrent loggers on one file descriptor never interleave within a line")
    func noInterleaving() async throws {
        var template = Array("/tmp/aviary-telemetry-XXXXXX".utf8CString)
        let descriptor = mkstemp(&template)
        try #require(descriptor >= 0)
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer {
            close(descriptor)
            unlink(path)
        }
        let sink = LogSink.fileDescriptor(descriptor)
        #expect(sink.isTerminal == false)

        // 8 KiB payloads: longer than PIPE_BUF, so only whole-line writes keep lines intact.
        let tasks = 8
        let linesPerTask = 50
        let payload = String(repeating: "x", count: 8 * 1024)
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    let logger = Logger(label: "aviary.test") { label in
                        JSONLogHandler(label: label, service: "s", metadataProvider: nil, sink: sink)
                    }
                    for line in 0..<linesPerTask {
                        logger.info("\(payload)", metadata: ["task": "\(task)", "line": "\(line)"])
                    }
                }
            }
        }

        let contents = try Data(contentsOf: URL(fileURLWithPath: path))
        let lines = contents.split(separator: UInt8(ascii: "\n"))
        #expect(lines.count == tasks * linesPerTask)
        var seen = Set<String>()
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
            #expect(object["message"] as? String == payload)
            let metadata = try #require(object["metadata"] as? [String: String])
            seen.insert("\(metadata["task"] ?? "?")/\(metadata["line"] ?? "?")")
        }
        #expect(seen.count == tasks * linesPerTask, "every line arrived once and intact")
    }
}
