//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import NIOCore
import NIOHTTP1
import Synchronization
import Tracing

// What the proxy records per request: counters of its loop (plain integers), the outlier
// detector's view of each upstream answer (an atomic or two), a span when a tracer is set and
// an access log line when one is configured. Without tracer and access log, a request costs a
// clock read and a few additions here.

/// The request being answered on one connection, for metrics, the access log and its span.
struct RequestRecord {
    var active = false
    var start = NIODeadline.uptimeNanoseconds(0)
    var method: HTTPMethod = .GET
    var uri = ""
    var route: RouteCounters?
    var routeLabel: String?
    /// The status sent (or being sent) to the client; 0 until one is known.
    var status = 0
    var cluster: String?
    var endpoint: Endpoint?
    var span: (any Span)?
}

/// Why an upstream attempt produced no answer.
enum UpstreamFailureKind {
    case connect
    case reset
    case timeout
}

extension ProxyHandler {
    /// Starts recording a request whose head just arrived.
    func beginRecord(_ head: RequestHead) {
        self.record = RequestRecord(active: true, start: .now(), method: head.method, uri: head.uri)
        if let tracer = self.core.tracer {
            var parent = ServiceContext.topLevel
            tracer.extract(head.nio.headers, into: &parent, using: GatewayHeadersExtractor())
            let span = tracer.startSpan(head.method.rawValue, context: parent, ofKind: .server)
            if span.isRecording {
                span.attributes["http.request.method"] = head.method.rawValue
                span.attributes["url.path"] = String(RouteTable.path(of: head.uri))
            }
            self.record.span = span
        }
    }

    /// Notes the route that took the request.
    func recordRoute(_ route: CompiledRoute) {
        let label = self.core.routeLabels[route.index]
        self.record.route = self.upstreams.routeCounters[route.index]
        self.record.routeLabel = label
        if let span = self.record.span, span.isRecording {
            span.operationName = "\(self.record.method.rawValue) \(label)"
            span.attributes["http.route"] = label
        }
    }

    /// Writes the request's trace context (W3C `traceparent`, `tracestate`) into the upstream
    /// request: the gateway's span becomes the upstream's parent; without an incoming
    /// `traceparent` this starts a new trace.
    func injectTrace(into headers: inout HTTPHeaders) {
        guard let span = self.record.span, let tracer = self.core.tracer else { return }
        tracer.inject(span.context, into: &headers, using: GatewayHeadersInjector())
    }

    /// Records an upstream answer of `exchange`'s current attempt.
    func recordUpstream(_ exchange: Exchange, status: UInt) {
        let slot = statusClass(Int(status))
        exchange.cluster.metrics.responses[slot] &+= 1
        exchange.pool.metrics.responses[slot] &+= 1
        exchange.cluster.state.record(exchange.pool.state, status: status)
        self.record.cluster = exchange.clusterName
        self.record.endpoint = exchange.pool.endpoint
    }

    /// Records an attempt of `exchange` that got no answer.
    func recordUpstream(_ exchange: Exchange, failure: UpstreamFailureKind) {
        switch failure {
        case .connect: exchange.cluster.metrics.connectErrors &+= 1
        case .reset: exchange.cluster.metrics.resets &+= 1
        case .timeout: exchange.cluster.metrics.timeouts &+= 1
        }
        exchange.cluster.state.record(exchange.pool.state, status: nil)
        self.record.cluster = exchange.clusterName
        self.record.endpoint = exchange.pool.endpoint
    }

    /// Ends the request's record: counters, span, access log line. Safe to call twice.
    func endRecord(status: Int) {
        guard self.record.active else { return }
        self.record.active = false
        let elapsed = NIODeadline.now() - self.record.start
        let nanoseconds = elapsed.nanoseconds
        let slot = statusClass(status)
        self.record.route?.record(statusClass: slot, nanoseconds: nanoseconds)
        if let span = self.record.span {
            if span.isRecording {
                if status > 0 {
                    span.attributes["http.response.status_code"] = status
                }
                if status >= 500 || status == 0 { span.setStatus(SpanStatus(code: .error)) }
                if let endpoint = self.record.endpoint {
                    span.attributes["server.address"] = endpoint.host
                    span.attributes["server.port"] = endpoint.port
                }
            }
            span.end()
            self.record.span = nil
        }
        if let log = self.core.accessLog {
            var line = AccessLogLine()
            line.field("time", AccessLogLine.timestamp())
            line.field("client", self.clientAddress ?? "")
            line.field("method", self.record.method.rawValue)
            line.field("target", self.record.uri)
            line.field("status", status)
            line.field("duration_ms", milliseconds: nanoseconds)
            if let route = self.record.routeLabel { line.field("route", route) }
            if let cluster = self.record.cluster { line.field("cluster", cluster) }
            if let endpoint = self.record.endpoint { line.field("endpoint", endpoint.description) }
            self.loop.log(line.finish(), to: log)
        }
    }
}

extension GatewayLoop {
    /// Queues an access log line; the lines of one loop iteration are written as one batch.
    func log(_ line: [UInt8], to log: AccessLog) {
        if let target = self.logTarget, target !== log {
            self.flushLog()
        }
        self.logTarget = log
        self.logBuffer.append(contentsOf: line)
        if !self.logFlushScheduled {
            self.logFlushScheduled = true
            self.eventLoop.assumeIsolated().execute { self.flushLog() }
        }
    }

    func flushLog() {
        self.logFlushScheduled = false
        guard let target = self.logTarget, !self.logBuffer.isEmpty else { return }
        target.write(self.logBuffer)
        self.logBuffer.removeAll(keepingCapacity: true)
    }
}

/// Reads W3C trace context from NIO request headers.
struct GatewayHeadersExtractor: Extractor {
    func extract(key: String, from carrier: HTTPHeaders) -> String? {
        carrier.first(name: key)
    }
}

/// Writes W3C trace context into NIO request headers.
struct GatewayHeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) {
        carrier.replaceOrAdd(name: key, value: value)
    }
}
