//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryGateway
import Foundation
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop behind its gateway", .timeLimit(.minutes(2)))
struct ShopGatewayTests {
    @Test("log in, order and read the order through the gateway's /api routes")
    func throughTheGateway() async throws {
        try await withShop { shop in
            try await shop.startGateway()
            let login = try await shop.send(
                .POST, "gateway", "/api/login", json: #"{"username":"alice","password":"alice-password"}"#)
            #expect(login.status == 200)
            let token = try #require(try login.json()["access_token"] as? String)
            let bearer = [("authorization", "Bearer \(token)")]

            let placed = try await shop.send(.POST, "gateway", "/api/orders", json: ShopTests.order, headers: bearer)
            #expect(placed.status == 201, "\(placed.text)")
            let order = try JSONDecoder().decode(Order.self, from: placed.body)
            let read = try await shop.send(.GET, "gateway", "/api/orders/\(order.id)", headers: bearer)
            #expect(read.status == 200)
            #expect(try JSONDecoder().decode(Order.self, from: read.body) == order)
            #expect(
                try await shop.send(.GET, "gateway", "/api/payments/\(order.paymentId ?? "")", headers: bearer).status
                    == 200)
            #expect(try await shop.send(.GET, "gateway", "/api/users/alice").status == 200)
            #expect(try await shop.send(.GET, "gateway", "/.well-known/jwks.json").status == 200)

            // The services still check tokens behind the gateway; unknown paths are the gateway's 404.
            #expect(try await shop.send(.POST, "gateway", "/api/orders", json: ShopTests.order).status == 401)
            let unknown = try await shop.send(.GET, "gateway", "/nope")
            #expect(unknown.status == 404)
            #expect(unknown.headers.first(name: "content-type") == "application/problem+json")
        }
    }
}
