//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

extension Retry {
    /// Decides, after a failed attempt worth retrying, whether and when the next attempt runs.
    ///
    /// A plain value with no clock and no lock: the caller passes `now` and the deadline and
    /// performs the decision (withdraw from the budget, sleep, run). Checks, in order:
    /// attempts left, `Retry-After` not beyond `maxRetryAfter`, the delay ending before the
    /// deadline. The delay is `max(backoff, retryAfter)`.
    struct Planner {
        enum Decision: Hashable {
            /// Run attempt `attempt` after `delay`.
            case retry(attempt: Int, delay: Duration)
            /// Stop retrying.
            case giveUp(GiveUpReason)
        }

        enum GiveUpReason: Hashable {
            /// `maxAttempts` attempts have run.
            case attemptsExhausted
            /// The upstream asked for a wait longer than `maxRetryAfter`.
            case retryAfterTooLong(Duration)
            /// Waiting `delay` would reach or pass the deadline.
            case deadline(delay: Duration)
        }

        let maxAttempts: Int
        let maxRetryAfter: Duration?
        private var backoff: Backoff.Iterator
        /// The number of the attempt that ran last (1-based).
        private(set) var attempt: Int

        init(maxAttempts: Int, maxRetryAfter: Duration?, backoff: Backoff) {
            self.maxAttempts = maxAttempts
            self.maxRetryAfter = maxRetryAfter
            self.backoff = backoff.makeIterator()
            self.attempt = 1
        }

        /// Plans the attempt after the one that just failed.
        ///
        /// - Parameters:
        ///   - retryAfter: the wait the failure asked for (`Retry-After`), if any.
        ///   - now: the current instant on the policy's clock.
        ///   - deadline: the caller's deadline, if any.
        mutating func next(retryAfter: Duration?, now: MonotonicInstant, deadline: Deadline?) -> Decision {
            guard self.attempt < self.maxAttempts else { return .giveUp(.attemptsExhausted) }
            if let retryAfter, let maxRetryAfter = self.maxRetryAfter, retryAfter > maxRetryAfter {
                return .giveUp(.retryAfterTooLong(retryAfter))
            }
            let backoff = self.backoff.next() ?? .zero
            let delay = max(backoff, retryAfter ?? .zero)
            if let deadline, now.advanced(by: delay) >= deadline.instant {
                return .giveUp(.deadline(delay: delay))
            }
            self.attempt += 1
            return .retry(attempt: self.attempt, delay: delay)
        }
    }
}
