//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@Suite("Probe routes", .timeLimit(.minutes(3)))
struct HealthRoutesTests {
    func json(_ buffer: ByteBuffer) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView))
        return try #require(object as? [String: Any])
    }

    @Test("the probes answer 503 then 200 with a JSON report; ?verbose adds the detail")
    func probes() async throws {
        let database = ScriptedCheck(.fail("no such table"))
        let monitor = HealthMonitor(
            service: "orders",
            checks: [HealthCheck("database", probes: [.readiness, .startup]) { try await database.run() }],
            clock: ManualClock(),
            logger: quiet
        )
        let router = Router()
        monitor.addRoutes(to: router)
        let app = Application(router: router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/livez", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "application/json")
                #expect(response.headers[.cacheControl] == "no-store")
                let body = try self.json(response.body)
                #expect(body["status"] as? String == "pass")
            }
            try await client.execute(uri: "/startupz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try self.json(response.body)
                #expect(body["reason"] as? String == "starting")
            }
            monitor.markStarted()
            await monitor.runChecksOnce()
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try self.json(response.body)
                let checks = try #require(body["checks"] as? [[String: Any]])
                #expect(checks.first?["name"] as? String == "database")
                #expect(checks.first?["status"] as? String == "fail")
                #expect(checks.first?["error"] == nil, "details only with ?verbose")
            }
            try await client.execute(uri: "/readyz?verbose", method: .get) { response in
                let body = try self.json(response.body)
                let checks = try #require(body["checks"] as? [[String: Any]])
                #expect(checks.first?["error"] as? String == "no such table")
                #expect(checks.first?["consecutiveFailures"] as? Int == 1)
                #expect(checks.first?["durationSeconds"] != nil)
            }
            database.set(.pass)
            await monitor.runChecksOnce()
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                let body = try self.json(response.body)
                #expect(body["status"] as? String == "pass")
            }
            monitor.beginDraining()
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try self.json(response.body)
                #expect(body["reason"] as? String == "draining")
            }
        }
    }
}
