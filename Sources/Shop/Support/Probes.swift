//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryService
import AviaryStorage

/// The health check every Shop service has: its database gates readiness and startup, checked
/// every five seconds with a one-second timeout.
func databaseCheck(_ store: SQLiteStore) -> HealthCheck {
    HealthCheck("database", probes: [.readiness, .startup], interval: .seconds(5), timeout: .seconds(1)) {
        try await store.ping()
    }
}
