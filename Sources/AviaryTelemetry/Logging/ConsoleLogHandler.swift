//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Logging

/// A swift-log handler for people: one readable line per event, for a terminal.
///
/// The line is `time level [label] message key=value…`: metadata merged as in
/// ``JSONLogHandler`` and sorted by key, values quoted when they contain spaces, quotes or `=`,
/// nested values as JSON, and control characters escaped so that one event is always one line.
///
/// ```swift
/// let logger = Logger(label: "aviary.orders") { label in ConsoleLogHandler(label: label) }
/// logger.info("listening", metadata: ["server.address": "127.0.0.1:8102"])
/// // 2025-03-01T12:34:56.789Z info [aviary.orders] listening server.address=127.0.0.1:8102
/// ```
public struct ConsoleLogHandler: LogHandler {
    /// The logger's label, written in brackets.
    public let label: String
    /// The lowest level written.
    public var logLevel: Logger.Level
    /// Metadata written with every line of this handler.
    public var metadata: Logger.Metadata
    /// Contextual metadata read at each call.
    public var metadataProvider: Logger.MetadataProvider?
    /// Where lines go.
    public var sink: LogSink

    /// Creates a handler; nothing global is touched.
    ///
    /// ```swift
    /// let logger = Logger(label: "aviary.cli") { label in
    ///     ConsoleLogHandler(label: label, logLevel: .debug, sink: .standardError)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - label: the logger label.
    ///   - logLevel: the lowest level written.
    ///   - metadata: metadata written with every line.
    ///   - metadataProvider: contextual metadata read at each call; defaults to the global one.
    ///   - sink: where lines go; standard output by default.
    public init(
        label: String,
        logLevel: Logger.Level = .info,
        metadata: Logger.Metadata = [:],
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider,
        sink: LogSink = .standardOutput
    ) {
        self.label = label
        self.logLevel = logLevel
        self.metadata = metadata
        self.metadataProvider = metadataProvider
        self.sink = sink
    }

    /// Reads or writes one key of the handler's metadata.
    ///
    /// ```swift
    /// handler[metadataKey: "aviary.region"] = "eu-1"
    /// ```
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    /// Formats the event as one readable line and hands it to the sink in a single write.
    ///
    /// ```swift
    /// handler.log(event: LogEvent(level: .warning, message: "slow", metadata: nil,
    ///                             source: "Orders", file: #fileID, function: #function, line: #line))
    /// ```
    public func log(event: LogEvent) {
        let timestamp = LogTimestamp.now()
        self.sink.write(self.format(event: event, seconds: timestamp.seconds, milliseconds: timestamp.milliseconds))
    }

    func format(event: LogEvent, seconds: Int, milliseconds: Int) -> [UInt8] {
        let metadata = LogMetadataMerge.sortedEntries(
            handler: self.metadata,
            provider: self.metadataProvider,
            call: event.metadata
        )
        var bytes: [UInt8] = []
        bytes.reserveCapacity(160)
        LogTimestamp.append(seconds: seconds, milliseconds: milliseconds, to: &bytes)
        bytes.append(UInt8(ascii: " "))
        bytes.append(contentsOf: event.level.rawValue.utf8)
        bytes.append(contentsOf: " [".utf8)
        Self.appendOneLine(self.label, to: &bytes)
        bytes.append(contentsOf: "] ".utf8)
        Self.appendOneLine(event.message.description, to: &bytes)
        for (key, value) in metadata {
            bytes.append(UInt8(ascii: " "))
            Self.appendOneLine(key, to: &bytes)
            bytes.append(UInt8(ascii: "="))
            Self.appendValue(value, to: &bytes)
        }
        if let error = event.error {
            bytes.append(contentsOf: " error=".utf8)
            Self.appendValue(.string(String(describing: error)), to: &bytes)
        }
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    private static func appendValue(_ value: Logger.MetadataValue, to bytes: inout [UInt8]) {
        switch value {
        case .string, .stringConvertible:
            let text = LogMetadataMerge.text(value)
            let needsQuotes =
                text.isEmpty
                || text.utf8.contains { $0 <= 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "=") }
            if needsQuotes {
                // A JSON string literal: quoted, with quotes and control characters escaped.
                var json = JSONWriter(capacity: text.utf8.count + 2)
                json.string(text)
                bytes.append(contentsOf: json.bytes)
            } else {
                bytes.append(contentsOf: text.utf8)
            }
        case .array, .dictionary:
            var json = JSONWriter(capacity: 64)
            json.metadataValue(value)
            bytes.append(contentsOf: json.bytes)
        }
    }

    /// Appends text with line breaks and other control characters escaped, keeping one event on one line.
    private static func appendOneLine(_ text: String, to bytes: inout [UInt8]) {
        guard text.utf8.contains(where: { $0 < 0x20 }) else {
            bytes.append(contentsOf: text.utf8)
            return
        }
        var json = JSONWriter(capacity: text.utf8.count + 8)
        json.string(text)
        // Drop the surrounding quotes of the JSON literal; keep its escapes.
        bytes.append(contentsOf: json.bytes.dropFirst().dropLast())
    }
}
