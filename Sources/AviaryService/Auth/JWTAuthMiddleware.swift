//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryAuth
import Foundation
public import HTTPTypes
public import Hummingbird
import Logging

/// Authenticates requests by their `Authorization: Bearer <token>` header and puts the
/// `Principal` on the context.
///
/// A request without a bearer token is `401` (`authentication-required`, `WWW-Authenticate: Bearer`)
/// in ``AuthenticationMode/required`` mode and continues anonymously in
/// ``AuthenticationMode/optional`` mode. A request whose token fails verification is `401`
/// (`invalid-token`, `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`) in
/// both modes: a client that sends a bad token should learn it. Two `Authorization` headers, or
/// `Bearer` without a token, are `400` (`error="invalid_request"`). If no keys can be loaded the
/// answer is `503`. See `AuthenticationError` for the problem types.
///
/// Failures are logged at debug level with their reason, never with the token. Place it after
/// ``ProblemMiddleware`` (which ``AviaryApplication`` installs), and require scopes or roles per
/// route group with ``RequireScopes`` and ``RequireRoles``.
///
/// ```swift
/// var app = AviaryApplication(options, context: AviaryRequestContext.self)
/// let orders = app.router.group("orders").add(middleware: JWTAuthMiddleware(authenticator))
/// orders.get { _, context in try await list(for: context.requirePrincipal().subject) }
/// orders.group().add(middleware: RequireScopes(["orders:write"])).post { request, context in ... }
/// ```
public struct JWTAuthMiddleware<Context: AuthenticatedRequestContext>: RouterMiddleware {
    let authenticator: JWTAuthenticator
    let mode: AuthenticationMode
    let realm: String?

    /// Creates the middleware.
    ///
    /// - Parameters:
    ///   - authenticator: verifies the tokens.
    ///   - mode: whether a token is required.
    ///   - realm: the `realm` of the `WWW-Authenticate` challenges; nil leaves it out.
    public init(_ authenticator: JWTAuthenticator, mode: AuthenticationMode = .required, realm: String? = nil) {
        self.authenticator = authenticator
        self.mode = mode
        self.realm = realm
    }

    /// Verifies the bearer token, if any, and runs the rest of the chain with its principal.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var context = context
        do throws(AuthenticationError) {
            if let token = try Self.bearerToken(in: request.headers) {
                context.principal = try await self.authenticator.authenticate(token)
            } else if self.mode != .optional {
                throw AuthenticationError(.missingToken, "this request requires a bearer token")
            }
        } catch {
            context.logger.debug(
                "request not authenticated",
                metadata: ["aviary.auth.reason": "\(error.code)", "aviary.auth.message": "\(error.message)"])
            throw error.problem(realm: self.realm)
        }
        return try await next(request, context)
    }

    /// The bearer token of a request's `Authorization` header; nil when there is none, or
    /// another scheme is used.
    ///
    /// - Throws: `AuthenticationError` (`invalidRequest`) for several `Authorization` headers
    ///   or `Bearer` without a token.
    public static func bearerToken(in headers: HTTPFields) throws(AuthenticationError) -> String? {
        try BearerToken.parse(authorization: headers[values: .authorization])
    }
}
