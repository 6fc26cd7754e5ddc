//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Foundation

/// Reads an RFC 6750 bearer token from `Authorization` header values, whatever HTTP library
/// holds them (Hummingbird's `HTTPFields`, NIO's `HTTPHeaders`).
///
/// ```swift
/// let token = try BearerToken.parse(authorization: headers["authorization"])   // "abc.def.ghi" or nil
/// ```
public enum BearerToken {
    /// The bearer token of a request's `Authorization` header values; nil when there is none,
    /// or another scheme is used. The scheme is matched without case.
    ///
    /// - Throws: ``AuthenticationError`` (`invalidRequest`) for several `Authorization` headers
    ///   or `Bearer` without a token.
    public static func parse(authorization values: some Collection<String>) throws(AuthenticationError) -> String? {
        guard values.count <= 1 else {
            throw AuthenticationError(.invalidRequest, "the request has more than one Authorization header")
        }
        guard let value = values.first else { return nil }
        let trimmed = value.drop(while: { $0 == " " })
        let scheme = trimmed.prefix(while: { $0 != " " })
        guard scheme.lowercased() == "bearer" else { return nil }
        let token = trimmed.dropFirst(scheme.count).trimmingCharacters(in: [" "])
        guard !token.isEmpty else {
            throw AuthenticationError(.invalidRequest, "the Authorization header has no bearer token")
        }
        return token
    }
}
