//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

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
}
