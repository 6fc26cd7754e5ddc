//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Logging

/// Where a catch-up starts: the live generation, or a new one built side by side.
enum ProjectionPlan {
    /// Apply to this live generation.
    case live(Int64)
    /// The projection's version is newer than the live one, or a rebuild was requested.
    case rebuild
}

/// The generation steps that ``ProjectionRunner`` (SQLite) and ``PostgresProjectionRunner`` each
/// implement in their own SQL. Catching up over them, and the polling loop, are the same for both
/// and are written once here.
protocol GenerationalProjectionRunner: Sendable {
    /// The projection's name, for logs.
    var projectionName: String { get }
    var logger: Logger { get }
    /// How long ``runPolling(clock:)`` waits between catch-ups.
    var pollInterval: Duration { get }
    /// Finds the live generation (creating the first one), or decides to rebuild.
    func plan() async throws -> ProjectionPlan
    /// Takes the rebuild lock and creates the new generation's tables; returns its number.
    func prepareRebuild() async throws -> Int64
    /// The generation's checkpoint, where ``drain(_:rebuilding:)`` starts.
    func drainStart(_ generation: Int64, rebuilding: Bool) async throws -> Int64
    /// The next page of the global log after `position` (read while the previous page applies).
    func readPage(after position: Int64) async throws -> [RecordedEvent]
    /// Applies `page` in one transaction that first checks the checkpoint is still `after`;
    /// false when another replica moved it (nothing is written).
    func applyPage(_ page: [RecordedEvent], after: Int64, generation: Int64, rebuilding: Bool) async throws -> Bool
    /// Makes a caught-up rebuilt generation live; false when events arrived meanwhile.
    func switchOver(_ generation: Int64) async throws -> Bool
}

extension GenerationalProjectionRunner {
    /// Drains the live generation, or rebuilds side by side, drains until the switch succeeds,
    /// switches, and drains what arrived meanwhile.
    @discardableResult
    func catchUpGenerations() async throws -> ProjectionRunnerReport {
        switch try await self.plan() {
        case .live(let generation):
            let applied = try await self.drain(generation, rebuilding: false)
            return ProjectionRunnerReport(applied: applied, generation: generation, switched: false)
        case .rebuild:
            let generation = try await self.prepareRebuild()
            var applied = try await self.drain(generation, rebuilding: true)
            while try await !self.switchOver(generation) {
                applied += try await self.drain(generation, rebuilding: true)
            }
            self.logger.info(
                "projection rebuilt and switched",
                metadata: ["aviary.projection": "\(self.projectionName)", "aviary.generation": "\(generation)"])
            applied += try await self.drain(generation, rebuilding: false)
            return ProjectionRunnerReport(applied: applied, generation: generation, switched: true)
        }
    }

    /// Applies pages of events until a read finds nothing new; returns how many. The next page is
    /// read while the current one is applied (``ProjectionPages``), and each page's transaction
    /// checks that the checkpoint is still the position the page was read after.
    func drain(_ generation: Int64, rebuilding: Bool) async throws -> Int {
        var total = 0
        while true {
            let checkpoint = try await self.drainStart(generation, rebuilding: rebuilding)
            var moved = false
            try await ProjectionPages.forEach(
                after: checkpoint, read: { after in try await self.readPage(after: after) }
            ) { page, after in
                guard try await self.applyPage(page, after: after, generation: generation, rebuilding: rebuilding)
                else {
                    moved = true
                    return false
                }
                total += page.count
                return true
            }
            // Another replica moved the checkpoint: go on from where it is now.
            if !moved { return total }
        }
    }

    /// Catches up every ``pollInterval`` until the task is cancelled; handler failures and a
    /// rebuild held elsewhere are logged and retried. `newerVersionLive` and `invalidName` end it.
    func runPolling(clock: any MonotonicClock) async throws {
        while true {
            try Task.checkCancellation()
            do {
                try await self.catchUpGenerations()
            } catch let error as ProjectionError where error.kind != .newerVersionLive && error.kind != .invalidName {
                self.logger.warning(
                    "projection paused",
                    metadata: ["aviary.projection": "\(self.projectionName)", "error.message": "\(error)"])
            }
            try await clock.sleep(until: clock.now.advanced(by: self.pollInterval), tolerance: nil)
        }
    }
}

/// What both runners check and default to when they are created.
enum ProjectionRunnerSetup {
    /// Throws ``ProjectionError`` (`invalidName`) unless the projection's name and tables are
    /// letters, digits and single underscores, starting with a letter.
    static func validate(name: String, tables: [String]) throws {
        for candidate in [name] + tables where !ProjectionTables.isValidName(candidate) {
            throw ProjectionError(
                .invalidName,
                "projection \(name): \"\(candidate)\" is not a valid name (letters, digits and single "
                    + "underscores, starting with a letter)")
        }
    }

    /// A runner's name in the rebuild lock: host, process id and a random suffix.
    static func defaultOwner() -> String {
        let process = ProcessInfo.processInfo
        return "\(process.hostName):\(process.processIdentifier):\(UUID().uuidString.prefix(8).lowercased())"
    }
}
