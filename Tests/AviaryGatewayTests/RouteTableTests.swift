//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOHTTP1
import Testing

@testable import AviaryGateway

@Suite("Route table", .timeLimit(.minutes(2)))
struct RouteTableTests {
    static func route(prefix: String? = nil, path: String? = nil, rewrite: String?) -> CompiledRoute {
        let configuration = GatewayConfiguration(
            clusters: [.init(name: "c", endpoints: [.init(host: "127.0.0.1", port: 1)])],
            routes: [
                .init(
                    match: .init(pathPrefix: prefix, path: path), rewrite: rewrite.map { .init(pathPrefix: $0) },
                    destination: .cluster("c"))
            ])
        return RouteTable(configuration).routes[0]
    }

    @Test(
        "prefix rewrites keep the rest and the query, without doubling or losing the slash",
        arguments: [
            ("/api/users/", "/users/", "/api/users/42?x=1", "/users/42?x=1"),
            ("/api/orders", "/orders", "/api/orders", "/orders"),
            ("/api/orders", "/orders", "/api/orders/7", "/orders/7"),
            ("/api/orders", "/orders", "/api/orders?page=2", "/orders?page=2"),
            ("/api/", "/", "/api/x", "/x"),
            ("/api", "/", "/api/x", "/x"),
            ("/api", "/", "/api", "/"),
            ("/api", "", "/api/x", "/x"),
            ("/", "/v2/", "/items", "/v2/items"),
        ])
    func rewrite(prefix: String, replacement: String, uri: String, expected: String) {
        #expect(Self.route(prefix: prefix, rewrite: replacement).rewrite(uri: uri) == expected)
    }

    @Test("an exact path rewrites as a whole; no rewrite leaves the target alone")
    func exactAndNone() {
        #expect(Self.route(path: "/health", rewrite: "/readyz").rewrite(uri: "/health?verbose") == "/readyz?verbose")
        #expect(Self.route(prefix: "/a", rewrite: nil).rewrite(uri: "/a/b?c") == "/a/b?c")
    }

    @Test("matching ignores the query and fragment; headers compare exactly, names without case")
    func matching() {
        let configuration = GatewayConfiguration(
            clusters: [.init(name: "c", endpoints: [.init(host: "127.0.0.1", port: 1)])],
            routes: [
                .init(match: .init(path: "/exact"), destination: .cluster("c")),
                .init(
                    match: .init(pathPrefix: "/p", methods: ["GET"], headers: ["x-canary": "always"]),
                    destination: .cluster("c")),
            ])
        let table = RouteTable(configuration)
        #expect(table.route(method: .GET, uri: "/exact?q", headers: [:])?.index == 0)
        #expect(table.route(method: .GET, uri: "/exact#top", headers: [:])?.index == 0)
        #expect(table.route(method: .GET, uri: "/exactly", headers: [:]) == nil)
        #expect(table.route(method: .GET, uri: "/p/1", headers: ["X-Canary": "always"])?.index == 1)
        #expect(table.route(method: .GET, uri: "/p/1", headers: ["X-Canary": "Always"]) == nil)
        #expect(table.route(method: .POST, uri: "/p/1", headers: ["X-Canary": "always"]) == nil)
        #expect(table.route(method: .GET, uri: "/p/1", headers: [:]) == nil)
    }

    @Test("a split draws by cumulative weight and skips zero weights")
    func split() {
        let configuration = GatewayConfiguration(
            clusters: ["a", "b", "c"].map { .init(name: $0, endpoints: [.init(host: "127.0.0.1", port: 1)]) },
            routes: [
                .init(
                    match: .init(pathPrefix: "/"),
                    destination: .split([
                        .init(cluster: "a", weight: 3), .init(cluster: "b", weight: 0), .init(cluster: "c", weight: 1),
                    ]))
            ])
        let route = RouteTable(configuration).routes[0]
        let picks = (0..<4).map { draw in route.pickCluster(GatewayRandom { _ in UInt64(draw) }) }
        #expect(picks == [0, 0, 0, 2])
    }
}
