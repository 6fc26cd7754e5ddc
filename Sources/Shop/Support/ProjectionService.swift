//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryEventSourcing
import ServiceLifecycle

/// A projection runner as a lifecycle service: it follows the event store until graceful shutdown.
struct ProjectionService<P: Projection>: Service {
    let runner: ProjectionRunner<P>

    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await self.runner.run()
            }
        } catch is CancellationError {
            // Shut down.
        }
    }
}
