//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Yams

/// The sections of `gateway.yaml`, one function each.
extension ConfigurationParser {
    typealias Configuration = GatewayConfiguration

    mutating func listen(_ node: Node, _ path: String) -> Configuration.Listen {
        var listen = Configuration.Listen()
        let keys = ["address", "admin", "tls", "http2", "max_concurrent_streams"]
        guard let fields = self.fields(node, path, allowed: keys) else { return listen }
        if let value = fields["address"], let endpoint = self.endpoint(value, fields.path("address")) {
            listen.address = endpoint
        }
        if let value = fields["admin"], let endpoint = self.endpoint(value, fields.path("admin")) {
            listen.admin = endpoint
        }
        if let value = fields["tls"] { listen.tls = self.listenTLS(value, fields.path("tls")) }
        if let value = fields["http2"], let flag = self.bool(value, fields.path("http2")) {
            listen.http2 = flag
        }
        if let value = fields["max_concurrent_streams"],
            let number = self.int(
                value, fields.path("max_concurrent_streams"), in: 1...10_000,
                expected: "a number of streams in 1...10000")
        {
            listen.maxConcurrentStreams = number
        }
        return listen
    }

    /// `listen.tls`: two readable PEM files, and for mutual TLS a third with the clients' CAs
    /// (checked here, so that a typo is a configuration error rather than a failed start).
    mutating func listenTLS(_ node: Node, _ path: String) -> Configuration.Listen.TLS? {
        guard
            let fields = self.fields(
                node, path, allowed: ["certificate", "key", "client_ca", "client_certificate"])
        else { return nil }
        var files: [String: String] = [:]
        for key in ["certificate", "key", "client_ca"] {
            guard let value = fields[key] else {
                if key != "client_ca" { self.problem(fields.path(key), "is missing: expected a PEM file", node) }
                continue
            }
            guard let file = self.string(value, fields.path(key)) else { continue }
            if !FileManager.default.isReadableFile(atPath: file) {
                self.problem(fields.path(key), "cannot read \(Self.quoted(file))", value)
                continue
            }
            files[key] = file
        }
        var mode: Configuration.Listen.TLS.ClientCertificate?
        if let value = fields["client_certificate"],
            let text = self.scalar(value, fields.path("client_certificate"), expected: "require or optional")
        {
            switch text {
            case "require": mode = .require
            case "optional": mode = .optional
            default:
                self.problem(
                    fields.path("client_certificate"), "expected require or optional, got \(Self.quoted(text))", value)
            }
            if fields["client_ca"] == nil {
                self.problem(
                    fields.path("client_ca"), "is missing: client_certificate needs the CAs that sign them", value)
            }
        }
        guard let certificate = files["certificate"], let key = files["key"] else { return nil }
        return Configuration.Listen.TLS(
            certificateFile: certificate, keyFile: key, clientCAFile: files["client_ca"], clientCertificate: mode)
    }

    /// `true` or `false`.
    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        guard let text = self.scalar(node, path, expected: "true or false") else { return nil }
        switch text {
        case "true": return true
        case "false": return false
        default:
            self.problem(path, "expected true or false, got \(Self.quoted(text))", node)
            return nil
        }
    }

    mutating func limits(_ node: Node, _ path: String) -> Configuration.Limits {
        var limits = Configuration.Limits()
        let keys = [
            "max_connections", "max_header_bytes", "max_body_bytes", "header_timeout", "idle_timeout", "drain_timeout",
            "request_buffer_bytes",
        ]
        guard let fields = self.fields(node, path, allowed: keys) else { return limits }
        if let value = fields["max_connections"], let number = self.positiveInt(value, fields.path("max_connections")) {
            limits.maxConnections = number
        }
        if let value = fields["max_header_bytes"], let size = self.size(value, fields.path("max_header_bytes")) {
            if size < 1024 {
                self.problem(fields.path("max_header_bytes"), "expected at least 1024 bytes, got \(size)", value)
            } else {
                limits.maxHeaderBytes = size
            }
        }
        if let value = fields["max_body_bytes"], let size = self.size(value, fields.path("max_body_bytes")) {
            limits.maxBodyBytes = size
        }
        if let value = fields["header_timeout"],
            let duration = self.positiveDuration(value, fields.path("header_timeout"))
        {
            limits.headerTimeout = duration
        }
        if let value = fields["idle_timeout"], let duration = self.positiveDuration(value, fields.path("idle_timeout"))
        {
            limits.idleTimeout = duration
        }
        if let value = fields["drain_timeout"], let duration = self.duration(value, fields.path("drain_timeout")) {
            limits.drainTimeout = duration
        }
        if let value = fields["request_buffer_bytes"], let size = self.size(value, fields.path("request_buffer_bytes"))
        {
            limits.requestBufferBytes = size
        }
        return limits
    }

    mutating func cluster(_ node: Node, _ path: String, name: String) -> Configuration.Cluster? {
        let keys = [
            "endpoints", "load_balancer", "health_check", "outlier_detection", "circuit_breaker", "connect_timeout",
            "max_idle_connections", "hash_on", "protocol", "discovery", "tls",
        ]
        guard let fields = self.fields(node, path, allowed: keys) else { return nil }
        var cluster = Configuration.Cluster(name: name)
        let before = self.problemCount
        if let value = fields["protocol"],
            let text = self.scalar(value, fields.path("protocol"), expected: "http1 or h2")
        {
            if let upstreamProtocol = Configuration.Cluster.UpstreamProtocol(rawValue: text) {
                cluster.upstreamProtocol = upstreamProtocol
            } else {
                self.problem(fields.path("protocol"), "expected http1 or h2, got \(Self.quoted(text))", value)
            }
        }
        if let value = fields["endpoints"], let items = self.list(value, fields.path("endpoints")) {
            for (index, item) in items.enumerated() {
                if let endpoint = self.endpoint(item, "\(fields.path("endpoints"))[\(index)]") {
                    if endpoint.port == 0 {
                        self.problem(
                            "\(fields.path("endpoints"))[\(index)]", "expected a port in 1...65535, got 0", item)
                    }
                    cluster.endpoints.append(endpoint)
                }
            }
            if items.isEmpty {
                self.problem(fields.path("endpoints"), "expected at least one endpoint", value)
            }
        } else if fields["endpoints"] == nil && fields["discovery"] == nil {
            self.problem(
                fields.path("endpoints"), "is missing: expected a list of host:port (or discovery: {service: NAME})",
                node)
        }
        if let value = fields["discovery"] {
            if fields["endpoints"] != nil {
                self.problem(fields.path("discovery"), "cannot be used with endpoints: choose one", value)
            }
            if let discovery = self.fields(value, fields.path("discovery"), allowed: ["service"]) {
                if let service = discovery["service"] {
                    cluster.discovery = self.string(service, discovery.path("service"))
                } else {
                    self.problem(discovery.path("service"), "is missing: expected the service name to discover", value)
                }
            }
        }
        if let value = fields["load_balancer"],
            let text = self.scalar(value, fields.path("load_balancer"), expected: "a load balancer")
        {
            if let balancer = Configuration.LoadBalancer(name: text) {
                cluster.loadBalancer = balancer
            } else {
                self.problem(
                    fields.path("load_balancer"),
                    "expected one of \(Configuration.LoadBalancer.names.joined(separator: ", ")), got \(Self.quoted(text))",
                    value)
            }
        }
        if let value = fields["health_check"] {
            cluster.healthCheck = self.healthCheck(value, fields.path("health_check"))
            if cluster.healthCheck?.grpcService != nil, cluster.upstreamProtocol != .h2 {
                self.problem(
                    "\(fields.path("health_check")).grpc",
                    "needs protocol: h2 (gRPC health checks are HTTP/2 calls)", value)
            }
        }
        if let value = fields["outlier_detection"] {
            cluster.outlierDetection = self.outlierDetection(value, fields.path("outlier_detection"))
        }
        if let value = fields["circuit_breaker"] {
            cluster.circuitBreaker = self.circuitBreaker(value, fields.path("circuit_breaker"))
        }
        if let value = fields["connect_timeout"],
            let duration = self.positiveDuration(value, fields.path("connect_timeout"))
        {
            cluster.connectTimeout = duration
        }
        if let value = fields["max_idle_connections"],
            let number = self.int(
                value, fields.path("max_idle_connections"), in: 0...Int.max, expected: "a non-negative integer")
        {
            cluster.maxIdleConnections = number
        }
        if let value = fields["hash_on"] {
            cluster.hashOn = self.hashOn(value, fields.path("hash_on"))
            if cluster.loadBalancer != .ringHash {
                self.problem(fields.path("hash_on"), "only applies with load_balancer: ring_hash", value)
            }
        } else if cluster.loadBalancer == .ringHash {
            self.problem(
                fields.path("hash_on"), "is missing: ring_hash needs {header: <name>} or {cookie: <name>}",
                fields["load_balancer"])
        }
        if let value = fields["tls"] {
            cluster.tls = self.clusterTLS(value, fields.path("tls"), upstreamProtocol: cluster.upstreamProtocol)
        }
        return self.problemCount == before ? cluster : nil
    }

    /// `clusters.<name>.tls`: `{ca, server_name, certificate, key}`, each optional (`{}` trusts the
    /// system's roots); the files are read and parsed here, so that a typo or a file that is not
    /// PEM is a configuration error at start and on reload, never a failure of live traffic.
    mutating func clusterTLS(
        _ node: Node, _ path: String, upstreamProtocol: Configuration.Cluster.UpstreamProtocol
    ) -> Configuration.Cluster.TLS? {
        guard let fields = self.fields(node, path, allowed: ["ca", "server_name", "certificate", "key"]) else {
            return nil
        }
        let before = self.problemCount
        var files: [String: String] = [:]
        var contents: [String: String] = [:]
        for key in ["ca", "certificate", "key"] {
            guard let value = fields[key], let file = self.string(value, fields.path(key)) else { continue }
            guard let data = FileManager.default.contents(atPath: file) else {
                self.problem(fields.path(key), "cannot read \(Self.quoted(file))", value)
                continue
            }
            files[key] = file
            contents[key] = String(decoding: data, as: UTF8.self)
        }
        var serverName: String?
        if let value = fields["server_name"] { serverName = self.string(value, fields.path("server_name")) }
        guard self.problemCount == before else { return nil }
        var tls = Configuration.Cluster.TLS(
            trustRootsPEM: contents["ca"], serverName: serverName, certificateChainPEM: contents["certificate"],
            privateKeyPEM: contents["key"])
        tls.caFile = files["ca"]
        tls.certificateFile = files["certificate"]
        // What the gateway would make of them: each problem names its setting.
        if case .failure(let unavailable) = UpstreamTLS.make(tls, upstreamProtocol: upstreamProtocol) {
            for problem in unavailable.problems {
                self.problem(
                    problem.key.isEmpty ? path : fields.path(problem.key), problem.message, fields[problem.key] ?? node)
            }
            return nil
        }
        return tls
    }

    mutating func healthCheck(_ node: Node, _ path: String) -> Configuration.HealthCheck? {
        let keys = ["path", "grpc", "interval", "timeout", "healthy", "unhealthy"]
        guard let fields = self.fields(node, path, allowed: keys) else { return nil }
        var check = Configuration.HealthCheck()
        if let value = fields["path"], let text = self.path(value, fields.path("path")) { check.path = text }
        if let value = fields["grpc"] {
            if fields["path"] != nil {
                self.problem(fields.path("grpc"), "cannot be used with path: choose one", value)
            }
            if let grpc = self.fields(value, fields.path("grpc"), allowed: ["service"]) {
                check.grpcService = ""
                if let service = grpc["service"], let name = self.string(service, grpc.path("service")) {
                    check.grpcService = name
                }
            }
        }
        if let value = fields["interval"], let duration = self.positiveDuration(value, fields.path("interval")) {
            check.interval = duration
        }
        if let value = fields["timeout"], let duration = self.positiveDuration(value, fields.path("timeout")) {
            check.timeout = duration
        }
        if let value = fields["healthy"], let number = self.positiveInt(value, fields.path("healthy")) {
            check.healthyThreshold = number
        }
        if let value = fields["unhealthy"], let number = self.positiveInt(value, fields.path("unhealthy")) {
            check.unhealthyThreshold = number
        }
        if check.timeout > check.interval, let value = fields["timeout"] {
            self.problem(fields.path("timeout"), "expected a duration no longer than interval", value)
        }
        return check
    }

    mutating func outlierDetection(_ node: Node, _ path: String) -> Configuration.OutlierDetection? {
        let keys = ["consecutive_5xx", "base_ejection", "max_ejection_percent"]
        guard let fields = self.fields(node, path, allowed: keys) else { return nil }
        var detection = Configuration.OutlierDetection()
        if let value = fields["consecutive_5xx"], let number = self.positiveInt(value, fields.path("consecutive_5xx")) {
            detection.consecutive5xx = number
        }
        if let value = fields["base_ejection"],
            let duration = self.positiveDuration(value, fields.path("base_ejection"))
        {
            detection.baseEjection = duration
        }
        if let value = fields["max_ejection_percent"] {
            let path = fields.path("max_ejection_percent")
            if let number = self.int(value, path, in: 0...100, expected: "a percentage in 0...100") {
                detection.maxEjectionRatio = Double(number) / 100
            }
        }
        return detection
    }

    mutating func circuitBreaker(_ node: Node, _ path: String) -> Configuration.CircuitBreakerThresholds {
        var thresholds = Configuration.CircuitBreakerThresholds()
        let keys = ["max_connections", "max_pending", "max_requests"]
        guard let fields = self.fields(node, path, allowed: keys) else { return thresholds }
        if let value = fields["max_connections"], let number = self.positiveInt(value, fields.path("max_connections")) {
            thresholds.maxConnections = number
        }
        if let value = fields["max_pending"], let number = self.positiveInt(value, fields.path("max_pending")) {
            thresholds.maxPending = number
        }
        if let value = fields["max_requests"], let number = self.positiveInt(value, fields.path("max_requests")) {
            thresholds.maxRequests = number
        }
        return thresholds
    }

    mutating func discovery(_ node: Node, _ path: String) -> Configuration.DiscoverySettings? {
        guard let fields = self.fields(node, path, allowed: ["file", "interval"]) else { return nil }
        guard let value = fields["file"] else {
            self.problem(fields.path("file"), "is missing: expected the path of a discovery file", node)
            return nil
        }
        guard let file = self.string(value, fields.path("file")) else { return nil }
        var settings = Configuration.DiscoverySettings(file: file)
        if let value = fields["interval"], let duration = self.positiveDuration(value, fields.path("interval")) {
            settings.interval = duration
        }
        return settings
    }

    mutating func accessLog(_ node: Node, _ path: String) -> Configuration.AccessLogSettings? {
        guard let fields = self.fields(node, path, allowed: ["path"]) else { return nil }
        guard let value = fields["path"] else {
            self.problem(fields.path("path"), "is missing: expected stdout, stderr or a file path", node)
            return nil
        }
        guard let text = self.string(value, fields.path("path")) else { return nil }
        return Configuration.AccessLogSettings(path: text)
    }

    mutating func auth(_ node: Node, _ path: String) -> Configuration.Auth {
        var auth = Configuration.Auth()
        guard let fields = self.fields(node, path, allowed: ["jwt"]) else { return auth }
        guard let value = fields["jwt"] else { return auth }
        let jwtPath = fields.path("jwt")
        let keys = ["issuer", "audiences", "jwks_url", "jwks_file"]
        guard let jwt = self.fields(value, jwtPath, allowed: keys) else { return auth }
        let issuer = jwt["issuer"].flatMap { self.string($0, jwt.path("issuer")) }
        let audiences = jwt["audiences"].flatMap { self.stringList($0, jwt.path("audiences")) } ?? []
        var jwksURL: String?
        if let node = jwt["jwks_url"], let text = self.string(node, jwt.path("jwks_url")) {
            if text.hasPrefix("http://") || text.hasPrefix("https://") {
                jwksURL = text
            } else {
                self.problem(
                    jwt.path("jwks_url"), "expected an http:// or https:// URL, got \(Self.quoted(text))", node)
            }
        }
        let jwksFile = jwt["jwks_file"].flatMap { self.string($0, jwt.path("jwks_file")) }
        if jwt["issuer"] == nil { self.problem(jwt.path("issuer"), "is missing: expected a string", value) }
        switch (jwt["jwks_url"], jwt["jwks_file"]) {
        case (nil, nil):
            self.problem(jwt.path("jwks_url"), "is missing: expected jwks_url (a URL) or jwks_file (a path)", value)
        case (.some, .some):
            self.problem(jwt.path("jwks_file"), "give jwks_url or jwks_file, not both", jwt["jwks_file"])
        default:
            if let issuer, jwksURL != nil || jwksFile != nil {
                auth.jwt = .init(issuer: issuer, audiences: audiences, jwksURL: jwksURL, jwksFile: jwksFile)
            }
        }
        return auth
    }
}

extension ConfigurationParser {
    mutating func hashOn(_ node: Node, _ path: String) -> Configuration.HashOn? {
        guard let fields = self.fields(node, path, allowed: ["header", "cookie"]) else { return nil }
        switch (fields["header"], fields["cookie"]) {
        case (let value?, nil):
            return self.string(value, fields.path("header")).map { .header($0.lowercased()) }
        case (nil, let value?):
            return self.string(value, fields.path("cookie")).map { .cookie($0) }
        case (.some, .some):
            self.problem(fields.path("cookie"), "give header or cookie, not both", node)
            return nil
        case (nil, nil):
            self.problem(path, "expected {header: <name>} or {cookie: <name>}", node)
            return nil
        }
    }
}
