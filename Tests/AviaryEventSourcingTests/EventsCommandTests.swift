//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import AviaryStorage
import AviaryTestSupport
import Foundation
import Testing

/// `aviary events ...`, run as a process against a real store (`swift build --build-tests`
/// builds the executable next to the test bundle).
@Suite("aviary events command", .timeLimit(.minutes(2)))
struct EventsCommandTests {
    static var executable: URL { ChildProcess.aviary }

    struct Outcome {
        var status: Int32
        var output: String
        var error: String
    }

    /// Runs `aviary events ARGUMENTS` to its end without holding a thread of the test pool.
    static func run(_ arguments: [String]) async throws -> Outcome {
        let outcome = try await ChildProcess.run(Self.executable, ["events"] + arguments)
        return Outcome(status: outcome.status, output: outcome.standardOutput, error: outcome.standardError)
    }

    @Test("streams, show, follow, projections and rebuild against a PostgreSQL store")
    func inspectPostgres() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let database = try await PostgresTestServer.shared().makeDatabase()
        let url = database.description
        var migrations = PostgresMigrations()
        PostgresEventStore.addMigrations(to: &migrations)
        PostgresProjections.addMigrations(to: &migrations)
        try await PostgresStore.withStore(url: database, migrations: migrations, logger: quietLogger) { store in
            let events = PostgresEventStore(store: store)
            try await events.append(
                [
                    try NewEvent(type: "order.placed", schemaVersion: 2, json: ["total": 42]),
                    try NewEvent(
                        type: "order.confirmed", json: [String: Int](), metadata: EventMetadata(correlationID: "req-7")),
                ],
                to: "order-17", expectedVersion: .noStream)
            try await events.append(
                [try NewEvent(type: "user.created", json: ["name": "ada"])], to: "user-1", expectedVersion: .noStream)
            let runner = try PostgresProjectionRunner(
                PostgresProjectionTests.Recorder(failOn: Locked([])), events: events, logger: quietLogger)
            try await runner.catchUp()

            let streams = try await Self.run(["streams", "--store", url])
            #expect(streams.status == 0, "\(streams.error)")
            let lines = streams.output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            #expect(
                lines == [["STREAM", "VERSION", "LAST", "POSITION"], ["order-17", "2", "2"], ["user-1", "1", "3"]])

            let show = try await Self.run(["show", "order-17", "--store", url, "--backwards", "--limit", "1"])
            #expect(show.output.hasPrefix("@2 v2 "))
            #expect(show.output.contains("order.confirmed correlation=req-7 {}"))

            let follow = try await Self.run(["follow", "--store", url, "--once", "--from", "1"])
            let followed = follow.output.split(separator: "\n")
            #expect(followed.count == 2)
            #expect(followed.first?.hasPrefix("@2 order-17@2 ") == true)
            #expect(followed.last?.contains("user.created {\"name\":\"ada\"}") == true)

            try await events.append(
                [try NewEvent(type: "user.renamed", json: ["name": "bea"])], to: "user-1", expectedVersion: .exact(1))
            let projections = try await Self.run(["projections", "--store", url])
            #expect(projections.status == 0, "\(projections.error)")
            #expect(projections.output == "head position 4\nrecorder g1 v1 live checkpoint 3 lag 1\n")

            let rebuild = try await Self.run(["rebuild", "recorder", "--store", url])
            #expect(rebuild.status == 0, "\(rebuild.error)")
            #expect(try await runner.status().first?.rebuildRequested == true)
            #expect(try await runner.catchUp().switched)

            let missing = try await Self.run(["show", "order-99", "--store", url])
            #expect(missing.status == 69)
            #expect(missing.error == "aviary events show: no stream order-99\n")
        }
        // A database without the event tables is an error, not an empty store.
        let empty = try await PostgresTestServer.shared().makeDatabase()
        let noTables = try await Self.run(["streams", "--store", empty.description])
        #expect(noTables.status == 69)
        #expect(noTables.error.contains("has no event store"))
    }

    @Test("streams, show, follow, projections and rebuild against a SQLite store")
    func inspect() async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path), "build the aviary product first")
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path("orders.db")
        let url = "sqlite://\(path)"
        let events = try SQLiteEventStore(url: StoreURL(parsing: url))
        try await events.append(
            [
                try NewEvent(type: "order.placed", schemaVersion: 2, json: ["total": 42]),
                try NewEvent(
                    type: "order.confirmed", json: [String: Int](), metadata: EventMetadata(correlationID: "req-7")),
            ],
            to: "order-17", expectedVersion: .noStream)
        try await events.append(
            [try NewEvent(type: "user.created", json: ["name": "ada"])], to: "user-1", expectedVersion: .noStream)
        let runner = try ProjectionRunner(EventLog(), events: events, store: events.store)
        try await runner.catchUp()

        let streams = try await Self.run(["streams", "--store", url])
        #expect(streams.status == 0)
        let lines = streams.output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines == [["STREAM", "VERSION", "LAST", "POSITION"], ["order-17", "2", "2"], ["user-1", "1", "3"]])

        let show = try await Self.run(["show", "order-17", "--store", url, "--backwards", "--limit", "1"])
        #expect(show.status == 0)
        #expect(show.output.hasPrefix("@2 v2 "))
        #expect(show.output.contains("order.confirmed correlation=req-7 {}"))

        let follow = try await Self.run(["follow", "--store", url, "--once", "--from", "1"])
        #expect(follow.status == 0)
        let followed = follow.output.split(separator: "\n")
        #expect(followed.count == 2)
        #expect(followed.first?.hasPrefix("@2 order-17@2 ") == true)
        #expect(followed.last?.contains("user.created {\"name\":\"ada\"}") == true)

        try await events.append(
            [try NewEvent(type: "user.renamed", json: ["name": "bea"])], to: "user-1", expectedVersion: .exact(1))
        let projections = try await Self.run(["projections", "--store", url])
        #expect(projections.status == 0)
        #expect(projections.output == "head position 4\nevent_log g1 v1 live checkpoint 3 lag 1\n")

        let rebuild = try await Self.run(["rebuild", "event_log", "--store", url])
        #expect(rebuild.status == 0)
        #expect(try await runner.status().first?.rebuildRequested == true)
        #expect(try await runner.catchUp().switched)

        let missing = try await Self.run(["show", "order-99", "--store", url])
        #expect(missing.status == 69)
        #expect(missing.error == "aviary events show: no stream order-99\n")
        let noFile = try await Self.run(["streams", "--store", "sqlite://\(directory.path("nope.db"))"])
        #expect(noFile.status == 69)
        #expect(noFile.error.contains("no database at"))
        #expect(!FileManager.default.fileExists(atPath: directory.path("nope.db")))
        let badOption = try await Self.run(["streams", "--store", url, "--limt", "3"])
        #expect(badOption.status == 64)
        #expect(badOption.error.hasPrefix("aviary events streams: unknown option \"--limt\""))
        let noStore = try await Self.run(["rebuild", "x"])
        #expect(noStore.status == 64)
        #expect(noStore.error.contains("--store URL is required"))
    }
}
