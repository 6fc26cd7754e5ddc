//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import GRDB

/// A read model built from the global event order (the query side of CQRS), kept in a service's
/// SQLite database by a ``ProjectionRunner``.
///
/// A projection names its tables by logical names (``tables``) and creates and writes them
/// through ``ProjectionContext/table(_:)``, which gives the physical name of the generation being
/// built (`order_history__g2`). Readers query the logical name: a view that the runner points at
/// the live generation, switched atomically when a rebuild has caught up.
///
/// ```swift
/// struct OrderHistory: Projection {
///     let name = "order_history"
///     let version = 1
///     let tables = ["order_history"]
///     func setUp(_ context: ProjectionContext) throws {
///         try context.db.execute(sql: "CREATE TABLE \(context.table("order_history")) (id TEXT PRIMARY KEY, total INTEGER)")
///     }
///     func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws {
///         guard event.type == "order.placed" else { return }
///         let placed = try event.decode(as: OrderPlaced.self)
///         try context.db.execute(sql: "INSERT INTO \(context.table("order_history")) VALUES (?, ?)",
///                                arguments: [event.stream, placed.total])
///     }
/// }
/// // readers: SELECT * FROM order_history
/// ```
public protocol Projection: Sendable {
    /// The projection's name (letters, digits and `_`, starting with a letter); its checkpoint's key.
    var name: String { get }
    /// The read model's version: raise it when ``setUp(_:)`` or ``apply(_:_:)`` change, and the
    /// runner rebuilds the read model side by side and switches to it when it has caught up.
    var version: Int { get }
    /// The logical names of the read model's tables (letters, digits and `_`); readers query
    /// views with these names.
    var tables: [String] { get }

    /// Creates the tables (and their indexes) of a new generation, named by ``ProjectionContext/table(_:)``.
    func setUp(_ context: ProjectionContext) throws

    /// Applies one event to the read model, in the transaction that also moves the checkpoint
    /// past it. Throwing rolls back this event's writes; the checkpoint stays before it and the
    /// event is applied again on the next catch-up.
    func apply(_ event: RecordedEvent, _ context: ProjectionContext) throws
}

/// What a projection's ``Projection/setUp(_:)`` and ``Projection/apply(_:_:)`` work with: the
/// read model's database, in the runner's transaction, and the physical table names of the
/// generation being built.
public struct ProjectionContext {
    /// The read model's database, inside the transaction that moves the checkpoint.
    public let db: Database
    /// The generation being written (1, 2, ...; a rebuild writes a new one).
    public let generation: Int64

    /// The physical name of a logical table in this generation, e.g. `order_history__g2`.
    ///
    /// - Precondition: `logical` is one of the projection's ``Projection/tables``.
    public func table(_ logical: String) -> String {
        ProjectionTables.physical(logical, generation: self.generation)
    }
}

/// An error of a projection runner.
public struct ProjectionError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Hashable {
        /// The projection's handler threw on an event; the checkpoint is just before it.
        case handlerFailed
        /// Another process holds the projection's rebuild lock (until it expires).
        case rebuildLocked
        /// This runner's rebuild lock expired and another process took it over.
        case lockLost
        /// A newer generation replaced the one this runner writes (another process switched).
        case superseded
        /// The live read model was built by a newer version of the projection than this code's.
        case newerVersionLive
        /// A name is not acceptable.
        case invalidName
    }

    /// What went wrong.
    public var kind: Kind
    /// A sentence for people, naming the projection (and the event's position for a handler failure).
    public var message: String
    /// The event a handler failed on.
    public var position: Int64?
    /// The handler's error.
    public var cause: (any Error)?

    /// Creates an error.
    public init(_ kind: Kind, _ message: String, position: Int64? = nil, cause: (any Error)? = nil) {
        self.kind = kind
        self.message = message
        self.position = position
        self.cause = cause
    }

    public var description: String {
        if let cause { return "\(self.message): \(cause)" }
        return self.message
    }
}

/// Names and bookkeeping tables shared by the runner and the inspection functions.
enum ProjectionTables {
    static func physical(_ logical: String, generation: Int64) -> String {
        "\(logical)__g\(generation)"
    }

    static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= 100 else { return false }
        let isLetter = { (byte: UInt8) in (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) }
        return isLetter(first)
            && name.utf8.allSatisfy { isLetter($0) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5f }
            && !name.contains("__")
    }

    /// The runner creates these on first use, in the read model's database.
    static let schema = """
        CREATE TABLE IF NOT EXISTS es_projections (
            name TEXT NOT NULL,
            generation INTEGER NOT NULL,
            version INTEGER NOT NULL,
            state TEXT NOT NULL,
            checkpoint INTEGER NOT NULL DEFAULT 0,
            tables TEXT NOT NULL,
            rebuild_requested INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (name, generation)
        );
        CREATE TABLE IF NOT EXISTS es_projection_locks (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        );
        """
}
