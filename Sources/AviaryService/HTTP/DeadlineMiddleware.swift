//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
public import HTTPTypes
public import Hummingbird

/// Gives a request the time budget its caller has left, so that a callee never works past its
/// caller's deadline.
///
/// The caller sends its remaining budget as a relative number of milliseconds in
/// `x-aviary-timeout-ms` (relative, so that the two machines' clocks need not agree, as with
/// gRPC's `grpc-timeout`). The handler then runs with ``AviaryCore/Deadline/current`` set, and
/// every resilience policy and outgoing call in it sees the budget. A budget of `0` is answered
/// `504` (`deadline-exceeded`) without running the handler; a value that is not a whole number of
/// milliseconds is `400`. Requests without the header run without a deadline.
///
/// ```swift
/// router.add(middleware: DeadlineMiddleware())
/// // caller: request.headers[DeadlineMiddleware<BasicRequestContext>.headerName] = "1500"
/// ```
public struct DeadlineMiddleware<Context: RequestContext>: RouterMiddleware {
    /// The header that carries the remaining budget in milliseconds.
    public static var headerName: HTTPField.Name { HTTPField.Name("x-aviary-timeout-ms")! }

    let clock: any MonotonicClock

    /// Creates the middleware; `clock` measures the budget (a `ManualClock` in tests).
    public init(clock: any MonotonicClock = SystemClock()) {
        self.clock = clock
    }

    /// The header value for the current task's remaining budget, for outgoing requests; nil when
    /// there is no deadline.
    ///
    /// ```swift
    /// if let budget = DeadlineMiddleware<BasicRequestContext>.headerValue() {
    ///     request.headers.add(name: DeadlineMiddleware<BasicRequestContext>.headerName.rawName, value: budget)
    /// }
    /// ```
    public static func headerValue(clock: any MonotonicClock = SystemClock()) -> String? {
        guard let deadline = Deadline.current else { return nil }
        let nanoseconds = max(deadline.instant.offset.aviaryNanoseconds - clock.now.offset.aviaryNanoseconds, 0)
        return String(nanoseconds / 1_000_000)
    }

    /// Runs the rest of the chain under the caller's deadline, if it sent one.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let text = request.headers[Self.headerName] else {
            return try await next(request, context)
        }
        guard let milliseconds = Int64(text), milliseconds >= 0,
            milliseconds <= 86_400_000
        else {
            throw HTTPProblem(
                status: 400, slug: "invalid-timeout",
                detail: "x-aviary-timeout-ms: expected whole milliseconds in 0...86400000, got \"\(text)\"")
        }
        if milliseconds == 0 {
            throw HTTPProblem(
                status: 504, slug: "deadline-exceeded",
                detail: "the caller's deadline passed before the request arrived")
        }
        let deadline = Deadline(self.clock.now.advanced(by: .milliseconds(milliseconds)))
        return try await withDeadline(deadline) {
            try await next(request, context)
        }
    }
}
