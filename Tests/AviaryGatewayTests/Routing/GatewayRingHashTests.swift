//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOHTTP1
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Ring hash load balancing", .timeLimit(.minutes(3)))
struct GatewayRingHashTests {
    static let keys = (0..<20_000).map { "user-\($0)" }

    @Test("keys spread over every endpoint, and adding a fifth endpoint moves about 1/5 of them, all to it")
    func consistency() {
        let four = (0..<4).map { "10.0.0.\($0):8080" }
        let before = HashRing(endpoints: four)
        let after = HashRing(endpoints: four + ["10.0.0.9:8080"])
        var shares = [Int](repeating: 0, count: 4)
        var moved = 0
        for key in Self.keys {
            let old = before.endpoint(for: key.utf8)!
            let new = after.endpoint(for: key.utf8)!
            shares[old] += 1
            if old != new {
                moved += 1
                // Consistent hashing: a key only ever moves to the new endpoint.
                #expect(new == 4)
            }
        }
        let fraction = Double(moved) / Double(Self.keys.count)
        #expect(fraction > 0.12 && fraction < 0.28, "moved \(fraction), expected about 0.2")
        for share in shares {
            let ratio = Double(share) / Double(Self.keys.count)
            #expect(ratio > 0.17 && ratio < 0.33, "share \(ratio), expected about 0.25")
        }
    }

    @Test("removing one of four endpoints moves only its keys; an unavailable endpoint's keys go to the next point")
    func removal() {
        let four = (0..<4).map { "10.0.0.\($0):8080" }
        let full = HashRing(endpoints: four)
        let three = HashRing(endpoints: Array(four.dropLast()))
        for key in Self.keys.prefix(5000) {
            let owner = full.endpoint(for: key.utf8)!
            if owner != 3 {
                #expect(three.endpoint(for: key.utf8) == owner)
            }
            // Skipping an unavailable endpoint gives what a ring without it would.
            #expect(full.endpoint(for: key.utf8, where: { $0 != 3 }) == three.endpoint(for: key.utf8))
        }
    }

    @Test("the hash is stable (a fixed value), so rings agree across loops and processes")
    func stableHash() {
        #expect(HashRing.hash("".utf8) == HashRing.hash([UInt8]()))
        #expect(HashRing.hash("user-1".utf8) == HashRing.hash(Array("user-1".utf8)))
        #expect(HashRing.hash("user-1".utf8) != HashRing.hash("user-2".utf8))
        let first = HashRing(endpoints: ["a:1", "b:1", "c:1"])
        let second = HashRing(endpoints: ["a:1", "b:1", "c:1"])
        #expect(Self.keys.prefix(1000).allSatisfy { first.endpoint(for: $0.utf8) == second.endpoint(for: $0.utf8) })
    }

    @Test("the key is a header's value or a cookie's")
    func keys() {
        let headers: HTTPHeaders = ["X-User": "alice", "Cookie": "a=1; session=s-42; b=2"]
        #expect(HashRing.key(.header("x-user"), in: headers) == "alice")
        #expect(HashRing.key(.cookie("session"), in: headers) == "s-42")
        #expect(HashRing.key(.cookie("sess"), in: headers) == nil)
        #expect(HashRing.key(.header("x-other"), in: headers) == nil)
    }

    @Test("over sockets and two event loops, a user always reaches the same origin; users spread over both")
    func sticky() async throws {
        try await withOrigins(["a", "b", "c"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters:
                  shop:
                    endpoints: [\(origins.map { "127.0.0.1:\($0.port)" }.joined(separator: ", "))]
                    load_balancer: ring_hash
                    hash_on: {header: x-user}
                  web:
                    endpoints: [\(origins.map { "127.0.0.1:\($0.port)" }.joined(separator: ", "))]
                    load_balancer: ring_hash
                    hash_on: {cookie: session}
                routes:
                  - {match: {path_prefix: /web}, cluster: web}
                  - {match: {path_prefix: /}, cluster: shop}
                """
            try await withGateway(yaml, loops: 2) { gateway in
                var seen: [String: Set<String>] = [:]
                for round in 0..<3 {
                    for user in 0..<12 {
                        // A new connection each time, so the requests land on both loops.
                        let origin = try await gateway.get("/r\(round)", headers: "X-User: u\(user)\r\n")
                            .header("x-origin")
                        seen["u\(user)", default: []].insert(origin ?? "?")
                    }
                }
                #expect(seen.values.allSatisfy { $0.count == 1 }, "\(seen)")
                #expect(Set(seen.values.compactMap(\.first)).count >= 2, "\(seen)")
                var cookies: [String: Set<String>] = [:]
                for _ in 0..<3 {
                    for session in 0..<6 {
                        let origin = try await gateway.get(
                            "/web", headers: "Cookie: theme=dark; session=s\(session)\r\n"
                        )
                        .header("x-origin")
                        cookies["s\(session)", default: []].insert(origin ?? "?")
                    }
                }
                #expect(cookies.values.allSatisfy { $0.count == 1 }, "\(cookies)")
            }
        }
    }

    @Test("ring_hash needs hash_on, and hash_on needs ring_hash")
    func configuration() {
        let yaml = """
            clusters:
              a: {endpoints: [127.0.0.1:1], load_balancer: ring_hash}
              b: {endpoints: [127.0.0.1:1], hash_on: {header: x-user}}
              c: {endpoints: [127.0.0.1:1], load_balancer: ring_hash, hash_on: {query: x}}
            routes: [{match: {path_prefix: /}, cluster: a}]
            """
        #expect(
            problems(yaml) == [
                #"clusters.a.hash_on: is missing: ring_hash needs {header: <name>} or {cookie: <name>} (gateway.yaml:2)"#,
                #"clusters.b.hash_on: only applies with load_balancer: ring_hash (gateway.yaml:3)"#,
                #"clusters.c.hash_on.query: unknown key, expected one of header, cookie (gateway.yaml:4)"#,
                #"clusters.c.hash_on: expected {header: <name>} or {cookie: <name>} (gateway.yaml:4)"#,
            ])
    }
}
