//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryTestSupport
import Foundation
import Testing

@Suite("JWTIssuer", .timeLimit(.minutes(1)))
struct JWTIssuerTests {
    @Test("issued tokens verify with PyJWT against the published JWKS")
    func pyjwtVerifies() async throws {
        let issuer = try await JWTIssuer(keyID: "users-1", issuer: "shop-users", audience: "shop")
        let token = try await issuer.issue(
            subject: "user-42", scopes: ["orders:write", "payments:write"], roles: ["customer"],
            claims: ["email": .string("a@example.com"), "sub": .string("ignored")])
        let script = """
            import json, sys, jwt
            k = json.load(sys.stdin)
            header = jwt.get_unverified_header(k["token"])
            key = jwt.PyJWKSet.from_json(k["jwks"])[header["kid"]]
            claims = jwt.decode(k["token"], key.key, algorithms=["ES256"], audience="shop", issuer="shop-users")
            print(json.dumps({"header": header, "claims": claims}))
            """
        let output = try await PyJWT.run(script, input: ["token": token, "jwks": issuer.jwks])
        let decoded = try #require(output as? [String: [String: Any]])
        let header = try #require(decoded["header"])
        let claims = try #require(decoded["claims"])
        #expect(header["alg"] as? String == "ES256")
        #expect(header["kid"] as? String == "users-1")
        #expect(claims["sub"] as? String == "user-42", "the registered claims win over extra ones")
        #expect(claims["scope"] as? String == "orders:write payments:write")
        #expect(claims["roles"] as? [String] == ["customer"])
        #expect(claims["email"] as? String == "a@example.com")
        let issuedAt = try #require((claims["iat"] as? NSNumber)?.doubleValue)
        let expiry = try #require((claims["exp"] as? NSNumber)?.doubleValue)
        #expect(expiry - issuedAt == 900)
        #expect((claims["jti"] as? String)?.isEmpty == false)
    }

    @Test("a JWTAuthenticator fetching the issuer's JWKS over HTTP accepts its tokens; a reloaded key signs alike")
    func roundTrip() async throws {
        let clock = AuthWallClock()
        let issuer = try await JWTIssuer(
            keyID: "users-1", issuer: "shop-users", audience: "shop", lifetime: .seconds(60), now: clock.source)
        let server = JWKSServer(jwks: issuer.jwks)
        let first = try await issuer.issue(subject: "user-1", scopes: ["orders:write"])
        let reloaded = try await JWTIssuer(
            privateKeyPEM: issuer.privateKeyPEM, keyID: "users-1", issuer: "shop-users", audience: "shop",
            now: clock.source)
        let second = try await reloaded.issue(subject: "user-2")
        #expect(reloaded.jwks == issuer.jwks)
        try await server.run { url in
            let authenticator = try await JWTAuthenticator(
                JWTVerifierConfiguration(
                    keys: [.jwksURL(url)], issuer: "shop-users", audiences: ["shop"], leeway: .seconds(5)),
                now: clock.source)
            let principal = try await authenticator.authenticate(first)
            #expect(principal.subject == "user-1")
            #expect(principal.scopes == ["orders:write"])
            #expect(try await authenticator.authenticate(second).subject == "user-2")
            clock.advance(seconds: 65)
            await AuthFixtures.expectFailure(.expired) { _ = try await authenticator.authenticate(first) }
            #expect(server.fetches == 1)
        }
        await AuthFixtures.expectFailure(.invalidConfiguration) {
            _ = try await JWTIssuer(privateKeyPEM: "not a key", keyID: "k", issuer: "i", audience: "a")
        }
    }
}
