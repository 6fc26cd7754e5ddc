//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

/// Who made a request, as a verified token says: set on the request context by
/// `JWTAuthMiddleware` and read by handlers.
///
/// Scopes come from the `scope` claim (space separated, OAuth 2.0) and the `scp` claim (an array
/// or a space-separated string); roles from `roles` (an array or a space-separated string).
///
/// ```swift
/// router.get("/orders") { _, context -> [Order] in
///     let principal = try context.requirePrincipal()
///     return try await orders.list(customer: principal.subject)
/// }
/// ```
public struct Principal: Sendable, Hashable {
    /// The `sub` claim: whom the token is about.
    public var subject: String
    /// The `iss` claim.
    public var issuer: String?
    /// The `aud` claim as a list.
    public var audiences: [String]
    /// The granted scopes.
    public var scopes: Set<String>
    /// The granted roles.
    public var roles: Set<String>
    /// The `exp` claim.
    public var expiresAt: Date?
    /// The `iat` claim.
    public var issuedAt: Date?
    /// The `jti` claim, the token's unique id.
    public var tokenID: String?
    /// Every claim of the token, for custom ones.
    public var claims: [String: ClaimValue]

    /// Creates a principal (the authenticator does; tests of handlers may too).
    public init(
        subject: String,
        issuer: String? = nil,
        audiences: [String] = [],
        scopes: Set<String> = [],
        roles: Set<String> = [],
        expiresAt: Date? = nil,
        issuedAt: Date? = nil,
        tokenID: String? = nil,
        claims: [String: ClaimValue] = [:]
    ) {
        self.subject = subject
        self.issuer = issuer
        self.audiences = audiences
        self.scopes = scopes
        self.roles = roles
        self.expiresAt = expiresAt
        self.issuedAt = issuedAt
        self.tokenID = tokenID
        self.claims = claims
    }

    /// Whether every one of `scopes` was granted.
    public func hasScopes(_ scopes: some Sequence<String>) -> Bool {
        scopes.allSatisfy { self.scopes.contains($0) }
    }

    /// Whether every one of `roles` was granted.
    public func hasRoles(_ roles: some Sequence<String>) -> Bool {
        roles.allSatisfy { self.roles.contains($0) }
    }
}
