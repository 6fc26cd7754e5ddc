//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// One dependency or property a probe depends on, checked on its own schedule.
///
/// A check passes when its closure returns and fails when it throws or runs past
/// ``timeout``. It never runs concurrently with itself. Probe requests read the last result and
/// never wait for a check, so a slow dependency cannot make a probe hang.
///
/// ```swift
/// let database = HealthCheck("database", probes: [.readiness], interval: .seconds(5)) {
///     try await store.ping()
/// }
/// ```
public struct HealthCheck: Sendable {
    /// The probes a check gates.
    public enum Probe: String, Sendable, Hashable, CaseIterable, Codable {
        /// `/livez`: the process works; failing it makes the orchestrator restart the process.
        case liveness
        /// `/readyz`: the service can take traffic now.
        case readiness
        /// `/startupz`: startup work (migrations, caches) is done.
        case startup
    }

    /// The name shown in probe bodies and logs; unique within a service.
    public var name: String
    /// The probes that fail while this check fails.
    public var probes: Set<Probe>
    /// The time between the end of one run and the start of the next (a duration). Positive.
    public var interval: Duration
    /// The longest one run may take before it counts as failed (a duration). Positive.
    public var timeout: Duration
    /// The check itself: return to pass, throw to fail.
    public var body: @Sendable () async throws -> Void

    /// Creates a check.
    ///
    /// - Parameters:
    ///   - name: the name shown in probe bodies.
    ///   - probes: the probes this check gates; readiness by default.
    ///   - interval: the pause between runs.
    ///   - timeout: the longest one run may take.
    ///   - body: return to pass, throw to fail.
    /// - Precondition: `interval` and `timeout` are positive and `probes` is not empty.
    public init(
        _ name: String,
        probes: Set<Probe> = [.readiness],
        interval: Duration = .seconds(10),
        timeout: Duration = .seconds(2),
        body: @escaping @Sendable () async throws -> Void
    ) {
        precondition(interval > .zero, "HealthCheck \(name): interval must be positive, got \(interval)")
        precondition(timeout > .zero, "HealthCheck \(name): timeout must be positive, got \(timeout)")
        precondition(!probes.isEmpty, "HealthCheck \(name): it must gate at least one probe")
        self.name = name
        self.probes = probes
        self.interval = interval
        self.timeout = timeout
        self.body = body
    }
}
