//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Synchronization

/// The results a last-known-good ``Fallback`` remembers: one for all calls, or one per key in a
/// bounded least-recently-used table.
final class LastKnownGood<Output: Sendable>: Sendable {
    struct Entry: Sendable {
        var value: Output
        var at: MonotonicInstant
    }

    private enum Storage: Sendable {
        case single(Entry?)
        case keyed(LRUTable<Entry>)
    }

    private let storage: Mutex<Storage>

    /// - Parameter maxKeys: nil for one shared entry; otherwise the most keys remembered.
    init(maxKeys: Int?) {
        if let maxKeys {
            self.storage = Mutex(.keyed(LRUTable(capacity: maxKeys)))
        } else {
            self.storage = Mutex(.single(nil))
        }
    }

    /// Remembers `value` as the newest success for `key` (nil shares `""` when keyed).
    func remember(_ value: Output, key: String?, at instant: MonotonicInstant) {
        let entry = Entry(value: value, at: instant)
        self.storage.withLock { storage in
            switch storage {
            case .single:
                storage = .single(entry)
            case .keyed(var table):
                // Move the table out so that it is updated in place, not copied.
                storage = .single(nil)
                table.insert(entry, forKey: key ?? "")
                storage = .keyed(table)
            }
        }
    }

    /// The newest success for `key`, if any is remembered.
    func recall(key: String?) -> Entry? {
        self.storage.withLock { storage in
            switch storage {
            case .single(let entry): entry
            case .keyed(let table): table.peek(key ?? "")
            }
        }
    }

    /// The number of results remembered.
    var count: Int {
        self.storage.withLock { storage in
            switch storage {
            case .single(let entry): entry == nil ? 0 : 1
            case .keyed(let table): table.count
            }
        }
    }
}
