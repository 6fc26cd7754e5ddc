//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryEventSourcing
import Foundation
import Synchronization
import Testing

/// The contract of ``EventStore``, run against every backend in ``EventStoreBackend/all``.
@Suite("EventStore conformance", .timeLimit(.minutes(5)))
struct EventStoreConformanceTests {
    struct Payload: Codable, Equatable {
        var n: Int
    }

    static func event(_ n: Int, type: String = "test.happened", id: UUID = UUID()) throws -> NewEvent {
        try NewEvent(id: id, type: type, json: Payload(n: n))
    }

    static func events(_ range: ClosedRange<Int>) throws -> [NewEvent] {
        try range.map { try Self.event($0) }
    }

    /// Opens the backend in a fresh directory and runs `body`.
    static func with(
        _ backend: EventStoreBackend, clock: TestWallClock = TestWallClock(),
        _ body: (any EventStore, TemporaryDirectory) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let store = try await backend.make(directory, clock.function)
        do {
            try await body(store, directory)
        } catch {
            await close(store)
            throw error
        }
        await close(store)
    }

    @Test("an append records every field and reads back the same, versions from 1", arguments: EventStoreBackend.all)
    func appendAndRead(backend: EventStoreBackend) async throws {
        let clock = TestWallClock()
        try await Self.with(backend, clock: clock) { store, _ in
            let metadata = EventMetadata(
                causationID: "command-1", correlationID: "request-9",
                traceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", traceState: "vendor=1",
                headers: ["tenant": "acme"])
            let occurred = Date(timeIntervalSince1970: 1_700_000_000.654321)
            let first = try NewEvent(
                type: "order.placed", schemaVersion: 3, json: Payload(n: 1), metadata: metadata, occurredAt: occurred)
            let second = try Self.event(2)
            let result = try await store.append([first, second], to: "order-1", expectedVersion: .noStream)
            #expect(result.stream == "order-1")
            #expect(result.streamVersion == 2)
            #expect(result.lastPosition == result.firstPosition + 1)
            #expect(result.firstPosition >= 1)
            #expect(!result.isReplay)

            let read = try await store.readStream("order-1", from: 1, direction: .forwards, limit: 10)
            #expect(read.map(\.streamVersion) == [1, 2])
            #expect(read.map(\.position) == [result.firstPosition, result.lastPosition])
            #expect(read.map(\.id) == [first.id, second.id])
            #expect(read[0].type == "order.placed")
            #expect(read[0].schemaVersion == 3)
            #expect(try read[0].decode(as: Payload.self) == Payload(n: 1))
            #expect(read[0].data == first.data)
            #expect(read[0].metadata == metadata)
            #expect(read[1].metadata == EventMetadata())
            #expect(read[0].occurredAt == occurred)
            #expect(read[0].recordedAt == clock.now)
            #expect(read[1].occurredAt == clock.now)
            #expect(try await store.streamVersion("order-1") == 2)
            #expect(try await store.streamVersion("order-2") == nil)
            #expect(try await store.headPosition() == result.lastPosition)
        }
    }

    @Test("expected versions: no stream, exact, stream exists, any; a mismatch names stream, expected and actual")
    func expectedVersions() async throws {
        for backend in EventStoreBackend.all {
            try await Self.with(backend) { store, _ in
                try await store.append(Self.events(1...3), to: "s", expectedVersion: .noStream)

                let noStream = await #expect(throws: WrongExpectedVersion.self) {
                    try await store.append([Self.event(4)], to: "s", expectedVersion: .noStream)
                }
                #expect(noStream == WrongExpectedVersion(stream: "s", expected: .noStream, actual: 3))
                #expect(noStream?.description == "s: expected no stream, but the stream is at version 3")

                let stale = await #expect(throws: WrongExpectedVersion.self) {
                    try await store.append([Self.event(4)], to: "s", expectedVersion: .exact(2))
                }
                #expect(stale?.actual == 3)
                #expect(stale?.description == "s: expected version 2, but the stream is at version 3")

                let missing = await #expect(throws: WrongExpectedVersion.self) {
                    try await store.append([Self.event(1)], to: "new", expectedVersion: .streamExists)
                }
                #expect(missing?.actual == nil)
                #expect(missing?.description == "new: expected an existing stream, but the stream does not exist")
                #expect(try await store.streamVersion("new") == nil)

                #expect(try await store.append([Self.event(4)], to: "s", expectedVersion: .exact(3)).streamVersion == 4)
                #expect(
                    try await store.append([Self.event(5)], to: "s", expectedVersion: .streamExists).streamVersion == 5)
                #expect(try await store.append([Self.event(6)], to: "s", expectedVersion: .any).streamVersion == 6)
                #expect(try await store.append([Self.event(1)], to: "t", expectedVersion: .exact(0)).streamVersion == 1)
                #expect(try await store.append([Self.event(1)], to: "u", expectedVersion: .any).streamVersion == 1)

                // An empty append checks the version and records nothing.
                let head = try await store.headPosition()
                #expect(try await store.append([], to: "s", expectedVersion: .exact(6)).streamVersion == 6)
                await #expect(throws: WrongExpectedVersion.self) {
                    try await store.append([], to: "s", expectedVersion: .exact(5))
                }
                #expect(try await store.headPosition() == head)
            }
        }
    }

    @Test("an append is atomic: a failing event records none of the batch", arguments: EventStoreBackend.all)
    func atomicAppend(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            let taken = try Self.event(0)
            try await store.append([taken], to: "other", expectedVersion: .noStream)
            let head = try await store.headPosition()
            let batch = [try Self.event(1), try Self.event(2), try Self.event(3, id: taken.id)]
            let error = await #expect(throws: AviaryError.self) {
                try await store.append(batch, to: "s", expectedVersion: .noStream)
            }
            #expect(error?.code == .conflict)
            #expect(error?.message.contains("already recorded in stream other at version 1") == true)
            #expect(try await store.streamVersion("s") == nil)
            #expect(try await store.headPosition() == head)
            #expect(try await store.readAll(after: 0, limit: 100).count == 1)
        }
    }

    @Test("reads forwards and backwards from a version with a limit", arguments: EventStoreBackend.all)
    func streamReads(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            try await store.append(Self.events(1...10), to: "s", expectedVersion: .noStream)
            try await store.append(Self.events(1...2), to: "other", expectedVersion: .noStream)
            func versions(_ from: Int64, _ direction: ReadDirection, _ limit: Int) async throws -> [Int64] {
                try await store.readStream("s", from: from, direction: direction, limit: limit).map(\.streamVersion)
            }
            #expect(try await versions(1, .forwards, 100) == Array(1...10))
            #expect(try await versions(4, .forwards, 3) == [4, 5, 6])
            #expect(try await versions(9, .forwards, 5) == [9, 10])
            #expect(try await versions(11, .forwards, 5) == [])
            #expect(try await versions(StreamVersion.end, .backwards, 3) == [10, 9, 8])
            #expect(try await versions(5, .backwards, 2) == [5, 4])
            #expect(try await versions(2, .backwards, 10) == [2, 1])
            #expect(try await store.readStream("missing", from: 1, direction: .forwards, limit: 10).isEmpty)
            #expect(try await store.readStream("s", pageSize: 3).map(\.streamVersion) == Array(1...10))
            let error = await #expect(throws: AviaryError.self) {
                try await store.readStream("s", from: 1, direction: .forwards, limit: 0)
            }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test("reads all streams in global order from a position, page by page", arguments: EventStoreBackend.all)
    func globalOrder(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            var expected: [(String, Int64)] = []
            for round in 1...5 {
                for stream in ["a", "b", "c"] where round % 2 == 1 || stream != "b" {
                    let count = stream == "c" ? 2 : 1
                    let before = try await store.streamVersion(stream) ?? 0
                    try await store.append(
                        Self.events(1...count), to: stream, expectedVersion: before == 0 ? .noStream : .exact(before))
                    for offset in 1...count { expected.append((stream, before + Int64(offset))) }
                }
            }
            let all = try await store.readAll(after: 0, limit: 1000)
            #expect(all.map(\.stream) == expected.map(\.0))
            #expect(all.map(\.streamVersion) == expected.map(\.1))
            #expect(zip(all, all.dropFirst()).allSatisfy { $0.position < $1.position })
            #expect(try await store.headPosition() == all.last?.position)

            var paged: [RecordedEvent] = []
            var position: Int64 = 0
            while true {
                let page = try await store.readAll(after: position, limit: 4)
                guard let last = page.last else { break }
                paged += page
                position = last.position
            }
            #expect(paged == all)
            #expect(try await store.readAll(after: all[5].position, limit: 2) == Array(all[6...7]))
            #expect(try await store.readAll(after: all.last!.position, limit: 10).isEmpty)
        }
    }

    @Test(
        "a retried append with the same event ids succeeds once, without duplicates", arguments: EventStoreBackend.all)
    func idempotentAppend(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            let batch = try Self.events(1...2)
            let first = try await store.append(batch, to: "s", expectedVersion: .noStream)
            let again = try await store.append(batch, to: "s", expectedVersion: .noStream)
            #expect(again.isReplay)
            #expect(again.firstPosition == first.firstPosition && again.lastPosition == first.lastPosition)
            #expect(again.streamVersion == 2)
            #expect(try await store.append(batch, to: "s", expectedVersion: .any).isReplay)
            #expect(try await store.append(batch, to: "s", expectedVersion: .exact(0)).isReplay)

            // The stream moved on; the retry still finds the original append.
            let next = try Self.event(3)
            try await store.append([next], to: "s", expectedVersion: .exact(2))
            #expect(try await store.append(batch, to: "s", expectedVersion: .noStream).isReplay)
            #expect(try await store.append([next], to: "s", expectedVersion: .exact(2)).streamVersion == 3)
            #expect(try await store.readAll(after: 0, limit: 100).count == 3)

            // A different expectation is a different append.
            await #expect(throws: WrongExpectedVersion.self) {
                try await store.append(batch, to: "s", expectedVersion: .exact(1))
            }
            // Part of an earlier append, or another stream: conflicts, nothing recorded.
            for (events, stream) in [([batch[1], try Self.event(9)], "s"), (batch, "t"), ([batch[1], batch[0]], "s")] {
                let error = await #expect(throws: AviaryError.self) {
                    try await store.append(events, to: stream, expectedVersion: .any)
                }
                #expect(error?.code == .conflict)
            }
            #expect(try await store.readAll(after: 0, limit: 100).count == 3)
            let duplicate = await #expect(throws: AviaryError.self) {
                try await store.append([batch[0], batch[0]], to: "u", expectedVersion: .any)
            }
            #expect(duplicate?.code == .invalidArgument)
        }
    }

    @Test("snapshots: the latest per stream replaces the earlier one", arguments: EventStoreBackend.all)
    func snapshots(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            #expect(try await store.latestSnapshot(of: "s") == nil)
            let taken = Date(timeIntervalSince1970: 1_800_000_000.25)
            let one = Snapshot(
                stream: "s", streamVersion: 10, schemaVersion: 1, data: Data("{\"a\":1}".utf8), takenAt: taken)
            try await store.saveSnapshot(one)
            #expect(try await store.latestSnapshot(of: "s") == one)
            let two = Snapshot(
                stream: "s", streamVersion: 20, schemaVersion: 2, data: Data("{\"a\":2}".utf8), takenAt: taken)
            try await store.saveSnapshot(two)
            #expect(try await store.latestSnapshot(of: "s") == two)
            #expect(try await store.latestSnapshot(of: "t") == nil)
        }
    }

    @Test("streams are listed in name order with their versions, page by page", arguments: EventStoreBackend.all)
    func streamListing(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            try await store.append(Self.events(1...3), to: "order-2", expectedVersion: .noStream)
            try await store.append(Self.events(1...1), to: "order-1", expectedVersion: .noStream)
            let last = try await store.append(Self.events(1...2), to: "user-1", expectedVersion: .noStream)
            let all = try await store.streams(after: nil, limit: 10)
            #expect(all.map(\.stream) == ["order-1", "order-2", "user-1"])
            #expect(all.map(\.version) == [1, 3, 2])
            #expect(all[2].lastPosition == last.lastPosition)
            #expect(try await store.streams(after: "order-1", limit: 1).map(\.stream) == ["order-2"])
            #expect(try await store.streams(after: "user-1", limit: 10).isEmpty)
        }
    }

    @Test("bad input is refused with a clear error", arguments: EventStoreBackend.all)
    func badInput(backend: EventStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            let empty = await #expect(throws: AviaryError.self) {
                try await store.append([Self.event(1)], to: "", expectedVersion: .any)
            }
            #expect(empty?.code == .invalidArgument)
            let badVersion = await #expect(throws: AviaryError.self) {
                try await store.append(
                    [NewEvent(type: "x", schemaVersion: 0, data: Data("{}".utf8))], to: "s", expectedVersion: .any)
            }
            #expect(badVersion?.message.contains("schema version 0") == true)
            let badLimit = await #expect(throws: AviaryError.self) { try await store.readAll(after: 0, limit: 0) }
            #expect(badLimit?.code == .invalidArgument)
        }
    }

    /// Many tasks, on two connections to the same database, append to one stream, each
    /// expecting the version it read. The first attempt of every task expects no stream, so all
    /// but one of them must conflict.
    @Test(
        "concurrent appends to one stream: no lost or duplicated versions, conflicts reported",
        arguments: EventStoreBackend.all)
    func concurrentAppends(backend: EventStoreBackend) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = TestWallClock()
        let stores = [
            try await backend.make(directory, clock.function), try await backend.make(directory, clock.function),
        ]
        defer { Task { for store in stores { await close(store) } } }
        let tasks = 12
        let appendsPerTask = 15
        let conflicts = Locked<[WrongExpectedVersion]>([])
        let recorded = try await withThrowingTaskGroup(of: [(UUID, Int64)].self) { group in
            for task in 0..<tasks {
                let store = stores[task % 2]
                group.addTask {
                    var mine: [(UUID, Int64)] = []
                    var expected: ExpectedVersion = .noStream
                    while mine.count < appendsPerTask {
                        let event = try Self.event(task)
                        do {
                            let result = try await store.append([event], to: "contended", expectedVersion: expected)
                            mine.append((event.id, result.streamVersion))
                        } catch let conflict as WrongExpectedVersion {
                            conflicts.withLock { $0.append(conflict) }
                        }
                        expected = .exact(try await store.streamVersion("contended") ?? 0)
                    }
                    return mine
                }
            }
            var all: [(UUID, Int64)] = []
            for try await part in group { all += part }
            return all
        }
        let total = tasks * appendsPerTask
        let stream = try await stores[0].readStream("contended")
        #expect(stream.map(\.streamVersion) == (1...Int64(total)).map { $0 })
        #expect(Set(stream.map(\.id)) == Set(recorded.map(\.0)))
        #expect(stream.count == total)
        // Each successful append saw its own version, and no two the same.
        let byID = Dictionary(uniqueKeysWithValues: stream.map { ($0.id, $0.streamVersion) })
        #expect(recorded.allSatisfy { byID[$0.0] == $0.1 })
        let reported = conflicts.value
        #expect(reported.count >= tasks - 1)
        #expect(reported.allSatisfy { $0.stream == "contended" && $0.actual != nil })
        #expect(
            reported.allSatisfy { conflict in
                if case .exact(let version) = conflict.expected { return conflict.actual! > version }
                return conflict.expected == .noStream
            })
    }

    /// Appenders on two connection pools append batches to many streams while a follower
    /// reads the global log in small pages from its last position, as a projection does. If a
    /// position could become visible after a greater one was read (concurrent transactions
    /// committing out of position order), the follower would skip it for good.
    @Test(
        "a concurrent readAll follower sees every event exactly once, in order, with no late fills",
        arguments: EventStoreBackend.all)
    func followerUnderConcurrentAppends(backend: EventStoreBackend) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let clock = TestWallClock()
        let stores = [
            try await backend.make(directory, clock.function), try await backend.make(directory, clock.function),
        ]
        let follower = try await backend.make(directory, clock.function)
        // Without PostgreSQL's append lock the follower lost events in one of three runs at
        // 16 tasks x 25 appends; more appends make a loss likelier.
        let appenders = 24
        let appendsPerTask = 40
        let done = Locked(false)
        do {
            let seen = try await withThrowingTaskGroup(of: [RecordedEvent]?.self) { group in
                group.addTask {
                    var seen: [RecordedEvent] = []
                    var position: Int64 = 0
                    var finished = false
                    while true {
                        // Read `done` before the page: a page read after every append committed
                        // and found empty means the follower has seen everything.
                        let last = finished
                        let page = try await follower.readAll(after: position, limit: 7)
                        seen += page
                        if let event = page.last { position = event.position }
                        if page.isEmpty {
                            if last { return seen }
                            finished = done.value
                            await Task.yield()
                        }
                    }
                }
                for task in 0..<appenders {
                    let store = stores[task % 2]
                    group.addTask {
                        for append in 0..<appendsPerTask {
                            let events = try (0...(append % 3)).map { try Self.event(task * 1000 + append * 10 + $0) }
                            try await store.append(
                                events, to: "stream-\(task)", expectedVersion: append == 0 ? .noStream : .streamExists)
                        }
                        return nil
                    }
                }
                var appendersLeft = appenders
                var seen: [RecordedEvent]?
                while let result = try await group.next() {
                    if let result { seen = result } else { appendersLeft -= 1 }
                    if appendersLeft == 0 { done.withLock { $0 = true } }
                }
                return seen ?? []
            }
            let all = try await stores[0].readAll(after: 0, limit: 100_000)
            let expectedCount = appenders * (0..<appendsPerTask).reduce(0) { $0 + $1 % 3 + 1 }
            #expect(all.count == expectedCount)
            let skipped = Set(all.map(\.position)).subtracting(seen.map(\.position)).sorted()
            #expect(skipped.isEmpty, "the follower skipped positions \(skipped.prefix(20)) for good")
            if skipped.isEmpty { #expect(seen.map(\.position) == all.map(\.position)) }
            #expect(Set(seen.map(\.id)).count == seen.count)
            #expect(zip(all, all.dropFirst()).allSatisfy { $0.position < $1.position })
            // Each stream's versions are 1...n without gaps, in position order.
            for (_, events) in Dictionary(grouping: all, by: \.stream) {
                #expect(events.map(\.streamVersion) == (1...Int64(events.count)).map { $0 })
            }
        } catch {
            for store in stores + [follower] { await close(store) }
            throw error
        }
        for store in stores + [follower] { await close(store) }
    }
}
