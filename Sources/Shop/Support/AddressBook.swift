//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization

/// Where each Shop service listens, filled in as servers start (ports may be ephemeral).
///
/// The simplest discovery there is: one process, one table. The discovery module replaces it
/// with a registry; callers look an endpoint up per call, so a restarted service is found again.
public final class AddressBook: Sendable {
    private let entries = Mutex<[String: Endpoint]>([:])

    /// An empty book.
    public init() {}

    /// Records where `service` listens.
    public func set(_ service: String, _ endpoint: Endpoint) {
        self.entries.withLock { $0[service] = endpoint }
    }

    /// Where `service` listens, if known.
    public func endpoint(of service: String) -> Endpoint? {
        self.entries.withLock { $0[service] }
    }

    /// Where `service` listens.
    ///
    /// - Throws: `AviaryError(.unavailable)` when the service has not started.
    public func require(_ service: String) throws -> Endpoint {
        guard let endpoint = self.endpoint(of: service) else {
            throw AviaryError(.unavailable, "\(service) has no known address yet")
        }
        return endpoint
    }
}
