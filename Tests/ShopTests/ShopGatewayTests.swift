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
            // 201 confirmed, or 202 when a step of a loaded machine waits for its retry; the
            // runner confirms it in the background.
            #expect(placed.status == 201 || placed.status == 202, "\(placed.text)")
            let pending = try JSONDecoder().decode(Order.self, from: placed.body)
            var order = pending
            try await ShopMessagingTests.eventually(timeout: .seconds(60), "order \(pending.id) is confirmed") {
                let read = try await shop.send(.GET, "gateway", "/api/orders/\(pending.id)", headers: bearer)
                guard read.status == 200 else { return false }
                order = try JSONDecoder().decode(Order.self, from: read.body)
                return order.status == "confirmed"
            }
            if placed.status == 201 { #expect(order == pending) }
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
