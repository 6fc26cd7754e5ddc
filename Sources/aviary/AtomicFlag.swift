//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Synchronization

/// A flag that is set once; ``set()`` tells the first caller.
final class AtomicFlag: Sendable {
    private let value = Atomic<Bool>(false)

    /// Sets the flag; `true` only for the call that set it.
    func set() -> Bool {
        !self.value.exchange(true, ordering: .acquiringAndReleasing)
    }
}
