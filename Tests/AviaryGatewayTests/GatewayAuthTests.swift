//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import AviaryTestSupport
import Foundation
import HTTPTypes
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Tokens come from AviaryAuth's `JWTIssuer` (ES256); its JWKS is served over a real socket by
/// `JWKSServer`, as an identity provider would.
@Suite("Gateway JWT authentication", .timeLimit(.minutes(2)))
struct GatewayAuthTests {
    static func yaml(origin: Int, jwksURL: String) -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters: {a: {endpoints: [127.0.0.1:\(origin)]}}
        auth:
          jwt: {issuer: shop-users, audiences: [shop], jwks_url: "\(jwksURL)"}
        routes:
          - {match: {path_prefix: /orders}, cluster: a, auth: {require: jwt, scopes: [orders:write]}}
          - {match: {path_prefix: /admin}, cluster: a, auth: {require: jwt, claims: {roles: admin}}}
          - {match: {path_prefix: /echo}, cluster: a, auth: {require: jwt}}
          - {match: {path_prefix: /}, cluster: a}
        """
    }

    static func issuer(id: String = "users-1", issuer: String = "shop-users") async throws -> JWTIssuer {
        try await JWTIssuer(keyID: id, issuer: issuer, audience: "shop")
    }

    static func bearer(_ token: String) -> String { "Authorization: Bearer \(token)\r\n" }

    @Test("a valid token with the scope is forwarded with its subject; a client's own x-aviary-subject never is")
    func verifiedAndForwarded() async throws {
        let issuer = try await Self.issuer()
        let token = try await issuer.issue(subject: "alice", scopes: ["orders:write"])
        let server = JWKSServer(jwks: issuer.jwks)
        try await server.run { url in
            try await withOrigins(["a"]) { origins async throws in
                try await withGateway(Self.yaml(origin: origins[0].port, jwksURL: url)) { gateway async throws in
                    let response = try await gateway.get(
                        "/orders/1", headers: Self.bearer(token) + "X-Aviary-Subject: mallory\r\n")
                    #expect(response.status == 200)
                    #expect(response.text.contains("x-aviary-subject: alice\n"))
                    #expect(!response.text.contains("mallory"))
                    // An open route forwards no subject, and not the client's either.
                    let open = try await gateway.get("/open", headers: "X-Aviary-Subject: mallory\r\n")
                    #expect(open.status == 200)
                    #expect(!open.text.contains("x-aviary-subject"))
                    // The keys are cached: more requests fetch nothing more.
                    let fetches = server.fetches
                    for _ in 0..<3 {
                        #expect(try await gateway.get("/orders/2", headers: Self.bearer(token)).status == 200)
                    }
                    #expect(server.fetches == fetches)
                    #expect(fetches >= 1)
                }
            }
        }
    }

    @Test("no token, a bad token, a missing scope or claim: 401 or 403 problems with a Bearer challenge, not forwarded")
    func rejected() async throws {
        let issuer = try await Self.issuer()
        let stranger = try await Self.issuer(id: "users-1", issuer: "someone-else")
        let noScope = try await issuer.issue(subject: "bob", scopes: ["orders:read"])
        let admin = try await issuer.issue(subject: "carol", scopes: ["orders:write"], roles: ["admin"])
        let foreign = try await stranger.issue(subject: "eve", scopes: ["orders:write"])
        var tamperedBytes = Array(try await issuer.issue(subject: "alice", scopes: ["orders:write"]).utf8)
        let flipped = tamperedBytes.count - 5
        tamperedBytes[flipped] = tamperedBytes[flipped] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let tampered = tamperedBytes
        let server = JWKSServer(jwks: issuer.jwks)
        try await server.run { url in
            try await withOrigins(["a"]) { origins async throws in
                try await withGateway(Self.yaml(origin: origins[0].port, jwksURL: url)) { gateway async throws in
                    let missing = try await gateway.get("/orders/1")
                    #expect(missing.status == 401)
                    #expect(missing.header("www-authenticate") == "Bearer")
                    #expect(missing.header("content-type") == "application/problem+json")
                    #expect(missing.text.contains("authentication-required"))

                    for (name, token) in [
                        ("tampered", String(decoding: tampered, as: UTF8.self)), ("another issuer's key", foreign),
                        ("garbage", "not.a.jwt"),
                    ] {
                        let response = try await gateway.get("/orders/1", headers: Self.bearer(token))
                        #expect(response.status == 401, "\(name)")
                        #expect(
                            response.header("www-authenticate")?.contains("error=\"invalid_token\"") == true, "\(name)")
                        #expect(response.text.contains("invalid-token"), "\(name)")
                    }

                    let scope = try await gateway.get("/orders/1", headers: Self.bearer(noScope))
                    #expect(scope.status == 403)
                    #expect(scope.header("www-authenticate")?.contains("error=\"insufficient_scope\"") == true)
                    #expect(scope.header("www-authenticate")?.contains("scope=\"orders:write\"") == true)

                    let notAdmin = try await gateway.get("/admin/x", headers: Self.bearer(noScope))
                    #expect(notAdmin.status == 403)
                    #expect(notAdmin.text.contains("required_claim"))
                    let isAdmin = try await gateway.get("/admin/x", headers: Self.bearer(admin))
                    #expect(isAdmin.status == 200)
                    #expect(isAdmin.text.contains("x-aviary-subject: carol\n"))

                    // Only the admin request reached the origin.
                    #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
                }
            }
        }
    }

    @Test("keys not at hand: the request waits for the JWKS fetch (reads paused) and its body still goes through")
    func verifiedAfterFetch() async throws {
        let issuer = try await Self.issuer()
        let token = try await issuer.issue(subject: "alice")
        let server = JWKSServer(jwks: issuer.jwks)
        server.fail(with: .serviceUnavailable)
        let clock = ManualClock()
        try await server.run { url in
            try await withOrigins(["a"]) { origins async throws in
                let yaml = Self.yaml(origin: origins[0].port, jwksURL: url)
                try await withGateway(yaml, clock: clock) { gateway async throws in
                    // The identity provider is down: fail closed with 503.
                    let down = try await gateway.get("/echo", headers: Self.bearer(token))
                    #expect(down.status == 503)
                    #expect(down.text.contains("authentication-unavailable"))
                    #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)

                    // It is back, and the minimum refresh interval has passed: the next request
                    // fetches the keys off the event loop. A POST with a body and a pipelined GET
                    // arrive in one write while it waits.
                    server.fail(with: .ok)
                    clock.advance(by: .seconds(31))
                    let before = server.fetches
                    let body = String(repeating: "0123456789", count: 2000)
                    let connection = try await gateway.connect()
                    try await connection.send(
                        "POST /echo HTTP/1.1\r\nHost: g\r\n\(Self.bearer(token))Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
                            + "GET /orders/1 HTTP/1.1\r\nHost: g\r\n\(Self.bearer(token))Connection: close\r\n\r\n")
                    let echoed = try await connection.readResponse()
                    #expect(echoed.status == 200)
                    #expect(echoed.text == body)
                    let second = try await connection.readResponse()
                    #expect(second.status == 403, "the token has no orders:write scope")
                    #expect(server.fetches > before)
                    await connection.close()
                }
            }
        }
    }

    @Test("a JWKS file is read at start; an unreadable one stops the start with a clear error")
    func jwksFile() async throws {
        let issuer = try await Self.issuer()
        let token = try await issuer.issue(subject: "dave", scopes: ["orders:write"])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("aviary-gw-\(UUID().uuidString).json")
            .path
        try issuer.jwks.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await withOrigins(["a"]) { origins async throws in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                auth: {jwt: {issuer: shop-users, jwks_file: "\(path)"}}
                routes: [{match: {path_prefix: /}, cluster: a, auth: {require: jwt}}]
                """
            try await withGateway(yaml) { gateway async throws in
                let response = try await gateway.get("/x", headers: Self.bearer(token))
                #expect(response.status == 200)
                #expect(response.text.contains("x-aviary-subject: dave\n"))
            }
            let missing = try GatewayConfiguration(yaml: yaml.replacingOccurrences(of: path, with: path + ".missing"))
            let server = GatewayServer(configuration: missing, logger: quietLogger)
            do {
                try await server.start()
                Issue.record("the gateway started without its JWKS file")
                try await server.stop()
            } catch GatewayServerError.authenticationUnavailable(let message) {
                #expect(message.contains("auth.jwt") && message.contains(".missing"), "\(message)")
            }
        }
    }

    @Test("a route that requires a JWT in a configuration without auth.jwt fails closed with 503, never forwarded")
    func failsClosedWithoutVerifier() async throws {
        try await withOrigins(["a"]) { origins in
            let configuration = GatewayConfiguration(
                listen: .init(address: Endpoint(host: "127.0.0.1", port: 0)),
                clusters: [.init(name: "a", endpoints: [Endpoint(host: "127.0.0.1", port: origins[0].port)])],
                routes: [.init(match: .init(pathPrefix: "/"), destination: .cluster("a"), auth: .init())])
            let server = GatewayServer(configuration: configuration, logger: quietLogger)
            let address = try await server.start()
            let response = try await RawConnection.exchange(
                "GET /x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer a.b.c\r\nConnection: close\r\n\r\n",
                port: address.port ?? 0, group: MultiThreadedEventLoopGroup.singleton)
            try await server.stop()
            #expect(response.status == 503)
            #expect(response.text.contains("authentication-unavailable"))
            #expect(origins[0].state.requests.load(ordering: .relaxed) == 0)
        }
    }
}
