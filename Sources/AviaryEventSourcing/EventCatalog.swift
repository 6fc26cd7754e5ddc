//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import Foundation

/// A domain event: a Codable value with a stable type name and a schema version.
///
/// Bump ``schemaVersion`` when the shape of the data changes, and register an ``Upcaster`` from
/// the old version, so that events recorded before still read as the new type.
///
/// ```swift
/// struct OrderPlaced: DomainEvent {
///     static let eventType = "order.placed"
///     static let schemaVersion = 2
///     var total: Int
///     var currency: String
/// }
/// ```
public protocol DomainEvent: Codable, Sendable {
    /// The type name stored with the event; never change it once events were recorded.
    static var eventType: String { get }
    /// The version of the data's shape this type reads and writes (1 unless overridden).
    static var schemaVersion: Int { get }
}

extension DomainEvent {
    public static var schemaVersion: Int { 1 }
}

/// Turns the JSON of one schema version of an event type into the JSON of the next version.
///
/// ```swift
/// struct OrderPlacedV1: Decodable { var total: Int }
/// let upcaster = Upcaster(type: "order.placed", from: 1) { (old: OrderPlacedV1) in
///     OrderPlaced(total: old.total, currency: "EUR")   // version 2
/// }
/// ```
public struct Upcaster: Sendable {
    /// The event type it applies to.
    public var type: String
    /// The schema version it reads; it produces `from + 1`.
    public var from: Int
    /// The transformation of the JSON data.
    public var transform: @Sendable (Data) throws -> Data

    /// An upcaster that rewrites JSON bytes.
    public init(type: String, from: Int, transform: @escaping @Sendable (Data) throws -> Data) {
        self.type = type
        self.from = from
        self.transform = transform
    }

    /// An upcaster that decodes the old shape and encodes the next one.
    public init<Old: Decodable & Sendable, New: Encodable & Sendable>(
        type: String, from: Int, _ upcast: @escaping @Sendable (Old) throws -> New
    ) {
        self.init(type: type, from: from) { data in
            try EventJSON.encode(upcast(try EventJSON.decode(Old.self, from: data)))
        }
    }
}

/// The event types a service reads and writes, with their upcasters: encodes domain events to
/// ``NewEvent``s and decodes ``RecordedEvent``s, upcasting old schema versions on the way.
///
/// ```swift
/// let catalog = EventCatalog([OrderPlaced.self, OrderConfirmed.self], upcasters: [placedV1toV2])
/// let new = try catalog.encode(OrderPlaced(total: 4200, currency: "EUR"))
/// let event = try catalog.decode(recorded)   // any DomainEvent
/// if let placed = event as? OrderPlaced { ... }
/// ```
public struct EventCatalog: Sendable {
    private var types: [String: any DomainEvent.Type]
    private var upcasters: [String: [Int: Upcaster]]

    /// A catalog of `types` and their upcasters.
    ///
    /// - Precondition: type names are unique, and so is each upcaster's (type, from).
    public init(_ types: [any DomainEvent.Type], upcasters: [Upcaster] = []) {
        var byName: [String: any DomainEvent.Type] = [:]
        for type in types {
            precondition(byName[type.eventType] == nil, "event type \(type.eventType) is registered twice")
            byName[type.eventType] = type
        }
        var byVersion: [String: [Int: Upcaster]] = [:]
        for upcaster in upcasters {
            precondition(
                byVersion[upcaster.type, default: [:]][upcaster.from] == nil,
                "two upcasters for \(upcaster.type) from version \(upcaster.from)")
            byVersion[upcaster.type, default: [:]][upcaster.from] = upcaster
        }
        self.types = byName
        self.upcasters = byVersion
    }

    /// Encodes a domain event with its type name and current schema version.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`invalidArgument`) when its type is not in the
    ///   catalog; the encoder's error.
    public func encode(
        _ event: any DomainEvent, id: UUID = EventID.make(), metadata: EventMetadata = EventMetadata()
    )
        throws -> NewEvent
    {
        let type = Swift.type(of: event)
        guard self.types[type.eventType] != nil else {
            throw AviaryError(.invalidArgument, "event type \(type.eventType) is not in the catalog")
        }
        return NewEvent(
            id: id, type: type.eventType, schemaVersion: type.schemaVersion, data: try EventJSON.encode(event),
            metadata: metadata)
    }

    /// Decodes a recorded event as its registered type, upcasting older schema versions.
    ///
    /// - Throws: ``AviaryCore/AviaryError`` (`failedPrecondition`) for an unknown type, a schema
    ///   version newer than the code's, or a missing upcaster; (`internal`) when the JSON does not
    ///   decode. Each names the event's stream, version and position.
    public func decode(_ recorded: RecordedEvent) throws -> any DomainEvent {
        guard let type = self.types[recorded.type] else {
            throw AviaryError(.failedPrecondition, "\(Self.place(recorded)): unknown event type \(recorded.type)")
        }
        let data = try self.upcast(recorded, to: type.schemaVersion)
        do {
            return try Self.decode(type, data)
        } catch {
            throw AviaryError(
                .internal, "\(Self.place(recorded)): \(recorded.type) v\(type.schemaVersion) does not decode: \(error)",
                cause: error)
        }
    }

    /// Whether the catalog knows `type`.
    public func contains(_ type: String) -> Bool {
        self.types[type] != nil
    }

    private func upcast(_ recorded: RecordedEvent, to current: Int) throws -> Data {
        var version = recorded.schemaVersion
        guard version <= current else {
            throw AviaryError(
                .failedPrecondition,
                "\(Self.place(recorded)): \(recorded.type) has schema version \(version), newer than this code's \(current)"
            )
        }
        var data = recorded.data
        while version < current {
            guard let upcaster = self.upcasters[recorded.type]?[version] else {
                throw AviaryError(
                    .failedPrecondition,
                    "\(Self.place(recorded)): no upcaster for \(recorded.type) from schema version \(version) "
                        + "(the code reads version \(current))")
            }
            do {
                data = try upcaster.transform(data)
            } catch {
                throw AviaryError(
                    .internal,
                    "\(Self.place(recorded)): upcasting \(recorded.type) from version \(version) failed: \(error)",
                    cause: error)
            }
            version += 1
        }
        return data
    }

    private static func decode<E: DomainEvent>(_ type: E.Type, _ data: Data) throws -> any DomainEvent {
        try EventJSON.decode(type, from: data)
    }

    private static func place(_ event: RecordedEvent) -> String {
        "event \(event.stream)@\(event.streamVersion) (position \(event.position))"
    }
}
