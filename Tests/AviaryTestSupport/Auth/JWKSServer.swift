//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization
import Testing

/// A JWKS endpoint the test controls: what it serves, and how often it was asked.
public final class JWKSServer: Sendable {
    private struct State {
        var jwks: String
        var status: HTTPResponse.Status = .ok
    }

    private let state: Mutex<State>
    private let fetchCount = Atomic<Int>(0)

    public init(jwks: String) {
        self.state = Mutex(State(jwks: jwks))
    }

    public var fetches: Int { self.fetchCount.load(ordering: .relaxed) }

    public func serve(_ jwks: String) { self.state.withLock { $0.jwks = jwks } }
    public func fail(with status: HTTPResponse.Status) { self.state.withLock { $0.status = status } }

    /// Runs `body` with the URL of a live server on 127.0.0.1 and a free port.
    public func run(_ body: @Sendable @escaping (String) async throws -> Void) async throws {
        let router = Router()
        router.get("/.well-known/jwks.json") { _, _ -> Response in
            self.fetchCount.add(1, ordering: .relaxed)
            let (jwks, status) = self.state.withLock { ($0.jwks, $0.status) }
            return Response(
                status: status, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: status == .ok ? jwks : "{\"error\":\"down\"}")))
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let port = try #require(client.port)
            try await body("http://127.0.0.1:\(port)/.well-known/jwks.json")
        }
    }
}
