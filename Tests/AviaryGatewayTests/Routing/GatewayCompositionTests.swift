//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryAuth
import AviaryCore
import Foundation
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("API composition", .timeLimit(.minutes(2)))
struct GatewayCompositionTests {
    static func yaml(
        users: Int, orders: Int, onFailure: String, ordersPath: String = "/json/orders?user={id}"
    ) -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters:
          users: {endpoints: [127.0.0.1:\(users)]}
          orders: {endpoints: [127.0.0.1:\(orders)]}
        routes:
          - match: {path_template: "/api/me/{id}"}
            compose:
              parts:
                - {name: user, cluster: users, path: "/json/users/{id}"}
                - {name: orders, cluster: orders, path: "\(ordersPath)"}
              part_timeout: 20s
              on_failure: \(onFailure)
        """
    }

    static func object(_ text: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test("the parts are called with the template's variables and their JSON merged into one object")
    func merges() async throws {
        try await withOrigins(["users", "orders"]) { origins in
            try await withGateway(Self.yaml(users: origins[0].port, orders: origins[1].port, onFailure: "fail")) {
                gateway in
                let connection = try await gateway.connect()
                for id in ["7", "8"] {
                    try await connection.send("GET /api/me/\(id) HTTP/1.1\r\nHost: t\r\n\r\n")
                    let response = try await connection.readResponse()
                    #expect(response.status == 200)
                    #expect(response.header("content-type") == "application/json")
                    #expect(response.header("x-aviary-degraded") == nil)
                    let object = try Self.object(response.text)
                    let user = object["user"] as? [String: Any]
                    let orders = object["orders"] as? [String: Any]
                    #expect(user?["origin"] as? String == "users")
                    #expect(user?["target"] as? String == "/json/users/\(id)")
                    #expect(orders?["origin"] as? String == "orders")
                    #expect(orders?["target"] as? String == "/json/orders?user=\(id)")
                    #expect(object["_degraded"] == nil)
                }
                await connection.close()
            }
        }
    }

    @Test("parts take {jwt.sub} and {jwt.<claim>} from the verified token, percent-encoded into the path")
    func tokenClaims() async throws {
        let issuer = try await JWTIssuer(keyID: "users-1", issuer: "shop-users", audience: "shop")
        let token = try await issuer.issue(
            subject: "alice", claims: ["tenant": .string("acme/west"), "level": .number(3)])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "aviary-compose-\(UUID().uuidString).json"
        )
        .path
        try issuer.jwks.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await withOrigins(["users"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                auth: {jwt: {issuer: shop-users, jwks_file: "\(path)"}}
                clusters: {users: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - match: {path: /api/me}
                    auth: {require: jwt}
                    compose:
                      parts:
                        - {name: me, cluster: users, path: "/json/tenants/{jwt.tenant}/users/{jwt.sub}?level={jwt.level}"}
                        - {name: missing, cluster: users, path: "/json/x/{jwt.nothing}"}
                      part_timeout: 20s
                """
            try await withGateway(yaml) { gateway in
                let response = try await gateway.get("/api/me", headers: "Authorization: Bearer \(token)\r\n")
                #expect(response.status == 200, "\(response.text)")
                let object = try Self.object(response.text)
                let me = object["me"] as? [String: Any]
                #expect(me?["target"] as? String == "/json/tenants/acme%2Fwest/users/alice?level=3")
                // A claim the token lacks is empty.
                #expect((object["missing"] as? [String: Any])?["target"] as? String == "/json/x/")
            }
        }
    }

    @Test("a failed part fails the whole with a 502 naming it, or is omitted and the answer marked degraded")
    func failedPart() async throws {
        try await withOrigins(["users", "orders"]) { origins in
            let failing = Self.yaml(
                users: origins[0].port, orders: origins[1].port, onFailure: "fail", ordersPath: "/status/500")
            try await withGateway(failing) { gateway in
                let response = try await gateway.get("/api/me/7")
                #expect(response.status == 502)
                #expect(response.problem?.type == "urn:aviary:problem:compose-part-failed")
                #expect(response.problem?.detail?.contains("part orders") == true)
            }
            let omitting = Self.yaml(
                users: origins[0].port, orders: origins[1].port, onFailure: "omit", ordersPath: "/status/500")
            try await withGateway(omitting) { gateway in
                let response = try await gateway.get("/api/me/7")
                #expect(response.status == 200)
                #expect(response.header("x-aviary-degraded") == "orders")
                let object = try Self.object(response.text)
                #expect((object["user"] as? [String: Any])?["target"] as? String == "/json/users/7")
                #expect(object["orders"] == nil)
                #expect(object["_degraded"] as? [String] == ["orders"])
            }
        }
    }

    @Test("a late part is a 504 naming it, or omitted; a part's own timeout replaces part_timeout")
    func latePart() async throws {
        try await withOrigins(["users", "orders"]) { origins in
            origins[1].state.failure.store(2, ordering: .relaxed)  // orders never answers
            // Only orders has the short timeout of its own: users keeps part_timeout's 20 s, so a
            // loaded machine cannot make it late too.
            let yaml = Self.yaml(users: origins[0].port, orders: origins[1].port, onFailure: "fail")
                .replacingOccurrences(
                    of: "listen: {address: 127.0.0.1:0}", with: "listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}"
                )
                .replacingOccurrences(
                    of: "path: \"/json/orders?user={id}\"}", with: "path: \"/json/orders?user={id}\", timeout: 1500ms}")
            #expect(yaml.contains("timeout: 1500ms}") && yaml.contains("admin:"))
            try await withGateway(yaml) { gateway in
                let response = try await gateway.get("/api/me/7")
                #expect(response.status == 504)
                #expect(response.problem?.type == "urn:aviary:problem:compose-part-timeout")
                #expect(response.problem?.detail?.contains("within 1500ms") == true, "\(response.text)")
                // The admin API's /config shows the part's own timeout beside the route's.
                let routes = try await gateway.adminJSON("/config")["routes"] as? [[String: Any]]
                let compose = try #require(routes?.first?["compose"] as? [String: Any])
                #expect(compose["part_timeout"] as? String == "20s")
                let parts = compose["parts"] as? [[String: String]]
                #expect(parts?.map { $0["timeout"] } == [nil, "1500ms"])
            }
            try await withGateway(yaml.replacingOccurrences(of: "on_failure: fail", with: "on_failure: omit")) {
                gateway in
                let response = try await gateway.get("/api/me/7")
                #expect(response.status == 200)
                #expect(try Self.object(response.text)["_degraded"] as? [String] == ["orders"])
            }
            origins[1].state.failure.store(0, ordering: .relaxed)
            let text = Self.yaml(
                users: origins[0].port, orders: origins[1].port, onFailure: "fail", ordersPath: "/plain")
            try await withGateway(text) { gateway in
                let response = try await gateway.get("/api/me/7")
                #expect(response.status == 502)
                #expect(response.problem?.detail?.contains("not JSON") == true)
            }
        }
    }

    @Test("compose problems are reported with their place")
    func configuration() {
        let yaml = """
            clusters: {users: {endpoints: [127.0.0.1:1]}}
            routes:
              - match: {path_template: "/me/{id}"}
                compose:
                  parts:
                    - {name: user, cluster: users, path: "/users/{jwt.sub}"}
                    - {name: user, cluster: nobody, path: "/x/{other}"}
                    - {name: late, cluster: users, path: "/late", timeout: soon}
                    - {name: never, cluster: users, path: "/never", timeout: 0s}
                  on_failure: ignore
                timeout: 1s
            """
        #expect(
            problems(yaml) == [
                #"routes[0].compose.parts[0].path: {jwt.sub} is not a variable of match.path_template (it has {id}) ({jwt.sub} and {jwt.<claim>} need auth: {require: jwt}), got "/users/{jwt.sub}" (gateway.yaml:6)"#,
                #"routes[0].compose.parts[1].name: "user" names two parts (gateway.yaml:7)"#,
                #"routes[0].compose.parts[1].cluster: unknown cluster "nobody", expected one of users (gateway.yaml:7)"#,
                #"routes[0].compose.parts[1].path: {other} is not a variable of match.path_template (it has {id}) ({jwt.sub} and {jwt.<claim>} need auth: {require: jwt}), got "/x/{other}" (gateway.yaml:7)"#,
                #"routes[0].compose.parts[2].timeout: expected a duration such as 500ms, 10s, 5m or 1h, got "soon" (gateway.yaml:8)"#,
                #"routes[0].compose.parts[3].timeout: expected a duration longer than 0, got "0s" (gateway.yaml:9)"#,
                #"routes[0].compose.on_failure: expected fail or omit, got "ignore" (gateway.yaml:10)"#,
                #"routes[0].timeout: needs a cluster: not allowed with direct_response, redirect or compose (gateway.yaml:11)"#,
            ])
    }
}
