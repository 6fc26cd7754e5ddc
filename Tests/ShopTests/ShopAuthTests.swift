//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryService
import Foundation
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop identity: users issues tokens, orders and payments require them", .serialized, .timeLimit(.minutes(2)))
struct ShopAuthTests {
    static let order = #"{"userId":"alice","items":[{"sku":"book-1","quantity":1,"unitPriceCents":900}]}"#

    @Test("login issues a short-lived ES256 token whose key the JWKS publishes")
    func login() async throws {
        try await withShop { shop in
            let reply = try await shop.send(
                .POST, "users", "/login", json: #"{"username":"bob","password":"bob-password"}"#)
            #expect(reply.status == 200)
            #expect(reply.headers.first(name: "cache-control") == "no-store")
            let body = try reply.json()
            #expect(body["token_type"] as? String == "Bearer")
            #expect(body["expires_in"] as? Int == 300)
            let token = try #require(body["access_token"] as? String)
            let parts = token.split(separator: ".")
            #expect(parts.count == 3)
            let header = try #require(
                try JSONSerialization.jsonObject(with: Self.base64URL(String(parts[0]))) as? [String: Any])
            #expect(header["alg"] as? String == "ES256")
            let claims = try #require(
                try JSONSerialization.jsonObject(with: Self.base64URL(String(parts[1]))) as? [String: Any])
            #expect(claims["sub"] as? String == "bob")
            #expect(claims["iss"] as? String == "shop-users")
            #expect(claims["scope"] as? String == "orders payments notifications")
            let lifetime = (claims["exp"] as? Double ?? 0) - (claims["iat"] as? Double ?? 0)
            #expect(lifetime == 300)

            let jwks = try await shop.send(.GET, "users", "/.well-known/jwks.json")
            #expect(jwks.status == 200)
            let keys = try #require(try jwks.json()["keys"] as? [[String: Any]])
            #expect(keys.count == 1)
            #expect(keys.first?["kid"] as? String == header["kid"] as? String)
            #expect(keys.first?["crv"] as? String == "P-256")
            #expect(keys.first?["d"] == nil, "the JWKS must not publish the private key")
        }
    }

    @Test("a wrong password and an unknown user get the same 401 problem")
    func badCredentials() async throws {
        try await withShop { shop in
            let wrong = try await shop.send(
                .POST, "users", "/login", json: #"{"username":"alice","password":"guess"}"#)
            let unknown = try await shop.send(
                .POST, "users", "/login", json: #"{"username":"nobody","password":"guess"}"#)
            for reply in [wrong, unknown] {
                #expect(reply.status == 401)
                #expect(try reply.json()["type"] as? String == "urn:aviary:problem:invalid-credentials")
            }
            #expect(wrong.text == unknown.text)
        }
    }

    @Test("without a token, with a forged one, or with another key's token: 401 on orders and payments")
    func missingAndForgedTokens() async throws {
        try await withShop { shop in
            for service in ["orders", "payments"] {
                let path = service == "orders" ? "/orders/ord-1" : "/payments/pay-1"
                let missing = try await shop.send(.GET, service, path, as: nil)
                #expect(missing.status == 401, "\(service)")
                #expect(missing.headers.first(name: "www-authenticate")?.hasPrefix("Bearer") == true)
                #expect(missing.headers.first(name: "content-type") == "application/problem+json")
            }
            // Same kid, same claims, a different key: the signature does not verify.
            let real = try await shop.shop.users.makeIssuer()
            let impostor = try await JWTIssuer(
                keyID: real.keyID, issuer: real.issuer, audience: real.audience, lifetime: .seconds(300))
            let forged = try await impostor.issue(subject: "alice", scopes: ["orders", "payments"])
            let reply = try await shop.send(
                .POST, "orders", "/orders", json: Self.order, headers: [("authorization", "Bearer \(forged)")], as: nil)
            #expect(reply.status == 401)
            #expect(reply.headers.first(name: "www-authenticate")?.contains("invalid_token") == true)
            // Probes and metrics stay open.
            #expect(try await shop.send(.GET, "orders", "/readyz", as: nil).status == 200)
            #expect(try await shop.send(.GET, "payments", "/metrics", as: nil).status == 200)
        }
    }

    @Test("a token without the service's scope is a 403")
    func missingScope() async throws {
        try await withShop { shop in
            let token = try await shop.shop.users.makeIssuer().issue(subject: "alice", scopes: ["payments"])
            let reply = try await shop.send(
                .POST, "orders", "/orders", json: Self.order, headers: [("authorization", "Bearer \(token)")], as: nil)
            #expect(reply.status == 403)
            #expect(reply.headers.first(name: "www-authenticate")?.contains("insufficient_scope") == true)
        }
    }

    @Test("a customer orders and reads only for themselves")
    func ownership() async throws {
        try await withShop { shop in
            let forAlice = try await shop.send(.POST, "orders", "/orders", json: Self.order, as: "bob")
            #expect(forAlice.status == 403)
            #expect(try forAlice.json()["type"] as? String == "urn:aviary:problem:not-your-account")

            let placed = try await shop.send(.POST, "orders", "/orders", json: Self.order, as: "alice")
            #expect(placed.status == 201)
            let order = try JSONDecoder().decode(Order.self, from: placed.body)
            #expect(try await shop.send(.GET, "orders", "/orders/\(order.id)", as: "alice").status == 200)
            #expect(try await shop.send(.GET, "orders", "/orders/\(order.id)", as: "bob").status == 404)
            #expect(
                try await shop.send(.GET, "payments", "/payments/\(order.paymentId ?? "")", as: "bob").status == 404)
        }
    }

    static func base64URL(_ text: String) throws -> Data {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return try #require(Data(base64Encoded: base64))
    }
}
