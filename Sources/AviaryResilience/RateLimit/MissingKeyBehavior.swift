//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// What a keyed policy (``KeyedBulkhead``, ``KeyedRateLimiter``) does with a call that has no key.
///
/// ```swift
/// let perUser = KeyedRateLimiter(.init(algorithm: .tokenBucket(.init(rate: 10, period: .seconds(1))),
///                                      missingKey: .shareOneKey))
/// ```
public struct MissingKeyBehavior: Sendable, Hashable, CustomStringConvertible {
    private enum Wrapped: Hashable, Sendable {
        case shareOneKey, unlimited, reject
    }

    private let wrapped: Wrapped
    private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

    /// Calls without a key share one partition, tracked under the empty key `""` (the default):
    /// together they get what one key gets.
    public static let shareOneKey = MissingKeyBehavior(.shareOneKey)
    /// Calls without a key are not limited at all.
    public static let unlimited = MissingKeyBehavior(.unlimited)
    /// Calls without a key are refused (``KeyedBulkhead`` throws
    /// ``ResilienceError/Code-swift.struct/bulkheadFull``, ``KeyedRateLimiter`` denies them).
    public static let reject = MissingKeyBehavior(.reject)

    public var description: String {
        switch self.wrapped {
        case .shareOneKey: "shareOneKey"
        case .unlimited: "unlimited"
        case .reject: "reject"
        }
    }

    /// How to treat a call with `key`.
    enum Resolution: Hashable, Sendable {
        case key(String)
        case unlimited
        case reject
    }

    @inline(__always)
    func resolve(_ key: String?) -> Resolution {
        if let key { return .key(key) }
        switch self.wrapped {
        case .shareOneKey: return .key("")
        case .unlimited: return .unlimited
        case .reject: return .reject
        }
    }
}
