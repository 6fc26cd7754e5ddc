//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// Whether ``JWTAuthMiddleware`` requires a token.
public struct AuthenticationMode: Sendable, Hashable {
    private enum Wrapped { case required, optional }
    private let wrapped: Wrapped
    private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

    /// Requests without a bearer token are `401`.
    public static let required = AuthenticationMode(.required)
    /// Requests without a bearer token continue with no principal; invalid tokens are still `401`.
    public static let optional = AuthenticationMode(.optional)
}
