//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryAuth
import HTTPTypes

extension AuthenticationError {
    /// The error as an HTTP problem with its `WWW-Authenticate` challenge (see
    /// ``AviaryAuth/AuthenticationError/rendered(realm:)`` for the statuses and slugs).
    ///
    /// ```swift
    /// throw AuthenticationError(.insufficientScope, "requires orders:write", requiredScopes: ["orders:write"])
    ///     .problem(realm: "shop")
    /// ```
    ///
    /// - Parameter realm: the `realm` of the challenge; nil leaves it out.
    public func problem(realm: String? = nil) -> HTTPProblem {
        let rendered = self.rendered(realm: realm)
        var headers: HTTPFields = [:]
        if let challenge = rendered.wwwAuthenticate { headers[.wwwAuthenticate] = challenge }
        return HTTPProblem(rendered.problem, headers: headers)
    }
}
