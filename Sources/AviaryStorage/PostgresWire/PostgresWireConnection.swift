//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOSSL

// Why a second PostgreSQL client next to postgres-nio:
//
// A single-message publish is one prepared statement and its own transaction. Through
// postgres-nio it cost about 80 µs of client CPU per call at the least (its async row sequence;
// 50–65 µs through its EventLoopFuture API), and about 117 µs through the store's pool and the
// log's code, where libpq's pgbench spends 15 µs: with the server's share that made a publish half
// as fast as the floor the messaging issue measures it against. This connection speaks only what
// such calls need (startup with TLS and password, SCRAM-SHA-256 or MD5 authentication; then
// Parse once per statement and Bind, Execute and Sync per call, parameters and results in text
// format) on one NIO channel: about 30 µs per call in the same measurement (see the messaging
// performance notes, twenty-first session). It can also send several statements before one Sync,
// which the server runs as one implicit transaction: something postgres-nio cannot do.
// Everything else (transactions with client logic in between, LISTEN, COPY, binary types) stays
// on postgres-nio.

/// A PostgreSQL connection for hot single calls: each call is one or more prepared statements
/// sent in one write and ended by one Sync, so the server runs them as one transaction.
///
/// Calls may be made from any thread; from the channel's event loop they are written at once.
/// Calls made while others are in flight are pipelined behind them and answered in order. A
/// failed statement fails its call (``PostgresWireServerError``) and rolls back the call's
/// transaction; the connection goes on. When the connection closes, every call in flight fails as
/// unavailable.
///
/// ```swift
/// let connection = try await PostgresWireConnection.connect(channel: channel, configuration: configuration).get()
/// let results = try await connection.run([PostgresWireStep(Self.insert, [.text("o-1"), .integer(1250)])]).get()
/// ```
package final class PostgresWireConnection: Sendable {
    /// What the startup sends and how TLS is used.
    package struct Configuration: Sendable {
        package var username: String
        package var password: String?
        package var database: String
        package var applicationName: String
        /// `nil`: no TLS. Otherwise the context, and whether a server without TLS is refused.
        package var tls: (context: NIOSSLContext, required: Bool)?
        /// The name TLS sends (SNI), `nil` for an IP address.
        package var serverName: String?
        /// How the server is named in errors (`host:port/database`).
        package var serverDescription: String

        /// A configuration for `username` on `database`.
        ///
        /// ```swift
        /// let configuration = PostgresWireConnection.Configuration(
        ///     username: "shop", password: "secret", database: "orders", applicationName: "orders",
        ///     tls: nil, serverName: nil, serverDescription: "127.0.0.1:5432/orders")
        /// ```
        package init(
            username: String, password: String?, database: String, applicationName: String,
            tls: (context: NIOSSLContext, required: Bool)?, serverName: String?, serverDescription: String
        ) {
            self.username = username
            self.password = password
            self.database = database
            self.applicationName = applicationName
            self.tls = tls
            self.serverName = serverName
            self.serverDescription = serverDescription
        }
    }

    /// The channel the connection runs on.
    package let channel: any Channel
    private let handler: NIOLoopBound<PostgresWireHandler>

    private init(channel: any Channel, handler: PostgresWireHandler) {
        self.channel = channel
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
    }

    /// Starts the protocol on a connected `channel`: TLS when configured, the startup message and
    /// authentication. Succeeds when the server is ready for calls, fails (and closes the
    /// channel) with the server's error or an ``AviaryCore/AviaryError`` saying what went wrong,
    /// or when nothing was ready within `timeout`.
    ///
    /// ```swift
    /// let connection = try await PostgresWireConnection.connect(channel: channel, configuration: configuration).get()
    /// ```
    package static func connect(
        channel: any Channel, configuration: Configuration, timeout: TimeAmount = .seconds(10)
    ) -> EventLoopFuture<PostgresWireConnection> {
        let loop = channel.eventLoop
        let ready = loop.makePromise(of: Void.self)
        let started = loop.submit { () throws -> PostgresWireConnection in
            let handler = PostgresWireHandler(configuration: configuration, ready: ready)
            try channel.pipeline.syncOperations.addHandler(handler)
            return PostgresWireConnection(channel: channel, handler: handler)
        }
        let deadline = loop.scheduleTask(in: timeout) {
            ready.fail(
                AviaryError(
                    .unavailable,
                    "PostgreSQL at \(configuration.serverDescription) was not ready within "
                        + "\(timeout.nanoseconds / 1_000_000) ms of connecting"))
        }
        started.cascadeFailure(to: ready)
        return ready.futureResult.and(started).map { _, connection in
            deadline.cancel()
            return connection
        }.flatMapErrorThrowing { error in
            deadline.cancel()
            channel.close(promise: nil)
            throw error
        }
    }

    /// Runs `steps` in order, then Sync: one transaction. Each step's rows, in order.
    ///
    /// ```swift
    /// let offset = try await connection.run([step]).get()[0].rows.first?.integer(0)
    /// ```
    ///
    /// - Returns: a future that fails with ``PostgresWireServerError`` for the first statement
    ///   the server refused (nothing of the call is kept), or ``AviaryCore/AviaryError``
    ///   (unavailable) when the connection closed first.
    package func run(_ steps: [PostgresWireStep]) -> EventLoopFuture<[PostgresWireResult]> {
        let loop = self.channel.eventLoop
        let promise = loop.makePromise(of: [PostgresWireResult].self)
        if loop.inEventLoop {
            self.handler.value.send(steps, promise)
        } else {
            let handler = self.handler
            loop.execute { handler.value.send(steps, promise) }
        }
        return promise.futureResult
    }

    /// Whether the connection has closed (calls then fail at once).
    package var isClosed: Bool { !self.channel.isActive }

    /// Ends the session (`Terminate`) and closes the channel; calls in flight fail.
    ///
    /// ```swift
    /// connection.close()
    /// ```
    package func close() {
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value.terminate() }
    }
}

/// The protocol's state on one channel. Only touched on the channel's event loop.
final class PostgresWireHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        /// `SSLRequest` sent, waiting for its one-byte answer.
        case tlsRequested
        /// The startup sent, authenticating.
        case starting
        /// SCRAM-SHA-256 under way.
        case scram(PostgresSCRAMClient)
        case ready
        case closed
    }

    /// A call in flight.
    private struct Call {
        var promise: EventLoopPromise<[PostgresWireResult]>
        var results: [PostgresWireResult]
        var current = PostgresWireResult()
        /// The statements this call sent `Parse` for, not yet confirmed, in order.
        var parsing: [String] = []
        var error: PostgresWireServerError?
        /// The steps, kept when a step's statement was written before its `Parse` was confirmed
        /// (by another call in flight): if that `Parse` failed, this call is sent once more.
        var resend: [PostgresWireStep]?
    }

    private let configuration: PostgresWireConnection.Configuration
    private var phase = Phase.starting
    private var ready: EventLoopPromise<Void>?
    private var context: ChannelHandlerContext?
    private var calls = CircularBuffer<Call>()
    /// Prepared statements by name: `false` while their `Parse` is unconfirmed.
    private var prepared: [String: Bool] = [:]
    /// A partial message left over from the last read.
    private var inbox: ByteBuffer?
    /// Why the connection closed, for the calls that fail because it did.
    private var closeReason: String?

    init(configuration: PostgresWireConnection.Configuration, ready: EventLoopPromise<Void>) {
        self.configuration = configuration
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        var out = context.channel.allocator.buffer(capacity: 128)
        if self.configuration.tls != nil {
            self.phase = .tlsRequested
            PostgresWireFrontend.sslRequest(into: &out)
        } else {
            self.writeStartup(into: &out)
        }
        context.writeAndFlush(NIOAny(out), promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    private func writeStartup(into out: inout ByteBuffer) {
        self.phase = .starting
        PostgresWireFrontend.startup(
            [
                ("user", self.configuration.username), ("database", self.configuration.database),
                ("application_name", self.configuration.applicationName), ("client_encoding", "UTF8"),
            ], into: &out)
    }

    // MARK: Calls

    /// Sends a call; `resend` is false for a call sent a second time, which is not sent again.
    func send(_ steps: [PostgresWireStep], _ promise: EventLoopPromise<[PostgresWireResult]>, resend: Bool = true) {
        guard case .ready = self.phase, let context = self.context else {
            promise.fail(self.closedError())
            return
        }
        var out = context.channel.allocator.buffer(capacity: 256)
        var call = Call(promise: promise, results: [])
        call.results.reserveCapacity(steps.count)
        for step in steps {
            switch self.prepared[step.statement.name] {
            case nil:
                self.prepared[step.statement.name] = false
                call.parsing.append(step.statement.name)
                PostgresWireFrontend.parse(step.statement, into: &out)
            case false? where !call.parsing.contains(step.statement.name) && resend:
                call.resend = steps
            default:
                break
            }
            PostgresWireFrontend.bind(step, into: &out)
            PostgresWireFrontend.execute(into: &out)
        }
        PostgresWireFrontend.sync(into: &out)
        self.calls.append(call)
        context.writeAndFlush(NIOAny(out), promise: nil)
    }

    func terminate() {
        guard let context = self.context else { return }
        if case .ready = self.phase {
            var out = context.channel.allocator.buffer(capacity: 5)
            PostgresWireFrontend.terminate(into: &out)
            context.writeAndFlush(NIOAny(out), promise: nil)
        }
        self.closeReason = self.closeReason ?? "closed by the client"
        context.close(promise: nil)
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        if case .tlsRequested = self.phase {
            self.tlsAnswered(bytes.readInteger(as: UInt8.self), context: context)
            guard bytes.readableBytes == 0 else {
                // Bytes after the answer, before the TLS handshake: a server (or a man in the
                // middle) injecting plain text; libpq refuses this as well.
                return self.fail("PostgreSQL sent unencrypted data after agreeing to TLS", context: context)
            }
            return
        }
        if var inbox = self.inbox {
            self.inbox = nil
            inbox.writeBuffer(&bytes)
            bytes = inbox
        }
        while bytes.readableBytes >= 5 {
            // A message that failed the connection leaves the rest unread.
            if case .closed = self.phase { return }
            let start = bytes.readerIndex
            guard let tag = bytes.getInteger(at: start, as: UInt8.self),
                let length = bytes.getInteger(at: start + 1, as: Int32.self), length >= 4
            else {
                return self.fail("PostgreSQL sent a malformed message", context: context)
            }
            if case .ready = self.phase {
            } else if !Self.startupTags.contains(tag) || length > Self.largestStartupMessage {
                // Before the server is ready it sends only small authentication, parameter and
                // error messages; anything else is not PostgreSQL (an HTTP server, say), and
                // waiting for a body of the "length" it seems to give would take the timeout.
                return self.fail(
                    "the server's first reply (type \(Self.printable(tag)), \(length) bytes) is not PostgreSQL's",
                    context: context)
            }
            guard bytes.readableBytes >= 1 + Int(length) else { break }
            bytes.moveReaderIndex(forwardBy: 5)
            var body = bytes.readSlice(length: Int(length) - 4)!
            self.handle(tag, &body, context: context)
        }
        if bytes.readableBytes > 0 {
            self.inbox = bytes
        }
    }

    /// The message types a server sends before it is ready: authentication, ErrorResponse,
    /// ParameterStatus, BackendKeyData, ReadyForQuery, NoticeResponse, NegotiateProtocolVersion.
    private static let startupTags: Set<UInt8> = Set("RESKZNv".utf8)
    /// The longest message accepted before the server is ready (libpq's limit is 30,000 bytes).
    private static let largestStartupMessage: Int32 = 30_000

    private static func printable(_ tag: UInt8) -> String {
        (0x21...0x7E).contains(tag) ? "'\(Character(Unicode.Scalar(tag)))'" : "0x\(String(tag, radix: 16))"
    }

    private func tlsAnswered(_ answer: UInt8?, context: ChannelHandlerContext) {
        guard let tls = self.configuration.tls else { return }
        switch answer {
        case UInt8(ascii: "S"):
            do {
                let handler = try NIOSSLClientHandler(
                    context: tls.context, serverHostname: self.configuration.serverName)
                try context.pipeline.syncOperations.addHandler(handler, position: .first)
            } catch {
                return self.fail("TLS could not start: \(error)", context: context)
            }
        case UInt8(ascii: "N") where !tls.required:
            break
        case UInt8(ascii: "N"):
            return self.fail("the server does not offer TLS, and sslmode=require asks for it", context: context)
        default:
            return self.fail("PostgreSQL answered the TLS request with something else", context: context)
        }
        var out = context.channel.allocator.buffer(capacity: 128)
        self.writeStartup(into: &out)
        context.writeAndFlush(NIOAny(out), promise: nil)
    }

    private func handle(_ tag: UInt8, _ body: inout ByteBuffer, context: ChannelHandlerContext) {
        switch tag {
        case UInt8(ascii: "D"):
            guard !self.calls.isEmpty, let count = body.readInteger(as: Int16.self), count >= 0 else {
                return self.fail("PostgreSQL sent a row nobody asked for", context: context)
            }
            var values: [ByteBuffer?] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let length = body.readInteger(as: Int32.self) else {
                    return self.fail("PostgreSQL sent a malformed row", context: context)
                }
                if length < 0 {
                    values.append(nil)
                } else if let value = body.readSlice(length: Int(length)) {
                    values.append(value)
                } else {
                    return self.fail("PostgreSQL sent a malformed row", context: context)
                }
            }
            self.calls[self.calls.startIndex].current.rows.append(PostgresWireRow(values: values))
        case UInt8(ascii: "C"), UInt8(ascii: "I"):
            guard !self.calls.isEmpty else { return }
            let index = self.calls.startIndex
            self.calls[index].results.append(self.calls[index].current)
            self.calls[index].current = PostgresWireResult()
        case UInt8(ascii: "1"):
            guard !self.calls.isEmpty, !self.calls[self.calls.startIndex].parsing.isEmpty else { return }
            let name = self.calls[self.calls.startIndex].parsing.removeFirst()
            self.prepared[name] = true
        case UInt8(ascii: "2"), UInt8(ascii: "n"), UInt8(ascii: "t"), UInt8(ascii: "T"), UInt8(ascii: "s"):
            break  // BindComplete, NoData, descriptions (never asked for), PortalSuspended
        case UInt8(ascii: "Z"):
            self.readyForQuery(context: context)
        case UInt8(ascii: "E"):
            let error = PostgresWireServerError(fields: &body)
            if case .ready = self.phase, !self.calls.isEmpty, error.severity == "ERROR" {
                let index = self.calls.startIndex
                if self.calls[index].error == nil { self.calls[index].error = error }
            } else {
                // A startup failure (wrong password, no such database) or a FATAL one (the
                // backend terminated): the server closes the connection after it.
                self.closeReason = error.description
                if let ready = self.ready {
                    self.ready = nil
                    ready.fail(
                        AviaryError(
                            .unavailable,
                            "PostgreSQL at \(self.configuration.serverDescription) refused the connection: \(error)",
                            cause: error))
                }
                self.phase = .closed
                context.close(promise: nil)
            }
        case UInt8(ascii: "R"):
            self.authenticate(&body, context: context)
        case UInt8(ascii: "S"), UInt8(ascii: "K"), UInt8(ascii: "N"), UInt8(ascii: "A"), UInt8(ascii: "v"):
            break  // ParameterStatus, BackendKeyData, notices, notifications, NegotiateProtocolVersion
        default:
            self.fail("PostgreSQL sent a message of unknown type \(tag)", context: context)
        }
    }

    private func readyForQuery(context: ChannelHandlerContext) {
        switch self.phase {
        case .starting:
            self.phase = .ready
            if let ready = self.ready {
                self.ready = nil
                ready.succeed()
            }
        case .ready:
            guard let call = self.calls.popFirst() else {
                return self.fail("PostgreSQL was ready for a call nobody made", context: context)
            }
            // A Parse the server never confirmed (the call failed before it) is sent again next time.
            for name in call.parsing { self.prepared.removeValue(forKey: name) }
            if let error = call.error, error.sqlState == "26000", let steps = call.resend {
                // A statement this call used was being prepared by an earlier call in flight, whose
                // failure skipped its Parse: nothing of this call ran, so it is sent again, once,
                // with its own Parse.
                self.send(steps, call.promise, resend: false)
            } else if let error = call.error {
                call.promise.fail(error)
            } else {
                call.promise.succeed(call.results)
            }
        case .scram, .tlsRequested, .closed:
            self.fail("PostgreSQL was ready before authentication ended", context: context)
        }
    }

    // MARK: Authentication

    private func authenticate(_ body: inout ByteBuffer, context: ChannelHandlerContext) {
        guard let kind = body.readInteger(as: Int32.self) else {
            return self.fail("PostgreSQL sent a malformed authentication request", context: context)
        }
        var out = context.channel.allocator.buffer(capacity: 128)
        switch (kind, self.phase) {
        case (0, .starting):
            return  // authenticated (after SCRAM, once its final message was verified); ReadyForQuery follows
        case (0, .scram):
            return self.fail("PostgreSQL ended SCRAM authentication without proving the password", context: context)
        case (3, .starting):
            guard let password = self.configuration.password else { return self.failNoPassword(context: context) }
            PostgresWireFrontend.password(Array(password.utf8), into: &out)
        case (5, .starting):
            guard let password = self.configuration.password else { return self.failNoPassword(context: context) }
            guard let salt = body.readBytes(length: 4) else {
                return self.fail("PostgreSQL sent a malformed MD5 request", context: context)
            }
            PostgresWireFrontend.password(
                PostgresMD5Password.response(user: self.configuration.username, password: password, salt: salt),
                into: &out)
        case (10, .starting):
            var mechanisms: [String] = []
            while let mechanism = body.readNullTerminatedString(), !mechanism.isEmpty { mechanisms.append(mechanism) }
            guard mechanisms.contains("SCRAM-SHA-256") else {
                return self.fail(
                    "PostgreSQL offers SASL mechanisms \(mechanisms) but not SCRAM-SHA-256", context: context)
            }
            guard let password = self.configuration.password else { return self.failNoPassword(context: context) }
            let scram = PostgresSCRAMClient(password: password)
            PostgresWireFrontend.saslInitialResponse(mechanism: "SCRAM-SHA-256", scram.clientFirstMessage(), into: &out)
            self.phase = .scram(scram)
        case (11, .scram(var scram)):
            do {
                let final = try scram.clientFinalMessage(serverFirst: body.readBytes(length: body.readableBytes) ?? [])
                self.phase = .scram(scram)
                PostgresWireFrontend.saslResponse(final, into: &out)
            } catch {
                return self.fail("SCRAM authentication failed: \(error)", context: context)
            }
        case (12, .scram(let scram)):
            do {
                try scram.verify(serverFinal: body.readBytes(length: body.readableBytes) ?? [])
            } catch {
                return self.fail("SCRAM authentication failed: \(error)", context: context)
            }
            self.phase = .starting
            return  // AuthenticationOk follows
        default:
            return self.fail(
                "PostgreSQL asked for authentication method \(kind), which this client does not speak "
                    + "(it speaks password, MD5 and SCRAM-SHA-256)", context: context)
        }
        context.writeAndFlush(NIOAny(out), promise: nil)
    }

    private func failNoPassword(context: ChannelHandlerContext) {
        self.fail("PostgreSQL asks for a password and the store URL has none", context: context)
    }

    // MARK: Closing

    private func fail(_ reason: String, context: ChannelHandlerContext) {
        self.closeReason = self.closeReason ?? reason
        if let ready = self.ready {
            self.ready = nil
            ready.fail(
                AviaryError(.unavailable, "PostgreSQL at \(self.configuration.serverDescription): \(reason)"))
        }
        self.phase = .closed
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail("\(PostgresStore.describe(error))", context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.phase = .closed
        if let ready = self.ready {
            self.ready = nil
            ready.fail(self.closedError())
        }
        let error = self.closedError()
        while let call = self.calls.popFirst() {
            call.promise.fail(error)
        }
        context.fireChannelInactive()
    }

    private func closedError() -> AviaryError {
        AviaryError(
            .unavailable,
            "the connection to PostgreSQL at \(self.configuration.serverDescription) closed"
                + (self.closeReason.map { " (\($0))" } ?? ""))
    }
}
