//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

extension PostgresStore {
    /// Runs `steps` as one transaction on the store's wire connection (``PostgresWireConnection``):
    /// the client's cheapest call, for hot statements that need no client logic in between.
    ///
    /// The connection is one per store, outside the pool, opened at the first call (with the
    /// pool's address, TLS mode, keep-alive and application name) and opened again at the next
    /// call after it closed; calls made meanwhile are pipelined on it. It lives on the store's
    /// event loop (``Options/eventLoop``, or one of the shared group's). A caller on that loop
    /// (a task preferring ``executor``) sends and resumes without a thread hand-off; others hop.
    ///
    /// ```swift
    /// static let bump = PostgresWireStatement(name: "counter_bump", sql: "UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n")
    /// let n = try await store.pipeline([PostgresWireStep(Self.bump, [.text("visits")])])[0].rows.first?.integer(0)
    /// ```
    ///
    /// - Throws: ``PostgresWireServerError`` for a statement the server refused (nothing of the
    ///   call is kept), or ``AviaryCore/AviaryError``: unavailable when the server cannot be
    ///   reached or the connection closed during the call (whether the call's transaction
    ///   committed is then unknown, as with any connection lost during a commit); timedOut when
    ///   the store is not ready within ``Options/acquireTimeout``.
    package func pipeline(_ steps: [PostgresWireStep]) async throws -> [PostgresWireResult] {
        if !self.isReady { try await self.ready() }
        if let connection = self.wireLane.openConnection() {
            return try await connection.run(steps).get()
        }
        let connection = try await self.wireLane.connect().get()
        return try await connection.run(steps).get()
    }

    /// The store's one ``PostgresWireConnection``, opened on demand.
    final class WireLane: Sendable {
        private enum State {
            case idle
            case connecting(EventLoopFuture<PostgresWireConnection>)
            case open(PostgresWireConnection)
            case stopped
        }

        private let setup: ConnectionSetup
        private let eventLoop: any EventLoop
        /// The TLS context, made once; an error fails each connection attempt with the reason.
        private let tls: Result<(context: NIOSSLContext, required: Bool)?, AviaryError>
        private let state = Mutex(State.idle)

        init(setup: ConnectionSetup, eventLoop: any EventLoop) {
            self.setup = setup
            self.eventLoop = eventLoop
            let address = setup.address
            if address.tls == .disable {
                self.tls = .success(nil)
            } else {
                // As the pool's connections (libpq's sslmode=prefer/require): encrypted, the
                // certificate not verified.
                var configuration = TLSConfiguration.makeClientConfiguration()
                configuration.certificateVerification = .none
                do {
                    self.tls = .success((try NIOSSLContext(configuration: configuration), address.tls == .require))
                } catch {
                    self.tls = .failure(
                        AviaryError(.internal, "cannot set up TLS for \(address): \(error)", cause: error))
                }
            }
        }

        /// The open connection, if there is one.
        func openConnection() -> PostgresWireConnection? {
            self.state.withLock { state in
                if case .open(let connection) = state, !connection.isClosed { return connection }
                return nil
            }
        }

        /// The connection being opened, or a new one.
        func connect() -> EventLoopFuture<PostgresWireConnection> {
            let (future, start): (EventLoopFuture<PostgresWireConnection>, EventLoopPromise<PostgresWireConnection>?) =
                self.state.withLock { state in
                    switch state {
                    case .open(let connection) where !connection.isClosed:
                        return (self.eventLoop.makeSucceededFuture(connection), nil)
                    case .connecting(let future):
                        return (future, nil)
                    case .stopped:
                        let error = AviaryError(.unavailable, "PostgresStore(\(self.setup.address)) has stopped")
                        return (self.eventLoop.makeFailedFuture(error), nil)
                    case .idle, .open:
                        let promise = self.eventLoop.makePromise(of: PostgresWireConnection.self)
                        state = .connecting(promise.futureResult)
                        return (promise.futureResult, promise)
                    }
                }
            if let start {
                start.completeWithTask { try await self.open() }
                future.whenComplete { result in
                    let stale: PostgresWireConnection? = self.state.withLock { state in
                        switch (state, result) {
                        case (.stopped, .success(let connection)):
                            return connection
                        case (.stopped, .failure):
                            return nil
                        case (_, .success(let connection)):
                            state = .open(connection)
                        case (_, .failure):
                            state = .idle
                        }
                        return nil
                    }
                    stale?.close()
                }
            }
            return future
        }

        private func open() async throws -> PostgresWireConnection {
            let tls = try self.tls.get()
            let address = self.setup.address
            let channel: any Channel
            do {
                channel = try await ConnectionSetup.makeChannel(
                    host: address.host, port: address.port, on: self.eventLoop,
                    connectTimeout: self.setup.connectTimeout, keepAlive: self.setup.keepAlive)
            } catch {
                throw AviaryError(
                    .unavailable, "cannot connect to PostgreSQL at \(address): \(PostgresStore.describe(error))",
                    cause: error)
            }
            // An IP address is not a valid TLS server name (SNI).
            let serverName = (try? SocketAddress(ipAddress: address.host, port: 0)) == nil ? address.host : nil
            let configuration = PostgresWireConnection.Configuration(
                username: address.username, password: address.password, database: address.database,
                applicationName: self.setup.applicationName, tls: tls, serverName: serverName,
                serverDescription: "\(address.host):\(address.port)/\(address.database)")
            return try await PostgresWireConnection.connect(
                channel: channel, configuration: configuration, timeout: self.setup.connectTimeout
            ).get()
        }

        /// Closes the connection; later calls fail as the store has stopped.
        func stop() {
            let connection: PostgresWireConnection? = self.state.withLock { state in
                defer { state = .stopped }
                if case .open(let connection) = state { return connection }
                return nil
            }
            connection?.close()
        }
    }
}
