//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import Foundation

/// An append-only store of event streams with optimistic concurrency: the contract every backend
/// (`sqlite://`, `postgres://`) implements and one conformance suite checks.
///
/// ## Semantics
/// - **Streams and versions.** A stream is named by a non-empty string (for an aggregate,
///   `<category>-<id>`). Its events have versions 1, 2, 3, ... with no gaps; a stream's *version*
///   is the version of its last event, and a stream with no events does not exist (version `nil`,
///   written `0` where a number is needed).
/// - **Appends are atomic per call**: all events of one ``append(_:to:expectedVersion:)`` are
///   recorded, at consecutive versions and consecutive global positions, or none are.
/// - **Expected version.** The append checks the stream's version first, in the same transaction:
///   ``ExpectedVersion/noStream`` (the stream must not exist), ``ExpectedVersion/exact(_:)``
///   (its version must be exactly this; `exact(0)` means no stream), ``ExpectedVersion/streamExists``
///   or ``ExpectedVersion/any``. A mismatch throws ``WrongExpectedVersion`` naming the stream, the
///   expected and the actual version, and records nothing.
/// - **Idempotent appends.** Event ids are unique in the whole store. An append whose events were
///   *all* recorded before, by one earlier append to the same stream, in the same order (a retry
///   after a lost reply), succeeds again without recording anything and reports the original
///   versions and positions (``AppendResult/isReplay``), provided the expected version is the one
///   the original append satisfied. An append that repeats only some of them, or repeats ids of
///   another stream, throws ``AviaryCore/AviaryError`` with code `conflict`.
/// - **Global order.** Every recorded event has a *global position*, unique and increasing across
///   all streams in commit order. ``readAll(after:limit:)`` returns events in position order and
///   never returns an event while an event with a smaller position could still become visible
///   later: a reader that has seen position `p` has seen every event it will ever see below `p`.
///   Positions may have gaps (a backend may burn positions of rolled back appends), so readers
///   continue from the last position they saw, never from a count.
/// - **Reads** see only committed appends. Reading a stream that does not exist returns no events.
/// - **Snapshots** are cached state, not events: ``saveSnapshot(_:)`` keeps the latest snapshot
///   per stream (replacing an older one), and losing one loses nothing.
/// - **Timestamps** (``RecordedEvent/recordedAt``, ``RecordedEvent/occurredAt``) have microsecond
///   precision.
///
/// ```swift
/// let events = try SQLiteEventStore(url: StoreURL(parsing: "sqlite://.aviary/shop/orders.db"))
/// let placed = try NewEvent(type: "order.placed", json: ["total": 4200])
/// let result = try await events.append([placed], to: "order-17", expectedVersion: .noStream)
/// let history = try await events.readStream("order-17", from: 1, direction: .forwards, limit: 100)
/// ```
public protocol EventStore: Sendable {
    /// Appends events to a stream in one transaction, after checking the expected version.
    ///
    /// An empty `events` array checks the expected version and records nothing.
    ///
    /// - Returns: where the events were recorded (or, for a repeated append, where they were
    ///   recorded the first time).
    /// - Throws: ``WrongExpectedVersion`` when the stream's version does not match;
    ///   ``AviaryCore/AviaryError`` (`invalidArgument`) for an empty stream id, (`conflict`) for
    ///   event ids recorded before by another append; the backend's error when the transaction
    ///   fails (then nothing was recorded).
    @discardableResult
    func append(
        _ events: [NewEvent], to stream: String, expectedVersion: ExpectedVersion
    ) async throws
        -> AppendResult

    /// Reads up to `limit` events of a stream, starting at version `from` (included), forwards
    /// (increasing versions) or backwards (decreasing versions). `from` beyond the stream's
    /// version reads backwards from its last event (``StreamVersion/end``).
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`invalidArgument`) for a limit below 1.
    func readStream(
        _ stream: String, from version: Int64, direction: ReadDirection, limit: Int
    ) async throws
        -> [RecordedEvent]

    /// Reads up to `limit` events of all streams with a global position greater than `position`,
    /// in position order. `after: 0` reads from the beginning.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`invalidArgument`) for a limit below 1.
    func readAll(after position: Int64, limit: Int) async throws -> [RecordedEvent]

    /// The stream's version (its last event's version), or `nil` when it does not exist.
    func streamVersion(_ stream: String) async throws -> Int64?

    /// The greatest global position recorded so far (0 for an empty store): a projection's lag is
    /// this minus its checkpoint.
    func headPosition() async throws -> Int64

    /// Streams in name order, starting after `after` (for listing page by page).
    func streams(after: String?, limit: Int) async throws -> [StreamInfo]

    /// Stores a snapshot, replacing the stream's earlier one.
    func saveSnapshot(_ snapshot: Snapshot) async throws

    /// The stream's latest snapshot, if any.
    func latestSnapshot(of stream: String) async throws -> Snapshot?
}

extension EventStore {
    /// Reads a whole stream forwards, page by page.
    ///
    /// ```swift
    /// for event in try await events.readStream("order-17") { print(event.type) }
    /// ```
    public func readStream(_ stream: String, pageSize: Int = 1000) async throws -> [RecordedEvent] {
        var all: [RecordedEvent] = []
        var next: Int64 = 1
        while true {
            let page = try await self.readStream(stream, from: next, direction: .forwards, limit: pageSize)
            all += page
            guard page.count == pageSize, let last = page.last else { return all }
            next = last.streamVersion + 1
        }
    }
}

/// Event ids: time-ordered UUIDs (version 7, RFC 9562: 48 bits of Unix milliseconds, then
/// random bits), so that the store's unique index on event ids grows at its end instead of
/// touching a random page per append. Foundation only makes random (version 4) UUIDs and the
/// package mirror has no UUIDv7 package, hence these few lines.
public enum EventID {
    /// A new time-ordered UUID.
    ///
    /// ```swift
    /// let event = NewEvent(id: EventID.make(), type: "order.placed", data: json)
    /// ```
    public static func make(now: Date = Date()) -> UUID {
        var generator = SystemRandomNumberGenerator()
        let random = (generator.next() as UInt64, generator.next() as UInt64)
        let milliseconds = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<6 { bytes[index] = UInt8(truncatingIfNeeded: milliseconds >> (8 * (5 - index))) }
        for index in 6..<16 {
            bytes[index] = UInt8(truncatingIfNeeded: index < 8 ? random.0 >> (8 * index) : random.1 >> (8 * index - 64))
        }
        bytes[6] = (bytes[6] & 0x0F) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3F) | 0x80  // RFC 9562 variant
        return UUID(
            uuid: (
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9],
                bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]
            ))
    }
}

/// Constants for stream versions.
public enum StreamVersion {
    /// A version beyond any stream's end: read backwards from here to start at the last event.
    public static let end = Int64.max
}

/// The direction of a stream read.
public enum ReadDirection: Sendable, Hashable {
    /// Increasing versions.
    case forwards
    /// Decreasing versions.
    case backwards
}

/// What an append expects of the stream's version; see ``EventStore`` for the semantics.
///
/// ```swift
/// try await events.append([opened], to: "account-1", expectedVersion: .noStream)
/// try await events.append([deposited], to: "account-1", expectedVersion: .exact(1))
/// ```
public enum ExpectedVersion: Sendable, Hashable, CustomStringConvertible {
    /// Append whatever the stream's version.
    case any
    /// The stream must not exist yet.
    case noStream
    /// The stream must exist (have at least one event).
    case streamExists
    /// The stream's version must be exactly this (`0`: the stream must not exist).
    case exact(Int64)

    /// Whether a stream at `actual` (`nil`: no stream) satisfies this expectation.
    public func isSatisfied(by actual: Int64?) -> Bool {
        switch self {
        case .any: true
        case .noStream: actual == nil
        case .streamExists: actual != nil
        case .exact(let version): (actual ?? 0) == version
        }
    }

    public var description: String {
        switch self {
        case .any: "any"
        case .noStream: "no stream"
        case .streamExists: "an existing stream"
        case .exact(let version): version == 0 ? "no stream" : "version \(version)"
        }
    }
}

/// An append's expected version did not match the stream: someone else appended first. Reload
/// and decide again (``AggregateRepository`` does this for you).
///
/// ```swift
/// do { try await events.append([e], to: "order-17", expectedVersion: .exact(3)) }
/// catch let conflict as WrongExpectedVersion { print(conflict) }
/// // order-17: expected version 3, but the stream is at version 5
/// ```
public struct WrongExpectedVersion: Error, Sendable, Hashable, CustomStringConvertible, ProblemDetailsConvertible {
    /// The stream.
    public var stream: String
    /// What the append expected.
    public var expected: ExpectedVersion
    /// The stream's version when the append ran (`nil`: no stream).
    public var actual: Int64?

    /// Creates the error (backends).
    public init(stream: String, expected: ExpectedVersion, actual: Int64?) {
        self.stream = stream
        self.expected = expected
        self.actual = actual
    }

    public var description: String {
        let actual = self.actual.map { "the stream is at version \($0)" } ?? "the stream does not exist"
        return "\(self.stream): expected \(self.expected), but \(actual)"
    }

    /// A `409 Conflict` problem.
    public var problemDetails: ProblemDetails {
        AviaryError(
            .conflict, self.description,
            extensions: ["stream": self.stream, "actual_version": String(self.actual ?? 0)]
        ).problemDetails
    }
}

/// Metadata that travels with an event: why it happened and which trace it belongs to.
///
/// ```swift
/// var metadata = EventMetadata(causationID: command.id, correlationID: request.id)
/// metadata.traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// ```
public struct EventMetadata: Sendable, Hashable, Codable {
    /// The id of the command or event that caused this event.
    public var causationID: String?
    /// The id shared by everything one original request caused.
    public var correlationID: String?
    /// W3C `traceparent` of the span that recorded the event.
    public var traceParent: String?
    /// W3C `tracestate`.
    public var traceState: String?
    /// Anything else (small strings).
    public var headers: [String: String]

    /// Creates metadata; everything is optional.
    public init(
        causationID: String? = nil, correlationID: String? = nil, traceParent: String? = nil,
        traceState: String? = nil, headers: [String: String] = [:]
    ) {
        self.causationID = causationID
        self.correlationID = correlationID
        self.traceParent = traceParent
        self.traceState = traceState
        self.headers = headers
    }
}

/// An event to append: its id, type, schema version, JSON data and metadata.
///
/// ```swift
/// struct OrderPlaced: Codable { var total: Int }
/// let event = try NewEvent(type: "order.placed", schemaVersion: 2, json: OrderPlaced(total: 4200))
/// ```
public struct NewEvent: Sendable, Hashable {
    /// Unique in the whole store; a retried append with the same ids is not recorded twice.
    /// Time-ordered by default (``EventID/make(now:)``).
    public var id: UUID
    /// The event's type name, e.g. `order.placed`.
    public var type: String
    /// The version of the data's shape (``Upcaster``s read old versions as the new type).
    public var schemaVersion: Int
    /// The payload, JSON.
    public var data: Data
    /// Causation, correlation and trace context.
    public var metadata: EventMetadata
    /// When it happened according to the producer; `nil` records the append's time.
    public var occurredAt: Date?

    /// Creates an event from JSON bytes.
    public init(
        id: UUID = EventID.make(), type: String, schemaVersion: Int = 1, data: Data,
        metadata: EventMetadata = EventMetadata(),
        occurredAt: Date? = nil
    ) {
        self.id = id
        self.type = type
        self.schemaVersion = schemaVersion
        self.data = data
        self.metadata = metadata
        self.occurredAt = occurredAt
    }

    /// Creates an event whose data is `value` encoded as JSON (keys sorted).
    ///
    /// - Throws: the encoder's error.
    public init(
        id: UUID = EventID.make(), type: String, schemaVersion: Int = 1, json value: some Encodable,
        metadata: EventMetadata = EventMetadata(), occurredAt: Date? = nil
    ) throws {
        self.init(
            id: id, type: type, schemaVersion: schemaVersion, data: try EventJSON.encode(value), metadata: metadata,
            occurredAt: occurredAt)
    }
}

/// An event as stored: where it is (stream, version, global position) and what it is.
public struct RecordedEvent: Sendable, Hashable {
    /// The stream it belongs to.
    public var stream: String
    /// Its version in the stream (1, 2, 3, ...).
    public var streamVersion: Int64
    /// Its position in the global order of all streams.
    public var position: Int64
    /// Its id.
    public var id: UUID
    /// Its type name.
    public var type: String
    /// The schema version its data was written with.
    public var schemaVersion: Int
    /// Its JSON data.
    public var data: Data
    /// Its metadata.
    public var metadata: EventMetadata
    /// When it happened (the producer's time, or the append's).
    public var occurredAt: Date
    /// When the store recorded it.
    public var recordedAt: Date

    /// Creates a recorded event (backends and tests).
    public init(
        stream: String, streamVersion: Int64, position: Int64, id: UUID, type: String, schemaVersion: Int, data: Data,
        metadata: EventMetadata, occurredAt: Date, recordedAt: Date
    ) {
        self.stream = stream
        self.streamVersion = streamVersion
        self.position = position
        self.id = id
        self.type = type
        self.schemaVersion = schemaVersion
        self.data = data
        self.metadata = metadata
        self.occurredAt = occurredAt
        self.recordedAt = recordedAt
    }

    /// Decodes the data as `type` (no upcasting; see ``EventCatalog`` for that).
    public func decode<T: Decodable>(as type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: self.data)
    }
}

/// Where an append recorded its events.
public struct AppendResult: Sendable, Hashable {
    /// The stream.
    public var stream: String
    /// The stream's version after the append (the expected version for the next one).
    public var streamVersion: Int64
    /// The global position of the first event recorded (0 for an empty append).
    public var firstPosition: Int64
    /// The global position of the last event recorded (0 for an empty append).
    public var lastPosition: Int64
    /// True when the events had been recorded before by the same append (a retry): nothing new
    /// was recorded and the versions and positions are the original ones.
    public var isReplay: Bool

    /// Creates a result (backends).
    public init(stream: String, streamVersion: Int64, firstPosition: Int64, lastPosition: Int64, isReplay: Bool) {
        self.stream = stream
        self.streamVersion = streamVersion
        self.firstPosition = firstPosition
        self.lastPosition = lastPosition
        self.isReplay = isReplay
    }
}

/// A stream, as ``EventStore/streams(after:limit:)`` lists it.
public struct StreamInfo: Sendable, Hashable, Codable {
    /// The stream.
    public var stream: String
    /// Its version (number of events).
    public var version: Int64
    /// The global position of its last event.
    public var lastPosition: Int64

    /// Creates a stream description (backends).
    public init(stream: String, version: Int64, lastPosition: Int64) {
        self.stream = stream
        self.version = version
        self.lastPosition = lastPosition
    }
}

/// A stream's state at a version, saved to load an aggregate without replaying every event.
///
/// A snapshot is read only by code whose ``schemaVersion`` is the same: bump the aggregate's
/// `stateSchemaVersion` when the state's shape changes and old snapshots are ignored.
public struct Snapshot: Sendable, Hashable {
    /// The stream.
    public var stream: String
    /// The stream version the state includes.
    public var streamVersion: Int64
    /// The version of the state's shape.
    public var schemaVersion: Int
    /// The state, JSON.
    public var data: Data
    /// When it was taken.
    public var takenAt: Date

    /// Creates a snapshot.
    public init(stream: String, streamVersion: Int64, schemaVersion: Int, data: Data, takenAt: Date) {
        self.stream = stream
        self.streamVersion = streamVersion
        self.schemaVersion = schemaVersion
        self.data = data
        self.takenAt = takenAt
    }
}

/// The JSON encoding events and snapshots use: sorted keys, ISO 8601 dates.
enum EventJSON {
    static func encode(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(type, from: data)
    }
}

/// Checks shared by the backends, so that they reject bad input with the same message.
enum EventStoreChecks {
    static func stream(_ stream: String) throws {
        guard !stream.isEmpty, stream.utf8.count <= 1000 else {
            throw AviaryError(.invalidArgument, "stream id \"\(stream)\": expected 1 to 1000 bytes")
        }
    }

    static func limit(_ limit: Int) throws {
        guard limit >= 1 else {
            throw AviaryError(.invalidArgument, "read limit \(limit): expected at least 1")
        }
    }

    static func events(_ events: [NewEvent]) throws {
        for event in events {
            guard !event.type.isEmpty else {
                throw AviaryError(.invalidArgument, "event \(event.id): expected a type name")
            }
            guard event.schemaVersion >= 1 else {
                throw AviaryError(
                    .invalidArgument,
                    "event \(event.id) (\(event.type)): schema version \(event.schemaVersion), expected 1 or more"
                )
            }
        }
        if events.count > 1, Set(events.map(\.id)).count != events.count {
            throw AviaryError(.invalidArgument, "an append carries the same event id twice")
        }
    }
}
