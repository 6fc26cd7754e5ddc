//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import AviaryTestSupport
import AviaryWorkflows
import Foundation
import GRDB
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sagas under SIGKILL: `aviary-workflows-fault` (built next to the test bundle) runs sagas
/// reserve → charge → confirm against a callee database with an idempotency table; the test kills
/// it at random moments (mid-step, between a step's effect and its record, mid-compensation) and
/// starts it again, until it finishes on its own. Then every saga must be completed or
/// compensated and the callee's balances must be exactly what the finished sagas say.
///
/// It runs on both saga stores: a SQLite file, and a PostgreSQL database where the sagas a killed
/// runner held are resumed by the next one once their leases (2 s) expire.
///
/// `AVIARY_FAULT_SEED=<seed> swift test --filter SagaCrashTests` replays a schedule.
@Suite("Sagas under SIGKILL", .serialized, .timeLimit(.minutes(5)))
struct SagaCrashTests {
    static var executable: URL { ChildProcess.builtExecutable("aviary-workflows-fault") }

    @Test(
        "killed runners leave every saga completed or compensated, and the effects balance exactly",
        arguments: ["sqlite", "postgres"])
    func killAtRandom(backend: String) async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path),
            "build the aviary-workflows-fault target first (swift build --build-tests)")
        var random = FaultSchedule("SagaCrashTests (\(backend))")
        let seed = random.seed
        let count = 4000
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let sagas = backend == "postgres" ? try await directory.postgresURL().description : directory.path("sagas.db")
        let logPath = directory.path("runner.log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        func logTail() -> String {
            String(((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "").suffix(2000))
        }
        func launch() throws -> Spawn.Child {
            try Spawn.start(
                Self.executable.path,
                [
                    "run", "--sagas", sagas, "--callee", directory.path("callee.db"), "--count", "\(count)",
                    "--lease-seconds", "2",
                ],
                stdout: .appending(to: logPath), stderr: .standardOutput)
        }

        var kills = 0
        var process = try launch()
        defer { process.kill(SIGKILL) }
        let clock = ContinuousClock()
        let killPhase = clock.now.advanced(by: .seconds(15))
        var finished = false
        while clock.now < killPhase {
            // A fault schedule, not a wait for anything: the moment of the next SIGKILL.
            try await Task.sleep(for: .milliseconds(Int.random(in: 30...400, using: &random)))
            if let exit = process.exitIfFinished {
                guard exit == .exited(0) else {
                    Issue.record("seed \(seed): the runner failed (\(exit)): \(logTail())")
                    return
                }
                finished = true
                break
            }
            try await process.stop(SIGKILL)
            kills += 1
            process = try launch()
        }
        if !finished {
            // The last runner finishes the sagas alone: about 35 s for 4000 on PostgreSQL in a
            // debug build on a quiet machine, and more than 90 s once in a full parallel run.
            guard let exit = try await process.exit(within: .seconds(200)) else {
                Issue.record("seed \(seed): the runner did not finish: \(logTail())")
                return
            }
            guard exit == .exited(0) else {
                Issue.record("seed \(seed): the runner failed (\(exit)): \(logTail())")
                return
            }
        }
        print("SagaCrashTests (\(backend)): \(kills) kills")
        #expect(kills > 0)

        let store: any SagaStore =
            backend == "postgres"
            ? try await directory.openPostgresSagaStore()
            : try SQLiteSagaStore(url: StoreURL(.sqlite(path: directory.path("sagas.db"))))
        let callee = try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("callee.db"))))
        let instances = try await store.instances(status: nil, limit: count + 10)
        #expect(instances.count == count)
        var expected = ["stock": 0, "charged": 0, "confirmed": 0]
        var expectedKeys: Set<String> = []
        for instance in instances {
            let number = try #require(Int(instance.id.dropFirst("order-".count)))
            let quantity = number % 5 + 1
            if number % 3 == 0 {
                #expect(instance.status == .compensated, "\(instance.id) is \(instance.status.rawValue)")
                expectedKeys.formUnion(["\(instance.id)/0", "\(instance.id)/0/compensate"])
            } else {
                #expect(instance.status == .completed, "\(instance.id) is \(instance.status.rawValue)")
                expected["stock", default: 0] += quantity
                expected["charged", default: 0] += quantity * 100
                expected["confirmed", default: 0] += 1
                expectedKeys.formUnion(["\(instance.id)/0", "\(instance.id)/1", "\(instance.id)/2"])
            }
        }
        let (balances, keys) = try await callee.read { db in
            (
                try Row.fetchAll(db, sql: "SELECT account, value FROM balances").reduce(into: [String: Int]()) {
                    $0[$1["account"]] = $1["value"]
                },
                try String.fetchAll(db, sql: "SELECT key FROM effects")
            )
        }
        #expect(balances == expected)
        #expect(Set(keys) == expectedKeys)
        #expect(keys.count == expectedKeys.count)
        await directory.close()
    }
}
