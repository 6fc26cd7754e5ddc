//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOHTTP1

/// A route's `cors:` policy, compiled once (Fetch standard, CORS protocol).
///
/// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
/// gateway: `204` with the allowed methods and headers when the origin, method and headers are
/// allowed, `403` otherwise; it never reaches the upstream, nor authentication (browsers send no
/// credentials on preflights). Other requests from an allowed origin get
/// `Access-Control-Allow-Origin` (and `-Allow-Credentials`) on their response; requests from
/// other origins go through unchanged, and the browser keeps the response from the page.
struct RouteCORS: Sendable {
    enum Decision {
        /// Not a cross-origin request, or an origin that is not allowed: nothing to add.
        case none
        /// A preflight to answer with `204` and these headers.
        case preflight([(String, String)])
        /// A preflight that asks for more than is allowed.
        case forbidden(String)
        /// An allowed cross-origin request: add these headers to its response.
        case actual([(String, String)])
    }

    let anyOrigin: Bool
    let origins: Set<String>
    let methods: [String]
    let anyHeader: Bool
    let headers: Set<String>
    let maxAge: String?
    let credentials: Bool
    let allowMethodsValue: String
    let allowHeadersValue: String

    init(_ cors: GatewayConfiguration.CORS) {
        self.anyOrigin = cors.allowOrigins.contains("*")
        self.origins = Set(cors.allowOrigins)
        self.methods = cors.allowMethods
        self.anyHeader = cors.allowHeaders.contains("*")
        self.headers = Set(cors.allowHeaders)
        self.maxAge = cors.maxAge.map { String($0.components.seconds) }
        self.credentials = cors.allowCredentials
        self.allowMethodsValue = cors.allowMethods.joined(separator: ", ")
        self.allowHeadersValue = cors.allowHeaders.joined(separator: ", ")
    }

    func check(_ head: HTTPRequestHead) -> Decision {
        guard let origin = head.headers.first(name: "origin") else { return .none }
        let allowed = self.anyOrigin || self.origins.contains(origin)
        let isPreflight =
            head.method == .OPTIONS && head.headers.contains(name: "access-control-request-method")
        guard isPreflight else {
            return allowed ? .actual(self.originHeaders(origin)) : .none
        }
        guard allowed else { return .forbidden("origin \(origin) is not allowed") }
        let method = head.headers.first(name: "access-control-request-method") ?? ""
        guard self.methods.contains(method) else { return .forbidden("method \(method) is not allowed") }
        var requested: [String] = []
        for value in head.headers["access-control-request-headers"] {
            for name in value.split(separator: ",") {
                let lowered = name.trimmingWhitespace().lowercased()
                if !lowered.isEmpty { requested.append(lowered) }
            }
        }
        if !self.anyHeader, let refused = requested.first(where: { !self.headers.contains($0) }) {
            return .forbidden("request header \(refused) is not allowed")
        }
        var headers = self.originHeaders(origin)
        headers.append(("access-control-allow-methods", self.allowMethodsValue))
        if self.anyHeader {
            if !requested.isEmpty {
                headers.append(("access-control-allow-headers", requested.joined(separator: ", ")))
            }
        } else if !self.allowHeadersValue.isEmpty {
            headers.append(("access-control-allow-headers", self.allowHeadersValue))
        }
        if let maxAge { headers.append(("access-control-max-age", maxAge)) }
        return .preflight(headers)
    }

    private func originHeaders(_ origin: String) -> [(String, String)] {
        var headers: [(String, String)] = [
            ("access-control-allow-origin", self.anyOrigin && !self.credentials ? "*" : origin)
        ]
        if self.credentials { headers.append(("access-control-allow-credentials", "true")) }
        if !self.anyOrigin || self.credentials { headers.append(("vary", "Origin")) }
        return headers
    }
}

/// A route's `fault:` policy, drawn per request from the gateway's ``GatewayRandom``.
struct RouteFault: Sendable {
    /// Parts per million of requests delayed, and by how long.
    let delayShare: UInt64
    let delay: Duration
    /// Parts per million of requests aborted, and with which status.
    let abortShare: UInt64
    let status: Int

    init(_ fault: GatewayConfiguration.Fault) {
        self.delayShare = fault.delay.map { UInt64(($0.ratio * 1_000_000).rounded()) } ?? 0
        self.delay = fault.delay?.duration ?? .zero
        self.abortShare = fault.abort.map { UInt64(($0.ratio * 1_000_000).rounded()) } ?? 0
        self.status = fault.abort?.status ?? 503
    }

    func shouldAbort(_ random: GatewayRandom) -> Bool {
        self.abortShare > 0 && random.next(below: 1_000_000) < self.abortShare
    }

    func shouldDelay(_ random: GatewayRandom) -> Bool {
        self.delayShare > 0 && random.next(below: 1_000_000) < self.delayShare
    }
}
