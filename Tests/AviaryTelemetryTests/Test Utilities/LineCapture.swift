//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import Foundation
import Synchronization
import Testing

/// A log sink that keeps every line a handler writes.
final class LineCapture: Sendable {
    private let lines = Mutex<[[UInt8]]>([])

    var sink: LogSink {
        LogSink { line in self.lines.withLock { $0.append(line) } }
    }

    /// The raw lines, each with its newline.
    var raw: [[UInt8]] { self.lines.withLock { $0 } }

    /// Every line as text, without its newline.
    var text: [String] {
        self.raw.map { String(decoding: $0.dropLast(), as: UTF8.self) }
    }

    /// Every line parsed with `JSONSerialization`; a line that is not one JSON object fails the test.
    func json(sourceLocation: SourceLocation = #_sourceLocation) throws -> [[String: Any]] {
        try self.raw.map { line in
            #expect(line.last == UInt8(ascii: "\n"), "a line ends with a newline", sourceLocation: sourceLocation)
            #expect(
                line.dropLast().contains(UInt8(ascii: "\n")) == false,
                "one event is one line",
                sourceLocation: sourceLocation
            )
            let object = try JSONSerialization.jsonObject(with: Data(line))
            return try #require(object as? [String: Any], sourceLocation: sourceLocation)
        }
    }
}
