//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A bounded map from keys to values that evicts the least recently used entry, for per-key state
/// that attackers could otherwise grow without bound (``KeyedRateLimiter``, keyed
/// ``Fallback`` last-known-good values).
///
/// Entries live in one array linked into a recency list by indices, so lookups, touches, inserts
/// and evictions are O(1) and reuse freed slots instead of allocating per entry. Memory is bounded
/// by `capacity` entries (plus the keys' own storage). Not thread-safe: owners hold it in a `Mutex`.
struct LRUTable<Value> {
    fileprivate struct Node {
        var key: String
        /// nil in a free slot, so that evicted values are released at once.
        var value: Value?
        /// Index of the next more recently used node, or -1.
        var newer: Int
        /// Index of the next less recently used node, or -1.
        var older: Int
    }

    /// The most entries the table holds.
    let capacity: Int
    private var slots: [String: Int] = [:]
    private var nodes: [Node] = []
    private var free: [Int] = []
    private var newest = -1
    private var oldest = -1

    /// Creates an empty table.
    ///
    /// - Precondition: `capacity >= 1`.
    init(capacity: Int) {
        precondition(capacity >= 1, "LRUTable capacity must be at least 1, got \(capacity)")
        self.capacity = capacity
    }

    /// The number of entries.
    var count: Int { self.slots.count }

    /// The keys from most to least recently used (for tests and diagnostics; O(n)).
    var keysByRecency: [String] {
        var keys: [String] = []
        keys.reserveCapacity(self.count)
        var index = self.newest
        while index >= 0 {
            keys.append(self.nodes[index].key)
            index = self.nodes[index].older
        }
        return keys
    }

    /// Whether `key` has an entry; does not change recency.
    func contains(_ key: String) -> Bool {
        self.slots[key] != nil
    }

    /// The value for `key` without changing recency.
    func peek(_ key: String) -> Value? {
        guard let index = self.slots[key] else { return nil }
        return self.nodes[index].value
    }

    /// Runs `body` on the value of `key` and marks the entry most recently used.
    ///
    /// - Returns: `body`'s result, or nil when there is no entry for `key`.
    mutating func withValue<Result>(forKey key: String, _ body: (inout Value) -> Result) -> Result? {
        guard let index = self.slots[key], var value = self.nodes[index].value else { return nil }
        // Take the value out while `body` runs so that it is uniquely referenced (no copy on write).
        self.nodes[index].value = nil
        let result = body(&value)
        self.nodes[index].value = value
        self.touch(index)
        return result
    }

    /// Inserts or replaces the value of `key` as the most recently used entry.
    ///
    /// When a new key finds the table full, one entry is evicted first: the least recently used
    /// among the `scanLimit` oldest entries for which `isDisposable` is true (entries that carry no
    /// information), or else the least recently used entry.
    ///
    /// - Returns: the evicted entry, if any.
    @discardableResult
    mutating func insert(
        _ value: Value,
        forKey key: String,
        scanLimit: Int = 8,
        isDisposable: (Value) -> Bool = { _ in false }
    ) -> (key: String, value: Value)? {
        if let index = self.slots[key] {
            self.nodes[index].value = value
            self.touch(index)
            return nil
        }
        var evicted: (key: String, value: Value)?
        if self.count >= self.capacity {
            evicted = self.evict(scanLimit: scanLimit, isDisposable: isDisposable)
        }
        let node = Node(key: key, value: value, newer: -1, older: -1)
        let index: Int
        if let reused = self.free.popLast() {
            self.nodes[reused] = node
            index = reused
        } else {
            self.nodes.append(node)
            index = self.nodes.count - 1
        }
        self.slots[key] = index
        self.linkAsNewest(index)
        return evicted
    }

    /// Removes the entry of `key`.
    @discardableResult
    mutating func removeValue(forKey key: String) -> Value? {
        guard let index = self.slots[key] else { return nil }
        return self.remove(at: index).value
    }

    /// Removes every entry for which `shouldRemove` is true. O(n).
    ///
    /// - Returns: the number of entries removed.
    @discardableResult
    mutating func removeAll(where shouldRemove: (Value) -> Bool) -> Int {
        var removed = 0
        var index = self.oldest
        while index >= 0 {
            let newer = self.nodes[index].newer
            if let value = self.nodes[index].value, shouldRemove(value) {
                self.remove(at: index)
                removed += 1
            }
            index = newer
        }
        return removed
    }

    // MARK: Recency list

    private mutating func evict(scanLimit: Int, isDisposable: (Value) -> Bool) -> (key: String, value: Value)? {
        var index = self.oldest
        var scanned = 0
        while index >= 0, scanned < scanLimit {
            if let value = self.nodes[index].value, isDisposable(value) {
                return self.remove(at: index)
            }
            index = self.nodes[index].newer
            scanned += 1
        }
        guard self.oldest >= 0 else { return nil }
        return self.remove(at: self.oldest)
    }

    @discardableResult
    private mutating func remove(at index: Int) -> (key: String, value: Value) {
        self.unlink(index)
        let key = self.nodes[index].key
        self.slots.removeValue(forKey: key)
        let value = self.nodes[index].value
        self.nodes[index].value = nil
        self.nodes[index].key = ""
        self.free.append(index)
        guard let value else { preconditionFailure("LRUTable entry without a value") }
        return (key, value)
    }

    private mutating func touch(_ index: Int) {
        guard index != self.newest else { return }
        self.unlink(index)
        self.linkAsNewest(index)
    }

    private mutating func unlink(_ index: Int) {
        let newer = self.nodes[index].newer
        let older = self.nodes[index].older
        if newer >= 0 { self.nodes[newer].older = older } else { self.newest = older }
        if older >= 0 { self.nodes[older].newer = newer } else { self.oldest = newer }
        self.nodes[index].newer = -1
        self.nodes[index].older = -1
    }

    private mutating func linkAsNewest(_ index: Int) {
        self.nodes[index].newer = -1
        self.nodes[index].older = self.newest
        if self.newest >= 0 { self.nodes[self.newest].newer = index } else { self.oldest = index }
        self.newest = index
    }
}

extension LRUTable: Sendable where Value: Sendable {}
extension LRUTable.Node: Sendable where Value: Sendable {}
