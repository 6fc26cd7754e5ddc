//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import AviaryGateway

/// Large bodies through the gateway, both ways, with back-pressure.
@Suite("Gateway streaming", .timeLimit(.minutes(2)))
struct GatewayStreamingTests {
    static let size = 128 << 20
    /// While the far side does not read, this is the most that may pile up on the way: socket
    /// buffers of two TCP connections plus the gateway's own write buffers. A gateway that
    /// buffered bodies would take all of `size`.
    static let inFlightBound = 48 << 20

    static func yaml(port: Int) -> String {
        """
        listen: {address: 127.0.0.1:0}
        limits: {max_body_bytes: 1GiB}
        clusters: {backend: {endpoints: [127.0.0.1:\(port)]}}
        routes: [{match: {path_prefix: /}, cluster: backend}]
        """
    }

    @Test("a 128 MiB upload streams through intact; while the origin does not read, the client is held back")
    func upload() async throws {
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(Self.yaml(port: origin.port)) { gateway in
                let (channel, progress) = try await StreamingClient.upload(
                    port: gateway.port, path: "/upload?pause", bytes: Self.size, group: gateway.clients)
                // The origin has paused its reads: the gateway must stop reading from the client.
                await eventually("the origin paused") { origin.state.pausedCount.load(ordering: .relaxed) == 1 }
                await eventually("the gateway pushes back on the client") {
                    gateway.server.statistics.requestBodyPauses.load(ordering: .relaxed) > 0
                }
                await eventuallyStalled("the client is stalled") { progress.bytesWritten.load(ordering: .relaxed) }
                let accepted = progress.bytesWritten.load(ordering: .relaxed)
                #expect(
                    accepted < Self.inFlightBound,
                    "the gateway took \(accepted) bytes while its upstream was not reading")
                #expect(accepted < Self.size)
                origin.release()
                await eventually("the upload finished", timeout: .seconds(90)) { progress.finished != nil }
                let result = try #require(progress.finished)
                #expect(result.status == 200)
                #expect(result.body == "bytes=\(Self.size) sha256=\(Pattern.sha256(count: Self.size))")
                try? await channel.close()
            }
        }
    }

    @Test("a 128 MiB download streams through intact; while the client does not read, the origin is held back")
    func download() async throws {
        try await withOrigins(["a"]) { origins in
            let origin = origins[0]
            try await withGateway(Self.yaml(port: origin.port)) { gateway in
                let (channel, progress, handler) = try await StreamingClient.download(
                    port: gateway.port, path: "/download?bytes=\(Self.size)", paused: true, group: gateway.clients)
                await eventually("the gateway pushes back on the origin") {
                    gateway.server.statistics.responseBodyPauses.load(ordering: .relaxed) > 0
                }
                await eventuallyStalled("the origin is stalled") {
                    origin.state.downloadBytesWritten.load(ordering: .relaxed)
                }
                let sent = origin.state.downloadBytesWritten.load(ordering: .relaxed)
                #expect(sent < Self.inFlightBound, "the origin got \(sent) bytes out while the client was not reading")
                #expect(progress.bytesReceived.load(ordering: .relaxed) == 0)
                handler.eventLoop.execute { handler.value.resume() }
                await eventually("the download finished", timeout: .seconds(90)) { progress.finished != nil }
                let result = try #require(progress.finished)
                #expect(result.status == 200)
                #expect(result.bodyBytes == Self.size)
                #expect(result.sha256 == Pattern.sha256(count: Self.size))
                try? await channel.close()
            }
        }
    }
}
