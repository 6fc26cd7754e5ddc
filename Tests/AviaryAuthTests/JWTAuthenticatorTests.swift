//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryTestSupport
import Foundation
import Testing

@Suite("JWTAuthenticator", .timeLimit(.minutes(1)))
struct JWTAuthenticatorTests {
    enum KeyKind: String, CaseIterable, Sendable {
        case es256, rs256, eddsa

        func key(_ keys: PyJWT.Keys) -> PyJWT.Key {
            switch self {
            case .es256: keys.es256
            case .rs256: keys.rs256
            case .eddsa: keys.eddsa
            }
        }
    }

    func authenticator(
        _ configuration: JWTVerifierConfiguration, clock: AuthWallClock = AuthWallClock(),
        revoked: (any RevokedTokens)? = nil
    ) async throws -> JWTAuthenticator {
        try await JWTAuthenticator(configuration, revokedTokens: revoked, now: clock.source)
    }

    @Test("PyJWT tokens signed with ES256, RS256 and EdDSA verify into a principal", arguments: KeyKind.allCases)
    func validTokens(kind: KeyKind) async throws {
        let keys = try await PyJWT.keys.value
        let key = kind.key(keys)
        let verifier = try await authenticator(
            AuthFixtures.configuration([keys.es256, keys.rs256, keys.eddsa], from: keys))
        let claims = AuthFixtures.claims(["jti": "token-\(kind)", "aud": ["other", "shop"], "tenant": "acme"])
        let token = try await PyJWT.mint(.init(.key(key), claims: claims))
        let principal = try await verifier.authenticate(token)
        #expect(principal.subject == "alice")
        #expect(principal.issuer == AuthFixtures.issuer)
        #expect(principal.audiences == ["other", "shop"])
        #expect(principal.scopes == ["orders:read", "orders:write", "catalog:read"])
        #expect(principal.roles == ["customer"])
        #expect(principal.tokenID == "token-\(kind)")
        #expect(principal.expiresAt == AuthFixtures.start.addingTimeInterval(600))
        #expect(principal.issuedAt == AuthFixtures.start)
        #expect(principal.claims["tenant"] == .string("acme"))
        #expect(principal.hasScopes(["orders:write"]))
        #expect(!principal.hasScopes(["orders:write", "admin"]))
    }

    @Test("a key is bound to its algorithm: an ES256 token with the RSA key's kid is rejected")
    func keyBoundToAlgorithm() async throws {
        let keys = try await PyJWT.keys.value
        let verifier = try await authenticator(AuthFixtures.configuration([keys.es256, keys.rs256], from: keys))
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims(), kid: keys.rs256.kid))
        await AuthFixtures.expectFailure(.algorithmMismatch) { _ = try await verifier.authenticate(token) }
    }

    @Test("HS256 verifies only when an HMAC key is configured and HS256 is allowed")
    func hmacOptIn() async throws {
        let keys = try await PyJWT.keys.value
        let token = try await PyJWT.mint(.init(.hmac(secret: AuthFixtures.hmacSecret), claims: AuthFixtures.claims()))

        var configuration = AuthFixtures.configuration([keys.es256], from: keys)
        await AuthFixtures.expectFailure(.unsupportedAlgorithm, "asymmetric keys only") {
            _ = try await authenticator(configuration).authenticate(token)
        }

        configuration.keys.append(.hmac(secret: Array(AuthFixtures.hmacSecret.utf8)))
        await AuthFixtures.expectFailure(.invalidConfiguration, "an HMAC key without HS256 allowed") {
            _ = try await authenticator(configuration)
        }

        configuration.allowedAlgorithms.insert(.hs256)
        let principal = try await authenticator(configuration).authenticate(token)
        #expect(principal.subject == "alice")

        let wrongSecret = try await PyJWT.mint(
            .init(.hmac(secret: "another-secret-of-at-least-32-bytes!!!"), claims: AuthFixtures.claims()))
        await AuthFixtures.expectFailure(.invalidSignature) {
            _ = try await authenticator(configuration).authenticate(wrongSecret)
        }

        var short = configuration
        short.keys = [.hmac(secret: Array("too-short".utf8))]
        await AuthFixtures.expectFailure(.invalidConfiguration, "a 9-byte secret") {
            _ = try await authenticator(short)
        }
    }

    @Test("unsigned tokens (alg none, in any case) are rejected", arguments: ["none", "None", "NONE", "nOnE"])
    func algNone(alg: String) async throws {
        let keys = try await PyJWT.keys.value
        var configuration = AuthFixtures.configuration([keys.es256], from: keys)
        configuration.keys.append(.hmac(secret: Array(AuthFixtures.hmacSecret.utf8)))
        configuration.allowedAlgorithms.insert(.hs256)
        let verifier = try await authenticator(configuration)
        let withKid = try await PyJWT.mint(
            .init(.unsigned(alg: alg), claims: AuthFixtures.claims(), kid: keys.es256.kid))
        let withoutKid = try await PyJWT.mint(.init(.unsigned(alg: alg), claims: AuthFixtures.claims()))
        await AuthFixtures.expectFailure(.unsupportedAlgorithm) { _ = try await verifier.authenticate(withKid) }
        await AuthFixtures.expectFailure(.unsupportedAlgorithm) { _ = try await verifier.authenticate(withoutKid) }
    }

    @Test("HS256 tokens signed with a public key's PEM as the secret are rejected (algorithm confusion)")
    func algorithmConfusion() async throws {
        let keys = try await PyJWT.keys.value
        for key in [keys.rs256, keys.es256] {
            let token = try await PyJWT.mint(
                .init(.confusion(publicPEM: key.publicPEM), claims: AuthFixtures.claims(), kid: key.kid))
            // Asymmetric keys only: HS256 is not an accepted algorithm at all.
            let strict = try await authenticator(AuthFixtures.configuration([keys.es256, keys.rs256], from: keys))
            await AuthFixtures.expectFailure(.unsupportedAlgorithm, "\(key.kid), default algorithms") {
                _ = try await strict.authenticate(token)
            }
            // HS256 allowed for a real HMAC key: the public key's kid is still bound to its own algorithm.
            var mixed = AuthFixtures.configuration([keys.es256, keys.rs256], from: keys)
            mixed.keys.append(.hmac(secret: Array(AuthFixtures.hmacSecret.utf8), kid: "hmac-1"))
            mixed.allowedAlgorithms.insert(.hs256)
            await AuthFixtures.expectFailure(.algorithmMismatch, "\(key.kid), HS256 allowed") {
                _ = try await authenticator(mixed).authenticate(token)
            }
            // And the PEM is not accepted as the HMAC secret when the HMAC key has no kid either.
            let noKid = try await PyJWT.mint(.init(.confusion(publicPEM: key.publicPEM), claims: AuthFixtures.claims()))
            var anonymous = AuthFixtures.configuration([keys.es256, keys.rs256], from: keys)
            anonymous.keys.append(.hmac(secret: Array(AuthFixtures.hmacSecret.utf8)))
            anonymous.allowedAlgorithms.insert(.hs256)
            await AuthFixtures.expectFailure(.invalidSignature, "\(key.kid), no kid") {
                _ = try await authenticator(anonymous).authenticate(noKid)
            }
        }
    }

    @Test("a tampered payload or signature fails the signature check")
    func tampered() async throws {
        let keys = try await PyJWT.keys.value
        let verifier = try await authenticator(AuthFixtures.configuration([keys.es256, keys.rs256], from: keys))
        for key in [keys.es256, keys.rs256] {
            let token = try await PyJWT.mint(.init(.key(key), claims: AuthFixtures.claims()))
            _ = try await verifier.authenticate(token)
            let parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            let forged = try JSONSerialization.data(
                withJSONObject: AuthFixtures.claims(["sub": "mallory", "roles": ["admin"]]))
            let forgedPayload = forged.base64EncodedString().replacingOccurrences(of: "+", with: "-")
                .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            await AuthFixtures.expectFailure(.invalidSignature, "payload replaced, \(key.kid)") {
                _ = try await verifier.authenticate([parts[0], forgedPayload, parts[2]].joined(separator: "."))
            }
            var signature = Array(parts[2])
            signature[4] = signature[4] == "A" ? "B" : "A"
            await AuthFixtures.expectFailure(.invalidSignature, "signature changed, \(key.kid)") {
                _ = try await verifier.authenticate([parts[0], parts[1], String(signature)].joined(separator: "."))
            }
            await AuthFixtures.expectFailure(.invalidSignature, "signature removed, \(key.kid)") {
                _ = try await verifier.authenticate([parts[0], parts[1], ""].joined(separator: "."))
            }
        }
    }

    @Test("iss and aud must be accepted ones")
    func issuerAndAudience() async throws {
        let keys = try await PyJWT.keys.value
        let verifier = try await authenticator(AuthFixtures.configuration([keys.es256], from: keys))
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["iss": "https://evil.test"])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["iss": NSNull()])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["aud": "billing"])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["aud": ["billing", "reports"]])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["aud": NSNull()])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["aud": ["billing", "shop"]])),
        ])
        await AuthFixtures.expectFailure(.invalidIssuer, "another issuer") {
            _ = try await verifier.authenticate(tokens[0])
        }
        await AuthFixtures.expectFailure(.invalidIssuer, "no issuer") { _ = try await verifier.authenticate(tokens[1]) }
        await AuthFixtures.expectFailure(.invalidAudience, "another audience") {
            _ = try await verifier.authenticate(tokens[2])
        }
        await AuthFixtures.expectFailure(.invalidAudience, "other audiences") {
            _ = try await verifier.authenticate(tokens[3])
        }
        await AuthFixtures.expectFailure(.invalidAudience, "no audience") {
            _ = try await verifier.authenticate(tokens[4])
        }
        #expect(try await verifier.authenticate(tokens[5]).audiences == ["billing", "shop"])
    }

    @Test("exp and nbf are checked against the injected clock with the leeway")
    func timeClaims() async throws {
        let keys = try await PyJWT.keys.value
        let clock = AuthWallClock()
        let verifier = try await authenticator(AuthFixtures.configuration([keys.eddsa], from: keys), clock: clock)
        let t = Int(AuthFixtures.start.timeIntervalSince1970)
        let tokens = try await PyJWT.mint([
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["exp": t - 20])),  // expired, within leeway (30 s)
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["exp": t - 31])),  // expired beyond leeway
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["nbf": t + 20])),  // future, within leeway
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["nbf": t + 300])),  // future, beyond leeway
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["iat": t + 300])),  // issued in the future
            .init(.key(keys.eddsa), claims: AuthFixtures.claims(["exp": NSNull()])),  // no exp
        ])
        _ = try await verifier.authenticate(tokens[0])
        await AuthFixtures.expectFailure(.expired) { _ = try await verifier.authenticate(tokens[1]) }
        _ = try await verifier.authenticate(tokens[2])
        await AuthFixtures.expectFailure(.notYetValid, "nbf") { _ = try await verifier.authenticate(tokens[3]) }
        await AuthFixtures.expectFailure(.notYetValid, "iat") { _ = try await verifier.authenticate(tokens[4]) }
        await AuthFixtures.expectFailure(.invalidClaims, "exp is required") {
            _ = try await verifier.authenticate(tokens[5])
        }

        clock.advance(seconds: 300)
        _ = try await verifier.authenticate(tokens[3])  // nbf reached
        clock.advance(seconds: 600 + 29 - 300)
        let stillValid = try await PyJWT.mint(.init(.key(keys.eddsa), claims: AuthFixtures.claims()))
        _ = try await verifier.authenticate(stillValid)  // exp + 29 s: within the leeway
        clock.advance(seconds: 1)
        await AuthFixtures.expectFailure(.expired, "exp + 30 s") { _ = try await verifier.authenticate(stillValid) }
    }

    @Test("sub is required and claims of the wrong type are rejected")
    func claimTypes() async throws {
        let keys = try await PyJWT.keys.value
        let verifier = try await authenticator(AuthFixtures.configuration([keys.es256], from: keys))
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["sub": NSNull()])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["sub": 42])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["exp": "tomorrow"])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["aud": 7])),
        ])
        for (index, token) in tokens.enumerated() {
            await AuthFixtures.expectFailure(.invalidClaims, "token \(index)") {
                _ = try await verifier.authenticate(token)
            }
        }
    }

    @Test("a kid no key has is rejected; a token without kid uses the only key there is")
    func unknownKid() async throws {
        let keys = try await PyJWT.keys.value
        let one = try await authenticator(AuthFixtures.configuration([keys.es256], from: keys))
        let two = try await authenticator(AuthFixtures.configuration([keys.es256, keys.es256Next], from: keys))
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(), kid: "no-such-key"),
            .init(.key(keys.es256Next), claims: AuthFixtures.claims()),
        ])
        await AuthFixtures.expectFailure(.unknownKey) { _ = try await one.authenticate(tokens[0]) }
        await AuthFixtures.expectFailure(.unknownKey, "ec-2 is not trusted") {
            _ = try await one.authenticate(tokens[1])
        }
        _ = try await two.authenticate(tokens[1])

        // Without kid: the only key is used; with several keys the token must name one.
        let noKid = try await PyJWT.run(
            "import jwt,json,sys; k=json.load(sys.stdin); print(json.dumps(jwt.encode(k['c'], k['p'], algorithm='ES256')))",
            input: ["c": AuthFixtures.claims(), "p": keys.es256.privatePEM])
        let token = try #require(noKid as? String)
        _ = try await one.authenticate(token)
        await AuthFixtures.expectFailure(.unknownKey) { _ = try await two.authenticate(token) }
    }

    @Test("a revoked jti is rejected until its entry expires")
    func revokedJTI() async throws {
        let keys = try await PyJWT.keys.value
        let clock = AuthWallClock()
        let revoked = InMemoryRevokedTokens(margin: .seconds(30), now: clock.source)
        let verifier = try await authenticator(
            AuthFixtures.configuration([keys.es256], from: keys), clock: clock, revoked: revoked)
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["jti": "revoked-1"])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["jti": "kept-1"])),
        ])
        let principal = try await verifier.authenticate(tokens[0])
        revoked.revoke("revoked-1", until: principal.expiresAt)
        await AuthFixtures.expectFailure(.revoked) { _ = try await verifier.authenticate(tokens[0]) }
        _ = try await verifier.authenticate(tokens[1])
        #expect(revoked.count == 1)
        clock.advance(seconds: 600 + 30)
        #expect(revoked.count == 0, "dropped after exp plus the margin")
        #expect(try await revoked.isRevoked("revoked-1") == false)
    }

    @Test("a deny-list that fails rejects the token")
    func failingDenyList() async throws {
        struct Unavailable: RevokedTokens {
            struct Down: Error {}
            func isRevoked(_ tokenID: String) async throws -> Bool { throw Down() }
        }
        let keys = try await PyJWT.keys.value
        let verifier = try await authenticator(
            AuthFixtures.configuration([keys.es256], from: keys), revoked: Unavailable())
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        await AuthFixtures.expectFailure(.revoked) { _ = try await verifier.authenticate(token) }
    }

    @Test("malformed tokens are rejected before any key is used")
    func malformed() async throws {
        let keys = try await PyJWT.keys.value
        var configuration = AuthFixtures.configuration([keys.es256], from: keys)
        configuration.maximumTokenBytes = 2048
        let verifier = try await authenticator(configuration)
        let valid = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        let parts = valid.split(separator: ".").map(String.init)
        let huge = try await PyJWT.mint(
            .init(.key(keys.es256), claims: AuthFixtures.claims(["pad": String(repeating: "x", count: 3000)])))
        let crit = try await PyJWT.mint(
            .init(.key(keys.es256), claims: AuthFixtures.claims(), extraHeaders: ["crit": "exp"]))
        let cases: [(String, String)] = [
            ("garbage", "not a token at all"),
            ("empty", ""),
            ("two segments", parts[0] + "." + parts[1]),
            ("four segments", valid + ".xyz"),
            ("bad base64", parts[0] + ".!!!*." + parts[2]),
            ("padded base64", parts[0] + "=." + parts[1] + "." + parts[2]),
            ("header not JSON", "bm90IGpzb24." + parts[1] + "." + parts[2]),
            ("header a JSON array", "WzFd." + parts[1] + "." + parts[2]),
            ("payload not an object", parts[0] + ".WzFd." + parts[2]),
            ("over the size cap", huge),
            ("crit header", crit),
        ]
        for (name, token) in cases {
            await AuthFixtures.expectFailure(.malformedToken, "\(name)") { _ = try await verifier.authenticate(token) }
        }
        _ = try await verifier.authenticate(valid)
    }

    @Test("a JWKS file is read at creation; unusable sources fail creation with a reason")
    func jwksFile() async throws {
        let keys = try await PyJWT.keys.value
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-jwks-\(UUID()).json").path
        try Data(keys.jwks([keys.rs256]).utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let verifier = try await authenticator(
            JWTVerifierConfiguration(keys: [.jwksFile(path)], issuer: AuthFixtures.issuer, audiences: ["shop"]))
        let token = try await PyJWT.mint(.init(.key(keys.rs256), claims: AuthFixtures.claims()))
        #expect(try await verifier.authenticate(token).subject == "alice")

        let unusable: [(String, JWTVerifierConfiguration.KeySource)] = [
            ("missing file", .jwksFile(path + ".missing")),
            ("not a JWKS", .jwks("{\"kid\": \"x\"}")),
            ("only an encryption key", .jwks(#"{"keys":[{"kty":"EC","use":"enc","crv":"P-256","x":"a","y":"b"}]}"#)),
            ("a symmetric key", .jwks(#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#)),
            ("not http", .jwksURL("file:///etc/passwd")),
        ]
        for (name, source) in unusable {
            await AuthFixtures.expectFailure(.invalidConfiguration, "\(name)") {
                _ = try await authenticator(JWTVerifierConfiguration(keys: [source]))
            }
        }
        await AuthFixtures.expectFailure(.invalidConfiguration, "no keys") {
            _ = try await authenticator(JWTVerifierConfiguration(keys: []))
        }
    }

    @Test("the bearer token is taken from one Authorization header, scheme case-insensitive")
    func bearerParsing() throws {
        #expect(try BearerToken.parse(authorization: ["Bearer abc.def.ghi"]) == "abc.def.ghi")
        #expect(try BearerToken.parse(authorization: ["bearer  abc "]) == "abc")
        #expect(try BearerToken.parse(authorization: ["Basic dXNlcjpwYXNz"]) == nil)
        #expect(try BearerToken.parse(authorization: [String]()) == nil)
        #expect(throws: AuthenticationError.self) { try BearerToken.parse(authorization: ["Bearer "]) }
        #expect(throws: AuthenticationError.self) {
            try BearerToken.parse(authorization: ["Bearer a.b.c", "Bearer d.e.f"])
        }
    }
}
