//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import Tracing

extension OutgoingMessage {
    /// Copies the trace context of `context` (the current task's by default) into ``headers``
    /// (`traceparent` and `tracestate` with a W3C tracer), so that the consumer's span continues
    /// the producer's trace.
    ///
    /// ```swift
    /// var message = OutgoingMessage(topic: "orders", event: placed)
    /// message.injectTraceContext(using: tracer)
    /// try await log.publish([message])
    /// ```
    ///
    /// - Parameters:
    ///   - tracer: the producer's tracer.
    ///   - context: the context to propagate; nothing is written without one.
    public mutating func injectTraceContext(using tracer: any Tracer, context: ServiceContext? = .current) {
        guard let context else { return }
        tracer.inject(context, into: &self.headers, using: HeaderInjector())
    }
}

/// Writes trace context into message headers.
struct HeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Reads trace context from message headers.
struct HeaderExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? {
        carrier[key]
    }
}
