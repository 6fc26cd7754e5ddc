//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryAuth
public import Hummingbird

/// A request context that can carry the verified `Principal`; ``JWTAuthMiddleware`` sets it.
///
/// ```swift
/// struct OrdersContext: AuthenticatedRequestContext {
///     var coreContext: CoreRequestContextStorage
///     var principal: Principal?
///     init(source: ApplicationRequestContextSource) {
///         self.coreContext = .init(source: source)
///     }
/// }
/// ```
public protocol AuthenticatedRequestContext: RequestContext {
    /// Who made the request; nil until authenticated (and for anonymous requests in
    /// ``AuthenticationMode/optional`` mode).
    var principal: Principal? { get set }
}

extension AuthenticatedRequestContext {
    /// The principal, or a `401` problem (`authentication-required`) when there is none; for
    /// handlers behind an optional ``JWTAuthMiddleware`` that need a caller.
    ///
    /// ```swift
    /// let principal = try context.requirePrincipal()
    /// ```
    public func requirePrincipal() throws -> Principal {
        guard let principal = self.principal else {
            throw AuthenticationError(.missingToken, "this request requires a bearer token").problem()
        }
        return principal
    }
}

/// The request context of Aviary services: Hummingbird's basic context plus the `Principal`.
///
/// ```swift
/// var app = AviaryApplication(options, context: AviaryRequestContext.self)
/// app.router.add(middleware: JWTAuthMiddleware(authenticator))
/// ```
public struct AviaryRequestContext: AuthenticatedRequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Principal?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.principal = nil
    }
}
