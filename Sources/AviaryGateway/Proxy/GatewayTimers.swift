//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore

/// Where the proxy's timers come from: route and per-try timeouts, header and idle timers, fault
/// delays, composition part and mirror timeouts.
///
/// The gateway uses ``EventLoopTimers`` (the event loop's own scheduler). Tests pass a source
/// whose time moves only when the test advances it, so that a timeout fires exactly when the
/// test says and never because a loaded machine was slow. Arming a timer costs one existential
/// call on top of the event loop's `scheduleTask`; nothing else is added per request.
///
/// ```swift
/// let timer = loop.timers.schedule(in: .seconds(5), on: context.eventLoop) { self.timedOut() }
/// timer.cancel()
/// ```
protocol GatewayTimers: Sendable {
    /// The current time on this source's clock (idle deadlines are measured against it).
    var now: NIODeadline { get }

    /// Runs `task` on `eventLoop` at `deadline` unless the returned timer is cancelled first.
    ///
    /// - Precondition: called on `eventLoop` (the task is not `Sendable`; it runs there too).
    func schedule(at deadline: NIODeadline, on eventLoop: any EventLoop, _ task: @escaping () -> Void) -> GatewayTimer
}

extension GatewayTimers {
    /// Runs `task` on `eventLoop` after `delay`, measured on this source's clock.
    func schedule(in delay: TimeAmount, on eventLoop: any EventLoop, _ task: @escaping () -> Void) -> GatewayTimer {
        self.schedule(at: self.now + delay, on: eventLoop, task)
    }
}

/// A timer armed by ``GatewayTimers``; ``cancel()`` stops it from firing.
struct GatewayTimer {
    private enum Kind {
        case scheduled(Scheduled<Void>)
        case custom(@Sendable () -> Void)
    }

    private let kind: Kind

    /// A timer of the event loop's scheduler.
    init(_ scheduled: Scheduled<Void>) {
        self.kind = .scheduled(scheduled)
    }

    /// A timer of another source, stopped by `cancel`.
    init(cancel: @escaping @Sendable () -> Void) {
        self.kind = .custom(cancel)
    }

    /// Stops the timer; nothing happens when it has fired already.
    func cancel() {
        switch self.kind {
        case .scheduled(let scheduled): scheduled.cancel()
        case .custom(let cancel): cancel()
        }
    }
}

/// The default ``GatewayTimers``: the event loop's scheduler and `NIODeadline.now()`.
struct EventLoopTimers: GatewayTimers {
    var now: NIODeadline { .now() }

    func schedule(at deadline: NIODeadline, on eventLoop: any EventLoop, _ task: @escaping () -> Void) -> GatewayTimer {
        GatewayTimer(eventLoop.assumeIsolated().scheduleTask(deadline: deadline, task))
    }
}
