//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

@Suite("Request mirroring", .timeLimit(.minutes(2)))
struct GatewayMirrorTests {
    static func yaml(primary: Int, shadow: Int, percent: String = "100%") -> String {
        """
        listen: {address: 127.0.0.1:0}
        clusters:
          primary: {endpoints: [127.0.0.1:\(primary)]}
          shadow: {endpoints: [127.0.0.1:\(shadow)]}
        routes:
          - match: {path_prefix: /}
            cluster: primary
            mirror: {cluster: shadow, percent: \(percent)}
        """
    }

    @Test(
        "a request without a body is copied to the mirror with x-aviary-shadow: true; the client gets the primary's answer"
    )
    func copies() async throws {
        try await withOrigins(["primary", "shadow"]) { origins in
            try await withGateway(Self.yaml(primary: origins[0].port, shadow: origins[1].port)) { gateway in
                for index in 0..<3 {
                    let response = try await gateway.get("/orders/\(index)")
                    #expect(response.status == 200)
                    #expect(response.header("x-origin") == "primary")
                    #expect(!response.text.contains("x-aviary-shadow"))
                }
                await eventuallyAsync("the shadow saw three copies") {
                    origins[1].state.shadowRequests.load(ordering: .relaxed) == 3
                }
                #expect(origins[0].state.shadowRequests.load(ordering: .relaxed) == 0)
                // A request with a body is copied with it (see GatewayBodyRetryTests).
                let post = try await gateway.request(
                    "POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                #expect(post.header("x-origin") == "primary")
                #expect(gateway.server.statistics.mirroredRequests.load(ordering: .relaxed) == 4)
                await eventuallyAsync("the shadow saw the fourth copy") {
                    origins[1].state.shadowRequests.load(ordering: .relaxed) == 4
                }
            }
        }
    }

    @Test("a mirror that never answers or cannot be reached neither delays nor fails the request")
    func isolated() async throws {
        try await withOrigins(["primary", "shadow"]) { origins in
            origins[1].state.failure.store(2, ordering: .relaxed)  // never answers
            try await withGateway(Self.yaml(primary: origins[0].port, shadow: origins[1].port)) { gateway in
                let connection = try await gateway.connect()
                for index in 0..<3 {
                    try await connection.send("GET /x\(index) HTTP/1.1\r\nHost: t\r\n\r\n")
                    let response = try await connection.readResponse(timeout: .seconds(8))
                    #expect(response.status == 200)
                    #expect(response.header("x-origin") == "primary")
                }
                await connection.close()
                await eventuallyAsync("the hanging shadow got the copies") {
                    origins[1].state.requests.load(ordering: .relaxed) == 3
                }
            }
            let closed = try await closedPort(group: MultiThreadedEventLoopGroup.singleton)
            try await withGateway(Self.yaml(primary: origins[0].port, shadow: closed)) { gateway in
                let response = try await gateway.get("/y")
                #expect(response.status == 200)
                #expect(response.header("x-origin") == "primary")
            }
        }
    }

    @Test("percent draws which requests are copied")
    func percent() async throws {
        try await withOrigins(["primary", "shadow"]) { origins in
            let yaml = Self.yaml(primary: origins[0].port, shadow: origins[1].port, percent: "50%")
            // Draws at the top of the range: never below 50%.
            try await withGateway(yaml, random: GatewayRandom { $0 - 1 }) { gateway in
                for _ in 0..<3 {
                    let status = try await gateway.get("/n").status
                    #expect(status == 200)
                }
                #expect(gateway.server.statistics.mirroredRequests.load(ordering: .relaxed) == 0)
            }
            // Draws of 0: always below.
            try await withGateway(yaml, random: GatewayRandom { _ in 0 }) { gateway in
                for _ in 0..<3 {
                    let status = try await gateway.get("/m").status
                    #expect(status == 200)
                }
                #expect(gateway.server.statistics.mirroredRequests.load(ordering: .relaxed) == 3)
                await eventuallyAsync("the shadow saw the copies") {
                    origins[1].state.shadowRequests.load(ordering: .relaxed) == 3
                }
            }
        }
    }
}
