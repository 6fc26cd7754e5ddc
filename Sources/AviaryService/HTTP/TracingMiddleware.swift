//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import HTTPTypes
public import Hummingbird
import NIOHTTP1
public import Tracing

/// Starts a server span per request, continuing the caller's trace from its W3C `traceparent`
/// and `tracestate` headers, and makes the span current for the handler, so that log lines carry
/// its ids and the spans of database calls and upstream calls become its children.
///
/// The span is named `<METHOD> <route template>` (`GET /orders/{id}`; `<METHOD>` alone when no
/// route matched) and carries `http.request.method`, `url.path`, `http.route` and
/// `http.response.status_code`; a `5xx` answer or a thrown error marks it as an error. For a
/// streamed body the span ends when the body has been written.
///
/// ``AviaryApplication`` installs it first, and only when it has a tracer: without one there is
/// no middleware and so no cost.
///
/// ```swift
/// router.add(middleware: TracingMiddleware(tracer: backend.tracer))
/// ```
public struct TracingMiddleware<Context: RequestContext>: RouterMiddleware {
    let tracer: any Tracer

    /// Traces requests with `tracer`.
    public init(tracer: any Tracer) {
        self.tracer = tracer
    }

    /// Runs the rest of the chain inside the request's span.
    public func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var parent = ServiceContext.current ?? .topLevel
        self.tracer.extract(request.headers, into: &parent, using: HTTPFieldsExtractor())
        let method = request.method.rawValue
        let span = self.tracer.startSpan(method, context: parent, ofKind: .server)
        // A span sampled out still carries the trace context downstream (so that callees follow
        // the decision), but nothing is recorded on it: skip building its attributes.
        let recording = span.isRecording
        if recording {
            span.attributes["http.request.method"] = method
            span.attributes["url.path"] = request.uri.path
        }
        return try await ServiceContext.withValue(span.context) {
            var response: Response
            do {
                response = try await next(request, context)
            } catch {
                if recording {
                    Self.finish(span, method: method, route: context.endpointPath, status: nil)
                    span.recordError(error)
                }
                span.end()
                throw error
            }
            if recording {
                Self.finish(span, method: method, route: context.endpointPath, status: response.status.code)
            }
            let body = response.body
            guard body.contentLength == nil else {
                span.end()
                return response
            }
            response.body = ResponseBody(contentLength: nil) { writer in
                defer { span.end() }
                do {
                    try await body.write(writer)
                } catch {
                    if recording { span.recordError(error) }
                    throw error
                }
            }
            return response
        }
    }

    private static func finish(_ span: any Span, method: String, route: String?, status: Int?) {
        // Templates start with "/"; anything else (nil, or Hummingbird's "NotFound") matched no route.
        if let route, route.hasPrefix("/") {
            span.operationName = "\(method) \(route)"
            span.attributes["http.route"] = route
        }
        if let status {
            span.attributes["http.response.status_code"] = status
            if status >= 500 { span.setStatus(SpanStatus(code: .error)) }
        } else {
            span.setStatus(SpanStatus(code: .error))
        }
    }
}

/// Reads W3C trace context headers from a Hummingbird request.
struct HTTPFieldsExtractor: Extractor {
    func extract(key: String, from carrier: HTTPFields) -> String? {
        HTTPField.Name(key).flatMap { carrier[$0] }
    }
}

/// Writes W3C trace context headers into an AsyncHTTPClient request.
struct HTTPHeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) {
        carrier.replaceOrAdd(name: key, value: value)
    }
}
