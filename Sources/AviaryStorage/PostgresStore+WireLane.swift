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
    /// Runs `steps` as one transaction on one of the store's wire connections
    /// (``PostgresWireConnection``): the client's cheapest call, for hot statements that need no
    /// client logic in between.
    ///
    /// The connections are outside the pool, at most ``Options/pipelineConnections`` of them,
    /// each opened when a call finds the others busy (with the pool's address, TLS mode,
    /// keep-alive and application name) and dropped when it closes. A call runs on a connection
    /// with no call in flight; beyond the limit, calls are pipelined behind others (see
    /// `WireLane`). They live on the store's event loop (``Options/eventLoop``, or one of the
    /// shared group's). A caller on that loop (a task preferring ``executor``) sends and resumes
    /// without a thread hand-off; others hop there, and wait for the reply as
    /// ``Options/commitSpin`` says.
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
        let lease: WireLane.Lease
        switch self.wireLane.pick() {
        case .use(let picked): lease = picked
        case .wait(let opening): lease = try await self.wireLane.use(opening.get())
        }
        defer { self.wireLane.finished(lease) }
        let reply = lease.connection.run(steps)
        // A caller on the connection's loop (a task on the log's executor) awaits the reply where
        // it is: CommitWait never looks on a loop's thread, so the hand-off would only add its
        // lock and count the call as suspended.
        if reply.eventLoop.inEventLoop { return try await reply.get() }
        let handOff = CommitHandOff<[PostgresWireResult]>(self.commitWait)
        reply.whenComplete { handOff.complete($0) }
        return try await handOff.value()
    }

    /// The store's ``PostgresWireConnection``s, opened on demand, at most
    /// ``Options/pipelineConnections`` of them.
    ///
    /// A call takes a connection with no call in flight; when every open connection is busy, it
    /// opens another while there are fewer than the limit, and otherwise is pipelined on the
    /// connection with the fewest calls in flight. Each connection is its own backend, so
    /// concurrent calls commit side by side and the server flushes their commits together (one
    /// backend runs its pipelined calls' commits one after another, each waiting for its own
    /// flush). A caller that makes one call at a time always finds the first connection free.
    final class WireLane: Sendable {
        /// A connection taken for one call; give it back with ``finished(_:)``.
        struct Lease: Sendable {
            let connection: PostgresWireConnection
        }

        /// What a call does: run on a connection now, or wait for one being opened.
        enum Pick {
            case use(Lease)
            case wait(EventLoopFuture<PostgresWireConnection>)
        }

        private struct Open {
            var connection: PostgresWireConnection
            var inFlight: Int
        }

        private struct State {
            var open: [Open] = []
            /// Connections being opened.
            var opening: [EventLoopFuture<PostgresWireConnection>] = []
            var stopped = false
        }

        private let setup: ConnectionSetup
        private let eventLoop: any EventLoop
        private let limit: Int
        /// The TLS context, made once; an error fails each connection attempt with the reason.
        private let tls: Result<(context: NIOSSLContext, required: Bool)?, AviaryError>
        private let state = Mutex(State())

        init(setup: ConnectionSetup, eventLoop: any EventLoop, limit: Int) {
            self.setup = setup
            self.eventLoop = eventLoop
            self.limit = max(1, limit)
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

        /// The connection for the next call (counted as in flight), or the opening to wait for.
        func pick() -> Pick {
            let (pick, start): (Pick, EventLoopPromise<PostgresWireConnection>?) = self.state.withLock { state in
                if state.stopped {
                    let error = AviaryError(.unavailable, "PostgresStore(\(self.setup.address)) has stopped")
                    return (.wait(self.eventLoop.makeFailedFuture(error)), nil)
                }
                state.open.removeAll { $0.connection.isClosed }
                if let index = state.open.firstIndex(where: { $0.inFlight == 0 }) {
                    state.open[index].inFlight += 1
                    return (.use(Lease(connection: state.open[index].connection)), nil)
                }
                if state.open.count + state.opening.count < self.limit {
                    let promise = self.eventLoop.makePromise(of: PostgresWireConnection.self)
                    state.opening.append(promise.futureResult)
                    return (.wait(promise.futureResult), promise)
                }
                if let index = state.open.indices.min(by: { state.open[$0].inFlight < state.open[$1].inFlight }) {
                    state.open[index].inFlight += 1
                    return (.use(Lease(connection: state.open[index].connection)), nil)
                }
                // Every connection is being opened: wait for the first.
                return (.wait(state.opening[0]), nil)
            }
            if let start { self.start(start) }
            return pick
        }

        /// Counts a call on `connection`, which a waiting call got from an opening.
        func use(_ connection: PostgresWireConnection) -> Lease {
            self.state.withLock { state in
                if let index = state.open.firstIndex(where: { $0.connection === connection }) {
                    state.open[index].inFlight += 1
                }
            }
            return Lease(connection: connection)
        }

        /// The call on `lease` has ended.
        func finished(_ lease: Lease) {
            self.state.withLock { state in
                if let index = state.open.firstIndex(where: { $0.connection === lease.connection }) {
                    state.open[index].inFlight -= 1
                }
            }
        }

        /// An open connection with no call in flight, if there is one (for tests).
        func openConnection() -> PostgresWireConnection? {
            self.state.withLock { state in
                state.open.first { !$0.connection.isClosed && $0.inFlight == 0 }?.connection
            }
        }

        /// The open connections (for tests).
        var openCount: Int {
            self.state.withLock { state in state.open.filter { !$0.connection.isClosed }.count }
        }

        /// An open connection, or a new one (for tests: the call is not counted).
        func connect() -> EventLoopFuture<PostgresWireConnection> {
            switch self.pick() {
            case .use(let lease):
                self.finished(lease)
                return self.eventLoop.makeSucceededFuture(lease.connection)
            case .wait(let opening):
                return opening
            }
        }

        /// Opens a connection for `promise`, and keeps it open unless the lane stopped meanwhile.
        private func start(_ promise: EventLoopPromise<PostgresWireConnection>) {
            promise.completeWithTask { try await self.open() }
            let future = promise.futureResult
            future.whenComplete { result in
                let stale: PostgresWireConnection? = self.state.withLock { state in
                    state.opening.removeAll { $0 === future }
                    guard case .success(let connection) = result else { return nil }
                    if state.stopped { return connection }
                    state.open.append(Open(connection: connection, inFlight: 0))
                    return nil
                }
                stale?.close()
            }
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

        /// Closes the connections; later calls fail as the store has stopped.
        func stop() {
            let connections: [PostgresWireConnection] = self.state.withLock { state in
                state.stopped = true
                defer { state.open = [] }
                return state.open.map(\.connection)
            }
            for connection in connections { connection.close() }
        }
    }
}
