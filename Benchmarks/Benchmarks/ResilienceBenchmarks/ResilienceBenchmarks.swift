//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import Benchmark
import Dispatch
import Foundation
import ServiceContextModule

// Every figure is read against "bare call", measured in the same run: the overhead of a policy is
// its time per call minus the bare call's. Contended benchmarks make the same number of calls per
// thread on 1 and on 2 threads; the throughput ratio is 2 × time(1 thread) / time(2 threads).
//
// Contention runs on OS threads, not tasks: under this harness, two tasks in a task group do not
// run in parallel (even two tasks doing bare calls take twice as long as one), while the same code
// in a plain executable does. Threads measure the policies' shared state, which is the point.

/// The operation every benchmark wraps: an async call that returns a value, as cheap as a call
/// through a closure can be, so that what is measured is the policy.
@inline(never)
@Sendable
func operation() async throws -> Int { 1 }

/// The synchronous counterpart, for the thread benchmarks.
@inline(never)
func syncOperation() -> Int { 1 }

let callsPerThread = 1_000_000

enum BenchLocal {
    @TaskLocal static var deadline: Deadline?
}

/// Runs `body` `callsPerThread` times on each of `threads` OS threads and waits for all of them.
func onThreads(_ threads: Int, _ body: @escaping @Sendable () -> Void) {
    let group = DispatchGroup()
    for _ in 0..<threads {
        group.enter()
        let thread = Thread {
            for _ in 0..<callsPerThread { body() }
            group.leave()
        }
        thread.start()
    }
    group.wait()
}

/// A token bucket that never runs dry during a benchmark.
func unlimitedBucket() -> TokenBucket {
    TokenBucket(.init(rate: 1_000_000_000, period: .seconds(1), burst: 1_000_000_000))
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .instructions],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 1_000
    )

    // MARK: One call at a time

    Benchmark("bare call") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await operation())
        }
    }

    let breaker = CircuitBreaker(.init(name: "bench"))
    Benchmark("circuit breaker (closed)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await breaker.execute(PolicyContext()) { _ in try await operation() })
        }
    }

    let bucket = unlimitedBucket()
    Benchmark("token bucket tryAcquire") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(bucket.tryAcquire())
        }
    }

    let rateLimit = RateLimit(unlimitedBucket())
    Benchmark("token bucket policy") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await rateLimit.execute(PolicyContext()) { _ in try await operation() })
        }
    }

    let bulkhead = Bulkhead(.init(name: "bench", maxConcurrentCalls: 1_000))
    Benchmark("bulkhead (not full)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await bulkhead.execute(PolicyContext()) { _ in try await operation() })
        }
    }

    let limit = AdaptiveConcurrencyLimit(.init(name: "bench"))
    Benchmark("adaptive concurrency limit") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await limit.execute(PolicyContext()) { _ in try await operation() })
        }
    }

    let retry = Retry(.init(name: "bench"))
    Benchmark("retry (first attempt succeeds)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await retry.execute(.idempotent) { _ in try await operation() })
        }
    }

    let timeout = Timeout(.seconds(60))
    Benchmark("timeout (not firing)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await timeout.execute(PolicyContext()) { _ in try await operation() })
        }
    }

    // Where a timeout's cost goes: the deadline it sets for nested calls, and the child task that
    // runs the operation so that it can be cancelled without cancelling the caller.
    let clock = SystemClock()
    Benchmark("floor: withDeadline") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await withDeadline(Deadline.after(.seconds(60), clock: clock)) { try await operation() })
        }
    }
    Benchmark("floor: one task-local push") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(
                try await BenchLocal.$deadline.withValue(Deadline.after(.seconds(60), clock: clock)) {
                    try await operation()
                }
            )
        }
    }
    Benchmark("floor: ServiceContext push with a deadline") { benchmark in
        for _ in benchmark.scaledIterations {
            var context = ServiceContext.current ?? .topLevel
            context.deadline = Deadline.after(.seconds(60), clock: clock)
            blackHole(try await ServiceContext.$current.withValue(context) { try await operation() })
        }
    }
    Benchmark("floor: task group with one child") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(
                try await withThrowingTaskGroup(of: Int.self) { group in
                    group.addTask { try await operation() }
                    return try await group.next() ?? 0
                }
            )
        }
    }

    let pipeline = ResiliencePipeline<Int> {
        CircuitBreaker(.init(name: "bench-pipeline"))
        Bulkhead(.init(name: "bench-pipeline", maxConcurrentCalls: 1_000))
        RateLimit(unlimitedBucket())
        Timeout(.seconds(60))
    }
    Benchmark("pipeline breaker+bulkhead+limiter+timeout") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await pipeline.run { try await operation() })
        }
    }

    let noTimeout = ResiliencePipeline<Int> {
        CircuitBreaker(.init(name: "bench-pipeline-3"))
        Bulkhead(.init(name: "bench-pipeline-3", maxConcurrentCalls: 1_000))
        RateLimit(unlimitedBucket())
    }
    Benchmark("pipeline breaker+bulkhead+limiter") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try await noTimeout.run { try await operation() })
        }
    }

    // MARK: Contention: one shared breaker / bucket from 1 and from 2 threads

    let contended = Benchmark.Configuration(
        metrics: [.wallClock],
        scalingFactor: .one,
        maxDuration: .seconds(5),
        maxIterations: 20
    )
    for threads in [1, 2] {
        Benchmark("bare call, \(threads) thread(s) × \(callsPerThread) calls", configuration: contended) { _ in
            onThreads(threads) { blackHole(syncOperation()) }
        }
    }
    let sharedBreaker = CircuitBreaker(.init(name: "bench-contended"))
    for threads in [1, 2] {
        Benchmark("circuit breaker permit, \(threads) thread(s) × \(callsPerThread) calls", configuration: contended) {
            _ in
            onThreads(threads) {
                do {
                    let permit = try sharedBreaker.acquirePermission()
                    blackHole(syncOperation())
                    permit.record(.success)
                } catch {
                    fatalError("a closed breaker rejected a call: \(error)")
                }
            }
        }
    }
    let sharedBucket = unlimitedBucket()
    for threads in [1, 2] {
        Benchmark("token bucket, \(threads) thread(s) × \(callsPerThread) calls", configuration: contended) { _ in
            onThreads(threads) { blackHole(sharedBucket.tryAcquire()) }
        }
    }
}
