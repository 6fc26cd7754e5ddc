//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Foundation

extension SagaStore {
    /// Sends a parked (`needs-attention`) saga back to compensating, from the step where it
    /// stopped, with a fresh attempt count; a running ``SagaRunner`` picks it up at its next pass.
    ///
    /// ```swift
    /// try await store.retryParked("order-17")
    /// ```
    ///
    /// - Throws: ``SagaError`` `.notFound`, or `.invalidState` when the saga is not parked.
    public func retryParked(_ id: String, at now: Date = Date()) async throws {
        try await self.operate(id, to: .compensating, note: "retried by an operator", at: now)
    }

    /// Gives up on a parked saga: it becomes `abandoned` (final), its history kept.
    ///
    /// ```swift
    /// try await store.abandon("order-17")
    /// ```
    ///
    /// - Throws: ``SagaError`` `.notFound`, or `.invalidState` when the saga is not parked.
    public func abandon(_ id: String, at now: Date = Date()) async throws {
        try await self.operate(id, to: .abandoned, note: "abandoned by an operator", at: now)
    }

    private func operate(_ id: String, to status: SagaStatus, note: String, at now: Date) async throws {
        guard var instance = try await self.instance(id) else {
            throw SagaError(.notFound, "no saga \(id)")
        }
        guard instance.status == .needsAttention else {
            throw SagaError(
                .invalidState, "saga \(id) is \(instance.status.rawValue); only a needs-attention saga can be changed")
        }
        let expected = instance.version
        instance.status = status
        instance.attempt = 0
        instance.wakeAt = nil
        instance.version = expected + 1
        instance.updatedAt = now
        let event = SagaEvent(step: instance.step, stepName: "", kind: .note, attempt: 0, error: note, at: now)
        try await self.update(instance, expectedVersion: expected, events: [event])
    }
}
