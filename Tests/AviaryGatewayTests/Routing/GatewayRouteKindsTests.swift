//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Gateway routing: host, query, templates, header rewrites, direct responses, redirects", .timeLimit(.minutes(2)))
struct GatewayRouteKindsTests {
    @Test("routes match on host (exact and wildcard), query and path template; a template rewrite reaches the origin")
    func matchingOverSockets() async throws {
        try await withOrigins(["a", "b", "c"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  a: {endpoints: [127.0.0.1:\(origins[0].port)]}
                  b: {endpoints: [127.0.0.1:\(origins[1].port)]}
                  c: {endpoints: [127.0.0.1:\(origins[2].port)]}
                routes:
                  - match: {path_template: "/api/orders/{id}/lines/{line}"}
                    rewrite: {path_template: "/orders/{id}/l/{line}"}
                    cluster: c
                  - match: {path_prefix: /, host: "*.tenants.test"}
                    cluster: b
                  - match: {path_prefix: /, host: admin.test}
                    cluster: c
                  - match: {path_prefix: /search, query: {v: "2", debug: {present: true}}}
                    cluster: b
                  - match: {path_prefix: /}
                    cluster: a
                """
            try await withGateway(yaml) { gateway in
                let order = try await gateway.get("/api/orders/42/lines/7?x=1")
                #expect(order.header("x-origin") == "c")
                #expect(order.text.hasPrefix("GET /orders/42/l/7?x=1\n"))
                #expect(try await gateway.get("/api/orders/42").header("x-origin") == "a")
                #expect(try await gateway.get("/api/orders/42/lines/7/more").header("x-origin") == "a")

                func origin(_ path: String, host: String) async throws -> String? {
                    try await gateway.request("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
                        .header("x-origin")
                }
                #expect(try await origin("/x", host: "acme.tenants.test:8080") == "b")
                #expect(try await origin("/x", host: "tenants.test") == "a")
                #expect(try await origin("/x", host: "ADMIN.test") == "c")
                #expect(try await origin("/x", host: "admin.test.evil") == "a")
                #expect(try await gateway.get("/search?debug&v=2").header("x-origin") == "b")
                #expect(try await gateway.get("/search?v=2").header("x-origin") == "a")
                #expect(try await gateway.get("/search?v=3&debug=1").header("x-origin") == "a")
            }
        }
    }

    @Test("request and response headers are removed, set and added, with %{client_ip} and %{request_id}")
    func headerRewriting() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path_prefix: /}
                    cluster: a
                    request_headers:
                      add: {x-client: "%{client_ip}", x-trace-copy: "id=%{request_id}"}
                      set: {x-env: prod}
                      remove: [cookie]
                    response_headers:
                      set: {x-origin: masked}
                      add: {x-served-by: aviary}
                      remove: [x-origin-connection, x-internal]
                """
            try await withGateway(yaml) { gateway in
                let response = try await gateway.get(
                    "/p?h-x-internal=secret&h-x-public=yes",
                    headers: "Cookie: session=1\r\nX-Env: dev\r\nX-Request-Id: req-9\r\n")
                #expect(response.status == 200)
                let seen = response.text
                #expect(seen.contains("x-client: 127.0.0.1\n"))
                #expect(seen.contains("x-trace-copy: id=req-9\n"))
                #expect(seen.contains("x-env: prod\n"))
                #expect(!seen.contains("x-env: dev"))
                #expect(!seen.contains("cookie:"))
                #expect(response.header("x-origin") == "masked")
                #expect(response.header("x-served-by") == "aviary")
                #expect(response.header("x-origin-connection") == nil)
                #expect(response.header("x-internal") == nil)
                #expect(response.header("x-public") == "yes")
            }
        }
    }

    @Test("top-level header rewrites apply to every route first; a route's own override them")
    func defaultHeaderRewriting() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
                request_headers: {set: {x-env: prod, x-tier: edge}, remove: [cookie]}
                response_headers: {set: {x-frame-options: DENY}, remove: [x-origin-connection]}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path_prefix: /staging}
                    cluster: a
                    request_headers: {set: {x-env: staging}}
                    response_headers: {set: {x-frame-options: SAMEORIGIN}}
                  - match: {path: /robots.txt}
                    direct_response: {status: 200, body: "User-agent: *"}
                  - {match: {path_prefix: /}, cluster: a}
                """
            try await withGateway(yaml) { gateway in
                let plain = try await gateway.get("/p", headers: "Cookie: session=1\r\nX-Env: dev\r\n")
                #expect(plain.text.contains("x-env: prod\n"))
                #expect(plain.text.contains("x-tier: edge\n"))
                #expect(!plain.text.contains("cookie:"))
                #expect(plain.header("x-frame-options") == "DENY")
                #expect(plain.header("x-origin-connection") == nil)

                let staging = try await gateway.get("/staging/p", headers: "Cookie: session=1\r\n")
                #expect(staging.text.contains("x-env: staging\n"))
                #expect(!staging.text.contains("x-env: prod"))
                #expect(staging.text.contains("x-tier: edge\n"))
                #expect(!staging.text.contains("cookie:"))
                #expect(staging.header("x-frame-options") == "SAMEORIGIN")

                let direct = try await gateway.get("/robots.txt")
                #expect(direct.text == "User-agent: *")
                #expect(direct.header("x-frame-options") == "DENY")

                let config = try await gateway.adminJSON("/config")
                let shown = config["response_headers"] as? [String: Any]
                #expect((shown?["set"] as? [String: String])?["x-frame-options"] == "DENY")
            }
        }
        let refused = problems(
            """
            listen: {address: 127.0.0.1:0}
            request_headers: {set: {host: evil.example}}
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            routes: [{match: {path_prefix: /}, cluster: a}]
            """)
        #expect(refused.count == 1)
        #expect(refused.first?.hasPrefix("request_headers.set.host: \"host\" cannot be rewritten") == true)
    }

    @Test("direct responses and redirects are answered by the gateway, with no cluster and the connection kept")
    func directAndRedirect() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path: /robots.txt}
                    direct_response: {status: 200, body: "User-agent: *\\nDisallow: /\\n", content_type: text/plain}
                    response_headers: {add: {cache-control: max-age=60}}
                  - match: {path: /gone}
                    direct_response: {status: 410}
                  - match: {path_prefix: /old, host: old.test}
                    redirect: {status: 308, location: "https://new.test"}
                  - match: {path_template: "/item/{id}"}
                    rewrite: {path_template: "/items/{id}"}
                    redirect: {status: 301, location: "https://shop.test/", strip_query: true}
                  - match: {path: /login}
                    redirect: {status: 302, location: "https://auth.test/start?from=gw"}
                  - match: {path_prefix: /}
                    cluster: a
                """
            try await withGateway(yaml) { gateway in
                let connection = try await gateway.connect()
                try await connection.send("GET /robots.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                let robots = try await connection.readResponse()
                #expect(robots.status == 200)
                #expect(robots.text == "User-agent: *\nDisallow: /\n")
                #expect(robots.header("content-type") == "text/plain")
                #expect(robots.header("cache-control") == "max-age=60")
                #expect(robots.header("x-origin") == nil)
                try await connection.send("HEAD /robots.txt HTTP/1.1\r\nHost: t\r\n\r\n")
                let head = try await connection.readResponse(isHead: true)
                #expect(head.status == 200)
                #expect(head.header("content-length") == "26")
                #expect(head.body.isEmpty)
                try await connection.send("GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
                let gone = try await connection.readResponse()
                #expect(gone.status == 410)
                #expect(gone.header("content-length") == "0")
                try await connection.send("GET /old/page?a=1 HTTP/1.1\r\nHost: old.test\r\n\r\n")
                let moved = try await connection.readResponse()
                #expect(moved.status == 308)
                #expect(moved.header("location") == "https://new.test/old/page?a=1")
                try await connection.send("GET /item/7?utm=x HTTP/1.1\r\nHost: t\r\n\r\n")
                let item = try await connection.readResponse()
                #expect(item.status == 301)
                #expect(item.header("location") == "https://shop.test/items/7")
                try await connection.send("GET /login?next=/cart HTTP/1.1\r\nHost: t\r\n\r\n")
                let login = try await connection.readResponse()
                #expect(login.status == 302)
                #expect(login.header("location") == "https://auth.test/start?from=gw&next=/cart")
                // The same connection still reaches the origin: nothing was left half-read.
                try await connection.send("GET /old/page HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await connection.readResponse().header("x-origin") == "a")
                await connection.close()
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 1)
            }
        }
    }
}
