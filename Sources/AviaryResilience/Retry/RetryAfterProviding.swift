//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// An error that knows when trying again may succeed, such as an HTTP 429 or 503 response with a
/// `Retry-After` header.
///
/// ``Retry`` waits at least ``retryAfter`` before the next attempt (the longer of it and the
/// backoff delay). ``ResilienceError`` conforms, so an inner policy's `retryAfter` is honoured too
/// when a custom predicate chooses to retry it.
///
/// ```swift
/// struct UpstreamUnavailable: Error, RetryAfterProviding {
///     var retryAfter: Duration?
/// }
/// throw UpstreamUnavailable(retryAfter: .seconds(2)) // parsed from `Retry-After: 2`
/// ```
public protocol RetryAfterProviding {
    /// The earliest time after which a new attempt may succeed, measured from when the error was
    /// received; `nil` when unknown.
    var retryAfter: Duration? { get }
}

extension ResilienceError: RetryAfterProviding {}
