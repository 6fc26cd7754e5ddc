// A loop for `perf record`: calls through a Timeout that never fires.
import AviaryCore
import AviaryResilience
import Dispatch

@inline(never)
@Sendable
func operation() async throws -> Int { 1 }

let timeout = Timeout(.seconds(60))
let done = DispatchSemaphore(value: 0)
Task.detached {
    var sum = 0
    for _ in 0..<2_000_000 {
        sum &+= try await timeout.execute(PolicyContext()) { _ in try await operation() }
    }
    print(sum)
    done.signal()
}
done.wait()
