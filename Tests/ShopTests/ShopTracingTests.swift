//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Foundation
import NIOHTTP1
import Testing

@testable import Shop

@Suite("Shop tracing", .timeLimit(.minutes(2)))
struct ShopTracingTests {
    static let traceID = "0af7651916cd43dd8448eb211c80319c"
    static let callerSpanID = "b7ad6b7169203331"

    @Test(
        "placing an order is one trace through orders, users, inventory, payments, their databases and the event's consumer"
    )
    func orderTrace() async throws {
        let receiver = OTLPReceiver()
        try await receiver.run { collector in
            try await withShop(collector: collector) { shop in
                let reply = try await shop.send(
                    .POST, "orders", "/orders", json: ShopTests.order,
                    headers: [("traceparent", "00-\(Self.traceID)-\(Self.callerSpanID)-01")])
                #expect(reply.status == 201)
                // orders, its two client calls, users, payments, and a database span per service; then
                // notifications consuming the order's event, which carries the trace context.
                let deadline = ContinuousClock.now.advanced(by: .seconds(20))
                while ContinuousClock.now < deadline {
                    let spans = receiver.spans(inTrace: Self.traceID)
                    if spans.count >= 8, spans.contains(where: { $0.service == "notifications" }) { break }
                    await Task.yield()
                }
            }
        }
        let spans = receiver.spans(inTrace: Self.traceID)
        #expect(
            Set(spans.map(\.service)) == ["orders", "users", "inventory", "payments", "notifications"], "\(spans)")
        let ordersServer = try #require(spans.first { $0.service == "orders" && $0.kind == 2 }, "\(spans)")
        #expect(ordersServer.parentSpanID == Self.callerSpanID)
        #expect(ordersServer.name == "POST /orders")
        // The consumer's span continues the producer's trace, under the request that placed the order.
        let consumer = try #require(spans.first { $0.service == "notifications" && $0.kind == 5 }, "\(spans)")
        #expect(consumer.parentSpanID == ordersServer.spanID)
        for callee in ["users", "inventory", "payments"] {
            let server = try #require(spans.first { $0.service == callee && $0.kind == 2 }, "\(callee): \(spans)")
            let client = try #require(spans.first { $0.spanID == server.parentSpanID }, "\(callee)'s caller")
            #expect(client.service == "orders" && client.kind == 3)
            #expect(client.parentSpanID == ordersServer.spanID)
            #expect(
                spans.contains {
                    $0.service == callee && $0.parentSpanID == server.spanID
                        && $0.attributes["db.system.name"] == "sqlite"
                },
                "\(callee) has a database span under its server span")
        }
        #expect(
            spans.contains {
                $0.service == "orders" && $0.parentSpanID == ordersServer.spanID && $0.kind == 3
                    && $0.attributes["db.system.name"] == "sqlite"
            })
    }
}
