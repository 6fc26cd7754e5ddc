//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif
#if canImport(CNIOLinux)
// `sockaddr_in`'s members resolve through NIO's C shim in some batch compilations, which
// MemberImportVisibility then requires to be imported here.
import CNIOLinux
#endif

/// A client that writes raw bytes over a real socket and parses what comes back by hand, so that
/// malformed requests reach the gateway exactly as written.
final class RawConnection: Sendable {
    let channel: any Channel
    let received: ReceivedBytes

    private init(channel: any Channel, received: ReceivedBytes) {
        self.channel = channel
        self.received = received
    }

    static func connect(port: Int, group: any EventLoopGroup) async throws -> RawConnection {
        let received = ReceivedBytes()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(CollectingHandler(received: received))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, received: received)
    }

    func send(_ text: String) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(string: text))
    }

    func send(_ buffer: ByteBuffer) async throws {
        try await self.channel.writeAndFlush(buffer)
    }

    /// The next complete response (or, when the connection closes, what arrived).
    func readResponse(isHead: Bool = false, timeout: Duration = .seconds(20)) async throws -> RawResponse {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            // Noted before looking: bytes that arrive after the look move it, and end the wait.
            let arrivals = self.received.arrivals.count
            if let response = self.received.takeResponse(isHead: isHead) { return response }
            if ContinuousClock.now >= deadline { throw RawClientError.timedOut(self.received.snapshot()) }
            await self.received.arrivals.wait(after: arrivals, until: deadline)
        }
    }

    /// Waits until the gateway closes the connection; fails the test after `timeout`.
    func waitUntilClosed(timeout: Duration = .seconds(10)) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let arrivals = self.received.arrivals.count
            if self.received.isClosed { return true }
            if ContinuousClock.now >= deadline { return false }
            await self.received.arrivals.wait(after: arrivals, until: deadline)
        }
    }

    var isClosed: Bool { self.received.isClosed }

    func close() async {
        try? await self.channel.close()
    }

    /// Sends one request on a new connection and reads its response.
    static func exchange(
        _ request: String, port: Int, group: any EventLoopGroup, isHead: Bool = false
    ) async throws
        -> RawResponse
    {
        let connection = try await RawConnection.connect(port: port, group: group)
        defer { Task { await connection.close() } }
        try await connection.send(request)
        return try await connection.readResponse(isHead: isHead)
    }
}

enum RawClientError: Error {
    case timedOut(String)
}

/// What a raw test client's reader waits on: a count that the connection's handler moves on
/// every read and on the close, once what arrived is stored. A reader notes the count, looks at
/// what arrived, and if that is not enough yet waits until the count moves past what it noted
/// or its deadline passes: woken by the bytes themselves, not by polling.
///
/// ```swift
/// let seen = received.arrivals.count
/// if let response = received.takeResponse(isHead: false) { return response }
/// await received.arrivals.wait(after: seen, until: deadline)
/// ```
final class ArrivalSignal: Sendable {
    private let state = Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))

    /// Arrivals so far.
    var count: Int { self.state.withLock { $0.count } }

    /// Notes an arrival and wakes every waiting reader.
    func arrived() {
        self.state.withLock { $0.count += 1 }
        self.wakeWaiters()
    }

    /// Returns once the count has moved past `seen`, or once `deadline` has passed.
    func wait(after seen: Int, until deadline: ContinuousClock.Instant) async {
        // The deadline's timer wakes the wait too (unless the wait ended first and cancelled it);
        // a wait registered after it fired sees the deadline passed (checked under the lock).
        let timer = Task {
            guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
            self.wakeWaiters()
        }
        defer { timer.cancel() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let waits = self.state.withLock { state in
                guard state.count == seen, ContinuousClock.now < deadline else { return false }
                state.waiters.append(continuation)
                return true
            }
            if !waits { continuation.resume() }
        }
    }

    private func wakeWaiters() {
        let waiters = self.state.withLock { state in
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Bytes received so far, and whether the connection closed.
final class ReceivedBytes: Sendable {
    private let state = Mutex<(bytes: [UInt8], closed: Bool)>(([], false))
    /// Moved by every read and by the close (after the bytes are in): a reader waits on it.
    let arrivals = ArrivalSignal()

    func append(_ buffer: ByteBuffer) {
        self.state.withLock { $0.bytes.append(contentsOf: buffer.readableBytesView) }
        self.arrivals.arrived()
    }

    func markClosed() {
        self.state.withLock { $0.closed = true }
        self.arrivals.arrived()
    }

    var isClosed: Bool { self.state.withLock { $0.closed } }

    func snapshot() -> String {
        self.state.withLock { String(decoding: $0.bytes, as: UTF8.self) }
    }

    /// Removes and returns one complete response, if there is one.
    func takeResponse(isHead: Bool) -> RawResponse? {
        self.state.withLock { state in
            guard var response = RawResponse.parse(state.bytes, isHead: isHead, closed: state.closed) else {
                return nil
            }
            state.bytes.removeFirst(response.consumed)
            response.connectionClosed = state.closed && state.bytes.isEmpty
            return response
        }
    }
}

private final class CollectingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let received: ReceivedBytes

    init(received: ReceivedBytes) { self.received = received }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received.append(self.unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.received.markClosed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A response parsed by hand.
struct RawResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    /// The status line and header lines as received (each ending with CRLF, names in their case).
    var head = ""
    var body: [UInt8]
    /// Whether the body ended because the connection closed before its announced end.
    var truncated: Bool
    var consumed: Int
    var connectionClosed = false

    var text: String { String(decoding: self.body, as: UTF8.self) }

    func header(_ name: String) -> String? {
        self.headers.first { $0.name == name.lowercased() }?.value
    }

    func headers(_ name: String) -> [String] {
        self.headers.filter { $0.name == name.lowercased() }.map(\.value)
    }

    var problem: ProblemDetails? {
        try? JSONDecoder().decode(ProblemDetails.self, from: Data(self.body))
    }

    static func parse(_ bytes: [UInt8], isHead: Bool, closed: Bool) -> RawResponse? {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let headEnd = bytes.firstRange(of: separator) else { return nil }
        let headText = String(decoding: bytes[..<headEnd.lowerBound], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        let headers = lines.compactMap { line -> (name: String, value: String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (
                line[..<colon].lowercased(),
                line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            )
        }
        var response = RawResponse(
            status: status, headers: headers, head: headText + "\r\n", body: [], truncated: false,
            consumed: headEnd.upperBound)
        let rest = bytes[headEnd.upperBound...]
        if isHead || status == 204 || status == 304 || (100..<200).contains(status) { return response }
        if response.header("transfer-encoding")?.lowercased() == "chunked" {
            var index = rest.startIndex
            var body: [UInt8] = []
            while true {
                guard let lineEnd = rest[index...].firstRange(of: Array("\r\n".utf8)) else {
                    return closed ? response.cut(body, bytes.count) : nil
                }
                let sizeText = String(decoding: rest[index..<lineEnd.lowerBound], as: UTF8.self)
                guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16) else { return nil }
                let dataStart = lineEnd.upperBound
                if size == 0 {
                    guard let end = rest[dataStart...].firstRange(of: Array("\r\n".utf8)) else {
                        return closed ? response.cut(body, bytes.count) : nil
                    }
                    response.body = body
                    response.consumed = end.upperBound
                    return response
                }
                guard rest.endIndex - dataStart >= size + 2 else {
                    return closed ? response.cut(body + rest[dataStart...].prefix(size), bytes.count) : nil
                }
                body.append(contentsOf: rest[dataStart..<(dataStart + size)])
                index = dataStart + size + 2
            }
        }
        if let lengthText = response.header("content-length"), let length = Int(lengthText) {
            guard rest.count >= length else {
                return closed ? response.cut(Array(rest), bytes.count) : nil
            }
            response.body = Array(rest.prefix(length))
            response.consumed = headEnd.upperBound + length
            return response
        }
        guard closed else { return nil }
        response.body = Array(rest)
        response.consumed = bytes.count
        return response
    }

    private func cut(_ body: [UInt8], _ consumed: Int) -> RawResponse {
        var copy = self
        copy.body = body
        copy.truncated = true
        copy.consumed = consumed
        return copy
    }
}

/// Polls `condition` until it holds; records an issue after `timeout`.
@discardableResult
func eventually(
    _ what: String, timeout: Duration = .seconds(20), sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while !condition() {
        if ContinuousClock.now > deadline {
            Issue.record("timed out waiting until \(what)", sourceLocation: sourceLocation)
            return false
        }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return true
}

/// Polls `counter` until it has stopped moving (the same value 50 polls in a row: about 0.1 s
/// without progress, which a merely slow peer does not show); records an issue after `timeout`.
/// For back-pressure tests: a byte count that stops short of the whole body.
@discardableResult
func eventuallyStalled(
    _ what: String, timeout: Duration = .seconds(90), sourceLocation: SourceLocation = #_sourceLocation,
    _ counter: () -> Int
) async -> Bool {
    var stable = 0
    var last = -1
    return await eventually(what, timeout: timeout, sourceLocation: sourceLocation) {
        let now = counter()
        stable = now == last ? stable + 1 : 0
        last = now
        return stable >= 50
    }
}

/// A port on 127.0.0.1 where nothing listens: a TCP socket bound to it but never listening, so
/// a connect is refused, and kept open for the life of the test process, so that no other test
/// (binding port 0 in parallel) can be given the port meanwhile.
func closedPort(group: any EventLoopGroup) async throws -> Int {
    #if canImport(Glibc)
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let descriptor = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard descriptor >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
            bind(descriptor, socketAddress, length) == 0 && getsockname(descriptor, socketAddress, &length) == 0
        }
    }
    guard bound else {
        close(descriptor)
        throw IOError(errnoCode: errno, reason: "bind")
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
