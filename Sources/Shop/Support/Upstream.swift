//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AsyncHTTPClient
import AviaryCore
import AviaryResilience
import AviaryService
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1

/// A response read in full from an upstream service.
struct UpstreamResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: ByteBuffer

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(self.body.readableBytesView))
    }

    /// The body as problem details, if it is one.
    var problem: ProblemDetails? {
        try? JSONDecoder().decode(ProblemDetails.self, from: Data(self.body.readableBytesView))
    }
}

/// An upstream answered with a server error (5xx). Thrown inside the pipeline, so that the
/// breaker counts it as a failure and ``Retry`` may repeat an idempotent call.
struct UpstreamServerError: Error, CustomStringConvertible, RetryAfterProviding {
    var service: String
    var response: UpstreamResponse

    var retryAfter: Duration? {
        self.response.headers.first(name: "retry-after").flatMap(Int.init).map { .seconds($0) }
    }

    var description: String {
        "\(self.service) answered \(self.response.status)\(self.response.problem?.detail.map { ": \($0)" } ?? "")"
    }
}

/// How Shop calls another Shop service: HTTP/1.1 on 127.0.0.1 through a resilience pipeline,
/// built once per upstream.
///
/// Pipeline, outermost first: total timeout → retry (idempotent calls only, budgeted) →
/// circuit breaker (sees each attempt) → per-try timeout. (`ServiceClient` in AviaryService
/// generalises this with discovery and load balancing.)
final class Upstream: Sendable {
    struct Policy: Sendable {
        var totalTimeout: Duration = .seconds(2)
        var perTryTimeout: Duration = .milliseconds(500)
        var maxAttempts: Int = 3
        var backoffBase: Duration = .milliseconds(25)
        var breaker: CircuitBreaker.Configuration = .init()
    }

    let name: String
    let book: AddressBook
    let http: HTTPClient
    let breaker: CircuitBreaker
    let pipeline: ResiliencePipeline<UpstreamResponse>
    static let maxBodyBytes = 1 << 20

    init(name: String, book: AddressBook, http: HTTPClient, policy: Policy, breakerClock: any MonotonicClock) {
        self.name = name
        self.book = book
        self.http = http
        var breakerConfiguration = policy.breaker
        breakerConfiguration.name = name
        let breaker = CircuitBreaker(breakerConfiguration, clock: breakerClock)
        self.breaker = breaker
        self.pipeline = ResiliencePipeline {
            Timeout(policy.totalTimeout, name: "\(name)-total")
            Retry(
                .init(
                    name: name,
                    maxAttempts: policy.maxAttempts,
                    backoff: .exponential(base: policy.backoffBase, cap: .milliseconds(250))
                )
            )
            breaker
            Timeout(policy.perTryTimeout, name: "\(name)-per-try")
        }
    }

    /// Sends a request and reads the response; 5xx answers throw ``UpstreamServerError``.
    func send(
        _ method: HTTPMethod,
        _ path: String,
        body: Data? = nil,
        headers: [(String, String)] = [],
        idempotent: Bool
    ) async throws -> UpstreamResponse {
        let name = self.name
        let book = self.book
        let http = self.http
        return try await self.pipeline.run(PolicyContext(idempotent: idempotent)) {
            let endpoint = try book.require(name)
            var request = HTTPClientRequest(url: endpoint.url + path)
            request.method = method
            for (header, value) in headers { request.headers.add(name: header, value: value) }
            if let body {
                request.headers.add(name: "content-type", value: "application/json")
                request.body = .bytes(ByteBuffer(bytes: body))
            }
            // The callee learns the budget left (the per-try timeout's deadline, or the caller's).
            if let budget = DeadlineMiddleware<BasicRequestContext>.headerValue() {
                request.headers.add(name: DeadlineMiddleware<BasicRequestContext>.headerName.rawName, value: budget)
            }
            // The per-try Timeout bounds the wait; the client's own timeout is a backstop.
            let remaining = Deadline.current?.remaining() ?? .seconds(30)
            let timeout = TimeAmount.nanoseconds(max(remaining.aviaryNanoseconds, 1))
            let response = try await http.execute(request, timeout: timeout)
            let body = try await response.body.collect(upTo: Upstream.maxBodyBytes)
            let result = UpstreamResponse(status: Int(response.status.code), headers: response.headers, body: body)
            if result.status >= 500 {
                throw UpstreamServerError(service: name, response: result)
            }
            return result
        }
    }
}
