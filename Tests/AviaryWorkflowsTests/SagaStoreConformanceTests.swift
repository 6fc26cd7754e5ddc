//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import AviaryResilience
import AviaryWorkflows
import Foundation
import Testing

/// The contract of ``SagaStore``, run against every backend in ``SagaStoreBackend/all``.
@Suite("SagaStore conformance", .timeLimit(.minutes(2)))
struct SagaStoreConformanceTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    static func instance(
        _ id: String, wakeAt: Date? = nil, status: SagaStatus = .running, created: Double = 0
    )
        -> SagaInstance
    {
        SagaInstance(
            id: id, name: "test-saga", status: status, step: 0, attempt: 0, state: Data(#"{"n":1}"#.utf8),
            wakeAt: wakeAt, createdAt: t0.addingTimeInterval(created), updatedAt: t0.addingTimeInterval(created))
    }

    static func event(_ kind: SagaEventKind, step: Int = 0, output: Data? = nil, error: String? = nil) -> SagaEvent {
        SagaEvent(step: step, stepName: "step-\(step)", kind: kind, attempt: 0, output: output, error: error, at: t0)
    }

    static func with(
        _ backend: SagaStoreBackend, _ body: (any SagaStore, TemporaryDirectory) async throws -> Void
    )
        async throws
    {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        do {
            try await body(try await backend.make(directory), directory)
        } catch {
            await directory.close()
            throw error
        }
        await directory.close()
    }

    @Test("create stores every field and the first events; reopening reads the same", arguments: SagaStoreBackend.all)
    func createAndRead(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, directory in
            var created = Self.instance("s1", wakeAt: Self.t0.addingTimeInterval(90.5))
            created.lastError = "none yet"
            try await store.create(created, events: [Self.event(.started)])
            for reopened in [store, try await backend.make(directory)] {
                let read = try #require(try await reopened.instance("s1"))
                #expect(read.id == "s1" && read.name == "test-saga" && read.status == .running)
                #expect(read.state == created.state && read.version == 1 && read.lastError == "none yet")
                #expect(abs(try #require(read.wakeAt).timeIntervalSince(Self.t0.addingTimeInterval(90.5))) < 0.001)
                #expect(try await reopened.history("s1").map(\.kind) == [.started])
            }
            #expect(try await store.instance("unknown") == nil)
            #expect(try await store.history("unknown").isEmpty)
        }
    }

    @Test("creating an existing id throws duplicate and changes nothing", arguments: SagaStoreBackend.all)
    func duplicateCreate(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            try await store.create(Self.instance("s1"), events: [Self.event(.started)])
            var other = Self.instance("s1")
            other.state = Data(#"{"n":2}"#.utf8)
            let error = await #expect(throws: SagaError.self) {
                try await store.create(other, events: [Self.event(.note)])
            }
            #expect(error?.kind == .duplicate)
            #expect(try await store.instance("s1")?.state == Data(#"{"n":1}"#.utf8))
            #expect(try await store.history("s1").map(\.kind) == [.started])
        }
    }

    @Test("update needs the stored version, bumps it and appends events in order", arguments: SagaStoreBackend.all)
    func updateVersions(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            var instance = Self.instance("s1")
            try await store.create(instance, events: [Self.event(.started)])
            instance.step = 1
            instance.state = Data(#"{"n":5}"#.utf8)
            try await store.update(
                instance, expectedVersion: 1,
                events: [Self.event(.completed, output: instance.state), Self.event(.started, step: 1)])
            let read = try #require(try await store.instance("s1"))
            #expect(read.version == 2 && read.step == 1 && read.state == instance.state)

            instance.step = 7
            let stale = await #expect(throws: SagaError.self) {
                try await store.update(instance, expectedVersion: 1, events: [Self.event(.note)])
            }
            #expect(stale?.kind == .conflict)
            #expect(try await store.instance("s1")?.step == 1)
            let history = try await store.history("s1")
            #expect(history.map(\.kind) == [.started, .completed, .started])
            #expect(history.map(\.step) == [0, 0, 1])
            #expect(history[1].output == Data(#"{"n":5}"#.utf8))

            let missing = await #expect(throws: SagaError.self) {
                try await store.update(Self.instance("nope"), expectedVersion: 1, events: [])
            }
            #expect(missing?.kind == .notFound)
        }
    }

    @Test("due returns unfinished sagas whose wake-up passed, earliest first", arguments: SagaStoreBackend.all)
    func dueAndWakeUps(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            try await store.create(Self.instance("now"), events: [])
            try await store.create(Self.instance("later", wakeAt: Self.t0.addingTimeInterval(60)), events: [])
            try await store.create(Self.instance("soon", wakeAt: Self.t0.addingTimeInterval(10)), events: [])
            try await store.create(Self.instance("done", status: .completed), events: [])
            try await store.create(Self.instance("parked", status: .needsAttention), events: [])
            try await store.create(Self.instance("undoing", status: .compensating, created: 1), events: [])

            #expect(Set(try await store.due(at: Self.t0, limit: 10).map(\.id)) == ["now", "undoing"])
            #expect(try await store.due(at: Self.t0.addingTimeInterval(30), limit: 10).map(\.id).suffix(1) == ["soon"])
            #expect(try await store.due(at: Self.t0.addingTimeInterval(60), limit: 10).count == 4)
            #expect(try await store.due(at: Self.t0.addingTimeInterval(60), limit: 1).count == 1)
            let next = try #require(try await store.nextWakeUp())
            #expect(abs(next.timeIntervalSince(Self.t0.addingTimeInterval(10))) < 0.001)

            #expect(try await store.instances(status: .needsAttention, limit: 10).map(\.id) == ["parked"])
            #expect(try await store.instances(status: nil, limit: 100).count == 6)
        }
    }

    @Test("concurrent writes of many sagas all commit; a conflict fails only its own", arguments: SagaStoreBackend.all)
    func concurrentWrites(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            let count = 200
            try await withThrowingTaskGroup(of: Void.self) { group in
                for n in 0..<count {
                    group.addTask { try await store.create(Self.instance("s\(n)"), events: [Self.event(.started)]) }
                }
                try await group.waitForAll()
            }
            let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
                for n in 0..<count {
                    group.addTask {
                        var instance = Self.instance("s\(n)")
                        instance.step = 1
                        // Every tenth uses a stale version and must fail alone.
                        let expected = n % 10 == 0 ? 5 : 1
                        do {
                            try await store.update(
                                instance, expectedVersion: expected, events: [Self.event(.completed)])
                            return (n, true)
                        } catch {
                            return (n, false)
                        }
                    }
                }
                var outcomes: [Int: Bool] = [:]
                for await (n, ok) in group { outcomes[n] = ok }
                return outcomes
            }
            for n in 0..<count {
                #expect(outcomes[n] == (n % 10 != 0))
                let read = try #require(try await store.instance("s\(n)"))
                #expect(read.step == (n % 10 == 0 ? 0 : 1))
                #expect(try await store.history("s\(n)").count == (n % 10 == 0 ? 1 : 2))
            }
        }
    }

    @Test("retryParked and abandon change only a parked saga and note it", arguments: SagaStoreBackend.all)
    func operatorActions(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            try await store.create(Self.instance("parked", status: .needsAttention), events: [])
            try await store.create(Self.instance("parked2", status: .needsAttention), events: [])
            try await store.create(Self.instance("running"), events: [])
            try await store.retryParked("parked", at: Self.t0)
            try await store.abandon("parked2", at: Self.t0)
            #expect(try await store.instance("parked")?.status == .compensating)
            #expect(try await store.instance("parked2")?.status == .abandoned)
            #expect(try await store.history("parked").map(\.kind) == [.note])
            let error = await #expect(throws: SagaError.self) { try await store.abandon("running") }
            #expect(error?.kind == .invalidState)
            let missing = await #expect(throws: SagaError.self) { try await store.retryParked("nope") }
            #expect(missing?.kind == .notFound)
        }
    }

    @Test(
        "a step that throws SagaStepError.final compensates at once, skipping its retries; any other error waits for a retry",
        arguments: SagaStoreBackend.all)
    func finalStepFailure(backend: SagaStoreBackend) async throws {
        try await Self.with(backend) { store, _ in
            struct Order: Codable, Sendable {}
            let wall = ManualWallClock(start: Self.t0)
            let runner = SagaRunner(store: store, wallClock: wall, clock: ManualClock())
            let calls = Locked<[String]>([])
            // Four retries, each after 10 s: a retried step waits on the manual clocks.
            let patient = StepRetryPolicy(maxAttempts: 5, backoff: .constant(.seconds(10)))
            func placeOrder(final: Bool) -> Saga<Order> {
                Saga(
                    "place-order-\(final ? "final" : "transient")",
                    steps: [
                        SagaStep("reserve") { order, _ in
                            calls.withLock { $0.append("reserve") }
                            return order
                        } compensate: { _, _ in
                            calls.withLock { $0.append("release") }
                        },
                        SagaStep("charge", retry: patient) { _, _ in
                            calls.withLock { $0.append("charge") }
                            let declined = TestFailure("payment declined")
                            if final { throw SagaStepError.final(declined) }
                            throw declined
                        },
                    ])
            }

            let compensated = try await runner.start(placeOrder(final: true), id: "final", state: Order())
            #expect(compensated.status == .compensated)
            #expect(compensated.wakeAt == nil)
            #expect(compensated.lastError == "charge: payment declined")
            #expect(calls.value == ["reserve", "charge", "release"])
            let history = try await store.history("final")
            #expect(history.filter { $0.kind == .failed }.map(\.attempt) == [0])
            #expect(history.first { $0.kind == .failed }?.error == "payment declined")
            #expect(history.filter { $0.kind == .compensated }.map(\.stepName) == ["reserve"])
            // Nothing is left to run, however far the clock moves.
            wall.advance(by: .seconds(60))
            #expect(try await runner.runDue() == 0)
            #expect(calls.value == ["reserve", "charge", "release"])

            // The same failure without the wrapper: the step waits 10 s for its next attempt.
            calls.withLock { $0 = [] }
            let waiting = try await runner.start(placeOrder(final: false), id: "transient", state: Order())
            #expect(waiting.status == .running && waiting.step == 1 && waiting.attempt == 1)
            #expect(waiting.wakeAt.map { abs($0.timeIntervalSince(wall.now.addingTimeInterval(10))) < 0.001 } == true)
            #expect(calls.value == ["reserve", "charge"])
            wall.advance(by: .seconds(10))
            #expect(try await runner.runDue() == 1)
            #expect(calls.value == ["reserve", "charge", "charge"])
            #expect(try await store.instance("transient")?.attempt == 2)
        }
    }
}
