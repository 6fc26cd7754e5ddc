//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import NIOCore
public import ServiceLifecycle

/// A ``GatewayServer`` as a swift-service-lifecycle `Service`, to run in a `ServiceGroup` beside
/// the services it fronts: it starts serving when run and stops at graceful shutdown.
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

    /// Serves until the group shuts down gracefully (or the task is cancelled), then stops.
    public func run() async throws {
        let address = try await self.server.start()
        let listen = self.server.configuration.listen.address
        await self.onListening(Endpoint(host: listen.host, port: address.port ?? listen.port))
        // Returns at graceful shutdown; throws when cancelled: stop in both cases.
        try? await gracefulShutdown()
        try await self.server.stop()
    }
}
