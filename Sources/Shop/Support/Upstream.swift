//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryDiscovery
import AviaryResilience
import AviaryService
import AviaryTelemetry
import Foundation
import NIOCore
import Tracing

extension ClientResponse {
    /// The body as problem details, if it is one.
    var problem: ProblemDetails? {
        try? JSONDecoder().decode(ProblemDetails.self, from: Data(self.body.readableBytesView))
    }
}

/// The endpoint of one Shop service, read from the ``AddressBook`` on every call, so that a
/// restarted service (on a new ephemeral port) is found again.
struct AddressBookEndpoints: EndpointProvider {
    let book: AddressBook
    let service: String

    func endpoints() -> [Endpoint] {
        self.book.endpoint(of: self.service).map { [$0] } ?? []
    }
}

/// One Shop dependency: a ``AviaryService/ServiceClient`` with Shop's pipeline, and the circuit
/// breaker in it (tests and probes look at its state).
///
/// Pipeline, outermost first: total timeout → retry (idempotent calls only, budgeted) →
/// circuit breaker (sees each attempt) → per-try timeout.
final class Upstream: Sendable {
    struct Policy: Sendable {
        var totalTimeout: Duration = .seconds(2)
        var perTryTimeout: Duration = .milliseconds(500)
        var maxAttempts: Int = 3
        var backoffBase: Duration = .milliseconds(25)
        /// Whether retries draw from a retry budget (20 % of calls plus 10 per second).
        var retryBudget = true
        var breaker: CircuitBreaker.Configuration = .init()
    }

    let name: String
    let breaker: CircuitBreaker
    let client: ServiceClient

    init(
        service: String, name: String, book: AddressBook, policy: Policy, breakerClock: any MonotonicClock,
        metrics: MetricsRegistry?, tracer: (any Tracer)?
    ) {
        self.name = name
        var breakerConfiguration = policy.breaker
        breakerConfiguration.name = name
        let breaker = CircuitBreaker(breakerConfiguration, clock: breakerClock)
        self.breaker = breaker
        let pipeline = ResiliencePipeline<ClientResponse> {
            Timeout(policy.totalTimeout, name: "\(name)-total")
            Retry(
                .init(
                    name: name,
                    maxAttempts: policy.maxAttempts,
                    backoff: .exponential(base: policy.backoffBase, cap: .milliseconds(250)),
                    budget: policy.retryBudget ? RetryBudget() : nil
                )
            )
            breaker
            Timeout(policy.perTryTimeout, name: "\(name)-per-try")
        }
        self.client = ServiceClient(
            service: service, upstream: name, endpoints: AddressBookEndpoints(book: book, service: name),
            pipeline: pipeline, metrics: metrics, maxBodyBytes: 1 << 20, tracer: tracer)
    }
}
