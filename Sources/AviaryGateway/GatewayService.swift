//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import NIOCore
public import ServiceLifecycle

/// A ``GatewayServer`` as a swift-service-lifecycle `Service`, to run in a `ServiceGroup` beside
/// the services it fronts: it starts serving when run, and at graceful shutdown it drains
/// (`/ready` answers 503, no new connections, requests in flight finish within
/// `limits.drain_timeout`), then stops.
///
/// ```swift
/// let gateway = GatewayService(GatewayServer(configuration: configuration)) { endpoint in
///     print("gateway listening on \(endpoint.url)")
/// }
/// let group = ServiceGroup(services: [users, orders, gateway], logger: logger)
/// ```
public struct GatewayService: Service {
    /// The server run.
    public let server: GatewayServer
    let onListening: @Sendable (Endpoint) async -> Void

    /// Runs `server`; `onListening` gets its address once it is bound.
    public init(_ server: GatewayServer, onListening: @escaping @Sendable (Endpoint) async -> Void = { _ in }) {
        self.server = server
        self.onListening = onListening
    }

    /// Serves until the group shuts down gracefully, then drains and stops; when the task is
    /// cancelled it stops at once.
    public func run() async throws {
        let address = try await self.server.start()
        let listen = self.server.configuration.listen.address
        await self.onListening(Endpoint(host: listen.host, port: address.port ?? listen.port))
        // Returns at graceful shutdown; throws when cancelled.
        do {
            try await gracefulShutdown()
            await self.server.drain(timeout: self.server.configuration.limits.drainTimeout)
        } catch {}
        try await self.server.stop()
    }
}
