//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryStorage
import Hummingbird

/// Adds `/livez` (the process answers) and `/readyz` (the service's database answers) to a router.
///
/// A first version; the service SDK replaces it with scheduled checks and `/startupz`.
func addProbes(to router: Router<BasicRequestContext>, store: SQLiteStore, service: String) {
    struct Status: Codable, Sendable {
        var status: String
        var service: String
        var checks: [String: String]?
    }
    router.get("/livez") { _, _ in
        JSONResponse(status: .ok, value: Status(status: "ok", service: service))
    }
    router.get("/readyz") { _, _ -> JSONResponse<Status> in
        do {
            try await store.ping()
            return JSONResponse(status: .ok, value: Status(status: "ok", service: service, checks: ["database": "ok"]))
        } catch {
            return JSONResponse(
                status: .serviceUnavailable,
                value: Status(status: "unavailable", service: service, checks: ["database": "\(error)"]))
        }
    }
}
