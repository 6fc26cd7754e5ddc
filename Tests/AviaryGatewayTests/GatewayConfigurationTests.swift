//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Synchronization
import Testing

@testable import AviaryGateway

/// The configuration of issue 4, verbatim.
let issueExample = """
    listen: {address: 127.0.0.1:8080, admin: 127.0.0.1:9901}
    limits: {max_connections: 10000, max_header_bytes: 65536, max_body_bytes: 10MiB,
             header_timeout: 10s, idle_timeout: 60s}
    clusters:
      users:   {endpoints: [127.0.0.1:8101]}
      orders:
        endpoints: [127.0.0.1:8102, 127.0.0.1:8112]
        load_balancer: least_request            # round_robin | least_request | ring_hash
        health_check: {path: /readyz, interval: 5s, timeout: 1s, healthy: 2, unhealthy: 3}
        outlier_detection: {consecutive_5xx: 5, base_ejection: 30s, max_ejection_percent: 50}
        circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024}
      orders-v2: {endpoints: [127.0.0.1:8122]}
      catalog: {endpoints: [127.0.0.1:8104]}
    auth:
      jwt: {issuer: shop-users, audiences: [shop],
            jwks_url: http://127.0.0.1:8101/.well-known/jwks.json}
    routes:
      - match: {path_prefix: /api/users/}
        rewrite: {path_prefix: /users/}
        cluster: users
      - match: {path_prefix: /api/orders, headers: {x-canary: "always"}}
        rewrite: {path_prefix: /orders}
        cluster: orders-v2
      - match: {path_prefix: /api/orders}
        rewrite: {path_prefix: /orders}
        split: [{cluster: orders, weight: 90}, {cluster: orders-v2, weight: 10}]
        auth: {require: jwt, scopes: [orders]}
        timeout: 2s
        retry: {attempts: 3, per_try_timeout: 500ms, on: [connect-failure, reset, 503], budget: 20%}
        rate_limit: {key: jwt.sub, rate: 10/s, burst: 20}
      - match: {path_prefix: /api/catalog, methods: [GET, HEAD]}
        rewrite: {path_prefix: /catalog}
        cluster: catalog
        cache: {ttl: 30s, stale_if_error: 5m, max_bytes: 64MiB}

    """

func problems(_ yaml: String) -> [String] {
    do {
        _ = try GatewayConfiguration(yaml: yaml, file: "gateway.yaml")
        return []
    } catch {
        return error.problems
    }
}

@Suite("Gateway configuration", .timeLimit(.minutes(2)))
struct GatewayConfigurationTests {
    @Test("the issue's example parses as written, every field typed")
    func issueExampleParses() throws {
        let configuration = try GatewayConfiguration(yaml: issueExample, file: "gateway.yaml")
        #expect(configuration.listen.address == Endpoint(host: "127.0.0.1", port: 8080))
        #expect(configuration.listen.admin == Endpoint(host: "127.0.0.1", port: 9901))
        #expect(
            configuration.limits
                == .init(
                    maxConnections: 10000, maxHeaderBytes: 65536, maxBodyBytes: 10 * 1024 * 1024,
                    headerTimeout: .seconds(10), idleTimeout: .seconds(60)))
        #expect(configuration.clusters.map(\.name) == ["users", "orders", "orders-v2", "catalog"])
        let orders = try #require(configuration.cluster(named: "orders"))
        #expect(orders.endpoints.map(\.description) == ["127.0.0.1:8102", "127.0.0.1:8112"])
        #expect(orders.loadBalancer == .leastRequest)
        #expect(
            orders.healthCheck
                == .init(
                    path: "/readyz", interval: .seconds(5), timeout: .seconds(1), healthyThreshold: 2,
                    unhealthyThreshold: 3))
        #expect(orders.outlierDetection == .init(consecutive5xx: 5, baseEjection: .seconds(30), maxEjectionRatio: 0.5))
        #expect(orders.circuitBreaker == .init(maxConnections: 1024, maxPending: 1024, maxRequests: 1024))
        #expect(configuration.cluster(named: "users")?.loadBalancer == .roundRobin)
        #expect(
            configuration.auth.jwt
                == .init(
                    issuer: "shop-users", audiences: ["shop"], jwksURL: "http://127.0.0.1:8101/.well-known/jwks.json"))

        let routes = configuration.routes
        #expect(routes.count == 4)
        #expect(routes[0].match.pathPrefix == "/api/users/")
        #expect(routes[0].rewrite?.pathPrefix == "/users/")
        #expect(routes[0].destination == .cluster("users"))
        #expect(routes[1].match.headers == ["x-canary": "always"])
        #expect(routes[1].destination == .cluster("orders-v2"))
        #expect(
            routes[2].destination
                == .split([.init(cluster: "orders", weight: 90), .init(cluster: "orders-v2", weight: 10)]))
        #expect(routes[2].auth == .init(require: "jwt", scopes: ["orders"]))
        #expect(routes[2].timeout == .seconds(2))
        #expect(
            routes[2].retry
                == .init(
                    attempts: 3, perTryTimeout: .milliseconds(500), on: [.connectFailure, .reset, .status(503)],
                    budget: 0.2))
        #expect(routes[2].rateLimit == .init(key: "jwt.sub", requests: 10, period: .seconds(1), burst: 20))
        #expect(routes[3].match.methods == ["GET", "HEAD"])
        #expect(routes[3].cache == .init(ttl: .seconds(30), staleIfError: .seconds(300), maxBytes: 64 << 20))
    }

    @Test("every problem is reported at once, one line each with its place and line")
    func everyProblemAtOnce() {
        let yaml =
            issueExample
            .replacingOccurrences(of: "attempts: 3", with: "attempts: three")
            .replacingOccurrences(of: "max_body_bytes: 10MiB", with: "max_body_bytes: ten")
            .replacingOccurrences(of: "load_balancer: least_request", with: "load_balancer: fastest")
            .replacingOccurrences(of: "timeout: 2s", with: "timeout: soon")
        #expect(
            problems(yaml) == [
                #"limits.max_body_bytes: expected a size in bytes such as 65536, 512KiB or 10MiB, got "ten" (gateway.yaml:2)"#,
                #"clusters.orders.load_balancer: expected one of round_robin, least_request, ring_hash, got "fastest" (gateway.yaml:8)"#,
                #"routes[2].timeout: expected a duration such as 500ms, 10s, 5m or 1h, got "soon" (gateway.yaml:28)"#,
                #"routes[2].retry.attempts: expected a positive integer, got "three" (gateway.yaml:29)"#,
            ])
    }

    @Test("unknown keys are errors, at every level")
    func unknownKeys() {
        let yaml = """
            listen: {address: 127.0.0.1:8080, adress: 127.0.0.1:1}
            clusters:
              users: {endpoints: [127.0.0.1:8101], lb: round_robin}
            routes:
              - match: {path_prefix: /, method: GET}
                cluster: users
                retries: 3
            extra: true
            """
        #expect(
            problems(yaml) == [
                "listen.adress: unknown key, expected one of address, admin, tls, http2, max_concurrent_streams (gateway.yaml:1)",
                "clusters.users.lb: unknown key, expected one of endpoints, load_balancer, health_check, "
                    + "outlier_detection, circuit_breaker, connect_timeout, max_idle_connections, hash_on, protocol, discovery, tls (gateway.yaml:3)",
                "routes[0].match.method: unknown key, expected one of path_prefix, path, path_template, methods, headers, "
                    + "host, query (gateway.yaml:5)",
                "routes[0].retries: unknown key, expected one of match, rewrite, cluster, split, direct_response, redirect, "
                    + "compose, auth, timeout, retry, rate_limit, cache, cors, fault, request_headers, response_headers, "
                    + "mirror (gateway.yaml:7)",
                "extra: unknown key, expected one of listen, limits, clusters, auth, routes, access_log, discovery, request_headers, response_headers (gateway.yaml:8)",
            ])
    }

    @Test("routes naming unknown clusters are errors; invalid clusters are reported once")
    func unknownClusters() {
        let yaml = """
            clusters:
              users: {endpoints: [127.0.0.1:8101]}
              broken: {endpoints: [nowhere]}
            routes:
              - match: {path_prefix: /a}
                cluster: usres
              - match: {path_prefix: /b}
                split: [{cluster: users, weight: 1}, {cluster: ghosts, weight: 1}]
              - match: {path_prefix: /c}
                cluster: broken
            """
        #expect(
            problems(yaml) == [
                #"clusters.broken.endpoints[0]: expected host:port with a port in 0...65535, got "nowhere" (gateway.yaml:3)"#,
                #"routes[0].cluster: unknown cluster "usres", expected one of users (gateway.yaml:6)"#,
                #"routes[1].split[1].cluster: unknown cluster "ghosts", expected one of users (gateway.yaml:8)"#,
            ])
    }

    @Test("structural problems: missing destination, both destinations, wrong kinds, auth without jwt")
    func structuralProblems() {
        let yaml = """
            clusters:
              users: {endpoints: []}
              other: {endpoints: [127.0.0.1:1]}
            routes:
              - match: {path_prefix: api}
              - match: {path: /x}
                cluster: other
                split: [{cluster: other, weight: 1}]
              - match: [/x]
                cluster: other
                auth: {require: jwt}
                rate_limit: {key: cookie.x, rate: fast}
                retry: {attempts: 0, on: [teapot]}
            """
        #expect(
            problems(yaml) == [
                "clusters.users.endpoints: expected at least one endpoint (gateway.yaml:2)",
                #"routes[0].match.path_prefix: expected a path starting with /, got "api" (gateway.yaml:5)"#,
                "routes[0].cluster: is missing: expected cluster, split, direct_response, redirect or compose (gateway.yaml:5)",
                "routes[1].split: give one of cluster, split, direct_response, redirect or compose, not cluster and split (gateway.yaml:8)",
                #"routes[2].match: expected a mapping with keys path_prefix, path, path_template, methods, headers, host, query, got a list (gateway.yaml:9)"#,
                "routes[2].auth.require: requires auth.jwt to be configured (gateway.yaml:11)",
                #"routes[2].rate_limit.key: expected client_address, client_ip, client_certificate, jwt.<claim> or header.<name>, got "cookie.x" (gateway.yaml:12)"#,
                #"routes[2].rate_limit.rate: expected a rate such as 10/s, 600/m or 5/500ms, got "fast" (gateway.yaml:12)"#,
                #"routes[2].retry.attempts: expected a positive integer, got "0" (gateway.yaml:13)"#,
                #"routes[2].retry.on[0]: expected connect-failure, reset or a status in 500...599, 408 or 429, got "teapot" (gateway.yaml:13)"#,
            ])
    }

    @Test("policy problems: JWKS source, claims, a claim-keyed limit without auth")
    func policyProblems() {
        let yaml = """
            clusters:
              a: {endpoints: [127.0.0.1:1]}
            auth:
              jwt: {issuer: idp, jwks_url: http://idp/jwks, jwks_file: /etc/jwks.json}
            routes:
              - match: {path_prefix: /a}
                cluster: a
                auth: {require: jwt, claims: [admin]}
              - match: {path_prefix: /b}
                cluster: a
                rate_limit: {key: jwt.sub, rate: 10/s, burst: -1}
            """
        #expect(
            problems(yaml) == [
                "auth.jwt.jwks_file: give jwks_url or jwks_file, not both (gateway.yaml:4)",
                "routes[0].auth.require: requires auth.jwt to be configured (gateway.yaml:8)",
                "routes[0].auth.claims: expected a mapping of claim names to values, got a list (gateway.yaml:8)",
                #"routes[1].rate_limit.burst: expected a positive integer, got "-1" (gateway.yaml:11)"#,
                #"routes[1].rate_limit.key: "jwt.sub" needs a verified token: add auth: {require: jwt} to the route (gateway.yaml:11)"#,
            ])
        let missing = problems(
            """
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            auth: {jwt: {issuer: idp}}
            routes: [{match: {path_prefix: /}, cluster: a}]
            """)
        #expect(
            missing == [
                "auth.jwt.jwks_url: is missing: expected jwks_url (a URL) or jwks_file (a path) (gateway.yaml:2)"
            ])
        let fine = try? GatewayConfiguration(
            yaml: """
                clusters: {a: {endpoints: [127.0.0.1:1]}}
                auth: {jwt: {issuer: idp, jwks_file: /etc/jwks.json}}
                routes:
                  - match: {path_prefix: /}
                    cluster: a
                    auth: {require: jwt, scopes: [x], claims: {tenant: acme}}
                    rate_limit: {key: client_ip, rate: 5/s}
                """)
        #expect(fine?.auth.jwt == .init(issuer: "idp", jwksFile: "/etc/jwks.json"))
        #expect(fine?.routes.first?.auth == .init(scopes: ["x"], claims: ["tenant": "acme"]))
        #expect(
            fine?.routes.first?.rateLimit == .init(key: "client_address", requests: 5, period: .seconds(1), burst: 5))
    }

    @Test("CORS and fault problems")
    func corsAndFaultProblems() {
        let yaml = """
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            routes:
              - match: {path_prefix: /a}
                cluster: a
                cors: {allow_origins: ["*", shop.example], allow_credentials: true}
                fault: {abort: {percent: 150%, status: 700}, delay: {percent: 10%}}
            """
        #expect(
            problems(yaml) == [
                #"routes[0].cors.allow_origins[1]: expected an origin such as https://shop.example or *, got "shop.example" (gateway.yaml:5)"#,
                "routes[0].cors.allow_credentials: cannot be true with allow_origins *: list the origins (gateway.yaml:5)",
                "routes[0].fault.delay.duration: is missing: expected a duration (gateway.yaml:6)",
                #"routes[0].fault.abort.percent: expected a percentage such as 20%, got "150%" (gateway.yaml:6)"#,
                #"routes[0].fault.abort.status: expected a status in 400...599, got "700" (gateway.yaml:6)"#,
            ])
        let fine = try? GatewayConfiguration(
            yaml: """
                clusters: {a: {endpoints: [127.0.0.1:1]}}
                routes:
                  - match: {path_prefix: /a}
                    cluster: a
                    cors: {allow_origins: [https://shop.example], allow_methods: [GET], max_age: 1m}
                    fault: {abort: {percent: 5%, status: 503}, delay: {percent: 10%, duration: 2s}}
                """)
        let route = fine?.routes.first
        #expect(
            route?.cors
                == .init(allowOrigins: ["https://shop.example"], allowMethods: ["GET"], maxAge: .seconds(60)))
        #expect(route?.fault?.abort?.ratio == 0.05)
        #expect(route?.fault?.abort?.status == 503)
        #expect(route?.fault?.delay?.duration == .seconds(2))
    }

    @Test("invalid YAML names its line")
    func invalidYAML() {
        #expect(
            problems("routes: [\n  {a: 1}\n") == ["invalid YAML: did not find expected ',' or ']' (gateway.yaml:3)"])
    }

    @Test(
        "units",
        arguments: [
            ("500ms", Duration.milliseconds(500)), ("10s", .seconds(10)), ("5m", .seconds(300)), ("1h", .seconds(3600)),
        ])
    func durations(text: String, expected: Duration) {
        #expect(GatewayUnits.duration(text) == expected)
    }

    @Test("sizes, ratios and rates")
    func otherUnits() {
        #expect(GatewayUnits.size("10MiB") == 10_485_760)
        #expect(GatewayUnits.size("512KiB") == 524_288)
        #expect(GatewayUnits.size("1GB") == 1_000_000_000)
        #expect(GatewayUnits.size("65536") == 65536)
        #expect(GatewayUnits.size("10 MiB") == 10_485_760)
        #expect(GatewayUnits.size("10XB") == nil)
        #expect(GatewayUnits.size("99999999999999999GiB") == nil)
        #expect(GatewayUnits.ratio("20%") == 0.2)
        #expect(GatewayUnits.ratio("0.5") == 0.5)
        #expect(GatewayUnits.ratio("150%") == nil)
        #expect(GatewayUnits.rate("10/s")! == (10, .seconds(1)))
        #expect(GatewayUnits.rate("600/m")! == (600, .seconds(60)))
        #expect(GatewayUnits.rate("5/500ms")! == (5, .milliseconds(500)))
        #expect(GatewayUnits.rate("0/s") == nil)
        #expect(GatewayUnits.duration("10") == nil)
        #expect(GatewayUnits.duration("-1s") == nil)
    }

    @Test("access_log and limits.drain_timeout: parsed, and every problem reported with its place")
    func operationsKeys() throws {
        let valid = try GatewayConfiguration(
            yaml: """
                listen: {address: 127.0.0.1:0, admin: 127.0.0.1:9901}
                limits: {drain_timeout: 5s}
                access_log: {path: stderr}
                clusters:
                  a: {endpoints: [127.0.0.1:1]}
                routes:
                  - match: {path_prefix: /}
                    cluster: a
                """)
        #expect(valid.limits.drainTimeout == .seconds(5))
        #expect(valid.accessLog == .init(path: "stderr"))
        #expect(valid.listen.admin == Endpoint(host: "127.0.0.1", port: 9901))
        #expect(try GatewayConfiguration(yaml: "clusters: {}\nroutes: []\n").accessLog == nil)

        #expect(throws: GatewayConfigurationError.self) {
            _ = try GatewayConfiguration(yaml: "access_log: stdout\nroutes: []\n")
        }
        do {
            _ = try GatewayConfiguration(
                yaml: """
                    limits: {drain_timeout: later}
                    access_log: {file: x}
                    routes: []
                    """)
            Issue.record("accepted an invalid configuration")
        } catch {
            #expect(
                error.problems == [
                    #"limits.drain_timeout: expected a duration such as 500ms, 10s, 5m or 1h, got "later" (line 1)"#,
                    "access_log.file: unknown key, expected one of path (line 2)",
                    "access_log.path: is missing: expected stdout, stderr or a file path (line 2)",
                ])
        }
    }
}
