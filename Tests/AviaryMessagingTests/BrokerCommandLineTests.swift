//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryTestSupport
import Foundation
import Testing

/// `aviary broker topics|dlq`, run as a child process against a real SQLite log
/// (`swift build --build-tests` builds the `aviary` binary next to the test bundle).
@Suite("aviary broker command", .timeLimit(.minutes(3)))
struct BrokerCommandLineTests {
    static var executable: URL { ChildProcess.aviary }

    typealias Outcome = ChildProcess.Outcome

    static func run(_ arguments: [String]) async throws -> Outcome {
        try await ChildProcess.run(Self.executable, arguments)
    }

    /// A log with topic `orders` (2 partitions), group `mailer` (1 delivery, then dead letter) that
    /// dead-lettered messages 1 and 2 and acked 3, and group `audit` that consumed nothing.
    static func prepareLog() async throws -> (path: String, log: SQLiteMessageLog) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-broker-\(UUID()).db").path
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("orders", TopicOptions(partitions: 2))
        try await log.subscribe(group: "mailer", topic: "orders", options: GroupOptions(maxDeliveries: 1))
        try await log.subscribe(group: "audit", topic: "orders", options: GroupOptions())
        for n in 1...3 {
            try await log.publish([
                OutgoingMessage(topic: "orders", key: "order-\(n)", event: try numbered(n, subject: "order-\(n)"))
            ])
            let delivery = try #require(
                try await log.receive(ReceiveRequest(group: "mailer", topic: "orders", consumer: "m")).deliveries.first)
            if n < 3 {
                try await log.nack(delivery, redeliverAfter: .zero, error: "smtp refused \(n)")
            } else {
                try await log.ack(delivery)
            }
        }
        return (path, log)
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-wakeups"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    @Test("topics: a table row per group with lag and dead letters; --json has the same numbers")
    func topics() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let (path, log) = try await Self.prepareLog()
        defer { Self.remove(path) }
        let outcome = try await Self.run(["broker", "topics", "--url", "sqlite://\(path)"])
        #expect(outcome.status == 0, "\(outcome.standardError)")
        let lines = outcome.standardOutput.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        #expect(lines.first?.first == "TOPIC")
        // orders: 2 partitions, 3 messages; audit lags 3, mailer 0 with 2 dead letters.
        #expect(lines.contains { $0.prefix(6) == ["orders", "2", "3", "0", "audit", "3"] })
        #expect(lines.contains { $0 == ["orders", "2", "3", "0", "mailer", "0", "-", "-", "2", "0"] })
        #expect(lines.contains { $0.first == "orders.mailer.dlq" && $0[2] == "2" })

        let json = try await Self.run(["broker", "topics", "--url", "sqlite://\(path)", "--json"])
        #expect(json.status == 0)
        let document = try #require(
            try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any])
        let topics = try #require(document["topics"] as? [[String: Any]])
        let orders = try #require(topics.first { $0["name"] as? String == "orders" })
        #expect(orders["depth"] as? Int == 3)
        let groups = try #require(orders["groups"] as? [[String: Any]])
        let audit = try #require(groups.first { $0["name"] as? String == "audit" })
        #expect(audit["lag"] as? Int == 3)
        #expect((audit["oldest_unacked_age_seconds"] as? Double ?? -1) >= 0)
        #expect(groups.first { $0["name"] as? String == "mailer" }?["dead_lettered"] as? Int == 2)
        try await log.close()
    }

    @Test("dlq: list, show, replay one, purge one, replay --all")
    func deadLetters() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let (path, log) = try await Self.prepareLog()
        defer { Self.remove(path) }
        let url = "sqlite://\(path)"
        let list = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders", "--group", "mailer"])
        #expect(list.status == 0, "\(list.standardError)")
        #expect(list.standardOutput.contains("orders.mailer.dlq/0@1"))
        #expect(list.standardOutput.contains("orders.mailer.dlq/0@2"))
        #expect(list.standardOutput.contains("smtp refused 1"))
        #expect(list.standardOutput.hasSuffix("2 dead letters in orders.mailer.dlq\n"))

        let show = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders.mailer.dlq", "show", "0@2"])
        #expect(show.status == 0, "\(show.standardError)")
        #expect(show.standardOutput.contains("error:      smtp refused 2"))
        #expect(show.standardOutput.contains("reason:     max-deliveries"))
        #expect(show.standardOutput.contains("\"subject\" : \"order-2\""))

        let replay = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders.mailer.dlq", "replay", "1"])
        #expect(replay.status == 0, "\(replay.standardError)")
        #expect(replay.standardOutput == "replayed orders.mailer.dlq/0@1 to orders\n")
        // The replayed message is back in `orders`: the mailer group gets it again.
        let again = try await log.receive(ReceiveRequest(group: "mailer", topic: "orders", consumer: "m"))
        #expect(again.deliveries.map(\.n) == [1])

        let missing = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders.mailer.dlq", "show", "1"])
        #expect(missing.status == 66)
        #expect(missing.standardError.contains("no dead letter at orders.mailer.dlq/0@1"))

        let purge = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders.mailer.dlq", "purge", "2"])
        #expect(purge.standardOutput == "purged 1 dead letter from orders.mailer.dlq\n")
        #expect(try await log.deadLetters(topic: "orders.mailer.dlq", limit: 10).isEmpty)

        let all = try await Self.run(["broker", "dlq", "--url", url, "--topic", "orders.mailer.dlq", "replay", "--all"])
        #expect(all.standardOutput == "replayed 0 dead letters from orders.mailer.dlq\n")
        try await log.close()
    }

    @Test("errors: missing file 66, bad arguments 64 with usage, a PostgreSQL server that is not there 69")
    func errors() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let missing = try await Self.run(["broker", "topics", "--url", "sqlite:///nonexistent/aviary/broker.db"])
        #expect(missing.status == 66)
        #expect(
            missing.standardError
                == "aviary broker: no message log at /nonexistent/aviary/broker.db (from --url sqlite:///nonexistent/aviary/broker.db)\n"
        )
        #expect(!FileManager.default.fileExists(atPath: "/nonexistent/aviary/broker.db"))

        let noURL = try await Self.run(["broker", "topics"])
        #expect(noURL.status == 64)
        #expect(noURL.standardError.hasPrefix("aviary broker: --url URL is required\nusage: aviary broker"))

        let badURL = try await Self.run(["broker", "topics", "--url", "mysql://x"])
        #expect(badURL.status == 64)
        #expect(badURL.standardError.contains("expected sqlite:///path.db"))

        let postgres = try await Self.run(["broker", "topics", "--url", "postgres://u@127.0.0.1:1/db"])
        #expect(postgres.status == 69)
        #expect(postgres.standardError.contains("127.0.0.1:1/db"), "\(postgres.standardError)")
        #expect(postgres.standardError.contains("refused"), "\(postgres.standardError)")

        let (path, log) = try await Self.prepareLog()
        defer { Self.remove(path) }
        let position = try await Self.run([
            "broker", "dlq", "--url", "sqlite://\(path)", "--topic", "orders.mailer.dlq", "show", "x@y",
        ])
        #expect(position.status == 64)
        let notDLQ = try await Self.run(["broker", "dlq", "--url", "sqlite://\(path)", "--topic", "orders"])
        #expect(notDLQ.status == 65)
        #expect(notDLQ.standardError == "aviary broker: topic orders is not the dead-letter topic of any group\n")
        try await log.close()
    }

    @Test("a publish in another process wakes this process's consumers at once, not at their next poll")
    func wakeUpAcrossProcesses() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-bell-\(UUID()).db").path
        defer { Self.remove(path) }
        // The poll timer would take an hour: only the other process's doorbell can wake the stream.
        let log = try SQLiteMessageLog(path: path, configuration: .init(pollInterval: .seconds(3600)))
        try await log.createTopic("orders", TopicOptions(partitions: 1))
        try await log.createTopic("other", TopicOptions(partitions: 1))
        let wakeUps = log.wakeUps(topic: "orders")
        let woken = Task {
            var iterator = wakeUps.makeAsyncIterator()
            return await iterator.next() != nil
        }
        let publish = try await ChildProcess.run(
            Self.executable,
            ["broker", "publish", "--url", "sqlite://\(path)", "--topic", "orders", "--key", "k", "--count", "1"])
        #expect(publish.status == 0, "\(publish.standardError)")
        let outcome = await withTaskGroup(of: Bool?.self) { group in
            group.addTask { await woken.value }
            group.addTask {
                try? await Task.sleep(for: .seconds(30))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        #expect(outcome == true, "no wake-up within 30 s of the other process's publish")
        try await log.close()
        _ = await woken.value
    }

    @Test("three publisher processes and two consumers share one file: every event once, in order per key")
    func publishersInChildProcesses() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.executable.path), "build aviary first")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-procs-\(UUID()).db").path
        defer { Self.remove(path) }
        let log = try SQLiteMessageLog(path: path)
        try await log.createTopic("orders", TopicOptions(partitions: 4))
        try await log.subscribe(group: "g", topic: "orders", options: GroupOptions())
        let perProcess = 150
        // The publishers run as children awaited without holding a test thread.
        let publishers = (0..<3).map { index in
            Task {
                try await ChildProcess.run(
                    Self.executable,
                    [
                        "broker", "publish", "--url", "sqlite://\(path)", "--topic", "orders", "--key",
                        "producer-\(index)", "--count", "\(perProcess)",
                    ])
            }
        }
        let seen = Locked<[String: [Int]]>([:])
        let deadline = ContinuousClock.now + .seconds(120)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for consumer in 0..<2 {
                tasks.addTask {
                    while ContinuousClock.now < deadline {
                        if seen.withLock({ $0.values.map(\.count).reduce(0, +) }) == 3 * perProcess { return }
                        let batch = try await log.receive(
                            ReceiveRequest(group: "g", topic: "orders", consumer: "c\(consumer)", maxMessages: 20))
                        for delivery in batch.deliveries {
                            seen.withLock { $0[delivery.message.key, default: []].append(delivery.n) }
                            try await log.ack(delivery)
                        }
                        if batch.deliveries.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        for publisher in publishers {
            let outcome = try await publisher.value
            #expect(outcome.status == 0, "\(outcome.standardError)")
        }
        let result = seen.withLock { $0 }
        #expect(result.keys.sorted() == ["producer-0", "producer-1", "producer-2"])
        for (key, numbers) in result { #expect(numbers == Array(1...perProcess), "\(key)") }
        try await log.close()
    }
}
