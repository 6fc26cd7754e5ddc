//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
public import AviaryMessaging
import Foundation

/// Command and reply messages of request steps (``SagaStep/request(_:retry:replyTimeout:send:onReply:compensate:)``),
/// correlated by saga id and step in their headers.
///
/// ```swift
/// // The callee's consumer, through its inbox, replies through its outbox:
/// let reply = try SagaCommand.reply(to: message, type: "payment.charged", source: "/shop/payments",
///                                   payload: Charged(paymentID: id))
/// try Outbox.enqueue(reply, in: db)
/// ```
public enum SagaCommand {
    /// Header: the saga's id.
    public static let sagaHeader = "aviary-saga-id"
    /// Header: the step index.
    public static let stepHeader = "aviary-saga-step"
    /// Header: where the reply goes.
    public static let replyTopicHeader = "aviary-reply-to"

    /// A command for the outbox: its event id is the step's idempotency key (the same on every
    /// resend), its key the saga id, its headers the correlation.
    public static func message(
        topic: String, replyTopic: String, type: String, source: String, payload: some Encodable, context: StepContext
    ) throws -> OutgoingMessage {
        let event = try CloudEvent(
            id: context.idempotencyKey, source: source, type: type, subject: context.sagaID, json: payload)
        return OutgoingMessage(
            topic: topic, key: context.sagaID, event: event,
            headers: [
                Self.sagaHeader: context.sagaID, Self.stepHeader: "\(context.step)", Self.replyTopicHeader: replyTopic,
            ])
    }

    /// The reply to a received command: to its reply topic, with its correlation headers and an
    /// event id derived from the command's (so a repeated reply is the same message).
    ///
    /// - Throws: ``SagaError`` `.invalidState` when `command` carries no saga headers.
    public static func reply(
        to command: Message, type: String, source: String, payload: some Encodable
    ) throws -> OutgoingMessage {
        guard let saga = command.headers[Self.sagaHeader], let step = command.headers[Self.stepHeader],
            let topic = command.headers[Self.replyTopicHeader]
        else {
            throw SagaError(
                .invalidState, "message \(command.event.id) is not a saga command (no \(Self.sagaHeader) headers)")
        }
        let event = try CloudEvent(
            id: "\(command.event.id)/reply", source: source, type: type, subject: saga, json: payload)
        return OutgoingMessage(
            topic: topic, key: saga, event: event, headers: [Self.sagaHeader: saga, Self.stepHeader: step])
    }
}
