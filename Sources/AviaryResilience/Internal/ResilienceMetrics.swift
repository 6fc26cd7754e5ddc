//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Metrics

/// Every metric AviaryResilience emits, declared in one place.
///
/// | metric | type | labels |
/// | --- | --- | --- |
/// | `aviary_resilience_calls_total` | counter | policy, name, outcome (success, failure, rejected, timeout, fallback) |
/// | `aviary_circuit_breaker_state` | gauge | name (0 closed, 1 half-open, 2 open; forced-open 2, disabled 0) |
/// | `aviary_retry_budget_exhausted_total` | counter | name |
/// | `aviary_retry_attempts_total` | counter | name (attempts after the first) |
/// | `aviary_bulkhead_concurrent_calls` | gauge | name |
/// | `aviary_concurrency_limit` | gauge | name (the adaptive limit) |
///
/// Handles are created once when a policy is built, never per call.
enum ResilienceMetrics {
    static let callsTotal = "aviary_resilience_calls_total"
    static let breakerState = "aviary_circuit_breaker_state"
    static let retryBudgetExhausted = "aviary_retry_budget_exhausted_total"
    static let retryAttempts = "aviary_retry_attempts_total"
    static let bulkheadConcurrent = "aviary_bulkhead_concurrent_calls"
    static let concurrencyLimit = "aviary_concurrency_limit"

    /// The outcome label values of `aviary_resilience_calls_total`.
    enum Outcome: String, CaseIterable {
        case success, failure, rejected, timeout, fallback
    }

    /// One counter per outcome for a policy instance, created up front.
    struct CallCounters: Sendable {
        let success: Counter
        let failure: Counter
        let rejected: Counter
        let timeout: Counter
        let fallback: Counter

        /// - Parameter factory: the metrics backend; tests pass a `TestMetrics` instead of bootstrapping.
        init(policy: String, name: String, factory: any MetricsFactory = MetricsSystem.factory) {
            func make(_ outcome: Outcome) -> Counter {
                Counter(
                    label: ResilienceMetrics.callsTotal,
                    dimensions: [("policy", policy), ("name", name), ("outcome", outcome.rawValue)],
                    factory: factory
                )
            }
            self.success = make(.success)
            self.failure = make(.failure)
            self.rejected = make(.rejected)
            self.timeout = make(.timeout)
            self.fallback = make(.fallback)
        }
    }
}
