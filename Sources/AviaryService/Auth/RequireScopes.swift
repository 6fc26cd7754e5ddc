//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
public import Hummingbird

/// How a list of required scopes or roles is matched.
public struct RequirementMatch: Sendable, Hashable {
    private enum Wrapped { case all, any }
    private let wrapped: Wrapped
    private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

    /// Every listed value is required.
    public static let all = RequirementMatch(.all)
    /// One of the listed values is enough.
    public static let any = RequirementMatch(.any)

    func isSatisfied(required: [String], granted: Set<String>) -> Bool {
        switch self.wrapped {
        case .all: required.allSatisfy(granted.contains)
        case .any: required.isEmpty || required.contains(where: granted.contains)
        }
    }
}

/// Lets a request through only if its `Principal` has the scopes (OAuth 2.0 `scope`/`scp`).
///
/// Place it after ``JWTAuthMiddleware``, on the route group it guards. Without a principal the
/// answer is `401` (`authentication-required`); with too few scopes `403` (`insufficient-scope`)
/// with `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."` (RFC 6750 §3.1).
///
/// ```swift
/// let orders = app.router.group("orders").add(middleware: JWTAuthMiddleware(authenticator))
/// orders.get(":id") { ... }                                     // any valid token
/// orders.group().add(middleware: RequireScopes(["orders:write"]))
///     .post { request, context in ... }                         // orders:write required
/// ```
public struct RequireScopes<Context: AuthenticatedRequestContext>: RouterMiddleware {
    let scopes: [String]
    let match: RequirementMatch
    let realm: String?

    /// Requires `scopes`: all of them, or one with `match: .any`.
    public init(_ scopes: [String], match: RequirementMatch = .all, realm: String? = nil) {
        self.scopes = scopes
        self.match = match
        self.realm = realm
    }

    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try authorize(context.principal, required: self.scopes, match: self.match, kind: "scope", realm: self.realm) {
            $0.scopes
        }
        return try await next(request, context)
    }
}

/// Lets a request through only if its `Principal` has the roles (the `roles` claim).
///
/// Answers as ``RequireScopes`` does; the challenge's `scope` parameter lists the roles.
///
/// ```swift
/// app.router.group("admin")
///     .add(middleware: JWTAuthMiddleware(authenticator))
///     .add(middleware: RequireRoles(["admin"]))
/// ```
public struct RequireRoles<Context: AuthenticatedRequestContext>: RouterMiddleware {
    let roles: [String]
    let match: RequirementMatch
    let realm: String?

    /// Requires `roles`: all of them, or one with `match: .any`.
    public init(_ roles: [String], match: RequirementMatch = .all, realm: String? = nil) {
        self.roles = roles
        self.match = match
        self.realm = realm
    }

    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        try authorize(context.principal, required: self.roles, match: self.match, kind: "role", realm: self.realm) {
            $0.roles
        }
        return try await next(request, context)
    }
}

/// Throws the `401` or `403` problem unless `principal` has what is required.
private func authorize(
    _ principal: Principal?,
    required: [String],
    match: RequirementMatch,
    kind: String,
    realm: String?,
    granted: (Principal) -> Set<String>
) throws(HTTPProblem) {
    guard let principal else {
        throw AuthenticationError(.missingToken, "this request requires a bearer token").problem(realm: realm)
    }
    guard !match.isSatisfied(required: required, granted: granted(principal)) else { return }
    let joined = required.joined(separator: " ")
    let message =
        match == .all || required.count == 1
        ? "the token lacks a required \(kind) (requires \(joined))"
        : "the token has none of the \(kind)s \(joined)"
    throw AuthenticationError(.insufficientScope, message, requiredScopes: required).problem(realm: realm)
}
