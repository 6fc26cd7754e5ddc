//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryService
import AviaryStorage
import Logging

/// The health of one Shop service: its database gates readiness and startup, checked every five
/// seconds with a one-second timeout. Startup is done once the store has opened, since opening
/// runs the migrations.
func makeHealth(service: String, store: SQLiteStore, logger: Logger) -> HealthMonitor {
    let health = HealthMonitor(
        service: service,
        checks: [
            HealthCheck("database", probes: [.readiness, .startup], interval: .seconds(5), timeout: .seconds(1)) {
                try await store.ping()
            }
        ],
        logger: logger
    )
    health.markStarted()
    return health
}
