//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Crypto
import Foundation
public import HTTPTypes
public import Hummingbird
import NIOCore
import Synchronization

/// Makes POST and PATCH requests that carry an `Idempotency-Key` safe to repeat, with the
/// semantics of the IETF httpapi `Idempotency-Key` draft and of Stripe.
///
/// - The first request with a key runs; its response (status, content type, body) is stored with
///   a fingerprint of the request (method, path and query, body: SHA-256) in the service's own
///   database (``IdempotencyStore``).
/// - A repeat with the same request gets the stored response again, with
///   `Idempotent-Replayed: true`, and the handler does not run.
/// - The same key with a different request is `422` (`idempotency-key-reused`).
/// - A repeat while the first is still running is `409` (`idempotency-key-in-use`) with
///   `Retry-After: 1`.
/// - Responses with a `5xx` status, and errors that are not HTTP errors, are not stored: the key is
///   released so that a retry runs again. `4xx` answers are stored: they are answers.
/// - Keys expire after ``Configuration/ttl``; a key whose request never finished (the process
///   died) is taken over after ``Configuration/lockTimeout``.
/// - A key must be 1 to 255 characters; with ``Configuration/requireKey`` a request without one
///   is `400`.
///
/// Place it after ``ProblemMiddleware`` (inside it), so that its own problems are rendered.
///
/// The stored response commits in its own transaction, after the handler's. If the process dies
/// between the two, the key is taken over after the lock timeout and the handler runs again, so a
/// side effect that must happen at most once should also be keyed in the handler's own
/// transaction (Shop's payments stores the key as a unique column of the payment row).
///
/// ```swift
/// let keys = try await IdempotencyStore(store: store)
/// router.add(middleware: ProblemMiddleware(logger: logger))
/// router.add(middleware: IdempotencyMiddleware(store: keys, .init(requireKey: true)))
/// router.post("/payments") { request, _ in try await charge(request) }
/// ```
public struct IdempotencyMiddleware<Context: RequestContext>: RouterMiddleware {
    /// How keys are handled.
    public struct Configuration: Sendable {
        /// How long a key and its response are kept.
        public var ttl: Duration
        /// How long a request may hold a key before another request may take it over.
        public var lockTimeout: Duration
        /// The largest request body fingerprinted (bytes); larger requests are `413`.
        public var maxRequestBytes: Int
        /// The largest response stored (bytes); larger responses are sent but not stored, and
        /// the key is released.
        public var maxStoredResponseBytes: Int
        /// Whether POST and PATCH requests without a key are refused with `400`.
        public var requireKey: Bool

        /// Creates a configuration.
        public init(
            ttl: Duration = .seconds(24 * 3600),
            lockTimeout: Duration = .seconds(60),
            maxRequestBytes: Int = 1 << 20,
            maxStoredResponseBytes: Int = 1 << 20,
            requireKey: Bool = false
        ) {
            self.ttl = ttl
            self.lockTimeout = lockTimeout
            self.maxRequestBytes = maxRequestBytes
            self.maxStoredResponseBytes = maxStoredResponseBytes
            self.requireKey = requireKey
        }
    }

    /// The request header.
    public static var headerName: HTTPField.Name { HTTPField.Name("Idempotency-Key")! }
    /// The header set on replayed responses.
    public static var replayedHeaderName: HTTPField.Name { HTTPField.Name("Idempotent-Replayed")! }

    let store: IdempotencyStore
    let configuration: Configuration
    let now: @Sendable () -> Int64

    /// Creates the middleware.
    ///
    /// - Parameters:
    ///   - store: where keys and responses are kept.
    ///   - configuration: TTL, lock timeout, limits, whether a key is required.
    ///   - now: the wall clock in milliseconds since 1970 (expiry survives restarts, so it is
    ///     wall-clock time); tests pass their own.
    public init(
        store: IdempotencyStore,
        _ configuration: Configuration = .init(),
        now: @escaping @Sendable () -> Int64 = { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }
    ) {
        self.store = store
        self.configuration = configuration
        self.now = now
    }

    /// Applies the key's semantics around the rest of the chain.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard request.method == .post || request.method == .patch else {
            return try await next(request, context)
        }
        guard let key = request.headers[Self.headerName] else {
            if self.configuration.requireKey {
                throw HTTPProblem(
                    status: 400, slug: "idempotency-key-required",
                    detail: "\(request.method) \(request.uri.path) requires an Idempotency-Key header")
            }
            return try await next(request, context)
        }
        guard (1...255).contains(key.count) else {
            throw HTTPProblem(
                status: 400, slug: "invalid-idempotency-key",
                detail: "Idempotency-Key must be 1 to 255 characters, got \(key.count)")
        }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: self.configuration.maxRequestBytes)
        } catch {
            throw HTTPProblem(
                status: 413, slug: "payload-too-large",
                detail: "the body is larger than \(self.configuration.maxRequestBytes) bytes")
        }
        request.body = RequestBody(buffer: body)
        let fingerprint = Self.fingerprint(request, body: body)
        let claim = try await self.store.claim(
            key: key,
            fingerprint: fingerprint,
            now: self.now(),
            ttlMilliseconds: Self.milliseconds(self.configuration.ttl),
            lockTimeoutMilliseconds: Self.milliseconds(self.configuration.lockTimeout)
        )
        switch claim {
        case .mismatch:
            throw HTTPProblem(
                status: 422, slug: "idempotency-key-reused",
                detail: "Idempotency-Key \"\(key)\" was used for a different request")
        case .inProgress:
            throw HTTPProblem(
                status: 409, slug: "idempotency-key-in-use",
                detail: "a request with Idempotency-Key \"\(key)\" is still in progress",
                headers: [.retryAfter: "1"])
        case .completed(let stored):
            var headers: HTTPFields = [Self.replayedHeaderName: "true"]
            if let contentType = stored.contentType { headers[.contentType] = contentType }
            return Response(
                status: .init(code: stored.status), headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: stored.body)))
        case .acquired:
            return try await self.runHoldingKey(key, request, context: context, next: next)
        }
    }

    private func runHoldingKey(
        _ key: String,
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError where error.status.code < 500 {
            // A 4xx error is the answer to this request: render and keep it.
            response = try error.response(from: request, context: context)
        } catch {
            try? await self.store.release(key: key)
            throw error
        }
        guard response.status.code < 500 else {
            try? await self.store.release(key: key)
            return response
        }
        let collector = BodyCollector(limit: self.configuration.maxStoredResponseBytes)
        try await response.body.write(collector)
        guard let bytes = collector.bytes else {
            // Too large to store: send what was produced, and let a retry run again.
            try? await self.store.release(key: key)
            response.body = ResponseBody(contentsOf: collector.buffers)
            return response
        }
        try await self.store.complete(
            key: key,
            response: .init(status: response.status.code, contentType: response.headers[.contentType], body: bytes))
        response.body = ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))
        return response
    }

    /// SHA-256 of the method, the path with its query, and the body, in hex.
    static func fingerprint(_ request: Request, body: ByteBuffer) -> String {
        var hash = SHA256()
        hash.update(data: Array("\(request.method.rawValue) \(request.uri.description)\n".utf8))
        hash.update(data: Array(body.readableBytesView))
        return hash.finalize().map { String(format: "%02x", $0) }.joined()
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.aviaryNanoseconds / 1_000_000
    }
}

/// Collects a response body as it is written, up to a limit.
final class BodyCollector: ResponseBodyWriter, Sendable {
    private let state = Mutex<(buffers: [ByteBuffer], size: Int)>(([], 0))
    private let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// The body, or nil when it exceeded the limit.
    var bytes: [UInt8]? {
        self.state.withLock { state in
            guard state.size <= self.limit else { return nil }
            return state.buffers.flatMap { Array($0.readableBytesView) }
        }
    }

    /// Everything written, whatever its size.
    var buffers: [ByteBuffer] { self.state.withLock { $0.buffers } }

    func write(_ buffer: ByteBuffer) async throws {
        self.state.withLock { state in
            state.buffers.append(buffer)
            state.size += buffer.readableBytes
        }
    }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
