//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOSSL
import NIOTLS

/// A cluster's client side of TLS (`clusters.<name>.tls`): the context made once per cluster
/// state, and the handler each new connection (pooled, HTTP/2 or a health probe) puts first in
/// its pipeline.
struct UpstreamTLS: Sendable {
    let context: NIOSSLContext
    let serverName: String?

    /// The context of `settings`, offering `h2` or `http/1.1` by ALPN; or why there is none, one
    /// problem per setting at fault.
    static func make(
        _ settings: GatewayConfiguration.Cluster.TLS, upstreamProtocol: GatewayConfiguration.Cluster.UpstreamProtocol
    ) -> Result<UpstreamTLS, UpstreamTLSUnavailable> {
        var problems: [UpstreamTLSUnavailable.Problem] = []
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = upstreamProtocol == .h2 ? ["h2"] : ["http/1.1"]
        if let pem = settings.trustRootsPEM {
            let roots = (try? NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))) ?? []
            if roots.isEmpty {
                problems.append(.init(key: "ca", message: "no PEM certificate in \(Self.name(settings.caFile))"))
            } else {
                configuration.trustRoots = .certificates(roots)
            }
        }
        switch (settings.certificateChainPEM, settings.privateKeyPEM) {
        case (nil, nil):
            break
        case (let chain?, let key?):
            let certificates = (try? NIOSSLCertificate.fromPEMBytes(Array(chain.utf8))) ?? []
            if certificates.isEmpty {
                problems.append(
                    .init(key: "certificate", message: "no PEM certificate in \(Self.name(settings.certificateFile))"))
            }
            configuration.certificateChain = certificates.map { .certificate($0) }
            do {
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem))
            } catch {
                problems.append(.init(key: "key", message: "not a PEM private key (\(error))"))
            }
        case (nil, _?):
            problems.append(.init(key: "certificate", message: "is missing: a client key needs its certificate"))
        case (_?, nil):
            problems.append(.init(key: "key", message: "is missing: a client certificate needs its private key"))
        }
        if let name = settings.serverName {
            if name.isEmpty || (try? SocketAddress(ipAddress: name, port: 0)) != nil {
                problems.append(.init(key: "server_name", message: "expected a host name, got \"\(name)\""))
            }
        }
        guard problems.isEmpty else { return .failure(UpstreamTLSUnavailable(problems: problems)) }
        do {
            return .success(
                UpstreamTLS(context: try NIOSSLContext(configuration: configuration), serverName: settings.serverName))
        } catch {
            return .failure(
                UpstreamTLSUnavailable(problems: [.init(key: "", message: "cannot use these settings: \(error)")]))
        }
    }

    private static func name(_ file: String?) -> String { file.map { "\"\($0)\"" } ?? "the PEM text" }

    /// The handler of a connection to `endpoint`: SNI and name verification use `server_name`,
    /// else the endpoint's host name; an endpoint written as an IP address is verified against
    /// the addresses its certificate names, without SNI.
    func handler(for endpoint: Endpoint) throws -> NIOSSLClientHandler {
        let isAddress = (try? SocketAddress(ipAddress: endpoint.host, port: 0)) != nil
        return try NIOSSLClientHandler(
            context: self.context, serverHostname: self.serverName ?? (isAddress ? nil : endpoint.host))
    }

    /// Adds the TLS handler and a ``TLSHandshakeWaiter`` to a new connection's pipeline.
    func configure(_ pipeline: ChannelPipeline.SynchronousOperations, endpoint: Endpoint) throws {
        try pipeline.addHandler(try self.handler(for: endpoint))
        try pipeline.addHandler(TLSHandshakeWaiter())
    }

    /// `channel`, once its TLS handshake has completed; a failed handshake fails the future and
    /// closes the channel. Called on the channel's loop, after the connect completed.
    static func handshake(_ channel: any Channel) -> EventLoopFuture<any Channel> {
        do {
            let waiter = try channel.pipeline.syncOperations.handler(type: TLSHandshakeWaiter.self)
            guard let handshake = waiter.done else { throw ChannelError.ioOnClosedChannel }
            return handshake.map { channel }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        } catch {
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(error)
        }
    }
}

/// Why a cluster's TLS settings cannot be used.
struct UpstreamTLSUnavailable: Error, Sendable, CustomStringConvertible {
    struct Problem: Sendable {
        /// The setting at fault (`ca`, `certificate`, `key`, `server_name`), or empty.
        var key: String
        var message: String
    }
    var problems: [Problem]
    var description: String {
        self.problems.map { "tls\($0.key.isEmpty ? "" : "." + $0.key): \($0.message)" }.joined(separator: "; ")
    }
}

/// A failed TLS handshake with an upstream, as the proxy reports it.
struct UpstreamTLSHandshakeFailed: Error, Sendable, CustomStringConvertible {
    var reason: String
    var description: String { "TLS handshake failed: \(self.reason)" }
}

/// Completes ``done`` when the TLS handshake in front of it completes, or fails it when the
/// connection errs or closes first. Removes itself once the handshake completed, so that the
/// connection's reads and events do not pass through it for the rest of its life.
final class TLSHandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private var promise: EventLoopPromise<Void>?
    /// Made when the handler is added; read right after the connect completes.
    private(set) var done: EventLoopFuture<Void>?

    func handlerAdded(context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.promise = promise
        self.done = promise.futureResult
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.fail(ChannelError.ioOnClosedChannel)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.promise?.succeed()
            self.promise = nil
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(UpstreamTLSHandshakeFailed(reason: "\(error)"))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(UpstreamTLSHandshakeFailed(reason: "the connection closed during the handshake"))
        context.fireChannelInactive()
    }

    private func fail(_ error: any Error) {
        self.promise?.fail(error)
        self.promise = nil
    }
}
