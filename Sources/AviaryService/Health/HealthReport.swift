//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// What a probe answers: whether it passes, and the last result of each check behind it.
///
/// Rendered as the JSON body of `/livez`, `/readyz` and `/startupz`:
///
/// ```json
/// {"status":"fail","probe":"readiness","service":"orders",
///  "checks":[{"name":"database","status":"fail","error":"timed out after 2 seconds"}]}
/// ```
public struct HealthReport: Sendable, Hashable, Codable {
    /// `pass` or `fail`.
    public var status: Status
    /// The probe answered.
    public var probe: HealthCheck.Probe
    /// The service's name.
    public var service: String
    /// Why the probe fails apart from its checks (`starting`, `draining`), if it does.
    public var reason: String?
    /// The checks behind the probe, in registration order.
    public var checks: [CheckResult]

    /// Whether a probe or a check passes.
    public enum Status: String, Sendable, Hashable, Codable {
        case pass, fail
    }

    /// Whether the probe passes.
    public var passes: Bool { self.status == .pass }

    /// The last result of one check.
    public struct CheckResult: Sendable, Hashable, Codable {
        /// The check's name.
        public var name: String
        /// `pass`, or `fail` (also before the first run has finished).
        public var status: Status
        /// How long the last run took (seconds); nil before the first run.
        public var durationSeconds: Double?
        /// How long ago the last run ended (seconds); nil before the first run.
        public var ageSeconds: Double?
        /// Why the last run failed, or `pending` before the first run.
        public var error: String?
        /// Consecutive failed runs; nil in the brief form (a probe without `?verbose`).
        public var consecutiveFailures: Int?

        /// Creates a result.
        public init(
            name: String,
            status: Status,
            durationSeconds: Double? = nil,
            ageSeconds: Double? = nil,
            error: String? = nil,
            consecutiveFailures: Int? = nil
        ) {
            self.name = name
            self.status = status
            self.durationSeconds = durationSeconds
            self.ageSeconds = ageSeconds
            self.error = error
            self.consecutiveFailures = consecutiveFailures
        }
    }

    /// Creates a report.
    public init(status: Status, probe: HealthCheck.Probe, service: String, reason: String? = nil, checks: [CheckResult])
    {
        self.status = status
        self.probe = probe
        self.service = service
        self.reason = reason
        self.checks = checks
    }
}
