//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// How many times each unacknowledged message of one (group, partition) was delivered, kept in a
/// few bytes instead of a row per message.
///
/// Every lease starts at the partition's head (its first unacknowledged offset) and covers a run
/// of offsets, and the head only moves forward. So for two offsets `a < b` at or after the head,
/// every lease that delivered `b` also delivered `a`: counts never increase with the offset. The
/// counts are a step function, stored as `(upTo, count)` steps with ascending `upTo` and strictly
/// non-increasing `count` at or after the head (steps before the head are ignored until
/// ``forget(before:)`` drops them); offsets after the last step were never delivered. Because a count
/// never exceeds the group's `maxDeliveries` before the message is poison, there are at most that
/// many steps. Backends store ``text`` (`"12:3,20:1"`) in their per-partition state.
package struct DeliveryCounts: Sendable, Hashable, Encodable {
    /// `(upTo, count)`: offsets in `(previous upTo, upTo]` were delivered `count` times.
    package private(set) var steps: [Step]

    package struct Step: Sendable, Hashable {
        package var upTo: Int64
        package var count: Int
    }

    /// No deliveries.
    package init() {
        self.steps = []
    }

    /// Parses ``text``; anything unreadable counts as no deliveries (the safe side: a message gets
    /// its full number of attempts again).
    package init(text: String) {
        var steps: [Step] = []
        for part in text.split(separator: ",") {
            let fields = part.split(separator: ":")
            guard fields.count == 2, let upTo = Int64(fields[0]), let count = Int(fields[1]), count >= 0 else {
                self.steps = []
                return
            }
            steps.append(Step(upTo: upTo, count: count))
        }
        self.steps = steps
    }

    /// `upTo:count` pairs separated by commas; empty for no deliveries.
    package var text: String {
        self.steps.map { "\($0.upTo):\($0.count)" }.joined(separator: ",")
    }

    /// How many times `offset` (at or after the head) was delivered.
    package func count(at offset: Int64) -> Int {
        self.steps.first { $0.upTo >= offset }?.count ?? 0
    }

    /// Adds `delta` deliveries to every offset in `from ... through`: `+1` for a lease that
    /// covered them, `-1` for a lease given back unprocessed or for the offsets after the one a
    /// lease ended on. Callers then ``forget(before:)`` the offsets before the head.
    package mutating func add(_ delta: Int, from: Int64, through: Int64) {
        guard through >= from else { return }
        var breakpoints = Set(self.steps.map(\.upTo))
        breakpoints.insert(through)
        breakpoints.insert(from - 1)
        var result: [Step] = []
        for upTo in breakpoints.sorted() {
            let count = max(0, self.count(at: upTo) + (upTo >= from && upTo <= through ? delta : 0))
            if let last = result.last, last.count == count {
                result[result.count - 1].upTo = upTo
            } else {
                result.append(Step(upTo: upTo, count: count))
            }
        }
        while let last = result.last, last.count == 0 { result.removeLast() }
        self.steps = result
    }

    /// Forgets offsets before `head` (acknowledged or skipped).
    package mutating func forget(before head: Int64) {
        self.steps.removeAll { $0.upTo < head }
    }

    /// Encodes ``text`` (as a PostgreSQL state row's `deliveries` column holds it).
    package func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.text)
    }
}
