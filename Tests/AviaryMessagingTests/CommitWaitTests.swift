//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryStorage
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryMessaging

@Suite("Waiting for a commit on the caller's thread", .timeLimit(.minutes(2)))
struct CommitWaitTests {
    struct Failure: Error, Equatable {}

    /// Expects `count` waits or more between two statistics of one policy, every one of them found
    /// while looking (`allFound`) or else every one suspended at once.
    static func expectWaits(
        from before: CommitWait.Statistics, to after: CommitWait.Statistics, allFound: Bool, atLeast count: Int,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        if allFound {
            #expect(after.found - before.found >= count, sourceLocation: sourceLocation)
            #expect(
                after.timedOut == before.timedOut && after.suspended == before.suspended, sourceLocation: sourceLocation
            )
        } else {
            #expect(after.found == before.found && after.timedOut == before.timedOut, sourceLocation: sourceLocation)
            #expect(after.suspended - before.suspended >= count, sourceLocation: sourceLocation)
        }
    }

    @Test("one caller looks at a time; none with a zero limit or after a commit slower than the limit")
    func policy() {
        let wait = CommitWait(limit: .microseconds(250))
        #expect(wait.limit == 250_000)
        #expect(wait.beginLook())
        #expect(!wait.beginLook(), "a second caller looked while the first did")
        wait.endLook(found: true)
        #expect(wait.beginLook())
        wait.endLook(found: false)
        // A commit that took longer than the limit: the next callers suspend at once...
        wait.record(latency: 2_000_000)
        #expect(!wait.beginLook())
        // ...until a commit is quick again.
        wait.record(latency: 100_000)
        #expect(wait.beginLook())
        wait.endLook(found: true)
        #expect(wait.statistics == CommitWait.Statistics(found: 2, timedOut: 1, suspended: 2))

        let never = CommitWait(limit: .zero)
        #expect(never.limit == 0)
        #expect(!never.beginLook())
        #expect(!CommitWait(limit: .microseconds(-5)).beginLook())
        #expect(CommitWait(limit: .seconds(Int64.max)).limit == 3_600_000_000_000)
    }

    @Test("a result that comes while the caller looks is taken without suspending, errors too")
    func foundWhileLooking() async throws {
        let wait = CommitWait(limit: .seconds(30))
        let writer = SQLiteWriterThread(name: "test-writer", commitWait: wait)
        for value in 0..<20 {
            #expect(try await writer.run { value * 3 } == value * 3)
        }
        await #expect(throws: Failure.self) { try await writer.run { () throws -> Int in throw Failure() } }
        #expect(wait.statistics == CommitWait.Statistics(found: 21, timedOut: 0, suspended: 0))
    }

    @Test("a caller that looked in vain suspends and still gets its result")
    func suspendsAfterLooking() async throws {
        let wait = CommitWait(limit: .milliseconds(1))
        let handOff = CommitHandOff<String>(wait)
        let caller = Task { try await handOff.value() }
        // The look ends (unanswered) before the result is handed over; the caller suspends.
        try await MessageConsumerTests.eventually(.seconds(30)) { wait.statistics.timedOut == 1 }
        handOff.complete(.success("committed"))
        #expect(try await caller.value == "committed")
        #expect(wait.statistics == CommitWait.Statistics(found: 0, timedOut: 1, suspended: 0))

        let failing = CommitHandOff<String>(CommitWait(limit: .zero))
        let failed = Task { try await failing.value() }
        failing.complete(.failure(Failure()))
        await #expect(throws: Failure.self) { try await failed.value }
    }

    @Test("many callers at once each get their own result exactly once")
    func concurrentCallers() async throws {
        let wait = CommitWait(limit: .microseconds(500))
        let writer = SQLiteWriterThread(name: "test-writer", commitWait: wait)
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for value in 0..<400 {
                group.addTask { try await writer.run { value } }
            }
            var results: [Int] = []
            for try await value in group { results.append(value) }
            return results
        }
        #expect(results.sorted() == Array(0..<400))
        let statistics = wait.statistics
        #expect(statistics.found + statistics.timedOut + statistics.suspended == 400)
    }

    @Test("a caller on a NIO event loop never looks: the loop's channels would wait")
    func neverOnAnEventLoop() async throws {
        let wait = CommitWait(limit: .seconds(30))
        let writer = SQLiteWriterThread(name: "test-writer", commitWait: wait)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        try await withTaskExecutorPreference(EventLoopTaskExecutor(loop)) { () async throws -> Void in
            #expect(loop.inEventLoop)
            for value in 0..<5 {
                let returned = try await writer.run { value }
                #expect(returned == value)
            }
        }
        #expect(wait.statistics == CommitWait.Statistics(found: 0, timedOut: 0, suspended: 5))
        // Off the loop the same writer's callers look again.
        #expect(try await writer.run { 5 } == 5)
        #expect(wait.statistics.found == 1)
    }

    @Test("a log's publishes and acknowledgements wait as its configuration says")
    func logConfiguration() async throws {
        for (spin, looks) in [(Duration.seconds(30), true), (.zero, false)] {
            let path = SQLiteMessageLogTests.temporaryPath()
            defer { SQLiteMessageLogTests.remove(path) }
            let log = try SQLiteMessageLog(
                path: path, configuration: SQLiteMessageLog.Configuration(commitSpin: spin))
            try await log.createTopic("orders", TopicOptions(partitions: 2))
            try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
            let before = log.writer.commitWait.statistics
            for index in 0..<10 {
                try await log.publish([SQLiteGroupCommitTests.message("m\(index)")])
            }
            let batch = try await log.receive(
                ReceiveRequest(group: "g", topic: "orders", consumer: "c", maxMessages: 100, maxPartitions: 2))
            #expect(batch.deliveries.count == 10)
            for delivery in batch.deliveries { try await log.ack(delivery) }
            let after = log.writer.commitWait.statistics
            // Ten publishes, a receive and its leases, ten acknowledgements: 21 writes at least.
            Self.expectWaits(from: before, to: after, allFound: looks, atLeast: 21)
            try await log.close()
        }
    }
}
