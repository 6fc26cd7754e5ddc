//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import Metrics
import Tracing

/// Bounds how long an operation may run, and makes the bound a deadline that nested calls see.
///
/// The effective deadline is the earlier of `now + timeout` and the caller's
/// ``AviaryCore/Deadline/current``: a nested call never gets more than its caller has left. The
/// operation runs with that deadline set (task-local and `ServiceContext`), so clients further
/// down propagate it. When the deadline comes first, the operation's task is cancelled and
/// ``ResilienceError/Code-swift.struct/timedOut`` is thrown; the timer is cancelled as soon as the
/// operation finishes.
///
/// ```swift
/// let perTry = Timeout(.milliseconds(500))
/// let body = try await perTry.run(.idempotent) { try await inventory.get(sku) }
/// ```
///
/// A timeout outside ``Retry`` bounds the whole call with its backoff; inside it bounds each
/// attempt, and its expiry is a failure the ``CircuitBreaker`` between them counts.
public struct Timeout: ResiliencePolicy {
    /// How a ``Timeout`` is set up.
    public struct Configuration: Sendable, Hashable {
        /// The name used in metrics and errors.
        public var name: String
        /// The longest an operation may run. Must be positive.
        public var timeout: Duration

        /// Creates a configuration.
        ///
        /// - Precondition: `timeout` is positive.
        public init(name: String = "timeout", timeout: Duration = .seconds(10)) {
            precondition(timeout > .zero, "Timeout.timeout must be positive, got \(timeout)")
            self.name = name
            self.timeout = timeout
        }
    }

    /// The configuration this policy was built with.
    public let configuration: Configuration
    let clock: any MonotonicClock
    let counters: ResilienceMetrics.CallCounters

    /// Creates a timeout policy.
    public init(_ configuration: Configuration, clock: any MonotonicClock = SystemClock()) {
        self.configuration = configuration
        self.clock = clock
        self.counters = ResilienceMetrics.CallCounters(policy: "timeout", name: configuration.name)
    }

    /// Creates a timeout policy of `timeout`.
    ///
    /// - Precondition: `timeout` is positive.
    public init(_ timeout: Duration, name: String = "timeout", clock: any MonotonicClock = SystemClock()) {
        self.init(Configuration(name: name, timeout: timeout), clock: clock)
    }

    public func execute<Output: Sendable>(
        _ context: PolicyContext,
        _ next: @Sendable (PolicyContext) async throws -> Output
    ) async throws -> Output {
        let own = Deadline(self.clock.now.advanced(by: self.configuration.timeout))
        let outer = Deadline.current
        let deadline = Deadline.earliest(outer, own) ?? own
        let imposedByCaller = deadline != own
        if deadline.instant <= self.clock.now {
            self.counters.timeout.increment()
            context.recordEvent("timeout.expired", ["aviary.policy": .string(self.configuration.name)])
            throw self.timedOutError(imposedByCaller: imposedByCaller)
        }
        let clock = self.clock
        let result: Result<Output, any Error> = await withDeadline(deadline) {
            await withoutActuallyEscaping(next) { next in
                await withTaskGroup(of: Outcome<Output>.self) { group in
                    group.addTask {
                        do {
                            return .finished(.success(try await next(context)))
                        } catch {
                            return .finished(.failure(error))
                        }
                    }
                    group.addTask {
                        do {
                            try await clock.sleep(until: deadline.instant, tolerance: nil)
                            return .expired
                        } catch {
                            return .timerCancelled
                        }
                    }
                    var outcome: Result<Output, any Error>?
                    while let event = await group.next() {
                        switch event {
                        case .finished(let result):
                            if outcome == nil { outcome = result }
                            group.cancelAll()
                        case .expired:
                            if outcome == nil { outcome = .failure(TimedOutMarker()) }
                            group.cancelAll()
                        case .timerCancelled:
                            break
                        }
                    }
                    // Both children always report; `outcome` is set by whichever finished first.
                    return outcome ?? .failure(CancellationError())
                }
            }
        }
        switch result {
        case .success(let value):
            self.counters.success.increment()
            return value
        case .failure(let error) where error is TimedOutMarker:
            self.counters.timeout.increment()
            context.recordEvent("timeout.expired", ["aviary.policy": .string(self.configuration.name)])
            throw self.timedOutError(imposedByCaller: imposedByCaller)
        case .failure(let error):
            self.counters.failure.increment()
            throw error
        }
    }

    private func timedOutError(imposedByCaller: Bool) -> ResilienceError {
        let reason =
            imposedByCaller
            ? "the caller's deadline passed before the call finished"
            : "the call took longer than \(self.configuration.timeout)"
        return ResilienceError(
            .timedOut, "\(self.configuration.name): \(reason)", policyName: self.configuration.name)
    }

    private enum Outcome<Output: Sendable>: Sendable {
        case finished(Result<Output, any Error>)
        case expired
        case timerCancelled
    }

    private struct TimedOutMarker: Error {}
}
