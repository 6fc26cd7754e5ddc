//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import Foundation
import JWTKit

/// Issues ES256 access tokens and publishes the public key as a JWKS: the identity-provider side
/// of ``JWTAuthenticator``, for a service that logs users in (Shop's users service).
///
/// Each token carries `iss`, `aud`, `sub`, `iat`, `exp`, a fresh `jti`, `scope` (space separated)
/// and `roles`, plus any extra claims, and a `kid` header naming the key.
///
/// ```swift
/// let issuer = try JWTIssuer(privateKeyPEM: pem, keyID: "users-1", issuer: "shop-users", audience: "shop")
/// router.get("/.well-known/jwks.json") { _, _ in Response(status: .ok, headers: [.contentType: "application/json"],
///                                                          body: .init(byteBuffer: ByteBuffer(string: issuer.jwks))) }
/// router.post("/login") { request, _ in
///     let user = try await users.check(request)
///     return try await issuer.issue(subject: user.id, scopes: ["orders:write", "payments:write"])
/// }
/// ```
public struct JWTIssuer: Sendable {
    /// The `kid` of the signing key.
    public let keyID: String
    /// The `iss` of issued tokens.
    public let issuer: String
    /// The `aud` of issued tokens.
    public let audience: String
    /// How long an issued token is valid.
    public let lifetime: Duration
    /// The public key set, as JSON, to serve at `/.well-known/jwks.json`.
    public let jwks: String
    /// The private key as PEM, to keep it across restarts (a secret: never log it).
    public let privateKeyPEM: String
    private let keys: JWTKeyCollection
    private let now: @Sendable () -> Date

    /// Creates an issuer with a new P-256 key; tokens it issues stop verifying when the process
    /// ends (pass a stored ``privateKeyPEM`` to the other initializer to keep them).
    ///
    /// - Throws: ``AuthenticationError`` (`invalidConfiguration`) if the key cannot be published.
    public init(
        keyID: String, issuer: String, audience: String, lifetime: Duration = .seconds(900),
        now: @escaping @Sendable () -> Date = { Date() }
    ) async throws(AuthenticationError) {
        try await self.init(
            key: ES256PrivateKey(), keyID: keyID, issuer: issuer, audience: audience, lifetime: lifetime, now: now)
    }

    /// Creates an issuer signing with a P-256 private key in PEM form.
    ///
    /// - Throws: ``AuthenticationError`` (`invalidConfiguration`) when the PEM is not a P-256 private key.
    public init(
        privateKeyPEM: String, keyID: String, issuer: String, audience: String, lifetime: Duration = .seconds(900),
        now: @escaping @Sendable () -> Date = { Date() }
    ) async throws(AuthenticationError) {
        let key: ES256PrivateKey
        do {
            key = try ES256PrivateKey(pem: privateKeyPEM)
        } catch {
            throw AuthenticationError(.invalidConfiguration, "the issuer's key is not a P-256 private key in PEM form")
        }
        try await self.init(key: key, keyID: keyID, issuer: issuer, audience: audience, lifetime: lifetime, now: now)
    }

    private init(
        key: ES256PrivateKey, keyID: String, issuer: String, audience: String, lifetime: Duration,
        now: @escaping @Sendable () -> Date
    ) async throws(AuthenticationError) {
        guard let parameters = key.parameters else {
            throw AuthenticationError(.invalidConfiguration, "the issuer's key has no public parameters")
        }
        let jwk: [String: String] = [
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": keyID,
            "x": parameters.x, "y": parameters.y,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: ["keys": [jwk]], options: [.sortedKeys]) else {
            throw AuthenticationError(.invalidConfiguration, "the JWKS could not be encoded")
        }
        self.keys = JWTKeyCollection()
        await self.keys.add(ecdsa: key, kid: JWKIdentifier(string: keyID))
        self.keyID = keyID
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self.jwks = String(decoding: data, as: UTF8.self)
        self.privateKeyPEM = key.pemRepresentation
        self.now = now
    }

    /// Issues a signed token for `subject`.
    ///
    /// - Parameters:
    ///   - subject: the `sub` claim (a user id).
    ///   - scopes: the `scope` claim's scopes.
    ///   - roles: the `roles` claim.
    ///   - claims: extra claims; they do not replace the registered ones above.
    /// - Returns: the compact token, for an `Authorization: Bearer` header.
    public func issue(
        subject: String, scopes: [String] = [], roles: [String] = [], claims: [String: ClaimValue] = [:]
    ) async throws -> String {
        let now = self.now().timeIntervalSince1970.rounded(.down)
        var payload = claims
        payload["iss"] = .string(self.issuer)
        payload["aud"] = .string(self.audience)
        payload["sub"] = .string(subject)
        payload["iat"] = .number(now)
        payload["exp"] = .number(now + self.lifetime.aviarySeconds.rounded(.down))
        payload["jti"] = .string(UUID().uuidString)
        if !scopes.isEmpty { payload["scope"] = .string(scopes.joined(separator: " ")) }
        if !roles.isEmpty { payload["roles"] = .array(roles.map(ClaimValue.string)) }
        return try await self.keys.sign(IssuedClaims(claims: payload), kid: JWKIdentifier(string: self.keyID))
    }
}

/// A payload of arbitrary claims for jwt-kit's signer.
private struct IssuedClaims: JWTPayload {
    var claims: [String: ClaimValue]

    init(claims: [String: ClaimValue]) {
        self.claims = claims
    }

    init(from decoder: any Decoder) throws {
        self.claims = try [String: ClaimValue](from: decoder)
    }

    func encode(to encoder: any Encoder) throws {
        try self.claims.encode(to: encoder)
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
