//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// A real HTTP/1.1 origin on 127.0.0.1 with scripted behaviours, chosen by path:
///
/// | path | behaviour |
/// | --- | --- |
/// | `/upload` | reads the body, answers `bytes=N sha256=HEX` (also kept in ``OriginState/uploads``); `?pause` withholds reads until ``release()``; on origins named `bad*`, `?fail=early-503` answers 503 as soon as the head arrives, `?fail=reset` closes then, `?fail=503` answers 503 after the body, `?fail=hang` reads the body and never answers |
/// | `/download?bytes=N` | streams N pattern bytes with a Content-Length, honouring writability |
/// | `/chunked?bytes=N` | answers N bytes of `x` without a Content-Length (chunked), in 1000-byte parts |
/// | `/echo` | streams the request body back, chunked |
/// | `/close-mid-body` | announces 1000 bytes, sends 100, closes |
/// | `/close-before-response` | closes as soon as the request head arrives |
/// | `/never` | never answers |
/// | `/status/N` | answers status N |
/// | `/hop` | answers with hop-by-hop headers that must not reach the client |
/// | `/big-header?bytes=N` | answers with an `x-big` header of N bytes (``OriginHandler/bigHeader(_:)``), body `big-header` |
/// | `/json...` | answers `{"origin": name, "target": request target, "subject": x-aviary-subject}` as JSON |
/// | `/flaky`, `/hang-on-bad`, `/reset-on-bad` | on origins named `bad*`: 503, no answer, a closed connection; elsewhere 200 |
/// | `/arm-close` | answers, then closes the connection when the next request arrives on it, unanswered |
/// | anything else | `200`, body: the request line and headers as the origin saw them; each query item `h-<name>=<value>` becomes a response header |
///
/// ``OriginState/failure`` overrides all of it: 1 answers every request `503`, 2 never answers.
///
/// Every response carries `x-origin: <name>` and `x-origin-connection: <n>` (1-based per origin).
final class TestOrigin: Sendable {
    let name: String
    let channel: any Channel
    let state: OriginState

    var port: Int { self.channel.localAddress?.port ?? 0 }

    private init(name: String, channel: any Channel, state: OriginState) {
        self.name = name
        self.channel = channel
        self.state = state
    }

    /// Starts an origin; with `tls`, it speaks HTTPS (and counts a connection once accepted,
    /// whether or not its handshake succeeds).
    static func start(name: String, group: any EventLoopGroup, tls: NIOSSLContext? = nil) async throws -> TestOrigin {
        let state = OriginState()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let number = state.connections.add(1, ordering: .relaxed).newValue
                return channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        OriginHandler(name: name, connection: number, state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestOrigin(name: name, channel: channel, state: state)
    }

    /// Resumes reading of every paused `/upload?pause`.
    func release() {
        let paused = self.state.paused.withLock { paused in
            defer { paused.removeAll() }
            return paused
        }
        for handler in paused {
            handler.eventLoop.execute { handler.value.resume() }
        }
    }

    func stop() async {
        try? await self.channel.close()
    }
}

/// What an origin observed, readable from tests.
final class OriginState: Sendable {
    let connections = Atomic<Int>(0)
    let requests = Atomic<Int>(0)
    /// Requests that carried `x-aviary-shadow: true` (mirrored copies).
    let shadowRequests = Atomic<Int>(0)
    /// Bytes of `/download` bodies handed to the socket so far.
    let downloadBytesWritten = Atomic<Int>(0)
    /// Bytes of `/upload` bodies read so far.
    let uploadBytesRead = Atomic<Int>(0)
    /// The answers to the `/upload` bodies read to their end, in order: `bytes=N sha256=HEX`.
    let uploads = Mutex<[String]>([])
    let paused = Mutex<[NIOLoopBound<OriginHandler>]>([])
    let pausedCount = Atomic<Int>(0)
    /// 0: behave; 1: answer every request 503; 2: answer none.
    let failure = Atomic<Int>(0)
}

final class OriginHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let name: String
    let connection: Int
    let state: OriginState
    private var context: ChannelHandlerContext?
    private var mode: Mode = .idle
    private var paused = false
    private var readPending = false
    private var hasher = SHA256()
    private var uploaded = 0
    private var downloadRemaining = 0
    private var downloadChunk = 0
    private var closeOnNextRequest = false
    /// An `/upload?fail=503` or `?fail=hang` on a `bad*` origin: the body is read, then answered
    /// 503 or never.
    private var uploadFailure: String?
    /// Response headers asked for with `h-<name>=<value>` query items.
    private var extraHeaders: [(String, String)] = []

    enum Mode { case idle, upload, echo, download, info(String), never }

    init(name: String, connection: Int, state: OriginState) {
        self.name = name
        self.connection = connection
        self.state = state
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    private func head(_ status: HTTPResponseStatus, _ extra: [(String, String)] = []) -> HTTPResponseHead {
        var headers = HTTPHeaders([("x-origin", self.name), ("x-origin-connection", String(self.connection))])
        headers.add(contentsOf: extra)
        return HTTPResponseHead(version: .http1_1, status: status, headers: headers)
    }

    private func respond(
        _ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ body: String, _ extra: [(String, String)] = []
    ) {
        let buffer = ByteBuffer(string: body)
        context.write(
            self.wrapOutboundOut(.head(self.head(status, extra + [("content-length", String(buffer.readableBytes))]))),
            promise: nil)
        context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let request):
            if self.closeOnNextRequest {
                // Like an origin whose keep-alive timeout fired just as the request arrived.
                self.mode = .never
                context.close(promise: nil)
                return
            }
            self.state.requests.add(1, ordering: .relaxed)
            if request.headers["x-aviary-shadow"] == ["true"] { self.state.shadowRequests.add(1, ordering: .relaxed) }
            let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
            let query = request.uri.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            self.extraHeaders = query.split(separator: "&").compactMap { item in
                let pair = item.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, pair[0].hasPrefix("h-") else { return nil }
                return (String(pair[0].dropFirst(2)), String(pair[1]))
            }
            switch self.state.failure.load(ordering: .relaxed) {
            case 1:
                self.mode = .info("status 503")
                return
            case 2:
                self.mode = .never
                return
            default:
                break
            }
            switch path {
            case "/upload":
                let fail =
                    self.name.hasPrefix("bad")
                    ? query.split(separator: "&").first { $0.hasPrefix("fail=") }.map { String($0.dropFirst(5)) } : nil
                switch fail {
                case "early-503":
                    self.respond(context, .serviceUnavailable, "status 503")
                    self.mode = .never
                    return
                case "reset":
                    context.close(promise: nil)
                    self.mode = .never
                    return
                default:
                    self.uploadFailure = fail
                }
                self.mode = .upload
                self.hasher = SHA256()
                self.uploaded = 0
                if query.contains("pause") {
                    self.paused = true
                    self.state.paused.withLock { $0.append(NIOLoopBound(self, eventLoop: context.eventLoop)) }
                    self.state.pausedCount.add(1, ordering: .relaxed)
                }
            case "/echo":
                self.mode = .echo
                context.writeAndFlush(self.wrapOutboundOut(.head(self.head(.ok))), promise: nil)
            case "/download":
                self.mode = .download
                let bytes = query.split(separator: "=").last.flatMap { Int($0) } ?? 0
                self.downloadRemaining = bytes
                self.downloadChunk = 0
            case "/close-mid-body":
                context.write(self.wrapOutboundOut(.head(self.head(.ok, [("content-length", "1000")]))), promise: nil)
                let channel = context.channel
                context.writeAndFlush(
                    self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: UInt8(ascii: "x"), count: 100))))
                ).whenComplete { _ in channel.close(promise: nil) }
                self.mode = .never
            case "/close-before-response":
                context.close(promise: nil)
                self.mode = .never
            case "/never":
                self.mode = .never
            case "/flaky" where self.name.hasPrefix("bad"):
                self.mode = .info("status 503")
            case "/hang-on-bad" where self.name.hasPrefix("bad"):
                self.mode = .never
            case "/reset-on-bad" where self.name.hasPrefix("bad"):
                context.close(promise: nil)
                self.mode = .never
            case "/chunked":
                let bytes = query.split(separator: "&").first { $0.hasPrefix("bytes=") }.flatMap {
                    Int($0.dropFirst(6))
                }
                self.mode = .info("chunked \(bytes ?? 0)")
            case "/arm-close":
                self.closeOnNextRequest = true
                self.mode = .info("armed\n")
            case "/hop":
                self.mode = .info("")
            case "/big-header":
                let bytes = query.split(separator: "&").first { $0.hasPrefix("bytes=") }.flatMap {
                    Int($0.dropFirst(6))
                }
                self.extraHeaders = [("x-big", Self.bigHeader(bytes ?? 0))]
                self.mode = .info("big-header")
            default:
                if path.hasPrefix("/status/"), let code = Int(path.dropFirst("/status/".count)) {
                    self.mode = .info("status \(code)")
                } else if path.hasPrefix("/json") {
                    let subject = request.headers.first(name: "x-aviary-subject") ?? ""
                    self.mode = .info(
                        "json {\"origin\":\"\(self.name)\",\"target\":\"\(request.uri)\",\"subject\":\"\(subject)\"}")
                } else {
                    var text = "\(request.method.rawValue) \(request.uri)\n"
                    for (name, value) in request.headers { text += "\(name.lowercased()): \(value)\n" }
                    self.mode = .info(text)
                }
            }
            if case .info = self.mode, path.hasPrefix("/status/") || path == "/hop" {
                // answered at .end
            }
        case .body(let buffer):
            switch self.mode {
            case .upload:
                buffer.withUnsafeReadableBytes { self.hasher.update(bufferPointer: $0) }
                self.uploaded += buffer.readableBytes
                self.state.uploadBytesRead.add(buffer.readableBytes, ordering: .relaxed)
            case .echo:
                context.write(self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            default:
                break
            }
        case .end:
            switch self.mode {
            case .upload:
                let digest = self.hasher.finalize().map { String($0, radix: 16).leftPadded(2) }.joined()
                let answer = "bytes=\(self.uploaded) sha256=\(digest)"
                self.state.uploads.withLock { $0.append(answer) }
                switch self.uploadFailure {
                case "503": self.respond(context, .serviceUnavailable, "status 503")
                case "hang": break
                default: self.respond(context, .ok, answer)
                }
                self.uploadFailure = nil
                self.mode = .idle
            case .echo:
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
                self.mode = .idle
            case .download:
                context.write(
                    self.wrapOutboundOut(.head(self.head(.ok, [("content-length", String(self.downloadRemaining))]))),
                    promise: nil)
                self.writeDownload(context)
            case .info(let text) where text.hasPrefix("json "):
                self.respond(context, .ok, String(text.dropFirst(5)), [("content-type", "application/json")])
                self.mode = .idle
            case .info(let text) where text.hasPrefix("status "):
                let code = Int(text.dropFirst("status ".count)) ?? 500
                self.respond(context, HTTPResponseStatus(statusCode: code), "status \(code)")
                self.mode = .idle
            case .info(let text) where text.hasPrefix("chunked "):
                var left = Int(text.dropFirst("chunked ".count)) ?? 0
                context.write(self.wrapOutboundOut(.head(self.head(.ok, self.extraHeaders))), promise: nil)
                while left > 0 {
                    let part = min(left, 1000)
                    context.write(
                        self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: UInt8(ascii: "x"), count: part)))),
                        promise: nil)
                    left -= part
                }
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
                self.mode = .idle
            case .info(let text) where text.isEmpty:
                self.respond(
                    context, .ok, "hop",
                    [
                        ("connection", "x-secret, keep-alive"), ("x-secret", "1"), ("keep-alive", "timeout=5"),
                        ("proxy-authenticate", "Basic"), ("x-kept", "yes"),
                    ])
                self.mode = .idle
            case .info(let text):
                self.respond(context, .ok, text, self.extraHeaders)
                self.mode = .idle
            case .idle, .never:
                break
            }
        }
    }

    /// The value of `/big-header`'s `x-big` header: `count` letters and digits in a cycle.
    static func bigHeader(_ count: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        return String(decoding: (0..<count).map { alphabet[$0 % alphabet.count] }, as: UTF8.self)
    }

    private func writeDownload(_ context: ChannelHandlerContext) {
        while self.downloadRemaining > 0 && context.channel.isWritable {
            var chunk = Pattern.chunk(self.downloadChunk)
            self.downloadChunk += 1
            if chunk.readableBytes > self.downloadRemaining {
                chunk = chunk.getSlice(at: chunk.readerIndex, length: self.downloadRemaining) ?? chunk
            }
            let count = chunk.readableBytes
            self.downloadRemaining -= count
            let state = self.state
            context.write(self.wrapOutboundOut(.body(.byteBuffer(chunk)))).whenSuccess {
                state.downloadBytesWritten.add(count, ordering: .relaxed)
            }
        }
        if self.downloadRemaining == 0, case .download = self.mode {
            self.mode = .idle
            context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .download = self.mode {
            self.writeDownload(context)
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if self.paused {
            self.readPending = true
        } else {
            context.read()
        }
    }

    func resume() {
        self.paused = false
        if self.readPending, let context = self.context {
            self.readPending = false
            context.read()
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }
}

/// The bytes streamed in tests: 64 KiB chunks, each starting with its index so that lost,
/// repeated or reordered chunks change the hash.
enum Pattern {
    static let chunkSize = 64 * 1024
    static let base: [UInt8] = (0..<chunkSize).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8 &+ 7) }

    static func chunk(_ index: Int) -> ByteBuffer {
        var bytes = base
        withUnsafeBytes(of: UInt64(index).littleEndian) { raw in
            for (offset, byte) in raw.enumerated() { bytes[offset] = byte }
        }
        return ByteBuffer(bytes: bytes)
    }

    /// The first `count` bytes of the stream, as one array (a request body to upload).
    static func bytes(count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + chunkSize)
        var index = 0
        while bytes.count < count {
            bytes += Self.chunk(index).readableBytesView
            index += 1
        }
        bytes.removeLast(bytes.count - count)
        return bytes
    }

    /// The SHA-256 of the first `count` bytes of the stream, in hex.
    static func sha256(count: Int) -> String {
        var hasher = SHA256()
        var remaining = count
        var index = 0
        while remaining > 0 {
            let chunk = Self.chunk(index)
            let take = min(remaining, chunk.readableBytes)
            chunk.withUnsafeReadableBytes {
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<take]))
            }
            remaining -= take
            index += 1
        }
        return hasher.finalize().map { String($0, radix: 16).leftPadded(2) }.joined()
    }
}

/// An "origin" that answers whatever it is sent with fixed bytes, then closes.
final class GarbageOrigin: Sendable {
    let channel: any Channel
    var port: Int { self.channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) { self.channel = channel }

    static func start(answer: String, group: any EventLoopGroup) async throws -> GarbageOrigin {
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(GarbageHandler(answer: answer))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return GarbageOrigin(channel: channel)
    }

    func stop() async { try? await self.channel.close() }
}

private final class GarbageHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let answer: String
    private var answered = false

    init(answer: String) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.answered else { return }
        self.answered = true
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: self.answer))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}
