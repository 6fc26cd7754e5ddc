//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryStorage
import AviaryTestSupport
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The outbox, the log and the inbox under SIGKILL: `aviary-messaging-fault` (built next to the
/// test bundle) runs as a producer and a consumer process; the test kills them at random moments
/// — mid-transaction, between publish and delete, between effect and ack — and starts them again,
/// until they finish on their own. Then every business row's event must have had its effect
/// exactly once, in order per key.
///
/// The schedule comes from a seeded generator; the seed is printed, and
/// `AVIARY_FAULT_SEED=<seed> swift test --filter OutboxInboxFaultTests` replays it.
// Serialized: the two variants each keep a producer and a consumer busy on fsyncs; running them
// one after the other keeps the rest of the suite's real-time tests from starving.
@Suite("Outbox and inbox under SIGKILL", .serialized, .timeLimit(.minutes(4)))
struct OutboxInboxFaultTests {
    static var executable: URL { ChildProcess.builtExecutable("aviary-messaging-fault") }

    /// One role's child process, restarted after each kill.
    final class Child {
        let role: String
        let arguments: [String]
        let logPath: String
        var process: Spawn.Child?
        var kills = 0
        var starts = 0
        var finished = false

        init(role: String, arguments: [String], logPath: String) {
            self.role = role
            self.arguments = arguments
            self.logPath = logPath
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }

        func start() throws {
            self.process = try Spawn.start(
                OutboxInboxFaultTests.executable.path, [self.role] + self.arguments,
                stdout: .appending(to: self.logPath), stderr: .standardOutput)
            self.starts += 1
        }

        /// Notices a finished process: fine with status 0, a failure otherwise.
        func check() throws {
            guard let process = self.process, let exit = process.exitIfFinished else { return }
            self.process = nil
            if exit == .exited(0) {
                self.finished = true
                return
            }
            throw FaultFailure("\(self.role) ended on its own (\(exit)): \(self.logTail)")
        }

        /// SIGKILL: no handler, no cleanup, as a crash or an OOM kill; returns once it is gone.
        func kill() async throws {
            try self.check()
            guard let process = self.process else { return }
            try await process.stop(SIGKILL)
            self.process = nil
            self.kills += 1
        }

        var logTail: String {
            let text = (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? ""
            return String(text.suffix(2000))
        }
    }

    struct FaultFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    @Test(
        "killed producers and consumers lose no event and apply none twice",
        arguments: [
            "direct",  // receive + Inbox.consume straight on the log
            "consumer",  // the MessageConsumer runtime with Inbox.handler
        ])
    func killAtRandom(runtime: String) async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path),
            "build the aviary-messaging-fault target first (swift build --build-tests)")
        var random = FaultSchedule("OutboxInboxFaultTests (\(runtime))")
        let seed = random.seed
        let count = 5000
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("aviary-fault-\(runtime)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let common = ["--broker", "\(directory)/broker.db", "--count", "\(count)"]
        let producer = Child(
            role: "produce", arguments: ["--store", "\(directory)/producer.db"] + common,
            logPath: "\(directory)/producer.log")
        let consumer = Child(
            role: "consume", arguments: ["--store", "\(directory)/consumer.db", "--runtime", runtime] + common,
            logPath: "\(directory)/consumer.log")
        let children = [producer, consumer]
        // SIGKILL whatever still runs when the test ends; their waiter threads reap them.
        defer {
            for child in children { child.process?.kill(SIGKILL) }
        }

        do {
            for child in children { try child.start() }
            // The kill phase: strike at a random moment, one child or both, and restart them, for
            // 20 s and at least 12 kills (a starved test process strikes less often; up to 60 s).
            let clock = ContinuousClock()
            let killPhase = clock.now.advanced(by: .seconds(20))
            let killLimit = clock.now.advanced(by: .seconds(60))
            while !children.allSatisfy(\.finished), clock.now < killLimit,
                clock.now < killPhase || producer.kills + consumer.kills < 12
            {
                // A fault schedule, not a wait for anything: the moment of the next SIGKILL.
                try await Task.sleep(for: .milliseconds(Int.random(in: 20...300, using: &random)))
                let victims: [Child] =
                    switch Int.random(in: 0..<3, using: &random) {
                    case 0: [producer]
                    case 1: [consumer]
                    default: children
                    }
                for child in victims where !child.finished {
                    try await child.kill()
                    if !child.finished { try child.start() }
                }
            }
            // Then let both finish on their own.
            let deadline = clock.now.advanced(by: .seconds(90))
            while !children.allSatisfy(\.finished) {
                for child in children { try child.check() }
                guard clock.now < deadline else {
                    throw FaultFailure(
                        "not finished in time; producer: \(producer.logTail); consumer: \(consumer.logTail)")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        } catch {
            Issue.record("seed \(seed): \(error)")
            return
        }

        // Nothing lost, nothing doubled.
        let producerStore = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/producer.db")))
        let consumerStore = try SQLiteStore(url: StoreURL(.sqlite(path: "\(directory)/consumer.db")))
        let items = try await producerStore.read { db in try Int.fetchAll(db, sql: "SELECT id FROM items ORDER BY id") }
        let pending = try await producerStore.read { db in try Outbox.pendingCount(in: db) }
        let effects = try await consumerStore.read { db in
            try Row.fetchAll(db, sql: "SELECT id, key, applied FROM effects ORDER BY applied_order")
                .map { (id: $0["id"] as Int, key: $0["key"] as String, applied: $0["applied"] as Int) }
        }
        let (inboxed, duplicates) = try await consumerStore.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM aviary_inbox") ?? 0,
                try Int.fetchOne(db, sql: "SELECT value FROM stats WHERE name = 'duplicates'") ?? 0
            )
        }
        let log = try SQLiteMessageLog(path: "\(directory)/broker.db")
        let published = try await log.topics().first { $0.name == "fault" }?.partitions.reduce(0) { $0 + $1.depth } ?? 0
        let deadLettered = try await log.topics().flatMap(\.groups).reduce(0) { $0 + $1.deadLettered }
        try await log.close()
        print(
            "\(runtime), seed \(seed): \(count) events; kills: producer \(producer.kills), consumer \(consumer.kills); "
                + "published \(published) (\(published - Int64(count)) republished); duplicates absorbed \(duplicates)")

        #expect(items == Array(1...count), "seed \(seed): business rows")
        #expect(pending == 0, "seed \(seed): outbox not empty")
        #expect(published >= Int64(count), "seed \(seed): fewer messages in the log than events")
        #expect(deadLettered == 0, "seed \(seed): dead letters")
        #expect(inboxed == count, "seed \(seed): inbox records")
        #expect(effects.count == count, "seed \(seed): effects")
        #expect(Set(effects.map(\.id)) == Set(1...count), "seed \(seed): lost effects")
        let doubled = effects.filter { $0.applied != 1 }
        #expect(doubled.isEmpty, "seed \(seed): applied more than once: \(doubled.prefix(10))")
        // Per key, first applications follow the order the producer wrote them in.
        for (key, applied) in Dictionary(grouping: effects, by: \.key) {
            let ids = applied.map(\.id)
            #expect(ids == ids.sorted(), "seed \(seed): key \(key) applied out of order")
        }
        // A fast machine may finish one side after few kills; the run still means something when
        // both were struck while working and the kills add up.
        #expect(
            producer.kills + consumer.kills >= 10,
            "seed \(seed): too few kills to mean anything")
    }
}
