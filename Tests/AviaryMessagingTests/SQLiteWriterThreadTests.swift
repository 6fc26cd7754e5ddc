//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Synchronization
import Testing

@testable import AviaryMessaging

@Suite("SQLiteWriterThread", .timeLimit(.minutes(2)))
struct SQLiteWriterThreadTests {
    struct Failure: Error, Equatable {}

    /// What the jobs record: the values in the order they ran, and how many run at once.
    final class Record: Sendable {
        let values = Mutex<[Int]>([])
        let inside = Atomic<Int>(0)

        func job(_ value: Int) {
            #expect(self.inside.add(1, ordering: .relaxed).newValue == 1, "two jobs at once")
            self.values.withLock { $0.append(value) }
            self.inside.subtract(1, ordering: .relaxed)
        }
    }

    @Test("jobs run one at a time in the order submitted; results and errors reach their callers")
    func orderAndResults() async throws {
        let writer = SQLiteWriterThread(name: "test-writer")
        let record = Record()
        for value in 0..<50 {
            let returned = try await writer.run {
                record.job(value)
                return value * 2
            }
            #expect(returned == value * 2)
        }
        await #expect(throws: Failure.self) { try await writer.run { () throws -> Int in throw Failure() } }
        // From many tasks at once: every job runs exactly once, never two at a time.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for value in 50..<250 {
                group.addTask {
                    try await writer.run { record.job(value) }
                }
            }
            try await group.waitForAll()
        }
        let values = record.values.withLock { $0 }
        #expect(Array(values.prefix(50)) == Array(0..<50))
        #expect(values.sorted() == Array(0..<250))
    }

    @Test("an idle thread ends, and the next job starts another")
    func idleThreadEnds() async throws {
        let writer = SQLiteWriterThread(name: "test-writer", idleLifetime: .milliseconds(1))
        #expect(!writer.hasThread)
        #expect(try await writer.run { 1 } == 1)
        try await MessageConsumerTests.eventually(.seconds(30)) { !writer.hasThread }
        #expect(!writer.hasThread)
        #expect(try await writer.run { 2 } == 2)
    }

    @Test("a task that prefers the writer as its executor runs on the thread, and its jobs run at once")
    func executorPreference() async throws {
        let writer = SQLiteWriterThread(name: "test-writer")
        let record = Record()
        #expect(!writer.isCurrent)
        try await withTaskExecutorPreference(writer) {
            #expect(writer.isCurrent)
            // Another task's job waits behind the job that runs this task...
            let queued = Task.detached { try await writer.run { record.job(1) } }
            let deadline = ContinuousClock.now + .seconds(30)
            while writer.pendingJobs == 0, ContinuousClock.now < deadline { sched_yield() }
            #expect(writer.pendingJobs == 1)
            // ...and this task's own job runs where the task is, before it.
            #expect(
                try await writer.run {
                    record.job(2); return writer.isCurrent
                })
            try await queued.value
            #expect(writer.isCurrent)
        }
        #expect(!writer.isCurrent)
        #expect(record.values.withLock { $0 } == [2, 1])
    }

    @Test("a producer on a log's writer executor publishes on the writer thread next to other producers")
    func logWriterExecutor() async throws {
        let path = SQLiteMessageLogTests.temporaryPath()
        defer { SQLiteMessageLogTests.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("orders", TopicOptions(partitions: 2))
        try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
        let count = 200
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                try await withTaskExecutorPreference(log.writerExecutor) {
                    for index in 0..<count {
                        #expect(log.writer.isCurrent)
                        let position = try #require(
                            try await log.publish([SQLiteGroupCommitTests.message("pinned-\(index)")]).first)
                        #expect(position.offset > 0)
                    }
                }
            }
            tasks.addTask {
                for index in 0..<count { try await log.publish([SQLiteGroupCommitTests.message("pool-\(index)")]) }
            }
            try await tasks.waitForAll()
        }
        try await SQLiteGroupCommitTests.expectEachOnce(log, count: 2 * count)
        try await log.close()
    }
}
