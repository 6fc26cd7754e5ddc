//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import AviaryTestSupport
import Foundation
import GRDB
import Synchronization
import Testing

@Suite("SQLiteOpening", .timeLimit(.minutes(1)))
struct SQLiteOpeningTests {
    static func temporaryPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("aviary-opening-\(UUID().uuidString).db").path
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    /// Runs `body` on a thread of its own: it blocks while it retries.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
        }
    }

    @Test("a pool opened on a file another connection holds locked waits for the lock, then opens in WAL mode")
    func retriesBusy() async throws {
        let path = Self.temporaryPath()
        defer { Self.remove(path) }
        let holder = try SQLiteLockHolder(path: path)
        await SQLiteLockHolder.wait(holder.locked)
        let failures = Mutex<[ResultCode]>([])
        let pool = try await Self.offPool {
            var configuration = Configuration()
            configuration.busyMode = .timeout(0.002)
            return try SQLiteOpening.retryingBusy(
                for: .seconds(30),
                onRetry: { count, error in
                    failures.withLock { $0.append(error.resultCode) }
                    // The holder lets go once opening has failed busy: the next tries must succeed.
                    if count == 1 { holder.release.signal() }
                }
            ) { try DatabasePool(path: path, configuration: configuration) }
        }
        let codes = failures.withLock { $0 }
        #expect(!codes.isEmpty)
        #expect(codes.allSatisfy { $0 == .SQLITE_BUSY || $0 == .SQLITE_LOCKED })
        #expect(try await pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        #expect(
            try await pool.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master WHERE name = 'made_by_holder'")
            } == 1)
        try pool.close()
        await SQLiteLockHolder.wait(holder.done)
    }

    @Test("a busy first try is retried once even when the limit has passed; later busy tries are not")
    func firstBusyTryIsRetried() throws {
        let tries = Mutex(0)
        let retries = Mutex(0)
        // A limit of zero has passed by the time any try fails: only the first failure is retried.
        #expect(throws: DatabaseError.self) {
            try SQLiteOpening.retryingBusy(for: .zero, onRetry: { _, _ in retries.withLock { $0 += 1 } }) {
                tries.withLock { $0 += 1 }
                throw DatabaseError(resultCode: .SQLITE_BUSY, message: "database is locked")
            }
        }
        #expect(tries.withLock { $0 } == 2)
        #expect(retries.withLock { $0 } == 1)
        // And a retry that succeeds returns its value.
        let opened = try SQLiteOpening.retryingBusy(for: .zero) {
            if tries.withLock({
                $0 += 1; return $0
            }) == 3 {
                throw DatabaseError(resultCode: .SQLITE_LOCKED, message: "database table is locked")
            }
            return "opened"
        }
        #expect(opened == "opened")
    }

    @Test("errors other than busy or locked are thrown at once, without retrying")
    func otherErrorsAreNotRetried() throws {
        let retries = Mutex(0)
        let folder = FileManager.default.temporaryDirectory.path  // a folder cannot be opened as a database
        #expect(throws: DatabaseError.self) {
            try SQLiteOpening.retryingBusy(for: .seconds(30), onRetry: { _, _ in retries.withLock { $0 += 1 } }) {
                try DatabaseQueue(path: folder)
            }
        }
        #expect(retries.withLock { $0 } == 0)
        #expect(!SQLiteOpening.isBusy(CancellationError()))
    }
}
