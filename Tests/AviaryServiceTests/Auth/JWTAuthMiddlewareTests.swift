//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryService
import AviaryTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@Suite("JWTAuthMiddleware", .timeLimit(.minutes(3)))
struct JWTAuthMiddlewareTests {
    struct Problem: Decodable {
        var type: String
        var status: Int
        var detail: String?
        var reason: String?
        var required_scope: String?
    }

    /// An app like a Shop service: `/orders` needs a token, writing needs `orders:write`,
    /// `/admin` needs the `admin` role, `/catalog` takes an optional token.
    static func application(_ authenticator: JWTAuthenticator, logger: Logger = quiet) -> some ApplicationProtocol {
        let router = Router(context: AviaryRequestContext.self)
        router.add(middleware: ProblemMiddleware(logger: logger))
        router.add(middleware: LogWithLogger(logger: logger))
        let orders = router.group("orders").add(middleware: JWTAuthMiddleware(authenticator, realm: "shop"))
        orders.get { _, context -> String in
            "orders of \(try context.requirePrincipal().subject)"
        }
        orders.group("")
            .add(middleware: RequireScopes(["orders:write"], realm: "shop"))
            .post { _, context -> String in "created for \(try context.requirePrincipal().subject)" }
        router.group("admin")
            .add(middleware: JWTAuthMiddleware(authenticator))
            .add(middleware: RequireRoles(["admin", "support"], match: .any))
            .get { _, _ in "admin" }
        router.group("catalog")
            .add(middleware: JWTAuthMiddleware(authenticator, mode: .optional))
            .get { _, context -> String in context.principal.map { "hello \($0.subject)" } ?? "hello anonymous" }
        return Application(router: router)
    }

    /// Gives requests the test's logger, so that the middleware's debug lines are captured.
    struct LogWithLogger<Context: RequestContext>: RouterMiddleware {
        let logger: Logger
        func handle(
            _ request: Request, context: Context, next: (Request, Context) async throws -> Response
        ) async throws -> Response {
            var context = context
            context.logger = self.logger
            return try await next(request, context)
        }
    }

    func verifier(_ keys: PyJWT.Keys) async throws -> JWTAuthenticator {
        try await JWTAuthenticator(AuthFixtures.configuration([keys.es256], from: keys), now: AuthWallClock().source)
    }

    static func problem(_ response: TestResponse) throws -> Problem {
        #expect(response.headers[.contentType] == "application/problem+json")
        return try JSONDecoder().decode(Problem.self, from: Data(response.body.readableBytesView))
    }

    @Test("no token is 401 authentication-required with a bare Bearer challenge; a valid token reaches the handler")
    func missingToken() async throws {
        let keys = try await PyJWT.keys.value
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        try await Self.application(try await verifier(keys)).test(.router) { client in
            try await client.execute(uri: "/orders", method: .get) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate] == "Bearer realm=\"shop\"")
                let problem = try Self.problem(response)
                #expect(problem.type == "urn:aviary:problem:authentication-required")
                #expect(problem.status == 401)
            }
            try await client.execute(uri: "/orders", method: .get, headers: [.authorization: "Basic YTpi"]) {
                #expect($0.status == .unauthorized, "another scheme is no bearer token")
            }
            try await client.execute(uri: "/orders", method: .get, headers: [.authorization: "Bearer \(token)"]) {
                #expect($0.status == .ok)
                #expect(String(buffer: $0.body) == "orders of alice")
            }
        }
    }

    @Test("an invalid token is 401 invalid-token with error=\"invalid_token\" and a description, never the token")
    func invalidToken() async throws {
        let keys = try await PyJWT.keys.value
        let t = Int(AuthFixtures.start.timeIntervalSince1970)
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["exp": t - 3600])),
            .init(.key(keys.rs256), claims: AuthFixtures.claims()),
            .init(.unsigned(alg: "none"), claims: AuthFixtures.claims(), kid: keys.es256.kid),
        ])
        let cases: [(String, String)] = [
            (tokens[0], "expired"), (tokens[1], "unknown_key"), (tokens[2], "unsupported_algorithm"),
            ("garbage", "malformed"),
        ]
        let logs = CapturedLogs()
        try await Self.application(try await verifier(keys), logger: logs.logger()).test(.router) { client in
            for (token, reason) in cases {
                try await client.execute(
                    uri: "/orders", method: .get, headers: [.authorization: "Bearer \(token)"]
                ) { response in
                    #expect(response.status == .unauthorized, "\(reason)")
                    let challenge = try #require(response.headers[.wwwAuthenticate])
                    #expect(challenge.hasPrefix("Bearer realm=\"shop\", error=\"invalid_token\", error_description=\""))
                    #expect(!challenge.contains(token))
                    let problem = try Self.problem(response)
                    #expect(problem.type == "urn:aviary:problem:invalid-token")
                    #expect(problem.reason == reason)
                    #expect(!String(buffer: response.body).contains(token))
                }
            }
        }
        #expect(
            logs.all.contains { $0.contains("aviary.auth.reason=expired") }, "failures are logged with their reason")
        for (token, _) in cases {
            #expect(!logs.all.contains { $0.contains(token) }, "a token was logged")
        }
    }

    @Test("a token without the route's scope is 403 insufficient-scope naming the scope; with it, 200")
    func scopes() async throws {
        let keys = try await PyJWT.keys.value
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["scope": "orders:read", "scp": NSNull()])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["scope": NSNull(), "scp": ["orders:write"]])),
        ])
        try await Self.application(try await verifier(keys)).test(.router) { client in
            try await client.execute(
                uri: "/orders", method: .post, headers: [.authorization: "Bearer \(tokens[0])"]
            ) { response in
                #expect(response.status == .forbidden)
                #expect(
                    response.headers[.wwwAuthenticate]
                        == "Bearer realm=\"shop\", error=\"insufficient_scope\", "
                        + "error_description=\"the token lacks a required scope (requires orders:write)\", "
                        + "scope=\"orders:write\"")
                let problem = try Self.problem(response)
                #expect(problem.type == "urn:aviary:problem:insufficient-scope")
                #expect(problem.status == 403)
                #expect(problem.required_scope == "orders:write")
            }
            try await client.execute(uri: "/orders", method: .get, headers: [.authorization: "Bearer \(tokens[0])"]) {
                #expect($0.status == .ok, "reading needs no scope")
            }
            try await client.execute(uri: "/orders", method: .post, headers: [.authorization: "Bearer \(tokens[1])"]) {
                #expect($0.status == .ok, "scp grants the scope too")
                #expect(String(buffer: $0.body) == "created for alice")
            }
            try await client.execute(uri: "/orders", method: .post) {
                #expect($0.status == .unauthorized, "no token: authentication comes first")
            }
        }
    }

    @Test("roles: one of the listed roles is enough with match .any")
    func roles() async throws {
        let keys = try await PyJWT.keys.value
        let tokens = try await PyJWT.mint([
            .init(.key(keys.es256), claims: AuthFixtures.claims(["roles": ["customer"]])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["roles": ["support"]])),
            .init(.key(keys.es256), claims: AuthFixtures.claims(["roles": "admin ops"])),
        ])
        try await Self.application(try await verifier(keys)).test(.router) { client in
            try await client.execute(uri: "/admin", method: .get, headers: [.authorization: "Bearer \(tokens[0])"]) {
                #expect($0.status == .forbidden)
                #expect($0.headers[.wwwAuthenticate]?.contains("scope=\"admin support\"") == true)
            }
            for token in tokens.dropFirst() {
                try await client.execute(uri: "/admin", method: .get, headers: [.authorization: "Bearer \(token)"]) {
                    #expect($0.status == .ok)
                }
            }
        }
    }

    @Test("optional mode: anonymous requests continue, valid tokens set the principal, invalid ones are 401")
    func optional() async throws {
        let keys = try await PyJWT.keys.value
        let valid = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        try await Self.application(try await verifier(keys)).test(.router) { client in
            try await client.execute(uri: "/catalog", method: .get) {
                #expect($0.status == .ok)
                #expect(String(buffer: $0.body) == "hello anonymous")
            }
            try await client.execute(uri: "/catalog", method: .get, headers: [.authorization: "Bearer \(valid)"]) {
                #expect(String(buffer: $0.body) == "hello alice")
            }
            try await client.execute(uri: "/catalog", method: .get, headers: [.authorization: "Bearer x.y.z"]) {
                #expect($0.status == .unauthorized)
            }
        }
    }

    @Test("an unusable Authorization header is 400 invalid_request")
    func invalidRequest() async throws {
        let keys = try await PyJWT.keys.value
        try await Self.application(try await verifier(keys)).test(.router) { client in
            var twice = HTTPFields()
            twice.append(HTTPField(name: .authorization, value: "Bearer a.b.c"))
            twice.append(HTTPField(name: .authorization, value: "Bearer d.e.f"))
            for headers in [twice, [.authorization: "Bearer"], [.authorization: "Bearer   "]] {
                try await client.execute(uri: "/orders", method: .get, headers: headers) { response in
                    #expect(response.status == .badRequest)
                    #expect(response.headers[.wwwAuthenticate]?.contains("error=\"invalid_request\"") == true)
                    let problem = try Self.problem(response)
                    #expect(problem.type == "urn:aviary:problem:invalid-authorization-request")
                }
            }
        }
    }

    @Test("with no keys available the answer is 503 authentication-unavailable")
    func keysUnavailable() async throws {
        let keys = try await PyJWT.keys.value
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        let server = JWKSServer(jwks: "")
        server.fail(with: .serviceUnavailable)
        try await server.run { url in
            let verifier = try await JWTAuthenticator(
                JWTVerifierConfiguration(keys: [.jwksURL(url)]), logger: quiet)
            try await Self.application(verifier).test(.router) { client in
                try await client.execute(uri: "/orders", method: .get, headers: [.authorization: "Bearer \(token)"]) {
                    response in
                    #expect(response.status == .serviceUnavailable)
                    let problem = try Self.problem(response)
                    #expect(problem.type == "urn:aviary:problem:authentication-unavailable")
                }
            }
        }
    }

    @Test("the principal is set through a live server too, with AviaryApplication's context")
    func live() async throws {
        let keys = try await PyJWT.keys.value
        let token = try await PyJWT.mint(.init(.key(keys.es256), claims: AuthFixtures.claims()))
        let router = Router(context: AviaryRequestContext.self)
        router.add(middleware: ProblemMiddleware(logger: quiet))
        router.add(middleware: JWTAuthMiddleware(try await verifier(keys)))
        router.get("/me") { _, context -> String in try context.requirePrincipal().subject }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            try await client.execute(uri: "/me", method: .get, headers: [.authorization: "Bearer \(token)"]) {
                #expect($0.status == .ok)
                #expect(String(buffer: $0.body) == "alice")
            }
            try await client.execute(uri: "/me", method: .get) {
                #expect($0.status == .unauthorized)
                #expect($0.headers[.wwwAuthenticate] == "Bearer")
            }
        }
    }
}
