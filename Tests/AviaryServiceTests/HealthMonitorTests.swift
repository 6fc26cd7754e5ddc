//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import Foundation
import Logging
import ServiceLifecycle
import ServiceLifecycleTestKit
import Synchronization
import Testing

/// A check whose outcome the test decides, run by run.
final class ScriptedCheck: Sendable {
    enum Behaviour: Sendable {
        case pass
        case fail(String)
        /// Waits until cancelled.
        case hang
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let state: Mutex<(behaviour: Behaviour, runs: Int)>

    init(_ behaviour: Behaviour) {
        self.state = Mutex((behaviour, 0))
    }

    var runs: Int { self.state.withLock { $0.runs } }

    func set(_ behaviour: Behaviour) {
        self.state.withLock { $0.behaviour = behaviour }
    }

    func run() async throws {
        let behaviour = self.state.withLock { state -> Behaviour in
            state.runs += 1
            return state.behaviour
        }
        switch behaviour {
        case .pass:
            return
        case .fail(let message):
            throw Failure(description: message)
        case .hang:
            let never = AsyncStream<Void> { _ in }
            for await _ in never {}
            throw CancellationError()
        }
    }
}

/// A logger that drops everything, so that expected check failures do not fill the test output.
let quiet = Logger(label: "aviary.tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// Polls `condition` until it holds, yielding in between; fails the test after 10 seconds.
func eventually(_ what: String, _ condition: () async -> Bool) async {
    let deadline = ContinuousClock.now.advanced(by: .seconds(10))
    while await !condition() {
        if ContinuousClock.now > deadline {
            Issue.record("timed out waiting until \(what)")
            return
        }
        await Task.yield()
    }
}

@Suite("HealthMonitor", .timeLimit(.minutes(3)))
struct HealthMonitorTests {
    @Test("readiness fails while checks are pending and startup is not done, then passes")
    func pendingAndStartup() async {
        let database = ScriptedCheck(.pass)
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("database", probes: [.readiness, .startup]) { try await database.run() }],
            clock: ManualClock(),
            logger: quiet
        )
        var readiness = monitor.report(.readiness)
        #expect(!readiness.passes)
        #expect(readiness.reason == "starting")
        #expect(readiness.checks.map(\.error) == ["pending"])
        #expect(monitor.report(.liveness).passes, "no liveness checks: alive")

        monitor.markStarted()
        readiness = monitor.report(.readiness)
        #expect(!readiness.passes, "started, but the database check has not run yet")
        #expect(readiness.reason == nil)

        await monitor.runChecksOnce()
        #expect(database.runs == 1)
        #expect(monitor.report(.readiness).passes)
        #expect(monitor.report(.startup).passes)
    }

    @Test("a failing check fails only the probes it gates, with its error, and recovers")
    func failingCheck() async {
        let cache = ScriptedCheck(.fail("connection refused"))
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("cache", probes: [.readiness]) { try await cache.run() }],
            clock: ManualClock(),
            logger: quiet
        )
        monitor.markStarted()
        await monitor.runChecksOnce()
        await monitor.runChecksOnce()
        let readiness = monitor.report(.readiness)
        #expect(!readiness.passes)
        #expect(readiness.checks.first?.error == "connection refused")
        #expect(readiness.checks.first?.consecutiveFailures == 2)
        #expect(monitor.report(.liveness).passes)
        #expect(monitor.report(.startup).passes)

        cache.set(.pass)
        await monitor.runChecksOnce()
        #expect(monitor.report(.readiness).passes)
        #expect(monitor.report(.readiness).checks.first?.consecutiveFailures == 0)
    }

    @Test("a hung check times out on the clock, and probes answer at once meanwhile")
    func hungCheckTimesOut() async {
        let clock = ManualClock()
        let database = ScriptedCheck(.hang)
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("database", timeout: .seconds(2)) { try await database.run() }],
            clock: clock,
            logger: quiet
        )
        monitor.markStarted()
        let running = Task { await monitor.runChecksOnce() }
        await clock.waitForSleepers(count: 1)  // the check's timeout
        #expect(monitor.report(.readiness).checks.first?.error == "pending")

        clock.advance(by: .seconds(2))
        await running.value
        let result = monitor.report(.readiness).checks.first
        #expect(result?.status == .fail)
        #expect(result?.error == "timed out after 2.0 seconds")
        #expect(result?.durationSeconds == 2)
    }

    @Test("run() repeats each check after its interval, on the injected clock")
    func schedule() async throws {
        let clock = ManualClock()
        let queue = ScriptedCheck(.fail("down"))
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("queue", interval: .seconds(5)) { try await queue.run() }],
            clock: clock,
            logger: quiet
        )
        let running = Task { try await monitor.run() }
        for run in 1...3 {
            // A failing check counts its runs in the report once each run is recorded.
            await eventually("run \(run) is recorded") {
                monitor.report(.readiness).checks.first?.consecutiveFailures == run
            }
            #expect(queue.runs == run)
            await clock.waitForSleepers(count: 1)  // the pause before the next run
            clock.advance(by: .seconds(5))
        }
        running.cancel()
        try await running.value
        #expect(monitor.isDraining, "the monitor drains when it stops")
    }

    @Test("graceful shutdown drains: readiness fails at once, liveness still passes, run() returns")
    func gracefulShutdownDrains() async throws {
        let clock = ManualClock()
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("database") { try await ScriptedCheck(.pass).run() }],
            clock: clock,
            logger: quiet
        )
        monitor.markStarted()
        try await testGracefulShutdown { trigger in
            let running = Task { try await monitor.run() }
            await eventually("the first run is recorded") { monitor.report(.readiness).passes }
            trigger.triggerGracefulShutdown()
            try await running.value
            let readiness = monitor.report(.readiness)
            #expect(!readiness.passes)
            #expect(readiness.reason == "draining")
            #expect(monitor.report(.liveness).passes)
        }
    }
}
