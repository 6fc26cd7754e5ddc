//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Logging

/// A swift-log handler that writes one JSON object per line, for log collectors.
///
/// Every line has `time` (RFC 3339, UTC, milliseconds), `level`, `service`, `instance`,
/// `trace_id` and `span_id` (when the metadata or the metadata provider carries them under those
/// keys; omitted otherwise), `message`, `logger` (the label), `source` (the module), `error` (when
/// the call passed one) and `metadata`: the handler's metadata, then the provider's, then the
/// call's, later ones winning, with nested values as JSON arrays and objects.
///
/// ```swift
/// var handler = JSONLogHandler(label: "aviary.orders", service: "orders", instance: "orders-1")
/// handler.logLevel = .debug
/// let logger = Logger(label: "aviary.orders") { _ in handler }
/// logger.info("order placed", metadata: ["aviary.order_id": "ord-42"])
/// // {"time":"2025-03-01T12:34:56.789Z","level":"info","service":"orders","instance":"orders-1",
/// //  "message":"order placed","logger":"aviary.orders","source":"Orders","metadata":{"aviary.order_id":"ord-42"}}
/// ```
public struct JSONLogHandler: LogHandler {
    /// The metadata key whose value becomes the top-level `trace_id` field (swift-otel's key).
    ///
    /// ```swift
    /// logger.info("charged", metadata: [JSONLogHandler.traceIDKey: "4bf92f3577b34da6a3ce929d0e0e4736",
    ///                                   JSONLogHandler.spanIDKey: "00f067aa0ba902b7"])
    /// ```
    public static let traceIDKey = "trace_id"
    /// The metadata key whose value becomes the top-level `span_id` field (swift-otel's key).
    public static let spanIDKey = "span_id"

    /// The logger's label, written as `logger`.
    public let label: String
    /// The service name, written as `service` on every line.
    public var service: String
    /// The instance (replica) name, written as `instance` on every line.
    public var instance: String
    /// The lowest level written; `Logger` drops lower levels before they reach the handler.
    public var logLevel: Logger.Level
    /// Metadata written with every line of this handler.
    public var metadata: Logger.Metadata
    /// Contextual metadata (for example the current trace and span ids) read at each call.
    public var metadataProvider: Logger.MetadataProvider?
    /// Where lines go.
    public var sink: LogSink

    /// Creates a handler; nothing global is touched.
    ///
    /// ```swift
    /// let logger = Logger(label: "aviary.users") { label in
    ///     JSONLogHandler(label: label, service: "users", instance: "users-0", logLevel: .info)
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - label: the logger label (`aviary.<module>` by convention).
    ///   - service: the service name written on every line.
    ///   - instance: the replica name written on every line.
    ///   - logLevel: the lowest level written.
    ///   - metadata: metadata written with every line.
    ///   - metadataProvider: contextual metadata read at each call; defaults to the global one.
    ///   - sink: where lines go; standard output by default.
    public init(
        label: String,
        service: String,
        instance: String = TelemetryConfiguration.defaultInstance(),
        logLevel: Logger.Level = .info,
        metadata: Logger.Metadata = [:],
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider,
        sink: LogSink = .standardOutput
    ) {
        self.label = label
        self.service = service
        self.instance = instance
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

    /// Formats the event as one JSON line and hands it to the sink in a single write.
    ///
    /// ```swift
    /// handler.log(event: LogEvent(level: .info, message: "ready", metadata: nil,
    ///                             source: "Orders", file: #fileID, function: #function, line: #line))
    /// ```
    public func log(event: LogEvent) {
        let timestamp = LogTimestamp.now()
        self.sink.write(self.format(event: event, seconds: timestamp.seconds, milliseconds: timestamp.milliseconds))
    }

    /// The line for an event at a given wall-clock time, newline included.
    func format(event: LogEvent, seconds: Int, milliseconds: Int) -> [UInt8] {
        let metadata = LogMetadataMerge.sortedEntries(
            handler: self.metadata,
            provider: self.metadataProvider,
            call: event.metadata
        )
        var traceID: Logger.MetadataValue?
        var spanID: Logger.MetadataValue?
        for (key, value) in metadata {
            if key == Self.traceIDKey { traceID = value } else if key == Self.spanIDKey { spanID = value }
        }

        var json = JSONWriter(capacity: 256)
        json.beginObject()
        json.key("time")
        json.bytes.append(UInt8(ascii: "\""))
        LogTimestamp.append(seconds: seconds, milliseconds: milliseconds, to: &json.bytes)
        json.bytes.append(UInt8(ascii: "\""))
        json.markValueWritten()
        json.member("level", event.level.rawValue)
        json.member("service", self.service)
        json.member("instance", self.instance)
        if let traceID {
            json.member("trace_id", LogMetadataMerge.text(traceID))
        }
        if let spanID {
            json.member("span_id", LogMetadataMerge.text(spanID))
        }
        json.member("message", event.message.description)
        json.member("logger", self.label)
        json.member("source", event.source)
        if let error = event.error {
            json.member("error", String(describing: error))
        }
        if metadata.count > (traceID == nil ? 0 : 1) + (spanID == nil ? 0 : 1) {
            json.key("metadata")
            json.metadataObject(metadata, skipping: (Self.traceIDKey, Self.spanIDKey))
        }
        json.endObject()
        json.bytes.append(UInt8(ascii: "\n"))
        return json.bytes
    }
}
