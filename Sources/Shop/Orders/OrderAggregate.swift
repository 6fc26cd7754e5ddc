//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryEventSourcing
import Foundation

/// One line of an order.
public struct OrderItem: Codable, Sendable, Equatable {
    public var sku: String
    public var quantity: Int
    public var unitPriceCents: Int
}

/// An order was placed (recorded first, before any stock is reserved or money taken); also the
/// `order.placed` CloudEvent `orders` publishes through its outbox: from `/shop/orders`, subject
/// and partition key the order id.
public struct OrderPlaced: DomainEvent, Equatable {
    public static let eventType = "order.placed"
    /// The topic order events go to.
    public static let topic = "orders"
    /// The events' source.
    public static let source = "/shop/orders"
    /// The events' type.
    public static let type = OrderPlaced.eventType

    public var orderId: String
    public var userId: String
    public var totalCents: Int
    public var items: [OrderItem] = []
}

/// The order's stock was taken and its payment captured: it is final. Also the
/// `order.confirmed` CloudEvent (from `/shop/orders`, subject the order id).
public struct OrderConfirmed: DomainEvent, Equatable {
    public static let eventType = "order.confirmed"
    public var orderId: String
    public var userId: String
    public var paymentId: String
    public var totalCents: Int
}

/// The order was given up and everything it held given back (stock released, payment refunded).
/// Also the `order.cancelled` CloudEvent (from `/shop/orders`, subject the order id).
public struct OrderCancelled: DomainEvent, Equatable {
    public static let eventType = "order.cancelled"
    public var orderId: String
    public var userId: String
    public var reason: String
}

/// `payments` declined the charge; the saga compensates and the order is cancelled next.
public struct PaymentDeclined: DomainEvent, Equatable {
    public static let eventType = "order.payment-declined"
    public var orderId: String
    public var reason: String
}

/// `inventory` could not reserve the stock; the order is cancelled next.
public struct StockUnavailable: DomainEvent, Equatable {
    public static let eventType = "order.stock-unavailable"
    public var orderId: String
    public var reason: String
}

/// An order as `orders` answers it: `pending` while its saga runs, then `confirmed` (with the
/// payment) or `cancelled` (with the reason).
public struct Order: Codable, Sendable, Equatable {
    public var id: String
    public var userId: String
    public var items: [OrderItem]
    public var totalCents: Int
    /// `pending`, `confirmed` or `cancelled`.
    public var status: String
    /// The captured payment of a confirmed order.
    public var paymentId: String?
    /// Why a cancelled order was cancelled.
    public var cancelReason: String?
}

/// The event-sourced order: its stream `order-<id>` holds ``OrderPlaced``, then
/// ``PaymentDeclined`` or ``StockUnavailable`` when the saga fails, then ``OrderConfirmed`` or
/// ``OrderCancelled``. Every command is idempotent: a command that already took effect decides
/// no events, so a saga step that runs again after a crash changes nothing.
///
/// ```swift
/// let state = try await book.execute(.confirm(paymentID: "pay-1"), on: "ord-17")
/// print(state.order?.status)   // confirmed
/// ```
public enum OrderAggregate: Aggregate {
    /// The order so far, and why its saga failed (if it did).
    public struct State: Codable, Sendable, Equatable {
        public var order: Order?
        /// Why the saga could not complete, as the failing step recorded it.
        public var failure: String?
    }

    /// What an order can be asked to do.
    public enum Command: Sendable {
        case place(OrderPlaced)
        case declinePayment(reason: String)
        case markStockUnavailable(reason: String)
        case confirm(paymentID: String)
        case cancel(reason: String)
    }

    public static let category = "order"
    public static let events = EventCatalog([
        OrderPlaced.self, OrderConfirmed.self, OrderCancelled.self, PaymentDeclined.self, StockUnavailable.self,
    ])
    public static var initialState: State { State() }

    public static func decide(_ command: Command, state: State) throws -> [any DomainEvent] {
        switch command {
        case .place(let placed):
            guard let order = state.order else { return [placed] }
            guard order.userId == placed.userId, order.items == placed.items, order.totalCents == placed.totalCents
            else {
                throw AviaryError(.conflict, "order \(placed.orderId) exists with other contents")
            }
            return []
        case .declinePayment(let reason):
            guard let order = state.order, order.status == "pending", state.failure == nil else { return [] }
            return [PaymentDeclined(orderId: order.id, reason: reason)]
        case .markStockUnavailable(let reason):
            guard let order = state.order, order.status == "pending", state.failure == nil else { return [] }
            return [StockUnavailable(orderId: order.id, reason: reason)]
        case .confirm(let paymentID):
            guard let order = state.order else { throw AviaryError(.notFound, "no order to confirm") }
            switch order.status {
            case "pending":
                return [
                    OrderConfirmed(
                        orderId: order.id, userId: order.userId, paymentId: paymentID, totalCents: order.totalCents)
                ]
            case "confirmed": return []
            default: throw AviaryError(.conflict, "order \(order.id) is \(order.status); it cannot be confirmed")
            }
        case .cancel(let reason):
            guard let order = state.order else { return [] }
            switch order.status {
            case "pending": return [OrderCancelled(orderId: order.id, userId: order.userId, reason: reason)]
            case "cancelled": return []
            default: throw AviaryError(.conflict, "order \(order.id) is \(order.status); it cannot be cancelled")
            }
        }
    }

    public static func evolve(_ state: State, _ event: any DomainEvent) -> State {
        var state = state
        switch event {
        case let placed as OrderPlaced:
            state.order = Order(
                id: placed.orderId, userId: placed.userId, items: placed.items, totalCents: placed.totalCents,
                status: "pending")
        case let declined as PaymentDeclined:
            state.failure = "payment declined: \(declined.reason)"
        case let unavailable as StockUnavailable:
            state.failure = "stock unavailable: \(unavailable.reason)"
        case let confirmed as OrderConfirmed:
            state.order?.status = "confirmed"
            state.order?.paymentId = confirmed.paymentId
        case let cancelled as OrderCancelled:
            state.order?.status = "cancelled"
            state.order?.cancelReason = cancelled.reason
        default:
            break
        }
        return state
    }
}
