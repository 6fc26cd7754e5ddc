//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryService
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization
import Testing

@Suite("DeadlineMiddleware", .timeLimit(.minutes(3)))
struct DeadlineMiddlewareTests {
    @Test("the caller's remaining budget becomes the handler's deadline; 0 is a 504 and garbage a 400")
    func budget() async throws {
        let clock = ManualClock()
        let runs = Atomic<Int>(0)
        let router = Router()
        router.add(middleware: ProblemMiddleware(logger: quiet))
        router.add(middleware: DeadlineMiddleware(clock: clock))
        router.get("/budget") { _, _ -> String in
            runs.add(1, ordering: .relaxed)
            guard let remaining = Deadline.current?.remaining(clock: clock) else { return "none" }
            return "\(remaining.aviaryNanoseconds / 1_000_000)"
        }
        let header = DeadlineMiddleware<BasicRequestContext>.headerName
        try await Application(router: router).test(.router) { client in
            try await client.execute(uri: "/budget", method: .get, headers: [header: "1500"]) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "1500")
            }
            try await client.execute(uri: "/budget", method: .get) { response in
                #expect(String(buffer: response.body) == "none")
            }
            try await client.execute(uri: "/budget", method: .get, headers: [header: "0"]) { response in
                #expect(response.status == .gatewayTimeout)
                #expect(String(buffer: response.body).contains("deadline-exceeded"))
            }
            for bad in ["abc", "-5", "1.5", "99999999999"] {
                try await client.execute(uri: "/budget", method: .get, headers: [header: bad]) { response in
                    #expect(response.status == .badRequest, "\(bad)")
                }
            }
        }
        #expect(runs.load(ordering: .relaxed) == 2, "rejected requests never reach the handler")
    }

    @Test("headerValue carries the current task's remaining budget in whole milliseconds")
    func headerValue() async {
        let clock = ManualClock()
        #expect(DeadlineMiddleware<BasicRequestContext>.headerValue(clock: clock) == nil)
        await withDeadline(.after(.milliseconds(2500), clock: clock)) {
            clock.advance(by: .milliseconds(700))
            #expect(DeadlineMiddleware<BasicRequestContext>.headerValue(clock: clock) == "1800")
            clock.advance(by: .seconds(5))
            #expect(DeadlineMiddleware<BasicRequestContext>.headerValue(clock: clock) == "0")
        }
    }
}
