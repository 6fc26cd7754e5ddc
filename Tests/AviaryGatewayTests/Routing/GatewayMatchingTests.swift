//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOHTTP1
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Path templates, host and query matching", .timeLimit(.minutes(2)))
struct PathTemplateTests {
    @Test(
        "a template matches whole segments; {name} takes one non-empty segment; a tail takes the rest",
        arguments: [
            ("/api/orders/{id}", "/api/orders/42", true),
            ("/api/orders/{id}", "/api/orders/", false),
            ("/api/orders/{id}", "/api/orders", false),
            ("/api/orders/{id}", "/api/orders/42/items", false),
            ("/api/orders/{id}", "/api/ordersX/42", false),
            ("/api/orders/{id}/items/{item}", "/api/orders/7/items/9", true),
            ("/files/{rest...}", "/files/a/b/c.txt", true),
            ("/files/{rest...}", "/files", true),
            ("/files/**", "/files/a/b", true),
            ("/files/**", "/filesystem", false),
            ("/", "/", true),
            ("/", "/x", false),
        ])
    func matching(template: String, path: String, expected: Bool) throws {
        #expect(try PathTemplate(parsing: template).matches(Substring(path)) == expected)
    }

    @Test("captures are the raw segments, the tail with its slashes")
    func captures() throws {
        let template = try PathTemplate(parsing: "/api/{tenant}/files/{rest...}")
        let values = template.captures("/api/acme/files/a/b%20c")
        #expect(values?["tenant"] == "acme")
        #expect(values?["rest"] == "a/b%20c")
    }

    @Test(
        "invalid templates are refused with a reason",
        arguments: [
            "api/{id}", "/a/{id", "/a/x{id}", "/a/{}", "/a/{id}/{id}", "/a/{rest...}/b", "/a/**/b", "/a/*",
            "/a/{bad-name}",
        ])
    func invalid(template: String) {
        #expect(throws: PathTemplate.Problem.self) { try PathTemplate(parsing: template) }
    }

    static func table(_ routes: [GatewayConfiguration.Route]) -> RouteTable {
        RouteTable(
            GatewayConfiguration(
                clusters: [.init(name: "c", endpoints: [.init(host: "127.0.0.1", port: 1)])], routes: routes))
    }

    @Test("a template rewrite rebuilds the path from the variables and keeps the query")
    func templateRewrite() {
        let table = Self.table([
            .init(
                match: .init(pathTemplate: "/api/orders/{id}/lines/{line}"),
                rewrite: .init(pathTemplate: "/orders/{id}?line={line}"), destination: .cluster("c")),
            .init(
                match: .init(pathTemplate: "/static/{rest...}"), rewrite: .init(pathTemplate: "/v2/{rest}"),
                destination: .cluster("c")),
        ])
        let orders = table.route(method: .GET, uri: "/api/orders/42/lines/3", headers: [:])
        #expect(orders?.index == 0)
        #expect(orders?.rewrite(uri: "/api/orders/42/lines/3") == "/orders/42?line=3")
        let files = table.route(method: .GET, uri: "/static/css/site.css?v=9", headers: [:])
        #expect(files?.rewrite(uri: "/static/css/site.css?v=9") == "/v2/css/site.css?v=9")
    }

    @Test("host matches exactly or by wildcard, without case and port; query by value or presence")
    func hostAndQuery() {
        let table = Self.table([
            .init(match: .init(pathPrefix: "/", host: "api.example.com"), destination: .cluster("c")),
            .init(match: .init(pathPrefix: "/", host: "*.example.com"), destination: .cluster("c")),
            .init(
                match: .init(pathPrefix: "/", query: ["v": .equals("2 x"), "debug": .present]),
                destination: .cluster("c")),
            .init(match: .init(pathPrefix: "/"), destination: .cluster("c")),
        ])
        func index(_ uri: String, host: String? = nil) -> Int? {
            var headers = HTTPHeaders()
            if let host { headers.add(name: "host", value: host) }
            return table.route(method: .GET, uri: uri, headers: headers)?.index
        }
        #expect(index("/", host: "api.example.com") == 0)
        #expect(index("/", host: "API.Example.COM:8080") == 0)
        #expect(index("/", host: "api.example.com.") == 0)
        #expect(index("/", host: "shop.example.com") == 1)
        #expect(index("/", host: "a.b.example.com:443") == 1)
        #expect(index("/", host: "example.com") == 3)
        #expect(index("/", host: "evilexample.com") == 3)
        #expect(index("/", host: "api.example.com.evil") == 3)
        #expect(index("/s?v=2+x&debug") == 2)
        #expect(index("/s?debug=1&v=2%20x") == 2)
        #expect(index("/s?v=2+x") == 3)
        #expect(index("/s?v=3&debug") == 3)
        #expect(index("/s?xdebug&v=2+x") == 3)
    }

    @Test("header rewrites remove, then set, then add; variables are filled per request")
    func headerRewrite() {
        let rewrite = CompiledHeaderRewrite(
            .init(
                add: [.init(name: "x-via", value: "aviary %{method} for %{client_ip} (%{request_id}) 100%%")],
                set: [.init(name: "x-env", value: "prod")], remove: ["cookie", "x-env"]))
        var request = HTTPRequestHead(version: .http1_1, method: .PUT, uri: "/")
        request.headers.add(name: "x-request-id", value: "r-1")
        var headers: HTTPHeaders = ["cookie": "a=1", "x-env": "dev", "x-env": "test", "x-via": "earlier"]
        rewrite.apply(to: &headers, HeaderVariables(clientIP: "10.1.2.3", request: request))
        #expect(headers["cookie"].isEmpty)
        #expect(headers["x-env"] == ["prod"])
        #expect(headers["x-via"] == ["earlier", "aviary PUT for 10.1.2.3 (r-1) 100%"])
        #expect(rewrite.usesVariables)
    }
}
