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
import GRDB
import Testing

/// The runner against a real SQLite store and a callee with a real idempotency table.
@Suite("Saga runner", .timeLimit(.minutes(2)))
struct SagaRunnerTests {
    struct Transfer: Codable, Sendable, Equatable {
        var amount: Int
        var done: [String] = []
    }

    /// Opens a saga store and a callee in `directory`, and a runner with manual clocks.
    struct Fixture {
        let directory: TemporaryDirectory
        let store: SQLiteSagaStore
        let callee: IdempotentCallee
        let wall: ManualWallClock
        let clock: ManualClock
        let runner: SagaRunner

        init(
            directory: TemporaryDirectory? = nil, wall: ManualWallClock = ManualWallClock(),
            clock: ManualClock = ManualClock()
        )
            throws
        {
            let directory = try directory ?? TemporaryDirectory()
            self.directory = directory
            self.store = try SQLiteSagaStore(url: StoreURL(.sqlite(path: directory.path("sagas.db"))))
            self.callee = try IdempotentCallee(path: directory.path("callee.db"))
            self.wall = wall
            self.clock = clock
            self.runner = SagaRunner(store: self.store, wallClock: wall, clock: clock)
        }

        /// The same files, a new store and runner: a restart.
        func restarted() throws -> Fixture {
            try Fixture(directory: self.directory, wall: self.wall, clock: self.clock)
        }
    }

    /// A step that moves the callee's balance by `amount` (its compensation moves it back).
    static func step(
        _ name: String, _ callee: IdempotentCallee, retry: StepRetryPolicy = .once, timeout: Duration? = nil,
        fail: (@Sendable (StepContext) throws -> Void)? = nil,
        failCompensation: (@Sendable (StepContext) throws -> Void)? = nil
    ) -> SagaStep<Transfer> {
        SagaStep(name, retry: retry, timeout: timeout) { transfer, context in
            try fail?(context)
            try await callee.apply(key: context.idempotencyKey, amount: transfer.amount)
            var transfer = transfer
            transfer.done.append(name)
            return transfer
        } compensate: { transfer, context in
            try failCompensation?(context)
            try await callee.apply(key: context.idempotencyKey, amount: -transfer.amount)
        }
    }

    @Test("a saga runs its steps in order, records each before and after, and completes")
    func happyPath() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let saga = Saga<Transfer>(
            "transfer",
            steps: [
                Self.step("a", f.callee), Self.step("b", f.callee), Self.step("c", f.callee),
            ])
        let finished = try await f.runner.start(saga, id: "t1", state: Transfer(amount: 5))
        #expect(finished.status == .completed)
        #expect(try await f.runner.state(of: "t1", as: Transfer.self).done == ["a", "b", "c"])
        #expect(try await f.callee.balance == 15)
        #expect(try await f.callee.appliedKeys() == ["t1/0", "t1/1", "t1/2"])
        let history = try await f.store.history("t1")
        #expect(history.map(\.kind) == [.started, .completed, .started, .completed, .started, .completed])
        #expect(history.map(\.step) == [0, 0, 1, 1, 2, 2])
        let output = try JSONDecoder().decode(Transfer.self, from: try #require(history[3].output))
        #expect(output.done == ["a", "b"])
    }

    @Test("a step failing after its retries compensates the completed steps in reverse order")
    func failureCompensatesInReverse() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let attempts = Locked(0)
        let saga = Saga<Transfer>(
            "transfer",
            steps: [
                Self.step("a", f.callee), Self.step("b", f.callee),
                Self.step("c", f.callee, retry: StepRetryPolicy(maxAttempts: 3, backoff: .immediate)) { _ in
                    attempts.withLock { $0 += 1 }
                    throw TestFailure("declined")
                },
            ])
        let finished = try await f.runner.start(saga, id: "t1", state: Transfer(amount: 7))
        #expect(finished.status == .compensated)
        #expect(attempts.value == 3)
        #expect(try await f.callee.balance == 0)
        #expect(try await f.callee.appliedKeys() == ["t1/0", "t1/1", "t1/1/compensate", "t1/0/compensate"])
        let history = try await f.store.history("t1")
        #expect(history.filter { $0.kind == .failed }.count == 3)
        #expect(history.filter { $0.kind == .compensated }.map(\.step) == [1, 0])
        #expect(finished.lastError?.contains("declined") == true)
    }

    @Test("a failed compensation is retried after its backoff, durably, until it succeeds")
    func compensationRetries() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let failures = Locked(0)
        let saga = Saga<Transfer>(
            "transfer",
            steps: [
                Self.step(
                    "a", f.callee,
                    failCompensation: { _ in
                        try failures.withLock { count in
                            count += 1
                            if count <= 2 { throw TestFailure("inventory down") }
                        }
                    }),
                Self.step("b", f.callee) { _ in throw TestFailure("declined") },
            ],
            compensationRetry: StepRetryPolicy(maxAttempts: 5, backoff: .constant(.seconds(30))))
        let waiting = try await f.runner.start(saga, id: "t1", state: Transfer(amount: 3))
        #expect(waiting.status == .compensating)
        #expect(try await f.callee.balance == 3)
        // Not due yet: nothing happens.
        #expect(try await f.runner.runDue() == 0)
        f.wall.advance(by: .seconds(30))
        #expect(try await f.runner.runDue() == 1)
        #expect(try await f.store.instance("t1")?.status == .compensating)
        // A restart in between: the stored wake-up time survives.
        let g = try f.restarted()
        g.runner.register(saga)
        f.wall.advance(by: .seconds(30))
        #expect(try await g.runner.runDue() == 1)
        #expect(try await g.store.instance("t1")?.status == .compensated)
        #expect(failures.value == 3)
        #expect(try await g.callee.balance == 0)
        #expect(try await g.store.history("t1").filter { $0.kind == .compensationFailed }.count == 2)
    }

    @Test("a saga that cannot compensate is parked as needs-attention with its history, and can be retried")
    func parking() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let broken = Locked(true)
        let saga = Saga<Transfer>(
            "transfer",
            steps: [
                Self.step(
                    "a", f.callee,
                    failCompensation: { _ in
                        if broken.value { throw TestFailure("still down") }
                    }),
                Self.step("b", f.callee) { _ in throw TestFailure("declined") },
            ],
            compensationRetry: StepRetryPolicy(maxAttempts: 3, backoff: .immediate))
        let parked = try await f.runner.start(saga, id: "t1", state: Transfer(amount: 4))
        #expect(parked.status == .needsAttention)
        #expect(parked.lastError?.contains("still down") == true)
        #expect(try await f.store.instances(status: .needsAttention, limit: 10).map(\.id) == ["t1"])
        let history = try await f.store.history("t1")
        #expect(history.filter { $0.kind == .compensationFailed }.count == 3)
        #expect(history.last?.kind == .note)
        #expect(try await f.runner.runDue() == 0)  // parked sagas are not driven

        broken.withLock { $0 = false }
        try await f.store.retryParked("t1", at: f.wall.now)
        #expect(try await f.runner.runDue() == 1)
        #expect(try await f.store.instance("t1")?.status == .compensated)
        #expect(try await f.callee.balance == 0)
    }

    @Test("after a restart an interrupted step runs again with the same key, and the callee applies it once")
    func resumeAfterRestart() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let reachedCallee = Locked(false)
        // The first process: step "b" applies its effect, then hangs until the process "dies"
        // (its task is cancelled), before its outcome is recorded.
        let hanging = Saga<Transfer>(
            "transfer",
            steps: [
                Self.step("a", f.callee),
                SagaStep("b") { transfer, context in
                    try await f.callee.apply(key: context.idempotencyKey, amount: transfer.amount)
                    reachedCallee.withLock { $0 = true }
                    try await Task.sleep(for: .seconds(3600))  // interrupted by cancellation
                    return transfer
                },
                Self.step("c", f.callee),
            ])
        let first = Task { try await f.runner.start(hanging, id: "t1", state: Transfer(amount: 2)) }
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while !reachedCallee.value && ContinuousClock.now < deadline { await Task.yield() }
        #expect(reachedCallee.value)
        first.cancel()
        _ = try? await first.value
        let interrupted = try #require(try await f.store.instance("t1"))
        #expect(interrupted.status == .running && interrupted.step == 1)
        #expect(try await f.store.history("t1").last?.kind == .started)

        // The restart: new store, new runner, the real definition.
        let g = try f.restarted()
        g.runner.register(
            Saga<Transfer>(
                "transfer",
                steps: [
                    Self.step("a", g.callee), Self.step("b", g.callee), Self.step("c", g.callee),
                ]))
        #expect(try await g.runner.runDue() == 1)
        #expect(try await g.store.instance("t1")?.status == .completed)
        #expect(try await g.callee.calls("t1/1") == 2)  // called twice...
        #expect(try await g.callee.balance == 6)  // ...applied once
        #expect(try await g.callee.appliedKeys() == ["t1/0", "t1/1", "t1/2"])
    }

    @Test("a durable timer wakes the saga at its stored time, across a restart, with a manual clock")
    func durableTimer() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        func saga(_ callee: IdempotentCallee) -> Saga<Transfer> {
            Saga(
                "delayed",
                steps: [
                    Self.step("a", callee), .sleep("cooling off", for: .seconds(3600)), Self.step("b", callee),
                ])
        }
        let sleeping = try await f.runner.start(saga(f.callee), id: "t1", state: Transfer(amount: 1))
        #expect(sleeping.status == .running && sleeping.step == 1)
        let wake = try #require(sleeping.wakeAt)
        #expect(abs(wake.timeIntervalSince(f.wall.now) - 3600) < 0.01)
        let stored = try #require(try await f.store.nextWakeUp())
        #expect(abs(stored.timeIntervalSince(wake)) < 0.001)
        f.wall.advance(by: .seconds(3599))
        #expect(try await f.runner.runDue() == 0)
        #expect(try await f.callee.balance == 1)

        let g = try f.restarted()
        g.runner.register(saga(g.callee))
        f.wall.advance(by: .seconds(1))
        #expect(try await g.runner.runDue() == 1)
        #expect(try await g.store.instance("t1")?.status == .completed)
        #expect(try await g.callee.balance == 2)
        #expect(try await g.store.history("t1").map(\.kind).contains(.sleeping))
    }

    @Test("the runner service sleeps until the earliest wake-up and then drives the saga")
    func runnerServiceWakesUp() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let saga = Saga<Transfer>("delayed", steps: [.sleep("wait", for: .seconds(60)), Self.step("a", f.callee)])
        f.runner.register(saga)
        try await f.runner.enqueue(saga, id: "t1", state: Transfer(amount: 9))
        let service = Task { try await f.runner.run() }
        defer { service.cancel() }
        // The runner drives the sleep step and then waits (on the manual clock) for 60 s.
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while try await f.store.instance("t1")?.wakeAt == nil, ContinuousClock.now < deadline { await Task.yield() }
        await f.clock.waitForSleepers(count: 1)
        #expect(try await f.callee.balance == 0)
        f.wall.advance(by: .seconds(60))
        // Move the runner's clock on whenever it sleeps, until it has driven the saga.
        while try await f.store.instance("t1")?.status != .completed, ContinuousClock.now < deadline {
            if f.clock.sleeperCount > 0 { f.clock.advance(by: .seconds(1)) }
            await Task.yield()
        }
        #expect(try await f.store.instance("t1")?.status == .completed)
        #expect(try await f.callee.balance == 9)
    }

    @Test("a step that exceeds its timeout fails (on the manual clock) and the saga compensates")
    func stepTimeout() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let saga = Saga<Transfer>(
            "slow",
            steps: [
                Self.step("a", f.callee),
                SagaStep("b", retry: .once, timeout: .seconds(5)) { transfer, _ in
                    try await Task.sleep(for: .seconds(3600))  // never answers; cancelled by the timeout
                    return transfer
                },
            ])
        let running = Task { try await f.runner.start(saga, id: "t1", state: Transfer(amount: 8)) }
        await f.clock.waitForSleepers(count: 1)
        f.clock.advance(by: .seconds(5))
        let finished = try await running.value
        #expect(finished.status == .compensated)
        #expect(finished.lastError?.contains("longer than") == true)
        #expect(try await f.callee.balance == 0)
    }

    /// A saga whose middle step sends a command (recorded in `sent`, as the outbox would) and
    /// waits for its reply.
    static func requesting(_ callee: IdempotentCallee, sent: Locked<[OutgoingMessage]>) -> Saga<Transfer> {
        Saga(
            "paid",
            steps: [
                Self.step("a", callee),
                .request(
                    "charge", retry: StepRetryPolicy(maxAttempts: 2, backoff: .immediate), replyTimeout: .seconds(30)
                ) {
                    transfer, context in
                    let command = try SagaCommand.message(
                        topic: "payments", replyTopic: "replies", type: "charge", source: "/test", payload: transfer,
                        context: context)
                    sent.withLock { $0.append(command) }
                } onReply: { transfer, reply in
                    var transfer = transfer
                    transfer.done.append(try reply.decodeData(as: String.self))
                    return transfer
                },
                Self.step("c", callee),
            ])
    }

    @Test("a request step sends its command, waits durably across a restart, and goes on with the reply")
    func commandAndReply() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let sent = Locked<[OutgoingMessage]>([])
        let waiting = try await f.runner.start(
            Self.requesting(f.callee, sent: sent), id: "t1", state: Transfer(amount: 1))
        #expect(waiting.awaitingReply && waiting.step == 1 && waiting.status == .running)
        #expect(sent.value.count == 1)
        let command = try #require(sent.value.first)
        #expect(command.event.id == "t1/1")
        #expect(command.headers[SagaCommand.sagaHeader] == "t1")

        let g = try f.restarted()
        g.runner.register(Self.requesting(g.callee, sent: sent))
        #expect(try await g.runner.runDue() == 0)  // waiting for the reply, not due
        let received = Message(
            position: MessagePosition(topic: "payments", partition: 0, offset: 0), key: "t1", event: command.event,
            headers: command.headers, appendedAt: Date())
        let reply = try SagaCommand.reply(to: received, type: "charged", source: "/payments", payload: "charged")
        #expect(reply.topic == "replies")
        #expect(try await g.runner.deliverReply(reply.event, sagaID: "t1", step: 1))
        #expect(try await g.runner.deliverReply(reply.event, sagaID: "t1", step: 1) == false)  // a duplicate
        #expect(try await g.store.instance("t1")?.status == .completed)
        #expect(try await g.runner.state(of: "t1", as: Transfer.self).done == ["a", "charged", "c"])
        #expect(sent.value.count == 1)
    }

    @Test("no reply by the deadline is a failed attempt: the command is sent again, then the saga compensates")
    func replyTimeout() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let sent = Locked<[OutgoingMessage]>([])
        try await f.runner.start(Self.requesting(f.callee, sent: sent), id: "t1", state: Transfer(amount: 4))
        #expect(sent.value.count == 1)
        f.wall.advance(by: .seconds(29))
        #expect(try await f.runner.runDue() == 0)
        f.wall.advance(by: .seconds(1))
        #expect(try await f.runner.runDue() == 1)
        #expect(sent.value.map(\.event.id) == ["t1/1", "t1/1"])  // sent again, same id
        #expect(try await f.store.instance("t1")?.awaitingReply == true)
        f.wall.advance(by: .seconds(30))
        #expect(try await f.runner.runDue() == 1)
        #expect(try await f.store.instance("t1")?.status == .compensated)
        #expect(try await f.callee.balance == 0)
    }

    @Test("a step that may have applied before it failed can compensate itself too")
    func compensatesItsOwnFailure() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        // "b" applies on the callee, then its response is lost (the action throws).
        var lost = SagaStep<Transfer>("b", retry: .once) { transfer, context in
            try await f.callee.apply(key: context.idempotencyKey, amount: transfer.amount)
            throw TestFailure("response lost")
        } compensate: { transfer, context in
            try await f.callee.apply(key: context.idempotencyKey, amount: -transfer.amount)
        }
        lost.compensatesItsOwnFailure = true
        let saga = Saga<Transfer>("transfer", steps: [Self.step("a", f.callee), lost])
        let finished = try await f.runner.start(saga, id: "t1", state: Transfer(amount: 5))
        #expect(finished.status == .compensated)
        #expect(try await f.callee.balance == 0)
        #expect(try await f.store.history("t1").filter { $0.kind == .compensated }.map(\.step) == [1, 0])
    }

    @Test("a saga id is used once")
    func duplicateStart() async throws {
        let f = try Fixture()
        defer { f.directory.remove() }
        let saga = Saga<Transfer>("transfer", steps: [Self.step("a", f.callee)])
        try await f.runner.start(saga, id: "t1", state: Transfer(amount: 1))
        let error = await #expect(throws: SagaError.self) {
            try await f.runner.start(saga, id: "t1", state: Transfer(amount: 1))
        }
        #expect(error?.kind == .duplicate)
        #expect(try await f.callee.balance == 1)
    }

    /// `AVIARY_MEASURE=1 swift test --filter SagaRunnerTests/throughput`: 3-step local sagas per
    /// second next to the raw single-row transaction rate of the same engine and settings.
    @Test(
        "3-step local saga completions per second vs raw single-row transactions",
        .enabled(if: ProcessInfo.processInfo.environment["AVIARY_MEASURE"] != nil))
    func throughput() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var migrations = Migrations()
        migrations.add("raw") { db in try db.execute(sql: "CREATE TABLE raw (id INTEGER PRIMARY KEY, body BLOB)") }
        let raw = try SQLiteStore(url: StoreURL(.sqlite(path: directory.path("raw.db"))), migrations: migrations)
        let rows = 5000
        let body = Data(repeating: 7, count: 100)
        let rawStart = ContinuousClock.now
        for n in 0..<rows {
            try await raw.write { db in try db.execute(sql: "INSERT INTO raw VALUES (?, ?)", arguments: [n, body]) }
        }
        let rawRate = Double(rows) / (ContinuousClock.now - rawStart).aviarySeconds

        let store = try SQLiteSagaStore(url: StoreURL(.sqlite(path: directory.path("sagas.db"))))
        let runner = SagaRunner(store: store)
        let local = SagaStep<Transfer>("local") { transfer, _ in transfer }
        let saga = Saga<Transfer>("local", steps: [local, local, local])
        let sagas = 5000
        let concurrency = 256
        let sagaStart = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    for n in stride(from: worker, to: sagas, by: concurrency) {
                        let done = try await runner.start(saga, id: "s\(n)", state: Transfer(amount: 1))
                        if done.status != .completed { throw TestFailure("saga s\(n) is \(done.status)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        let sagaRate = Double(sagas) / (ContinuousClock.now - sagaStart).aviarySeconds
        print(
            "raw single-row transactions/s: \(Int(rawRate)); 3-step sagas/s: \(Int(sagaRate)); ratio \(sagaRate / rawRate)"
        )
        #expect(try await store.instances(status: .completed, limit: sagas + 1).count == sagas)
    }
}
