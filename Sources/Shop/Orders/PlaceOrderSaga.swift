//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import AviaryResilience
import AviaryService
import AviaryWorkflows
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// The state of one place-order saga (its id is the order id).
struct PlaceOrderState: Codable, Sendable, Equatable {
    var orderId: String
    var userId: String
    var items: [OrderItem]
    var totalCents: Int
    /// Set by the charge step.
    var paymentId: String?
}

/// A saga step that failed, with the problem the customer's request is answered with.
struct OrderStepFailure: Error, CustomStringConvertible {
    var problem: HTTPProblem

    var description: String {
        let slug = self.problem.problemDetails.type.split(separator: ":").last.map(String.init) ?? "failed"
        return "\(slug): \(self.problem.problemDetails.detail ?? "status \(self.problem.problemDetails.status)")"
    }
}

/// The problems of the steps of sagas whose `POST /orders` is still waiting for them, so that the
/// request can answer with the reason (payment declined, out of stock, a dependency down). Only
/// awaited sagas are noted, so nothing piles up for sagas resumed in the background.
final class SagaFailureNotes: Sendable {
    private let notes = Mutex<[String: HTTPProblem?]>([:])

    /// Starts noting the problems of `sagaID`, for a request that waits for it.
    func watch(_ sagaID: String) { self.notes.withLock { $0[sagaID] = .some(nil) } }

    /// Notes `problem` for `sagaID` if a request waits for it and nothing was noted yet.
    func note(_ sagaID: String, _ problem: HTTPProblem) {
        self.notes.withLock { notes in
            // The first problem is the reason; a compensation failing afterwards is not.
            if case .some(.none) = notes[sagaID] { notes[sagaID] = problem }
        }
    }

    /// The first problem noted for the saga; stops noting it.
    func take(_ sagaID: String) -> HTTPProblem? {
        self.notes.withLock { $0.removeValue(forKey: sagaID) ?? nil }
    }
}

/// The failpoints of the place-order saga, in the order a saga passes them: before and after
/// each step's effect, and before and after each compensation. "after" is after the callee
/// answered and before the runner records the step, the moment a crash makes the step run again.
enum PlaceOrderFailpoints {
    static let steps = ["place", "reserve", "charge", "commit", "confirm"]
    static let compensations = ["refund", "release", "cancel"]
    /// Every saga failpoint name (`saga.reserve.before`, ...).
    static let all: [String] = (steps + compensations).flatMap { ["saga.\($0).before", "saga.\($0).after"] }
}

extension OrdersService {
    /// The saga's name in the saga store.
    static let sagaName = "place-order"

    /// Place order, as an orchestrated saga in `orders`:
    ///
    /// | # | step | action | compensation |
    /// | --- | --- | --- | --- |
    /// | 0 | place order | append `OrderPlaced` (+ `order.placed` in the outbox) | append `OrderCancelled` |
    /// | 1 | reserve stock | `POST inventory /reservations` | `POST inventory /reservations/{id}/release` |
    /// | 2 | charge | `POST payments /payments` | `POST payments /payments/refunds` |
    /// | 3 | commit stock | `POST inventory /reservations/{id}/commit` | release (gives committed stock back) |
    /// | 4 | confirm order | append `OrderConfirmed` | — |
    ///
    /// Every call carries the step's idempotency key (`<order id>/<step>`, the same after a
    /// restart), so a step that runs again is applied once. Steps 1-3 also compensate their own
    /// failure: an attempt that failed may still have applied on the callee (the answer was lost),
    /// and their compensations are no-ops for an action that never applied (and make a late one
    /// fail: inventory and payments remember a release or refund that came first).
    ///
    /// An answer that no retry can change fails its step with `SagaStepError.final`, so the saga
    /// compensates at once instead of spending the step's retries: out of stock or an unknown SKU
    /// (reserve), a declined payment (charge), a reservation that is gone (commit), a saga that
    /// reached confirmation without a payment. Dependencies that are down fail reserve and charge
    /// at once too (their policy is one attempt, so that `POST /orders` answers at once), and are
    /// retried by commit and confirm, which come after the customer was charged.
    func makeSaga() -> Saga<PlaceOrderState> {
        let book = self.book
        let failpoint = self.failpoint
        let patient = StepRetryPolicy(maxAttempts: 5, backoff: .exponential(base: .milliseconds(100), cap: .seconds(2)))
        let place = SagaStep<PlaceOrderState>("place order", retry: patient) { state, _ in
            failpoint("saga.place.before")
            try await book.execute(
                .place(
                    OrderPlaced(
                        orderId: state.orderId, userId: state.userId, totalCents: state.totalCents, items: state.items)),
                on: state.orderId)
            failpoint("saga.place.after")
            return state
        } compensate: { state, _ in
            failpoint("saga.cancel.before")
            let reason = try await book.order(state.orderId)?.failure ?? "the order could not be completed"
            try await book.execute(.cancel(reason: reason), on: state.orderId)
            failpoint("saga.cancel.after")
        }
        var reserve = SagaStep<PlaceOrderState>("reserve stock", retry: .once) { state, context in
            failpoint("saga.reserve.before")
            try await self.reserve(state, context)
            failpoint("saga.reserve.after")
            return state
        } compensate: { state, context in
            failpoint("saga.release.before")
            try await self.release(state, context)
            failpoint("saga.release.after")
        }
        reserve.compensatesItsOwnFailure = true
        var charge = SagaStep<PlaceOrderState>("charge", retry: .once) { state, context in
            failpoint("saga.charge.before")
            var state = state
            state.paymentId = try await self.charge(state, context)
            failpoint("saga.charge.after")
            return state
        } compensate: { state, context in
            failpoint("saga.refund.before")
            try await self.refund(state, context)
            failpoint("saga.refund.after")
        }
        charge.compensatesItsOwnFailure = true
        var commit = SagaStep<PlaceOrderState>("commit stock", retry: patient) { state, context in
            failpoint("saga.commit.before")
            try await self.commitStock(state, context)
            failpoint("saga.commit.after")
            return state
        } compensate: { state, context in
            failpoint("saga.release.before")
            try await self.release(state, context)
            failpoint("saga.release.after")
        }
        commit.compensatesItsOwnFailure = true
        let confirm = SagaStep<PlaceOrderState>("confirm order", retry: patient) { state, _ in
            failpoint("saga.confirm.before")
            guard let paymentID = state.paymentId else {
                throw SagaStepError.final(
                    AviaryError(.internal, "order \(state.orderId) reached confirmation without a payment"))
            }
            try await book.execute(.confirm(paymentID: paymentID), on: state.orderId)
            failpoint("saga.confirm.after")
            return state
        }
        return Saga(
            Self.sagaName, steps: [place, reserve, charge, commit, confirm],
            compensationRetry: StepRetryPolicy(
                maxAttempts: 30, backoff: .exponential(base: .milliseconds(100), cap: .seconds(5))))
    }

    // MARK: Steps

    /// Fails the step with `problem`, noting it for a request that waits for the saga.
    private func fail(_ sagaID: String, _ problem: HTTPProblem) -> OrderStepFailure {
        self.notes.note(sagaID, problem)
        return OrderStepFailure(problem: problem)
    }

    /// One call to a dependency with the service token and the step's idempotency key; a
    /// dependency that cannot be reached fails the step with a `503` `dependency-unavailable`.
    private func send(
        _ upstream: Upstream, _ path: String, route: String, key: String, json: some Encodable, sagaID: String
    ) async throws -> ClientResponse {
        let headers =
            [("content-type", "application/json"), ("idempotency-key", key)] + (try await self.serviceToken.headers())
        let body = ByteBuffer(bytes: try JSONEncoder().encode(json))
        do {
            return try await upstream.client.execute(.POST, path, route: route, headers: headers, body: body)
        } catch {
            throw self.fail(sagaID, Self.unavailable(upstream.name, error))
        }
    }

    private func unexpected(_ upstream: Upstream, _ response: ClientResponse, sagaID: String) -> OrderStepFailure {
        self.fail(
            sagaID,
            HTTPProblem(
                status: 502, slug: "dependency-failed",
                detail:
                    "\(upstream.name) answered \(response.status): \(response.problem?.detail ?? "no problem details")",
                extensions: ["dependency": upstream.name]))
    }

    private func reserve(_ state: PlaceOrderState, _ context: StepContext) async throws {
        let items = state.items.map { ReservedItem(sku: $0.sku, quantity: $0.quantity) }
        let response = try await self.send(
            self.inventory, "/reservations", route: "/reservations", key: context.idempotencyKey,
            json: ReserveRequest(orderId: state.orderId, items: items), sagaID: state.orderId)
        switch response.status {
        case 200, 201:
            return
        case 409 where response.problem?.type.hasSuffix(":out-of-stock") == true,
            422 where response.problem?.type.hasSuffix(":unknown-sku") == true:
            let detail = response.problem?.detail ?? "out of stock"
            try await self.book.execute(.markStockUnavailable(reason: detail), on: state.orderId)
            throw SagaStepError.final(
                self.fail(
                    state.orderId,
                    HTTPProblem(
                        status: 409, slug: "out-of-stock", detail: "the stock cannot be reserved: \(detail)",
                        extensions: ["order_id": state.orderId])))
        default:
            throw self.unexpected(self.inventory, response, sagaID: state.orderId)
        }
    }

    private func release(_ state: PlaceOrderState, _ context: StepContext) async throws {
        let response = try await self.send(
            self.inventory, "/reservations/\(state.orderId)/release", route: "/reservations/{order}/release",
            key: context.idempotencyKey, json: [String: String](), sagaID: state.orderId)
        guard response.status == 200 else { throw self.unexpected(self.inventory, response, sagaID: state.orderId) }
    }

    private func commitStock(_ state: PlaceOrderState, _ context: StepContext) async throws {
        let response = try await self.send(
            self.inventory, "/reservations/\(state.orderId)/commit", route: "/reservations/{order}/commit",
            key: context.idempotencyKey, json: [String: String](), sagaID: state.orderId)
        switch response.status {
        case 200:
            return
        case 404, 409:
            // No reservation, or a released one: committing it again cannot succeed.
            throw SagaStepError.final(self.unexpected(self.inventory, response, sagaID: state.orderId))
        default:
            throw self.unexpected(self.inventory, response, sagaID: state.orderId)
        }
    }

    private func charge(_ state: PlaceOrderState, _ context: StepContext) async throws -> String {
        let response = try await self.send(
            self.payments, "/payments", route: "/payments", key: context.idempotencyKey,
            json: ChargeRequest(orderId: state.orderId, userId: state.userId, amountCents: state.totalCents),
            sagaID: state.orderId)
        switch response.status {
        case 200, 201:
            guard let payment = try? response.decode(Payment.self) else {
                throw self.unexpected(self.payments, response, sagaID: state.orderId)
            }
            return payment.id
        case 402:
            let detail = response.problem?.detail ?? "declined"
            try await self.book.execute(.declinePayment(reason: detail), on: state.orderId)
            throw SagaStepError.final(
                self.fail(
                    state.orderId,
                    HTTPProblem(
                        status: 402, slug: "payment-declined", detail: "payments refused the charge: \(detail)",
                        extensions: ["dependency": "payments", "order_id": state.orderId])))
        default:
            throw self.unexpected(self.payments, response, sagaID: state.orderId)
        }
    }

    private func refund(_ state: PlaceOrderState, _ context: StepContext) async throws {
        let response = try await self.send(
            self.payments, "/payments/refunds", route: "/payments/refunds", key: context.idempotencyKey,
            json: RefundRequest(orderId: state.orderId), sagaID: state.orderId)
        guard response.status == 200 else { throw self.unexpected(self.payments, response, sagaID: state.orderId) }
    }
}
