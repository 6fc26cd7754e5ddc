//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

// API composition runs on the gateway's own upstream pools, on the connection's event loop:
// each part is one GET on a pooled keep-alive connection, so parts get the clusters' balancing,
// circuit-breaking thresholds and connection reuse, with no second HTTP stack (AsyncHTTPClient
// would bring its own pools, threads and hops for what is one request per part here).

/// A `compose` route, compiled: each part's cluster index and target template.
struct CompiledCompose: Sendable {
    struct Part: Sendable {
        let name: String
        let cluster: Int
        let target: RewriteTemplate
        /// The part's own timeout, or the route's `part_timeout`.
        let timeout: TimeAmount
    }

    let parts: [Part]
    let omitFailed: Bool
    /// Whether a target uses `{jwt.sub}` (the value after the template's).
    let usesSubject: Bool
    /// The other claims the targets use (`{jwt.<claim>}`), whose values follow the subject's.
    let claims: [String]

    /// A part's body may be at most this long (the whole object is held to be merged).
    static let maxPartBytes = 1 << 20

    init(_ compose: GatewayConfiguration.Compose, variables: [String], clusterIndexes: [String: Int]) {
        self.claims = Array(Set(compose.parts.flatMap { Self.claimNames(in: $0.path) })).sorted()
        let all = variables + ["jwt.sub"] + self.claims.map { "jwt." + $0 }
        self.parts = compose.parts.compactMap { part in
            guard let cluster = clusterIndexes[part.cluster],
                let target = try? RewriteTemplate(parsing: part.path, variables: all)
            else { return nil }
            return Part(
                name: part.name, cluster: cluster, target: target,
                timeout: TimeAmount(part.timeout ?? compose.partTimeout))
        }
        self.omitFailed = compose.omitFailed
        self.usesSubject = compose.parts.contains { $0.path.contains("{jwt.sub}") }
    }

    /// The claims other than `sub` that `{jwt.<claim>}` names in `path`.
    static func claimNames(in path: String) -> [String] {
        var names: [String] = []
        var rest = Substring(path)
        while let open = rest.range(of: "{jwt.") {
            guard let close = rest[open.upperBound...].firstIndex(of: "}") else { break }
            let name = String(rest[open.upperBound..<close])
            if name != "sub", !name.isEmpty { names.append(name) }
            rest = rest[close...]
        }
        return names
    }

    /// A token's value as a path segment or query value: anything but unreserved characters
    /// percent-encoded, so that a claim such as `../admin` or `a?b` cannot change the path.
    static func encoded(_ value: String) -> Substring {
        let unreserved = { (byte: UInt8) in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: "~")
        }
        // `.` and `..` are unreserved but mean something in a path.
        if value == "." || value == ".." { return Substring(String(repeating: "%2E", count: value.count)) }
        if value.utf8.allSatisfy(unreserved) { return Substring(value) }
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        for byte in value.utf8 {
            if unreserved(byte) {
                bytes.append(byte)
            } else {
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            }
        }
        return Substring(String(decoding: bytes, as: UTF8.self))
    }
}

extension ProxyHandler {
    /// Calls the parts in parallel, then answers with their merged JSON. Reads stop meanwhile
    /// (a pipelined request waits in `queued`, as for a token being verified).
    func compose(
        _ compose: CompiledCompose, head: HTTPRequestHead, route: CompiledRoute, policy: PolicyOutcome?, close: Bool,
        context: ChannelHandlerContext
    ) {
        let path = RouteTable.path(of: head.uri)
        var values = route.template?.values(path) ?? []
        values.append(CompiledCompose.encoded(policy?.subject ?? ""))
        for claim in compose.claims {
            values.append(CompiledCompose.encoded(policy?.claims[claim].flatMap(RoutePolicies.keyText) ?? ""))
        }
        var upstreamHeaders = HTTPHeaders()
        upstreamHeaders.add(name: "host", value: head.headers.first(name: "host") ?? "")
        upstreamHeaders.add(name: "accept", value: "application/json")
        if let subject = policy?.subject { upstreamHeaders.add(name: subjectHeaderName, value: subject) }
        if let field = self.clientCertificateField {
            upstreamHeaders.add(name: clientCertificateHeaderName, value: field)
        }
        if let id = head.headers.first(name: "x-request-id") { upstreamHeaders.add(name: "x-request-id", value: id) }
        self.injectTrace(into: &upstreamHeaders)
        let gathering = ComposeGathering(count: compose.parts.count)
        self.admitting = true
        let responseHeaders = policy?.responseHeaders ?? []
        for (index, part) in compose.parts.enumerated() {
            // HEAD on the composed route still needs the parts' bodies for its Content-Length.
            var partHead = HTTPRequestHead(version: .http1_1, method: .GET, uri: part.target.render(values))
            partHead.headers = upstreamHeaders
            let cluster = self.upstreams.clusters[part.cluster]
            let call = ComposeCall(
                name: part.name, clusterName: cluster.cluster.name, pool: cluster.pick(self.core.random),
                head: partHead, timeout: part.timeout, timers: self.loop.timers
            ) { outcome in
                gathering.outcomes[index] = outcome
                gathering.remaining -= 1
                guard gathering.remaining == 0 else { return }
                self.admitting = false
                guard !self.closed, !self.discarding, let context = self.context else { return }
                self.answerComposed(
                    compose, gathering.outcomes, headers: responseHeaders, close: close, context: context)
                if !close { self.continueWithQueued(context: context) }
            }
            call.start()
        }
    }

    private func answerComposed(
        _ compose: CompiledCompose, _ outcomes: [ComposeCall.Outcome?], headers extra: [(String, String)],
        close: Bool, context: ChannelHandlerContext
    ) {
        var body = ByteBuffer(string: "{")
        var degraded: [String] = []
        var first = true
        for (part, outcome) in zip(compose.parts, outcomes) {
            switch outcome {
            case .success(let json)?:
                if !first { body.writeString(",") }
                first = false
                body.writeString("\"\(part.name)\":")
                body.writeImmutableBuffer(json)
            case .failure(let failure)?:
                guard compose.omitFailed else {
                    let timedOut = failure.reason == "timeout"
                    self.respondProblem(
                        status: timedOut ? 504 : 502, slug: timedOut ? "compose-part-timeout" : "compose-part-failed",
                        detail: "part \(part.name) (cluster \(failure.cluster)) failed: \(failure.detail)",
                        extensions: ["part": part.name, "cluster": failure.cluster, "reason": failure.reason],
                        headers: extra, close: close, context: context)
                    return
                }
                degraded.append(part.name)
            case nil:
                degraded.append(part.name)
            }
        }
        if !degraded.isEmpty {
            if !first { body.writeString(",") }
            body.writeString("\"_degraded\":[\(degraded.map { "\"\($0)\"" }.joined(separator: ","))]")
        }
        body.writeString("}")
        self.endRecord(status: 200)
        let close = close || self.drainRequested
        var headers = HTTPHeaders(extra)
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !degraded.isEmpty { headers.add(name: "x-aviary-degraded", value: degraded.joined(separator: ", ")) }
        headers.add(name: "connection", value: close ? "close" : "keep-alive")
        self.emit(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)), context: context)
        if !self.answeringHead { self.emit(.body(.byteBuffer(body)), context: context) }
        if close {
            self.discarding = true
            self.closeAfterWriting(.end(nil), context: context)
        } else {
            self.emit(.end(nil), context: context, flush: true)
            self.startIdleTimer(context: context)
        }
    }

    /// A problem+json answer of a composition (which never forwarded anything).
    private func respondProblem(
        status: Int, slug: String, detail: String, extensions: [String: String], headers extra: [(String, String)],
        close: Bool, context: ChannelHandlerContext
    ) {
        self.core.statistics.localResponses.add(1, ordering: .relaxed)
        self.endRecord(status: status)
        let close = close || self.drainRequested
        let problem = ProblemDetails(status: status, detail: detail, slug: slug, extensions: extensions)
        let body = (try? problem.jsonData()).map { ByteBuffer(bytes: $0) } ?? ByteBuffer(string: "{}")
        var headers = HTTPHeaders(extra)
        headers.add(name: "content-type", value: ProblemDetails.mediaType)
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "connection", value: close ? "close" : "keep-alive")
        let head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
        self.emit(.head(head), context: context)
        if !self.answeringHead { self.emit(.body(.byteBuffer(body)), context: context) }
        if close {
            self.discarding = true
            self.closeAfterWriting(.end(nil), context: context)
        } else {
            self.emit(.end(nil), context: context, flush: true)
            self.startIdleTimer(context: context)
        }
    }
}

/// The outcomes of one composition's parts, filled in on the event loop as they end.
final class ComposeGathering {
    var outcomes: [ComposeCall.Outcome?]
    var remaining: Int

    init(count: Int) {
        self.outcomes = Array(repeating: nil, count: count)
        self.remaining = count
    }
}

/// One part of a composition: a GET on a pooled connection, its body collected (at most
/// ``CompiledCompose/maxPartBytes``) and checked to be JSON, within the part timeout.
final class ComposeCall: UpstreamExchange {
    struct Failure {
        var cluster: String
        /// `connect-failure`, `reset`, `timeout`, `status`, `too-large`, `invalid-json`, `no-endpoints`.
        var reason: String
        var detail: String
    }

    enum Outcome {
        case success(ByteBuffer)
        case failure(Failure)
    }

    let name: String
    let clusterName: String
    let pool: UpstreamPool?
    let head: HTTPRequestHead
    let timeout: TimeAmount
    let timers: any GatewayTimers
    let completion: (Outcome) -> Void
    private var connection: UpstreamConnection?
    private var timer: GatewayTimer?
    private var status: HTTPResponseStatus?
    private var body = ByteBuffer()
    private var reusable = false
    private var done = false

    init(
        name: String, clusterName: String, pool: UpstreamPool?, head: HTTPRequestHead, timeout: TimeAmount,
        timers: any GatewayTimers, completion: @escaping (Outcome) -> Void
    ) {
        self.timers = timers
        self.name = name
        self.clusterName = clusterName
        self.pool = pool
        self.head = head
        self.timeout = timeout
        self.completion = completion
    }

    func start() {
        guard let pool = self.pool else {
            self.finish(.failure(.init(cluster: self.clusterName, reason: "no-endpoints", detail: "no endpoints")))
            return
        }
        pool.inFlight += 1
        self.timer = self.timers.schedule(in: self.timeout, on: pool.eventLoop) {
            let limit = "\(self.timeout.nanoseconds / 1_000_000)ms"
            self.finish(
                .failure(
                    .init(cluster: self.clusterName, reason: "timeout", detail: "no complete answer within \(limit)")))
        }
        if let connection = pool.takeIdle() {
            self.send(on: connection)
        } else {
            pool.connect().assumeIsolated().whenComplete { result in
                switch result {
                case .success(let connection):
                    self.send(on: connection)
                case .failure(let error):
                    self.finish(
                        .failure(.init(cluster: self.clusterName, reason: "connect-failure", detail: "\(error)")))
                }
            }
        }
    }

    private func send(on connection: UpstreamConnection) {
        guard !self.done else {
            connection.pool.release(connection)
            return
        }
        self.connection = connection
        connection.handler.exchange = self
        connection.handler.setReadsPaused(false)
        connection.handler.send(.head(self.head))
        connection.handler.send(.end(nil))
        connection.handler.flush()
    }

    func upstreamReceived(_ part: consuming UpstreamResponsePart) {
        guard !self.done else { return }
        switch part {
        case .head(let response):
            self.status = response.status
            self.reusable = response.isKeepAlive && response.isFramed
        case .body(var buffer):
            guard self.body.readableBytes + buffer.readableBytes <= CompiledCompose.maxPartBytes else {
                self.reusable = false
                self.finish(
                    .failure(
                        .init(
                            cluster: self.clusterName, reason: "too-large",
                            detail: "the body is larger than \(CompiledCompose.maxPartBytes) bytes")))
                return
            }
            self.body.writeBuffer(&buffer)
        case .end:
            let status = self.status?.code ?? 0
            guard (200..<300).contains(status) else {
                self.finish(.failure(.init(cluster: self.clusterName, reason: "status", detail: "status \(status)")))
                return
            }
            let bytes = self.body.readableBytesView
            guard (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil else {
                self.finish(
                    .failure(.init(cluster: self.clusterName, reason: "invalid-json", detail: "the body is not JSON")))
                return
            }
            self.finish(.success(self.body))
        }
    }

    func upstreamReadComplete() {}

    func upstreamWritabilityChanged(isWritable: Bool) {}

    func upstreamFailed(_ error: (any Error)?) {
        let why = error.map { "\($0)" } ?? "the connection closed before a complete response"
        self.finish(.failure(.init(cluster: self.clusterName, reason: "reset", detail: why)))
    }

    private func finish(_ outcome: Outcome) {
        guard !self.done else { return }
        self.done = true
        self.timer?.cancel()
        self.timer = nil
        if let pool = self.pool { pool.inFlight -= 1 }
        if let connection = self.connection {
            self.connection = nil
            connection.handler.exchange = nil
            if case .success = outcome, self.reusable {
                connection.pool.release(connection)
            } else {
                connection.close()
            }
        }
        self.completion(outcome)
    }
}
