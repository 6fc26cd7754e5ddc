//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation
public import Hummingbird
import NIOCore

extension HealthMonitor {
    /// The paths of the three probes.
    public static let probePaths: [(path: String, probe: HealthCheck.Probe)] = [
        ("/livez", .liveness), ("/readyz", .readiness), ("/startupz", .startup),
    ]

    /// Adds `GET /livez`, `/readyz` and `/startupz` to `router`.
    ///
    /// Each answers `200` when the probe passes and `503` when it fails, with a JSON
    /// ``HealthReport``. Without `?verbose` each check shows only its name and status; with it,
    /// also its last duration, age, error and consecutive failures. Responses are never cached.
    ///
    /// ```swift
    /// let router = Router()
    /// health.addRoutes(to: router)
    /// ```
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        for (path, probe) in Self.probePaths {
            router.get(RouterPath(path)) { request, _ -> Response in
                self.response(for: probe, verbose: request.uri.queryParameters["verbose"] != nil)
            }
        }
    }

    /// The HTTP response for `probe`; see ``addRoutes(to:)``.
    public func response(for probe: HealthCheck.Probe, verbose: Bool) -> Response {
        var report = self.report(probe)
        if !verbose {
            report.checks = report.checks.map { HealthReport.CheckResult(name: $0.name, status: $0.status) }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = (try? encoder.encode(report)) ?? Data(#"{"status":"fail"}"#.utf8)
        return Response(
            status: report.passes ? .ok : .serviceUnavailable,
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: body))
        )
    }
}
