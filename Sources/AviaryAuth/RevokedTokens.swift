//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import Foundation
import Synchronization

/// A deny-list of token ids (`jti`): tokens revoked before they expire, such as on logout.
///
/// ``JWTAuthenticator`` asks it about every verified token that has a `jti`. An implementation
/// backed by a shared store lets every replica see a revocation.
///
/// ```swift
/// let revoked = InMemoryRevokedTokens()
/// let authenticator = try await JWTAuthenticator(configuration, revokedTokens: revoked)
/// // POST /logout
/// revoked.revoke(principal.tokenID!, until: principal.expiresAt!)
/// ```
public protocol RevokedTokens: Sendable {
    /// Whether the token with id `tokenID` is revoked.
    ///
    /// - Throws: when the answer is unknown; the token is then rejected as if revoked.
    func isRevoked(_ tokenID: String) async throws -> Bool
}

/// A deny-list kept in memory, for one process. Entries are dropped once the token has expired
/// (plus a margin covering the verifier's leeway), as an expired token is rejected anyway.
public final class InMemoryRevokedTokens: RevokedTokens {
    private let entries = Mutex<[String: Date]>([:])
    private let margin: TimeInterval
    private let now: @Sendable () -> Date

    /// Creates an empty deny-list.
    ///
    /// - Parameters:
    ///   - margin: how long an entry outlives its token's `exp`; at least the verifier's
    ///     ``JWTVerifierConfiguration/leeway``, during which an expired token is still accepted.
    ///   - now: the wall clock; tests pass their own.
    public init(margin: Duration = .seconds(300), now: @escaping @Sendable () -> Date = { Date() }) {
        self.margin = margin.aviarySeconds
        self.now = now
    }

    /// Revokes the token `tokenID` until `expiry` (its `exp`; one day when unknown) plus the margin.
    public func revoke(_ tokenID: String, until expiry: Date? = nil) {
        let now = self.now()
        let expiry = (expiry ?? now.addingTimeInterval(86_400)).addingTimeInterval(self.margin)
        self.entries.withLock { entries in
            entries[tokenID] = expiry
            entries = entries.filter { $0.value > now }
        }
    }

    /// The number of entries not yet expired.
    public var count: Int {
        let now = self.now()
        return self.entries.withLock { entries in entries.values.count { $0 > now } }
    }

    public func isRevoked(_ tokenID: String) async throws -> Bool {
        let now = self.now()
        return self.entries.withLock { entries in
            guard let expiry = entries[tokenID] else { return false }
            if expiry > now { return true }
            entries[tokenID] = nil
            return false
        }
    }
}
