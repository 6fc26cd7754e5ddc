//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Routing configuration: host, query, templates, header rewrites, direct responses, redirects")
struct GatewayRoutingConfigurationTests {
    @Test("the new keys parse into typed values")
    func parses() throws {
        let configuration = try GatewayConfiguration(
            yaml: """
                clusters: {orders: {endpoints: [127.0.0.1:8102]}}
                routes:
                  - match: {path_template: "/api/orders/{id}", host: "*.shop.test", query: {v: "2", debug: {present: true}}}
                    rewrite: {path_template: "/orders/{id}"}
                    cluster: orders
                    request_headers: {add: {x-client: "%{client_ip}"}, set: {x-env: prod}, remove: [Cookie]}
                    response_headers: {remove: [server]}
                  - match: {path: /robots.txt}
                    direct_response: {status: 200, body: "no", content_type: text/plain}
                  - match: {path_prefix: /old}
                    redirect: {status: 308, location: "https://new.shop.test", strip_query: true}
                """)
        let first = configuration.routes[0]
        #expect(first.match.pathTemplate == "/api/orders/{id}")
        #expect(first.match.host == "*.shop.test")
        #expect(first.match.query == ["v": .equals("2"), "debug": .present])
        #expect(first.rewrite?.pathTemplate == "/orders/{id}")
        #expect(first.requestHeaders?.add == [.init(name: "x-client", value: "%{client_ip}")])
        #expect(first.requestHeaders?.set == [.init(name: "x-env", value: "prod")])
        #expect(first.requestHeaders?.remove == ["cookie"])
        #expect(first.responseHeaders?.remove == ["server"])
        #expect(
            configuration.routes[1].destination
                == .directResponse(.init(status: 200, body: "no", contentType: "text/plain")))
        #expect(
            configuration.routes[2].destination
                == .redirect(.init(status: 308, location: "https://new.shop.test", stripQuery: true)))
    }

    @Test("every problem of the new keys is reported at once with its place")
    func problemsAtOnce() {
        let yaml = """
            clusters: {orders: {endpoints: [127.0.0.1:8102]}}
            routes:
              - match: {path_template: "/api/{id}/{id}", host: "shop.test:80", query: {debug: {present: yes}}}
                cluster: orders
              - match: {path_template: "/api/{id}"}
                rewrite: {path_template: "/orders/{order}"}
                cluster: orders
                request_headers: {set: {Content-Length: "1", x-ok: "%{nope}"}, remove: [connection, host]}
                response_headers: {add: {transfer-encoding: chunked}}
              - match: {path_prefix: /x}
                direct_response: {status: 99}
                timeout: 1s
              - match: {path_prefix: /y}
                redirect: {status: 200, location: "ftp://x"}
              - match: {path_prefix: /z}
                redirect: {location: "https://x"}
                cluster: orders
              - match: {path_prefix: /w, path_template: "/w/{a}"}
                rewrite: {path_template: "/{a}"}
                cluster: orders
            """
        #expect(
            problems(yaml) == [
                #"routes[0].match.path_template: variable {id} appears twice, got "/api/{id}/{id}" (gateway.yaml:3)"#,
                #"routes[0].match.host: expected a host name such as api.example.com or *.example.com (no port), got "shop.test:80" (gateway.yaml:3)"#,
                #"routes[0].match.query.debug.present: expected true (leave the parameter out to not test it), got "yes" (gateway.yaml:3)"#,
                #"routes[1].rewrite.path_template: {order} is not a variable of match.path_template (it has {id}), got "/orders/{order}" (gateway.yaml:6)"#,
                #"routes[1].request_headers.set.Content-Length: "content-length" cannot be rewritten: hop-by-hop, framing, host, x-aviary-subject and x-forwarded-client-cert headers are the gateway's (gateway.yaml:8)"#,
                #"routes[1].request_headers.set.x-ok: unknown variable %{nope}, expected one of %{client_ip}, %{request_id}, %{host}, %{method}, got "%{nope}" (gateway.yaml:8)"#,
                #"routes[1].request_headers.remove[0]: "connection" cannot be rewritten: hop-by-hop, framing, host, x-aviary-subject and x-forwarded-client-cert headers are the gateway's (gateway.yaml:8)"#,
                #"routes[1].request_headers.remove[1]: "host" cannot be rewritten: hop-by-hop, framing, host, x-aviary-subject and x-forwarded-client-cert headers are the gateway's (gateway.yaml:8)"#,
                #"routes[1].response_headers.add.transfer-encoding: "transfer-encoding" cannot be rewritten: hop-by-hop, framing, host, x-aviary-subject and x-forwarded-client-cert headers are the gateway's (gateway.yaml:9)"#,
                #"routes[2].direct_response.status: expected a status in 200...599, got "99" (gateway.yaml:11)"#,
                #"routes[2].timeout: needs a cluster: not allowed with direct_response, redirect or compose (gateway.yaml:12)"#,
                #"routes[3].redirect.status: expected 301, 302, 303, 307 or 308, got "200" (gateway.yaml:14)"#,
                #"routes[3].redirect.location: expected an http:// or https:// URL or a path starting with /, without spaces, got "ftp://x" (gateway.yaml:14)"#,
                #"routes[4].redirect: give one of cluster, split, direct_response, redirect or compose, not cluster and redirect (gateway.yaml:16)"#,
                #"routes[5].match.path_template: give one of path, path_prefix or path_template, not path_prefix and path_template (gateway.yaml:18)"#,
            ])
    }

    @Test("the DocC example of advanced routing parses as written")
    func documentationExample() throws {
        let configuration = try GatewayConfiguration(
            yaml: """
                clusters:
                  users:  {endpoints: [127.0.0.1:8101]}
                  orders: {endpoints: [127.0.0.1:8102, 127.0.0.1:8112], load_balancer: ring_hash, hash_on: {header: x-user}}
                  orders-v2: {endpoints: [127.0.0.1:8122]}
                auth:
                  jwt: {issuer: shop-users, audiences: [shop], jwks_url: http://127.0.0.1:8101/.well-known/jwks.json}
                routes:
                  - match: {path_template: "/api/orders/{id}", host: "*.shop.example", query: {view: full, debug: {present: true}}}
                    rewrite: {path_template: "/orders/{id}"}
                    cluster: orders
                    mirror: {cluster: orders-v2, percent: 10%}
                    request_headers: {add: {x-client: "%{client_ip}"}, set: {x-env: prod}, remove: [cookie]}
                    response_headers: {set: {cache-control: no-store}, remove: [server]}
                  - match: {path: /robots.txt}
                    direct_response: {status: 200, body: "User-agent: *\\nDisallow: /\\n", content_type: text/plain}
                  - match: {path_prefix: /, host: old.shop.example}
                    redirect: {status: 308, location: "https://shop.example", strip_query: false}
                  - match: {path_template: "/api/me/{id}"}
                    auth: {require: jwt}
                    compose:
                      parts:
                        - {name: user, cluster: users, path: "/users/{jwt.sub}"}
                        - {name: orders, cluster: orders, path: "/orders?user={id}", timeout: 2s}
                      part_timeout: 500ms
                      on_failure: omit              # or fail
                """)
        #expect(configuration.routes.count == 4)
        #expect(configuration.clusters.first { $0.name == "orders" }?.hashOn == .header("x-user"))
        #expect(configuration.routes[0].mirror == .init(cluster: "orders-v2", ratio: 0.1))
        guard case .compose(let compose) = configuration.routes[3].destination else {
            Issue.record("routes[3] is not a composition")
            return
        }
        #expect(compose.omitFailed)
        #expect(compose.parts.map(\.name) == ["user", "orders"])
        #expect(compose.parts.map(\.timeout) == [nil, .seconds(2)])
        #expect(compose.partTimeout == .milliseconds(500))
    }
}
