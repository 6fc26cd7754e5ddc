//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Logging

enum LogMetadataMerge {
    /// Handler metadata, then the provider's (task-local context such as trace ids), then the
    /// call's own: a later source wins on a shared key, so the call always wins.
    static func merge(
        handler: Logger.Metadata,
        provider: Logger.MetadataProvider?,
        call: Logger.Metadata?
    ) -> Logger.Metadata {
        let provided = provider?.get() ?? [:]
        // Fast paths: most calls have metadata from one source only, and copying a dictionary
        // into an empty one rehashes every key.
        if provided.isEmpty {
            guard let call, !call.isEmpty else { return handler }
            if handler.isEmpty { return call }
        }
        var merged = handler
        if !provided.isEmpty {
            merged.merge(provided) { _, new in new }
        }
        if let call, !call.isEmpty {
            merged.merge(call) { _, new in new }
        }
        return merged
    }

    /// The same merge as ``merge(handler:provider:call:)``, as entries sorted by key: what a JSON
    /// line writes. Collecting into an array and sorting it avoids copying and rehashing the
    /// handler's dictionary on every line (the merge was a tenth of an access log line's cost).
    static func sortedEntries(
        handler: Logger.Metadata,
        provider: Logger.MetadataProvider?,
        call: Logger.Metadata?
    ) -> [(key: String, value: Logger.MetadataValue)] {
        let provided = provider?.get() ?? [:]
        var entries: [(key: String, value: Logger.MetadataValue, rank: Int)] = []
        entries.reserveCapacity(handler.count + provided.count + (call?.count ?? 0))
        for (key, value) in handler { entries.append((key, value, 0)) }
        for (key, value) in provided { entries.append((key, value, 1)) }
        if let call {
            for (key, value) in call { entries.append((key, value, 2)) }
        }
        // By key, then by source, so that the last of a run of equal keys is the one that wins.
        entries.sort { $0.key != $1.key ? $0.key < $1.key : $0.rank < $1.rank }
        var result: [(key: String, value: Logger.MetadataValue)] = []
        result.reserveCapacity(entries.count)
        for entry in entries {
            if let last = result.last, last.key == entry.key {
                result[result.count - 1].value = entry.value
            } else {
                result.append((entry.key, entry.value))
            }
        }
        return result
    }

    /// The plain text of a metadata value: strings as they are, nested values as swift-log prints them.
    static func text(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array, .dictionary: value.description
        }
    }
}
