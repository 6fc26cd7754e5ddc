//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

// `aviary events ...`: inspect an event store and its projections. Argument parsing and calls
// into AviaryEventSourcing, nothing else.

import AviaryCore
import AviaryEventSourcing
import AviaryStorage
import Foundation
import Logging

enum EventsCommand {
    static let usage = """
        usage: aviary events COMMAND --store URL [options]

          streams                  list streams with their versions
            --after STREAM           start after this stream (paging)
            --limit N                at most N streams (default 100)
          show STREAM              print a stream's events
            --from VERSION           first version (default 1; with --backwards: the last)
            --backwards              newest first
            --limit N                at most N events (default 100)
          follow                   print the global log, then new events as they are recorded
            --from POSITION          start after this position (default 0)
            --once                   print what is there and exit
          projections              list projections with their checkpoint, lag and lock
            --events URL             the event store, when it is not in --store
          rebuild PROJECTION       ask the projection's runners to rebuild it side by side
                                   (the service rebuilds it and switches when caught up)

          --store URL              sqlite:///path.db, sqlite://relative.db or postgres://user:pw@host/db
                                   (env AVIARY_EVENT_STORE); for projections: the read model's
                                   database (on PostgreSQL, the event store's database)
        """

    static func run(_ arguments: [String]) async -> Never {
        guard let subcommand = arguments.first, subcommand != "--help", subcommand != "-h" else {
            if arguments.first != nil {
                print(Self.usage)
                exit(0)
            }
            Self.fail(Self.usage, code: 64)
        }
        var options = Options()
        do {
            options = try Options(parsing: Array(arguments.dropFirst()))
        } catch {
            Self.fail("aviary events \(subcommand): \(error.message)\n\(Self.usage)", code: 64)
        }
        do {
            switch subcommand {
            case "streams": try await Self.streams(options)
            case "show": try await Self.show(options)
            case "follow": try await Self.follow(options)
            case "projections": try await Self.projections(options)
            case "rebuild": try await Self.rebuild(options)
            default: Self.fail("aviary events: unknown command \"\(subcommand)\"\n\(Self.usage)", code: 64)
            }
        } catch let error as AviaryError {
            Self.fail("aviary events \(subcommand): \(error.message)", code: error.code == .invalidArgument ? 64 : 69)
        } catch {
            Self.fail("aviary events \(subcommand): \(error)", code: 69)
        }
        exit(0)
    }

    struct Options {
        var positional: [String] = []
        var store: String? = ProcessInfo.processInfo.environment["AVIARY_EVENT_STORE"]
        var events: String?
        var after: String?
        var limit = 100
        var from: Int64?
        var backwards = false
        var once = false

        init() {}

        init(parsing arguments: [String]) throws(AviaryError) {
            var index = 0
            func value(_ name: String) throws(AviaryError) -> String {
                guard index + 1 < arguments.count else { throw AviaryError(.invalidArgument, "\(name) needs a value") }
                index += 1
                return arguments[index]
            }
            func number(_ name: String) throws(AviaryError) -> Int64 {
                let text = try value(name)
                guard let number = Int64(text), number >= 0 else {
                    throw AviaryError(.invalidArgument, "\(name): expected a number, got \"\(text)\"")
                }
                return number
            }
            while index < arguments.count {
                switch arguments[index] {
                case "--store": self.store = try value("--store")
                case "--events": self.events = try value("--events")
                case "--after": self.after = try value("--after")
                case "--limit":
                    let limit = try number("--limit")
                    guard limit >= 1 else { throw AviaryError(.invalidArgument, "--limit: expected at least 1") }
                    self.limit = Int(limit)
                case "--from": self.from = try number("--from")
                case "--backwards": self.backwards = true
                case "--once": self.once = true
                case let argument where argument.hasPrefix("-"):
                    throw AviaryError(.invalidArgument, "unknown option \"\(argument)\"")
                case let argument: self.positional.append(argument)
                }
                index += 1
            }
        }

        func storeURL() throws -> StoreURL {
            guard let store else {
                throw AviaryError(.invalidArgument, "--store URL is required (or set AVIARY_EVENT_STORE)")
            }
            return try StoreURL(parsing: store)
        }

        func single(_ what: String) throws -> String {
            guard self.positional.count == 1 else {
                throw AviaryError(.invalidArgument, "expected one \(what), got \(self.positional.count)")
            }
            return self.positional[0]
        }
    }

    /// Opens an existing SQLite store; never creates one (a mistyped path is an error, not a new file).
    static func open(_ url: StoreURL) throws -> SQLiteStore {
        switch url.kind {
        case .sqlite(let path):
            guard FileManager.default.fileExists(atPath: path) else {
                throw AviaryError(.notFound, "no database at \(path)")
            }
            return try SQLiteStore(url: url)
        case .sqliteInMemory:
            throw AviaryError(.invalidArgument, "an in-memory store has nothing to inspect; give a file")
        case .postgres:
            throw AviaryError(.internal, "a PostgreSQL URL reached the SQLite path")
        }
    }

    static let quiet = Logger(label: "aviary.events", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Runs `body` with the PostgreSQL database at `url` (no migrations: the tool creates no event
    /// tables; a database without them is an error).
    static func withPostgres<T: Sendable>(
        _ url: StoreURL, _ body: @escaping @Sendable (PostgresStore) async throws -> T
    ) async throws -> T {
        let options = PostgresStore.Options(maximumConnections: 2, applicationName: "aviary-events-cli")
        return try await PostgresStore.withStore(url: url, options: options, logger: Self.quiet) { store in
            let present = try await PostgresEventStore(store: store).tablesExist()
            guard present else {
                throw AviaryError(.notFound, "\(store.address) has no event store (no es_events table)")
            }
            return try await body(store)
        }
    }

    /// Runs `body` with the event store at `url` (or --store).
    static func withEvents<T: Sendable>(
        _ options: Options, url: String? = nil, _ body: @escaping @Sendable (any EventStore) async throws -> T
    ) async throws -> T {
        let storeURL: StoreURL
        if let url { storeURL = try StoreURL(parsing: url) } else { storeURL = try options.storeURL() }
        if case .postgres = storeURL.kind {
            return try await Self.withPostgres(storeURL) { store in try await body(PostgresEventStore(store: store)) }
        }
        return try await body(SQLiteEventStore(store: Self.open(storeURL)))
    }

    static func streams(_ options: Options) async throws {
        let streams = try await Self.withEvents(options) { store in
            try await store.streams(after: options.after, limit: options.limit)
        }
        let width = max(6, streams.map(\.stream.count).max() ?? 0)
        print("STREAM".padding(toLength: width, withPad: " ", startingAt: 0) + "  VERSION  LAST POSITION")
        for info in streams {
            print(
                info.stream.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                    + String(info.version).leftPadded(7) + "  " + String(info.lastPosition).leftPadded(13))
        }
    }

    static func show(_ options: Options) async throws {
        let stream = try options.single("STREAM")
        let from = options.from ?? (options.backwards ? StreamVersion.end : 1)
        let events = try await Self.withEvents(options) { store in
            let events = try await store.readStream(
                stream, from: from, direction: options.backwards ? .backwards : .forwards, limit: options.limit)
            if events.isEmpty, try await store.streamVersion(stream) == nil {
                throw AviaryError(.notFound, "no stream \(stream)")
            }
            return events
        }
        for event in events { print(Self.line(event, showStream: false)) }
    }

    static func follow(_ options: Options) async throws {
        try await Self.withEvents(options) { store in
            var position = options.from ?? 0
            while true {
                let page = try await store.readAll(after: position, limit: 1000)
                for event in page { print(Self.line(event, showStream: true)) }
                if let last = page.last { position = last.position }
                if page.count == 1000 { continue }
                if options.once { return }
                fflush(nil)  // all output streams: lines reach a pipe as they are printed
                // Polling: other processes append, and neither backend's reads wait for new events.
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    static func projections(_ options: Options) async throws {
        let url = try options.storeURL()
        let head: Int64
        let statuses: [ProjectionStatus]
        if case .postgres = url.kind {
            guard options.events == nil else {
                throw AviaryError(
                    .invalidArgument, "--events: on PostgreSQL the read models live in the event store's database")
            }
            (head, statuses) = try await Self.withPostgres(url) { store in
                let statuses = try await PostgresProjections.status(in: store)
                return (try await PostgresEventStore(store: store).headPosition(), statuses)
            }
        } else {
            let readModel = try Self.open(url)
            head =
                options.events == nil
                ? try await SQLiteEventStore(store: readModel).headPosition()
                : try await Self.withEvents(options, url: options.events) { try await $0.headPosition() }
            statuses = try await Projections.status(in: readModel, headPosition: head)
        }
        print("head position \(head)")
        for status in statuses {
            var line =
                "\(status.name) g\(status.generation) v\(status.version) \(status.state) checkpoint \(status.checkpoint) "
                + "lag \(status.lag)"
            if status.rebuildRequested { line += " rebuild-requested" }
            if let owner = status.lockOwner, let until = status.lockExpiresAt {
                line += " locked-by \(owner) until \(Self.time(until))"
            }
            if let error = status.lastError { line += " error: \(error)" }
            print(line)
        }
    }

    static func rebuild(_ options: Options) async throws {
        let name = try options.single("PROJECTION")
        let url = try options.storeURL()
        if case .postgres = url.kind {
            try await Self.withPostgres(url) { store in try await PostgresProjections.requestRebuild(name, in: store) }
        } else {
            try await Projections.requestRebuild(name, in: Self.open(url))
        }
        print("rebuild of \(name) requested; its runner rebuilds it side by side and switches when caught up")
    }

    static func line(_ event: RecordedEvent, showStream: Bool) -> String {
        var line = "@\(event.position) "
        line += showStream ? "\(event.stream)@\(event.streamVersion)" : "v\(event.streamVersion)"
        line += " \(Self.time(event.recordedAt)) \(event.type)"
        if event.schemaVersion != 1 { line += " (schema \(event.schemaVersion))" }
        if let correlation = event.metadata.correlationID { line += " correlation=\(correlation)" }
        line += " " + String(decoding: event.data, as: UTF8.self)
        return line
    }

    static func time(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
    }

    static func fail(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(code)
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        String(repeating: " ", count: max(0, width - self.count)) + self
    }
}
