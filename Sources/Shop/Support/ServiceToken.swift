//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// The token a Shop service sends when it calls another on its own behalf (orders' saga calling
/// inventory and payments, possibly long after the customer's request and token are gone): a
/// token from `users` with subject `orders`, the `service` role and the scopes of the services it
/// calls, minted on first use and again once it is a minute old (tokens live five minutes).
final class ServiceToken: Sendable {
    private let mint: (@Sendable () async throws -> String)?
    private let cached = Mutex<(token: String, at: ContinuousClock.Instant)?>(nil)

    /// A token minted by `mint`; nil sends none (a system run without tokens).
    init(mint: (@Sendable () async throws -> String)?) {
        self.mint = mint
    }

    /// The `authorization` header to send, or none.
    func headers() async throws -> [(String, String)] {
        guard let mint = self.mint else { return [] }
        let now = ContinuousClock.now
        if let cached = self.cached.withLock({ $0 }), cached.at.duration(to: now) < .seconds(60) {
            return [("authorization", "Bearer \(cached.token)")]
        }
        let token = try await mint()
        self.cached.withLock { $0 = (token, now) }
        return [("authorization", "Bearer \(token)")]
    }
}
