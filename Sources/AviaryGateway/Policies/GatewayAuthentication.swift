//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import Logging

/// Builds the gateway's JWT verifier from `auth.jwt`: AviaryAuth's ``JWTAuthenticator``, the same
/// one AviaryService's middleware uses.
enum GatewayAuthentication {
    /// The authenticator for `auth`, or nil when `auth.jwt` is not set.
    ///
    /// A JWKS URL is fetched in the background right away, so that the first requests find the
    /// keys cached and are verified on the event loop; the gateway starts even when the identity
    /// provider is down (tokens are then answered `503` until the keys load).
    ///
    /// - Throws: ``GatewayServerError/authenticationUnavailable(_:)`` for an unusable JWKS file.
    static func authenticator(
        _ auth: GatewayConfiguration.Auth, clock: any MonotonicClock, logger: Logger
    ) async throws(GatewayServerError) -> JWTAuthenticator? {
        guard let jwt = auth.jwt else { return nil }
        var keys: [JWTVerifierConfiguration.KeySource] = []
        if let url = jwt.jwksURL { keys.append(.jwksURL(url)) }
        if let file = jwt.jwksFile { keys.append(.jwksFile(file)) }
        let configuration = JWTVerifierConfiguration(
            keys: keys, issuer: jwt.issuer, audiences: Set(jwt.audiences))
        let authenticator: JWTAuthenticator
        do {
            authenticator = try await JWTAuthenticator(configuration, clock: clock, logger: logger)
        } catch {
            throw .authenticationUnavailable("auth.jwt: \(error.message)")
        }
        if jwt.jwksURL != nil {
            Task { await authenticator.refreshKeys() }
        }
        return authenticator
    }
}
