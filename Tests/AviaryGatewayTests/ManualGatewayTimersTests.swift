//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore
import NIOPosix
import Testing

@testable import AviaryGateway

/// The tests' manual timers: a wait for a timer ends when it is armed, or with an error when the
/// waiting task is cancelled (as a test's time limit does), never by hanging.
@Suite("Manual gateway timers", .timeLimit(.minutes(1)))
struct ManualGatewayTimersTests {
    @Test("a wait ends when its timer is armed; a wait for one that never comes ends when cancelled")
    func waits() async throws {
        let timers = ManualGatewayTimers()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let armed = Task { try await timers.waitUntilArmed(.seconds(3)) }
        // Timers are armed on their event loop, as the gateway arms them.
        loop.execute { _ = timers.schedule(at: timers.now + .seconds(3), on: loop) {} }
        try await armed.value
        #expect(timers.armed == [.seconds(3)])

        let never = Task { try await timers.waitUntilArmed(.seconds(42)) }
        never.cancel()
        await #expect(throws: CancellationError.self) { try await never.value }
    }
}
