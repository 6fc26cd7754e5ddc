//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import AviaryService
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@Suite("ProblemMiddleware", .timeLimit(.minutes(3)))
struct ProblemMiddlewareTests {
    struct Secret: Error {}
    struct Order: Decodable, Sendable {
        var sku: String
        var quantity: Int
    }

    func app() -> some ApplicationProtocol {
        let router = Router()
        router.add(middleware: ProblemMiddleware(logger: quiet))
        router.get("/problem") { _, _ -> String in
            throw HTTPProblem(
                status: 404, slug: "user-not-found", detail: "no user \"zed\"", extensions: ["user_id": "zed"])
        }
        router.get("/open") { _, _ -> String in
            throw ResilienceError(
                .circuitOpen, "payments: the circuit breaker is open", retryAfter: .milliseconds(1500))
        }
        router.get("/secret") { _, _ -> String in
            throw Secret()
        }
        router.post("/orders") { request, _ -> String in
            let order = try await request.decodeJSON(as: Order.self, limit: 64)
            return "\(order.sku) × \(order.quantity)"
        }
        return Application(router: router)
    }

    func problem(_ response: TestResponse) throws -> [String: Any] {
        #expect(response.headers[.contentType] == "application/problem+json")
        let object = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView))
        return try #require(object as? [String: Any])
    }

    @Test("a thrown HTTPProblem is rendered as it is, with the request path as instance")
    func httpProblem() async throws {
        try await self.app().test(.router) { client in
            try await client.execute(uri: "/problem", method: .get) { response in
                #expect(response.status == .notFound)
                let body = try self.problem(response)
                #expect(body["type"] as? String == "urn:aviary:problem:user-not-found")
                #expect(body["instance"] as? String == "/problem")
                #expect(body["user_id"] as? String == "zed")
            }
        }
    }

    @Test("a resilience rejection is a 503 with Retry-After rounded up to whole seconds")
    func rejection() async throws {
        try await self.app().test(.router) { client in
            try await client.execute(uri: "/open", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] == "2")
                let body = try self.problem(response)
                #expect((body["detail"] as? String)?.contains("circuit breaker is open") == true)
            }
        }
    }

    @Test("an unexpected error is a 500 that does not reveal it")
    func unexpected() async throws {
        try await self.app().test(.router) { client in
            try await client.execute(uri: "/secret", method: .get) { response in
                #expect(response.status == .internalServerError)
                let body = try self.problem(response)
                #expect(body["detail"] as? String == "an unexpected error occurred")
                #expect(String(buffer: response.body).contains("Secret") == false)
            }
        }
    }

    @Test(
        "bad bodies are 400 problems naming the field, and oversized ones 413",
        arguments: [
            (#"{"sku":"a"}"#, 400, "quantity: required field is missing"),
            (#"{"sku":"a","quantity":"two"}"#, 400, "quantity: expected Int"),
            (#"{"sku":"#, 400, "body"),
            (String(repeating: " ", count: 100) + "{}", 413, "larger than 64 bytes"),
        ]
    )
    func badBodies(body: String, status: Int, fragment: String) async throws {
        try await self.app().test(.router) { client in
            try await client.execute(uri: "/orders", method: .post, body: ByteBuffer(string: body)) { response in
                #expect(response.status.code == status)
                let problem = try self.problem(response)
                #expect((problem["detail"] as? String)?.contains(fragment) == true, "\(problem)")
            }
            try await client.execute(
                uri: "/orders", method: .post, body: ByteBuffer(string: #"{"sku":"a","quantity":2}"#)
            ) {
                response in
                #expect(response.status == .ok)
            }
        }
    }
}
