//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import AviaryResilience
public import Logging
public import ServiceLifecycle
import Synchronization

/// Runs a service's health checks on their schedules and answers its three probes from the
/// results, with Kubernetes semantics.
///
/// - **liveness** (`/livez`) passes while the liveness checks pass (none by default: a process
///   that can answer is alive).
/// - **startup** (`/startupz`) passes once ``markStarted()`` was called and the startup checks
///   pass.
/// - **readiness** (`/readyz`) passes once started, while not draining, and while the readiness
///   checks pass. A check that has not finished its first run counts as failing (`pending`).
///
/// Probes read the last results and never wait for a check. A run that exceeds its timeout is
/// cancelled and counts as failed; if it ignores cancellation, probes report it as failed from
/// the moment its timeout passed.
///
/// The monitor is a ServiceLifecycle `Service`: run it in the service's `ServiceGroup`. On
/// graceful shutdown it starts draining (readiness fails at once, liveness keeps passing) and
/// stops its checks.
///
/// ```swift
/// let health = HealthMonitor(service: "orders", checks: [
///     HealthCheck("database", probes: [.readiness, .startup], interval: .seconds(5)) {
///         try await store.ping()
///     },
/// ])
/// health.markStarted()   // after migrations
/// let ready = health.report(.readiness).passes
/// ```
public final class HealthMonitor: Service, Sendable {
    /// The service's name, shown in probe bodies.
    public let service: String
    /// The checks, in registration order.
    public let checks: [HealthCheck]

    private struct CheckState {
        var runningSince: MonotonicInstant?
        var lastEnd: MonotonicInstant?
        var lastDuration: Duration?
        var lastError: String?
        var consecutiveFailures = 0
    }

    private struct State {
        var checks: [CheckState]
        var started = false
        var draining = false
    }

    /// How long readiness fails before ``run()`` returns at graceful shutdown, so that load
    /// balancers see `/readyz` fail and stop sending traffic before the server stops accepting.
    public let drainDelay: Duration

    private let state: Mutex<State>
    private let clock: any MonotonicClock
    private let timeouts: [Timeout]
    private let logger: Logger

    /// Creates a monitor.
    ///
    /// - Parameters:
    ///   - service: the service's name.
    ///   - checks: the checks; names should be unique.
    ///   - drainDelay: how long readiness fails at graceful shutdown before ``run()`` returns.
    ///   - clock: the clock for schedules, timeouts and the drain delay; tests pass a `ManualClock`.
    ///   - logger: where check failures and recoveries are logged.
    public init(
        service: String,
        checks: [HealthCheck],
        drainDelay: Duration = .zero,
        clock: any MonotonicClock = SystemClock(),
        logger: Logger = Logger(label: "aviary.service.health")
    ) {
        self.service = service
        self.drainDelay = drainDelay
        self.checks = checks
        self.clock = clock
        self.logger = logger
        self.timeouts = checks.map { Timeout($0.timeout, name: "health_\($0.name)", clock: clock) }
        self.state = Mutex(State(checks: Array(repeating: CheckState(), count: checks.count)))
    }

    /// Records that startup work is done: `/startupz` may pass, and `/readyz` with it.
    public func markStarted() {
        self.state.withLock { $0.started = true }
    }

    /// Starts draining: `/readyz` fails from now on, so that load balancers stop sending traffic.
    public func beginDraining() {
        self.state.withLock { $0.draining = true }
    }

    /// Whether ``beginDraining()`` was called (or graceful shutdown began).
    public var isDraining: Bool {
        self.state.withLock { $0.draining }
    }

    /// Runs every check's loop until graceful shutdown or cancellation; at graceful shutdown it
    /// starts draining and returns after ``drainDelay``.
    public func run() async throws {
        let shutdown: Bool = await withDiscardingTaskGroup { group in
            for index in self.checks.indices {
                group.addTask { await self.loop(index) }
            }
            defer { group.cancelAll() }
            do {
                try await gracefulShutdown()  // returns at graceful shutdown
                return true
            } catch {
                return false  // cancelled
            }
        }
        self.beginDraining()
        if shutdown && self.drainDelay > .zero {
            self.logger.info(
                "draining: readiness fails, the server stops after the drain delay",
                metadata: ["aviary.drain_delay": "\(self.drainDelay)"])
            try? await self.clock.sleep(until: self.clock.now.advanced(by: self.drainDelay), tolerance: nil)
        }
    }

    /// Runs every check once, concurrently, and returns when all have finished; the schedule of
    /// ``run()`` is not affected. Useful at startup and in tests.
    public func runChecksOnce() async {
        await withDiscardingTaskGroup { group in
            for index in self.checks.indices {
                group.addTask { await self.runCheck(index) }
            }
        }
    }

    /// The probe's answer now, from the last results.
    ///
    /// - Parameter probe: the probe to answer.
    /// - Returns: whether it passes, and each of its checks.
    public func report(_ probe: HealthCheck.Probe) -> HealthReport {
        let now = self.clock.now
        let state = self.state.withLock { $0 }
        var results: [HealthReport.CheckResult] = []
        for (index, check) in self.checks.enumerated() where check.probes.contains(probe) {
            results.append(Self.result(of: check, state.checks[index], now: now))
        }
        var reason: String?
        switch probe {
        case .liveness:
            break
        case .startup:
            if !state.started { reason = "starting" }
        case .readiness:
            if state.draining {
                reason = "draining"
            } else if !state.started {
                reason = "starting"
            }
        }
        let passes = reason == nil && results.allSatisfy { $0.status == .pass }
        return HealthReport(
            status: passes ? .pass : .fail, probe: probe, service: self.service, reason: reason, checks: results)
    }

    // MARK: Running checks

    private func loop(_ index: Int) async {
        let interval = self.checks[index].interval
        while !Task.isCancelled {
            await self.runCheck(index)
            do {
                try await self.clock.sleep(until: self.clock.now.advanced(by: interval), tolerance: nil)
            } catch {
                return
            }
        }
    }

    private func runCheck(_ index: Int) async {
        let check = self.checks[index]
        let start = self.clock.now
        let alreadyRunning = self.state.withLock { state -> Bool in
            if state.checks[index].runningSince != nil { return true }
            state.checks[index].runningSince = start
            return false
        }
        if alreadyRunning { return }
        var failure: String?
        do {
            try await self.timeouts[index].run { try await check.body() }
        } catch let error as ResilienceError where error.code == .timedOut {
            failure = "timed out after \(check.timeout)"
        } catch {
            failure = String(describing: error)
        }
        let end = self.clock.now
        let before = self.state.withLock { state -> Int in
            let before = state.checks[index].consecutiveFailures
            state.checks[index].runningSince = nil
            state.checks[index].lastEnd = end
            state.checks[index].lastDuration = start.duration(to: end)
            state.checks[index].lastError = failure
            state.checks[index].consecutiveFailures = failure == nil ? 0 : before + 1
            return before
        }
        if let failure, before == 0 {
            self.logger.warning(
                "health check failed", metadata: ["aviary.check": "\(check.name)", "error.message": "\(failure)"])
        } else if failure == nil, before > 0 {
            self.logger.info(
                "health check recovered", metadata: ["aviary.check": "\(check.name)", "aviary.failures": "\(before)"])
        }
    }

    private static func result(
        of check: HealthCheck, _ state: CheckState, now: MonotonicInstant
    ) -> HealthReport.CheckResult {
        var result = HealthReport.CheckResult(
            name: check.name,
            status: .fail,
            durationSeconds: state.lastDuration?.aviarySeconds,
            ageSeconds: state.lastEnd.map { $0.duration(to: now).aviarySeconds },
            error: nil,
            consecutiveFailures: state.consecutiveFailures
        )
        if let since = state.runningSince, since.duration(to: now) > check.timeout {
            result.error = "timed out after \(check.timeout) (still running)"
        } else if state.lastEnd == nil {
            result.error = "pending"
        } else if let error = state.lastError {
            result.error = error
        } else {
            result.status = .pass
        }
        return result
    }
}
