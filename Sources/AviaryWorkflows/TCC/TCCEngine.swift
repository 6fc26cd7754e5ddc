//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryMessaging
import Foundation
import Logging

/// An unfinished TCC transaction as its coordinator's table has it.
struct TCCLogEntry: Sendable {
    var id: String
    var status: String
    var participants: String
}

/// The coordinator's table (`aviary_tcc`), one implementation per backend.
protocol TCCLog: Sendable {
    /// Records a new transaction as `trying`; throws for an existing id.
    func insert(_ id: String, participants: String, expiresAt: Date, now: Date) async throws
    /// Moves a transaction to `status`, keeping the last error when `error` is nil.
    func set(_ id: String, _ status: TCCStatus, error: String?, now: Date) async throws
    /// Transactions in `trying`, `confirming` or `cancelling`.
    func unfinished() async throws -> [TCCLogEntry]
    /// A transaction's status, or nil.
    func status(_ id: String) async throws -> TCCStatus?
}

/// What ``TCCCoordinator`` and ``PostgresTCCCoordinator`` do, over either backend's table.
struct TCCEngine: Sendable {
    let log: any TCCLog
    let wallClock: any WallClock
    let logger: Logger

    func execute(
        _ id: String, participants: [any TCCParticipant], reservationTTL: Duration
    ) async throws -> TCCStatus {
        let now = self.wallClock.now
        let expiresAt = now.addingTimeInterval(reservationTTL.aviaryTimeInterval)
        let names = participants.map(\.name).joined(separator: ",")
        try await self.log.insert(id, participants: names, expiresAt: expiresAt, now: now)
        var failure: String?
        for participant in participants {
            do {
                try await participant.tryReserve(TCCRequest(transactionID: id, expiresAt: expiresAt))
            } catch {
                failure = "\(participant.name): \(error)"
                break
            }
        }
        if failure == nil && self.wallClock.now >= expiresAt {
            failure = "the reservations expired before every participant had reserved"
        }
        let next: TCCStatus = failure == nil ? .confirming : .cancelling
        try await self.log.set(id, next, error: failure, now: self.wallClock.now)
        return try await self.finish(id, next, participants)
    }

    func recover(_ participants: [String: any TCCParticipant]) async throws -> Int {
        var finished = 0
        for entry in try await self.log.unfinished() {
            let members = try entry.participants.split(separator: ",").map { name in
                guard let participant = participants[String(name)] else {
                    throw SagaError(.unknownSaga, "TCC transaction \(entry.id) names an unknown participant \(name)")
                }
                return participant
            }
            var phase = TCCStatus(rawValue: entry.status) ?? .cancelling
            if phase == .trying {
                phase = .cancelling
                try await self.log.set(
                    entry.id, .cancelling, error: "interrupted while trying", now: self.wallClock.now)
            }
            if try await self.finish(entry.id, phase, members) != phase { finished += 1 }
        }
        return finished
    }

    private func finish(
        _ id: String, _ phase: TCCStatus, _ participants: [any TCCParticipant]
    ) async throws -> TCCStatus {
        var errors: [String] = []
        for participant in participants {
            do {
                if phase == .confirming {
                    try await participant.confirm(id)
                } else {
                    try await participant.cancel(id)
                }
            } catch {
                errors.append("\(participant.name): \(error)")
            }
        }
        guard errors.isEmpty else {
            self.logger.warning(
                "TCC phase incomplete; recover() retries it",
                metadata: ["transaction": "\(id)", "phase": "\(phase.rawValue)", "errors": "\(errors)"])
            try await self.log.set(id, phase, error: errors.joined(separator: "; "), now: self.wallClock.now)
            return phase
        }
        let final: TCCStatus = phase == .confirming ? .confirmed : .cancelled
        try await self.log.set(id, final, error: nil, now: self.wallClock.now)
        return final
    }
}
