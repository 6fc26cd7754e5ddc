// Contention outside the benchmark harness (where tasks do run in parallel), for `perf record`:
//   ContentionProfile <threads|tasks> <1|2>
// `threads`: OS threads using one shared breaker through permits; `tasks`: tasks calling the
// breaker's closure API, and the same with a bare call, a shared token bucket and the pipeline.
import AviaryCore
import AviaryResilience
import Dispatch
import Foundation

let mode = CommandLine.arguments.dropFirst().first ?? "tasks"
let width = Int(CommandLine.arguments.dropFirst(2).first ?? "2") ?? 2
let calls = 2_000_000

@inline(never)
@Sendable
func operation() async throws -> Int { 1 }

func report(_ name: String, _ start: UInt64) {
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    print("\(name), \(width) × \(calls): \(String(format: "%.3f", elapsed)) s")
}

let breaker = CircuitBreaker(.init(name: "profile"))
if mode == "threads" {
    let group = DispatchGroup()
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<width {
        group.enter()
        Thread {
            for _ in 0..<calls {
                do {
                    let permit = try breaker.acquirePermission()
                    permit.record(.success)
                } catch {
                    fatalError("\(error)")
                }
            }
            group.leave()
        }.start()
    }
    group.wait()
    report("breaker permits on threads", start)
} else {
    let bucket = TokenBucket(.init(rate: 1_000_000_000, period: .seconds(1), burst: 1_000_000_000))
    let cases: [(String, @Sendable () async throws -> Void)] = [
        ("bare call", { _ = try await operation() }),
        ("breaker execute", { _ = try await breaker.execute(PolicyContext()) { _ in try await operation() } }),
        ("token bucket", { _ = bucket.tryAcquire() }),
    ]
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        for (name, body) in cases {
            let start = DispatchTime.now().uptimeNanoseconds
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<width {
                    group.addTask { for _ in 0..<calls { try await body() } }
                }
                try await group.waitForAll()
            }
            report(name, start)
        }
        done.signal()
    }
    done.wait()
}
