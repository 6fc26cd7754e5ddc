//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTestSupport
import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// One HTTP/2 response as the client saw it.
struct H2Response: Sendable {
    var status: Int = 0
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    var trailers: [(String, String)]?

    var text: String { String(decoding: self.body, as: UTF8.self) }
    func header(_ name: String) -> String? { self.headers.first { $0.0 == name }?.1 }
}

/// Why an HTTP/2 stream ended without a whole response.
struct H2StreamFailed: Error, CustomStringConvertible {
    let reason: String
    var description: String { "HTTP/2 stream failed: \(self.reason)" }
}

/// An HTTP/2 client over one connection (h2c by prior knowledge, or TLS with ALPN `h2`), each
/// request on its own stream; many may run at once.
final class H2Client: Sendable {
    let channel: any Channel
    private let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    private let settings: SettingsWatcher
    /// The `SETTINGS_MAX_CONCURRENT_STREAMS` the server announced, once its SETTINGS arrived.
    var serverMaxConcurrentStreams: Int? { self.settings.state.withLock { $0.maxConcurrentStreams } }
    /// The `SETTINGS_MAX_HEADER_LIST_SIZE` the server announced.
    var serverMaxHeaderListSize: Int? { self.settings.state.withLock { $0.maxHeaderListSize } }
    /// The error code of the server's last GOAWAY, if one came.
    var goAwayErrorCode: HTTP2ErrorCode? { self.settings.state.withLock { $0.goAwayErrorCode } }

    private init(channel: any Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer, settings: SettingsWatcher) {
        self.channel = channel
        self.multiplexer = multiplexer
        self.settings = settings
    }

    /// Connects to 127.0.0.1:`port`; with `tls`, over TLS offering only `h2`.
    ///
    /// The HTTP/2 handler is in the pipeline before the connection is: with TLS the server sends
    /// its SETTINGS as soon as the handshake is done, and a handler added after `connect`
    /// returned could miss them (they would reach the pipeline's tail and be dropped, and the
    /// next server frame would be a connection error for the client).
    ///
    /// With `validating: false` the client does not check the header blocks it sends, so that a
    /// test can send what a hostile client would (a CR LF in a value, `transfer-encoding`).
    static func connect(
        port: Int, group: any EventLoopGroup, tls: NIOSSLContext? = nil, validating: Bool = true
    ) async throws -> H2Client {
        let settings = SettingsWatcher()
        let multiplexerBox = Mutex<NIOHTTP2Handler.StreamMultiplexer?>(nil)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: tls, serverHostname: "localhost"))
                    }
                    let multiplexer = try Self.configure(channel, settings: settings, validating: validating)
                    multiplexerBox.withLock { $0 = multiplexer }
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        guard let multiplexer = multiplexerBox.withLock({ $0 }) else {
            throw H2StreamFailed(reason: "the HTTP/2 pipeline was not configured")
        }
        return H2Client(channel: channel, multiplexer: multiplexer, settings: settings)
    }

    /// The client's HTTP/2 pipeline; a connection error (or any other) closes the connection so
    /// that its open streams fail instead of waiting forever.
    private static func configure(
        _ channel: any Channel, settings: SettingsWatcher, validating: Bool
    ) throws -> NIOHTTP2Handler.StreamMultiplexer {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        if !validating { connection.headerBlockValidation = .disabled }
        let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: connection, streamConfiguration: .init()
        ) { stream in stream.eventLoop.makeSucceededVoidFuture() }
        try channel.pipeline.syncOperations.addHandler(SettingsHandler(watcher: settings))
        return multiplexer
    }

    /// Sends one request and collects its response (trailers included). Without `body` the
    /// HEADERS frame ends the stream; with it, the body goes in DATA frames of `chunkSize`, each
    /// counted in `progress` once written to the connection (within the stream's window).
    ///
    /// The response promise is completed on every path, and cancelling the calling task (a test's
    /// time limit, say) resets the stream and fails the call: a stream that never ends fails its
    /// test instead of keeping the test process waiting.
    func request(
        _ method: String = "GET", _ path: String, headers extra: [(String, String)] = [], body: [UInt8]? = nil,
        chunkSize: Int = 16_384, scheme: String = "http", progress: StreamProgress? = nil
    ) async throws -> H2Response {
        let promise = self.channel.eventLoop.makePromise(of: H2Response.self)
        let streamBox = Mutex<(any Channel)?>(nil)
        return try await withTaskCancellationHandler {
            do {
                let stream = try await self.multiplexer.createStreamChannel { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                    }
                }.get()
                streamBox.withLock { $0 = stream }
                if Task.isCancelled { stream.close(promise: nil) }
                try await Self.send(
                    on: stream, method: method, path: path, headers: extra, body: body, chunkSize: chunkSize,
                    scheme: scheme, progress: progress)
            } catch {
                promise.fail(error)  // Ignored when the collector already finished.
            }
            return try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
            streamBox.withLock { $0 }?.close(promise: nil)
        }
    }

    private static func send(
        on stream: any Channel, method: String, path: String, headers extra: [(String, String)], body: [UInt8]?,
        chunkSize: Int, scheme: String, progress: StreamProgress?
    ) async throws {
        var headers = HPACKHeaders([
            (":method", method), (":path", path), (":scheme", scheme), (":authority", "gateway.test"),
        ])
        for (name, value) in extra { headers.add(name: name, value: value) }
        let headFrame = HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: body == nil))
        // A refused write (the connection closed, say) ends the stream with its error. NIO does
        // not let `ChannelError.eof` travel as an error (a debug assertion), and a server that
        // refuses the request may close the stream or the connection before the head is written.
        stream.write(headFrame).whenFailure { error in
            let reported: any Error =
                (error as? ChannelError) == .eof
                ? H2StreamFailed(reason: "the stream closed before its request head was written") : error
            stream.pipeline.fireErrorCaught(reported)
        }
        if let body {
            var offset = 0
            repeat {
                let end = min(offset + chunkSize, body.count)
                let data = HTTP2Frame.FramePayload.data(
                    .init(data: .byteBuffer(ByteBuffer(bytes: body[offset..<end])), endStream: end == body.count))
                // Waiting for each write keeps the client within its flow-control window.
                try await stream.writeAndFlush(data).get()
                progress?.bytesWritten.add(end - offset, ordering: .relaxed)
                offset = end
            } while offset < body.count
        } else {
            stream.flush()
        }
    }

    /// Sends a GET whose response the client does not read until `resume` is called on the
    /// returned stream: the stream's frames stay unread in NIOHTTP2's buffer, so the client sends
    /// no WINDOW_UPDATE for it and the server's stream window runs out (HTTP/2 back-pressure).
    func pausedRequest(_ path: String) async throws -> (stream: PausedStream, response: EventLoopFuture<H2Response>) {
        let promise = self.channel.eventLoop.makePromise(of: H2Response.self)
        let stream = try await self.multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                try stream.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
            }
        }.get()
        try await Self.send(
            on: stream, method: "GET", path: path, headers: [], body: nil, chunkSize: 0, scheme: "http", progress: nil)
        return (PausedStream(channel: stream), promise.futureResult)
    }

    func close() async {
        try? await self.channel.close()
    }
}

/// A client stream whose reads are off until ``resume()``.
struct PausedStream: Sendable {
    let channel: any Channel

    /// Reads on: the buffered frames are delivered and the stream's window reopens.
    func resume() {
        self.channel.setOption(ChannelOptions.autoRead, value: true).whenSuccess { self.channel.read() }
    }

    /// Resets the stream (RST_STREAM with CANCEL), as a client giving up on a response does.
    func reset() async {
        try? await self.channel.close()
    }
}

/// Holds what the server announced on the connection.
private final class SettingsWatcher: Sendable {
    struct State {
        var maxConcurrentStreams: Int?
        var maxHeaderListSize: Int?
        var goAwayErrorCode: HTTP2ErrorCode?
    }
    let state = Mutex(State())
}

/// Records the server's `SETTINGS_MAX_CONCURRENT_STREAMS` and `SETTINGS_MAX_HEADER_LIST_SIZE`,
/// and GOAWAY (root-stream frames reach the parent pipeline after `NIOHTTP2Handler`).
private final class SettingsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    let watcher: SettingsWatcher

    init(watcher: SettingsWatcher) { self.watcher = watcher }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        switch frame.payload {
        case .settings(.settings(let settings)):
            for setting in settings {
                if setting.parameter == .maxConcurrentStreams {
                    self.watcher.state.withLock { $0.maxConcurrentStreams = setting.value }
                } else if setting.parameter == .maxHeaderListSize {
                    self.watcher.state.withLock { $0.maxHeaderListSize = setting.value }
                }
            }
        case .goAway(_, let errorCode, _):
            self.watcher.state.withLock { $0.goAwayErrorCode = errorCode }
        default:
            break
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Collects one stream's response; a stream that closes before END_STREAM fails the promise.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload

    private let promise: EventLoopPromise<H2Response>
    private var response = H2Response()
    private var done = false

    init(promise: EventLoopPromise<H2Response>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .headers(let headers):
            let fields = headers.headers.map { ($0.name, $0.value) }
            if let status = headers.headers.first(name: ":status"), let code = Int(status) {
                if code >= 200 {
                    self.response.status = code
                    self.response.headers = fields.filter { !$0.0.hasPrefix(":") }
                }
            } else {
                self.response.trailers = fields
            }
            if headers.endStream { self.finish(nil) }
        case .data(let data):
            if case .byteBuffer(let buffer) = data.data {
                self.response.body += buffer.readableBytesView
            }
            if data.endStream { self.finish(nil) }
        case .rstStream(let code):
            self.finish(H2StreamFailed(reason: "RST_STREAM \(code)"))
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.finish(H2StreamFailed(reason: "the stream closed before its end"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.finish(error)
    }

    private func finish(_ error: (any Error)?) {
        guard !self.done else { return }
        self.done = true
        if let error {
            self.promise.fail(error)
        } else {
            self.promise.succeed(self.response)
        }
    }
}

/// A throwaway self-signed certificate for `localhost` (and, by default, `127.0.0.1`), made with
/// the openssl CLI.
struct TestCertificate {
    let directory: URL
    var certificateFile: String { self.directory.appendingPathComponent("cert.pem").path }
    var keyFile: String { self.directory.appendingPathComponent("key.pem").path }

    /// Runs `openssl req` as a child process and waits for it without blocking a thread of the
    /// cooperative pool (``Spawn``'s waiter thread resumes the caller).
    static func make(subjectAltName: String = "DNS:localhost,IP:127.0.0.1") async throws -> TestCertificate {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "aviary-h2-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificate = TestCertificate(directory: directory)
        let openssl = try Spawn.start(
            "/usr/bin/env",
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", certificate.keyFile, "-out", certificate.certificateFile, "-days", "1", "-subj",
                "/CN=localhost", "-addext", "subjectAltName=\(subjectAltName)",
            ])
        let exit = try await openssl.exit
        guard exit == .exited(0) else {
            throw H2StreamFailed(reason: "openssl req failed: it \(exit)")
        }
        return certificate
    }

    /// The certificate chain and key as NIOSSL takes them.
    func identity() throws -> (chain: [NIOSSLCertificateSource], key: NIOSSLPrivateKeySource) {
        (
            try NIOSSLCertificate.fromPEMFile(self.certificateFile).map { .certificate($0) },
            .privateKey(try NIOSSLPrivateKey(file: self.keyFile, format: .pem))
        )
    }

    /// A server configuration presenting this certificate.
    func serverConfiguration() throws -> TLSConfiguration {
        let (chain, key) = try self.identity()
        return TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
    }

    /// A client context trusting only this certificate, offering `protocols` by ALPN.
    func clientContext(protocols: [String]) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(self.certificateFile))
        configuration.applicationProtocols = protocols
        return try NIOSSLContext(configuration: configuration)
    }

    func remove() {
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// An HTTP/1.1 request over TLS as raw bytes: the negotiated ALPN protocol and everything the
/// server sent until it closed.
enum TLSRawClient {
    static func exchange(
        _ request: String, port: Int, group: any EventLoopGroup, context: NIOSSLContext
    ) async throws -> (protocol: String?, response: String) {
        let collector = RawCollector()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(RawCollectorHandler(collector: collector))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: request)).get()
        // Cancelling the calling task (a test's time limit) closes the connection, so that a
        // server that never closes fails the test instead of keeping the process waiting.
        try await withTaskCancellationHandler {
            try await channel.closeFuture.get()
        } onCancel: {
            channel.close(promise: nil)
        }
        return collector.state.withLock { ($0.negotiated, String(decoding: $0.bytes, as: UTF8.self)) }
    }
}

private final class RawCollector: Sendable {
    struct State {
        var negotiated: String?
        var bytes: [UInt8] = []
    }
    let state = Mutex(State())
}

private final class RawCollectorHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let collector: RawCollector

    init(collector: RawCollector) { self.collector = collector }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.collector.state.withLock { $0.bytes += buffer.readableBytesView }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let negotiated) = event as? TLSUserEvent {
            self.collector.state.withLock { $0.negotiated = negotiated }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
