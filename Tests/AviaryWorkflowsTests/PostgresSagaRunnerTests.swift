//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryStorage
import AviaryWorkflows
import Foundation
import Testing

/// Runners of several "processes" (each its own ``PostgresSagaStore`` and connection pool) on one
/// real PostgreSQL database: leases, durable timers and parked sagas.
@Suite("Saga runners sharing PostgreSQL", .timeLimit(.minutes(3)))
struct PostgresSagaRunnerTests {
    struct Job: Codable, Sendable, Equatable {
        var n: Int
    }

    /// Runs `body` with a folder whose PostgreSQL database the stores share; closes them after.
    static func withDatabase(_ body: (TemporaryDirectory) async throws -> Void) async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        do {
            try await body(directory)
        } catch {
            await directory.close()
            throw error
        }
        await directory.close()
    }

    @Test("two runners on one database never drive the same saga, and every saga completes once")
    func twoRunnersShareTheWork() async throws {
        try await Self.withDatabase { directory in
            let count = 100
            /// Per "saga/step": how many times an action ran; per runner: how many it ran.
            let calls = Locked<[String: Int]>([:])
            let byRunner = Locked<[String: Int]>([:])
            func saga(_ runner: String) -> Saga<Job> {
                let step: @Sendable (String) -> SagaStep<Job> = { name in
                    SagaStep(name) { job, context in
                        calls.withLock { $0[context.idempotencyKey, default: 0] += 1 }
                        byRunner.withLock { $0[runner, default: 0] += 1 }
                        // Hold the first steps until both runners are driving sagas, so that they
                        // really run side by side.
                        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
                        while byRunner.value.count < 2, ContinuousClock.now < deadline {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                        return job
                    }
                }
                return Saga("job", steps: [step("a"), step("b"), step("c")])
            }
            let storeA = try await directory.openPostgresSagaStore()
            let storeB = try await directory.openPostgresSagaStore()
            let a = SagaRunner(store: storeA, configuration: .init(batchSize: 16))
            let b = SagaRunner(store: storeB, configuration: .init(batchSize: 16))
            #expect(a.leaseOwner != b.leaseOwner)
            a.register(saga("A"))
            b.register(saga("B"))
            for n in 0..<count {
                try await a.enqueue(saga("A"), id: "job-\(n)", state: Job(n: n))
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for runner in [a, b] {
                    group.addTask {
                        let deadline = ContinuousClock.now.advanced(by: .seconds(90))
                        while try await !storeA.due(at: Date.distantFuture, limit: 1).isEmpty,
                            ContinuousClock.now < deadline
                        {
                            if try await runner.runDue() == 0 { try await Task.sleep(for: .milliseconds(10)) }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let completed = try await storeB.instances(status: .completed, limit: 1000)
            #expect(completed.count == count)
            let counts = calls.value
            #expect(counts.count == count * 3)
            #expect(counts.values.allSatisfy { $0 == 1 }, "a step ran twice: \(counts.filter { $0.value > 1 })")
            #expect(byRunner.value["A", default: 0] > 0 && byRunner.value["B", default: 0] > 0)
            #expect(byRunner.value.values.reduce(0, +) == count * 3)
            for instance in completed.prefix(10) {
                #expect(try await storeA.lease(of: instance.id) == nil)
            }
        }
    }

    @Test("the sagas of a runner that died are taken over when its lease expires")
    func expiredLeaseIsTakenOver() async throws {
        try await Self.withDatabase { directory in
            let wall = ManualWallClock()
            let ran = Locked(0)
            let saga = Saga<Job>(
                "job",
                steps: [
                    SagaStep("only") { job, _ in
                        ran.withLock { $0 += 1 }
                        return job
                    }
                ])
            let dead = try await directory.openPostgresSagaStore()
            let live = try await directory.openPostgresSagaStore()
            let runner = SagaRunner(
                store: live, wallClock: wall, clock: ManualClock(), configuration: .init(leaseDuration: .seconds(30)))
            runner.register(saga)
            try await runner.enqueue(saga, id: "j1", state: Job(n: 1))
            // Another process claimed it, then was killed before it recorded anything.
            let claimed = try await dead.claimDue(
                at: wall.now, limit: 10, owner: "dead-runner", leaseUntil: wall.now.addingTimeInterval(30))
            #expect(claimed.map(\.id) == ["j1"])
            #expect(try await live.claimDue(at: wall.now, limit: 10, owner: "x", leaseUntil: wall.now).isEmpty)
            #expect(try await runner.runDue() == 0)
            #expect(try await live.lease(of: "j1")?.owner == "dead-runner")
            // run() sleeps until the lease expires rather than spinning on a saga it cannot take.
            let claimable = try #require(try await live.nextClaimable())
            #expect(abs(claimable.timeIntervalSince(wall.now.addingTimeInterval(30))) < 0.001)
            wall.advance(by: .seconds(29))
            #expect(try await runner.runDue() == 0)
            #expect(ran.value == 0)
            wall.advance(by: .seconds(1))
            #expect(try await runner.runDue() == 1)
            #expect(try await live.instance("j1")?.status == .completed)
            #expect(ran.value == 1)
            #expect(try await live.lease(of: "j1") == nil)
            // The dead runner's late write is refused by the version check.
            var stale = claimed[0]
            stale.status = .compensating
            stale.version = 2
            let error = await #expect(throws: SagaError.self) {
                try await dead.update(stale, expectedVersion: 1, events: [])
            }
            #expect(error?.kind == .conflict)
        }
    }

    @Test("a durable timer set by one runner is fired by another after a restart")
    func timerAcrossRunners() async throws {
        try await Self.withDatabase { directory in
            let wall = ManualWallClock()
            let ran = Locked(0)
            let saga = Saga<Job>(
                "delayed",
                steps: [
                    .sleep("wait", for: .seconds(3600)),
                    SagaStep("after") { job, _ in
                        ran.withLock { $0 += 1 }
                        return job
                    },
                ])
            let first = SagaRunner(store: try await directory.openPostgresSagaStore(), wallClock: wall)
            let sleeping = try await first.start(saga, id: "t1", state: Job(n: 1))
            #expect(sleeping.status == .running && sleeping.wakeAt != nil)
            let store = try await directory.openPostgresSagaStore()
            // Waiting sagas are not leased: any runner may fire the timer.
            #expect(try await store.lease(of: "t1") == nil)
            let stored = try #require(try await store.nextWakeUp())
            #expect(abs(stored.timeIntervalSince(wall.now) - 3600) < 0.001)
            let second = SagaRunner(store: store, wallClock: wall)
            second.register(saga)
            wall.advance(by: .seconds(3599))
            #expect(try await second.runDue() == 0)
            wall.advance(by: .seconds(1))
            #expect(try await second.runDue() == 1)
            #expect(try await store.instance("t1")?.status == .completed)
            #expect(ran.value == 1)
            #expect(try await store.history("t1").map(\.kind) == [.sleeping, .completed, .started, .completed])
        }
    }

    @Test("a saga that cannot compensate is parked, kept unleased, and resumes after an operator retry")
    func parkedSagaIsKept() async throws {
        try await Self.withDatabase { directory in
            let wall = ManualWallClock()
            let compensationWorks = Locked(false)
            let saga = Saga<Job>(
                "fragile",
                steps: [
                    SagaStep("reserve") { job, _ in
                        job
                    } compensate: { _, _ in
                        guard compensationWorks.value else { throw TestFailure("release refused") }
                    },
                    SagaStep("charge", retry: .once) { _, _ in throw TestFailure("declined") },
                ],
                compensationRetry: StepRetryPolicy(maxAttempts: 2, backoff: .immediate))
            let store = try await directory.openPostgresSagaStore()
            let runner = SagaRunner(store: store, wallClock: wall)
            let parked = try await runner.start(saga, id: "p1", state: Job(n: 1))
            #expect(parked.status == .needsAttention)
            #expect(try await store.lease(of: "p1") == nil)
            #expect(
                try await store.claimDue(at: .distantFuture, limit: 10, owner: "x", leaseUntil: .distantFuture).isEmpty)
            let other = try await directory.openPostgresSagaStore()
            #expect(try await other.instances(status: .needsAttention, limit: 10).map(\.id) == ["p1"])
            #expect(try await other.history("p1").contains { $0.kind == .compensationFailed })
            compensationWorks.withLock { $0 = true }
            try await other.retryParked("p1", at: wall.now)
            #expect(try await runner.runDue() == 1)
            #expect(try await store.instance("p1")?.status == .compensated)
        }
    }
}
