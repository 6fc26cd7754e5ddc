//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

extension Retry {
    /// Decides whether a successful result should be retried, such as an HTTP response with
    /// status 503.
    ///
    /// ``Retry`` wraps operations of any result type, so the predicate is type-erased: it is
    /// built for one result type with ``on(_:_:)`` and, at run time, looks at results of that type
    /// only; results of any other type are accepted. It is evaluated only when it is set in the
    /// configuration.
    ///
    /// ```swift
    /// let retry = Retry(.init(
    ///     resultPredicate: .on(HTTPResponse.self) { response in
    ///         response.status == .serviceUnavailable ? .retry(after: response.retryAfter) : .accept
    ///     }
    /// ))
    /// ```
    ///
    /// When retries run out (or the budget or deadline stops them) after such a result, ``Retry``
    /// returns that last result rather than throwing: the caller sees the upstream's answer.
    public struct ResultPredicate: Sendable {
        /// What to do with a result.
        public enum Decision: Sendable, Hashable {
            /// Keep the result.
            case accept
            /// Try again, waiting at least `after` (e.g. the response's `Retry-After`) if given.
            case retry(after: Duration?)
        }

        private let decide: @Sendable (any Sendable) -> Decision

        private init(decide: @escaping @Sendable (any Sendable) -> Decision) {
            self.decide = decide
        }

        /// A predicate over results of type `type`; results of other types are accepted.
        ///
        /// - Parameters:
        ///   - type: the result type to inspect.
        ///   - decide: returns ``Decision/retry(after:)`` for results worth retrying.
        public static func on<Result: Sendable>(
            _ type: Result.Type,
            _ decide: @escaping @Sendable (Result) -> Decision
        ) -> ResultPredicate {
            ResultPredicate { value in
                guard let result = value as? Result else { return .accept }
                return decide(result)
            }
        }

        /// The decision for `value`.
        public func decision(for value: some Sendable) -> Decision {
            self.decide(value)
        }
    }
}
