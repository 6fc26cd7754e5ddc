//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Yams

/// `routes[i]` and its parts.
extension ConfigurationParser {
    static let routeKeys = [
        "match", "rewrite", "cluster", "split", "direct_response", "redirect", "compose", "auth", "timeout", "retry",
        "rate_limit", "cache", "cors", "fault", "request_headers", "response_headers", "mirror",
    ]

    mutating func route(
        _ node: Node, _ path: String, clusters: Set<String>, writtenClusters: Set<String>, jwtConfigured: Bool,
        clientCertificatesConfigured: Bool
    ) -> Configuration.Route? {
        guard let fields = self.fields(node, path, allowed: Self.routeKeys) else { return nil }
        let before = self.problemCount
        var match = Configuration.Match()
        if let value = fields["match"] {
            match = self.match(value, fields.path("match"))
        } else {
            self.problem(fields.path("match"), "is missing: expected a mapping such as {path_prefix: /api/}", node)
        }
        var rewrite: Configuration.Rewrite?
        if let value = fields["rewrite"] {
            rewrite = self.rewrite(value, fields.path("rewrite"), match: match)
        }
        var auth: Configuration.RouteAuth?
        if let value = fields["auth"] {
            auth = self.routeAuth(
                value, fields.path("auth"), jwtConfigured: jwtConfigured,
                clientCertificatesConfigured: clientCertificatesConfigured)
        }
        var destination = self.destination(fields, node, clusters: clusters, writtenClusters: writtenClusters)
        if let value = fields["compose"] {
            // `{jwt.sub}` needs a verified token, not a client certificate.
            destination = self.compose(
                value, fields.path("compose"), match: match,
                hasAuth: fields["auth"] != nil && auth?.require != "client_certificate",
                clusters: clusters, writtenClusters: writtenClusters
            ).map { .compose($0) }
        }
        var timeout: Duration?
        if let value = fields["timeout"] { timeout = self.positiveDuration(value, fields.path("timeout")) }
        var retry: Configuration.Retry?
        if let value = fields["retry"] { retry = self.retry(value, fields.path("retry")) }
        var rateLimit: Configuration.RateLimit?
        if let value = fields["rate_limit"] {
            rateLimit = self.rateLimit(value, fields.path("rate_limit"))
            if let key = rateLimit?.key, key.hasPrefix("jwt."), fields["auth"] == nil || auth?.require != "jwt" {
                self.problem(
                    ConfigurationParser.join(fields.path("rate_limit"), "key"),
                    "\(Self.quoted(key)) needs a verified token: add auth: {require: jwt} to the route", value)
            }
        }
        var cache: Configuration.Cache?
        if let value = fields["cache"] { cache = self.cache(value, fields.path("cache")) }
        var cors: Configuration.CORS?
        if let value = fields["cors"] { cors = self.cors(value, fields.path("cors")) }
        var fault: Configuration.Fault?
        if let value = fields["fault"] { fault = self.fault(value, fields.path("fault")) }
        var requestHeaders: Configuration.HeaderRewrite?
        if let value = fields["request_headers"] {
            requestHeaders = self.headerRewrite(value, fields.path("request_headers"))
        }
        var responseHeaders: Configuration.HeaderRewrite?
        if let value = fields["response_headers"] {
            responseHeaders = self.headerRewrite(value, fields.path("response_headers"))
        }
        var mirror: Configuration.Mirror?
        if let value = fields["mirror"],
            let mirrorFields = self.fields(value, fields.path("mirror"), allowed: ["cluster", "percent"])
        {
            let name = mirrorFields["cluster"].flatMap {
                self.clusterReference($0, mirrorFields.path("cluster"), clusters, writtenClusters)
            }
            if mirrorFields["cluster"] == nil {
                self.problem(mirrorFields.path("cluster"), "is missing: expected a cluster", value)
            }
            let ratio = mirrorFields["percent"].map { self.ratio($0, mirrorFields.path("percent")) } ?? 1
            if let name, let ratio { mirror = .init(cluster: name, ratio: ratio) }
        }
        if fields["direct_response"] != nil || fields["redirect"] != nil || fields["compose"] != nil {
            // A route the gateway answers itself has no upstream exchange to time, retry or cache.
            for key in ["timeout", "retry", "cache", "mirror", "rewrite"] where fields[key] != nil {
                if key == "rewrite" && fields["compose"] == nil { continue }
                self.problem(
                    fields.path(key), "needs a cluster: not allowed with direct_response, redirect or compose",
                    fields[key])
            }
        }
        guard self.problemCount == before, let destination else { return nil }
        return Configuration.Route(
            match: match, rewrite: rewrite, destination: destination, auth: auth, timeout: timeout, retry: retry,
            rateLimit: rateLimit, cache: cache, cors: cors, fault: fault, requestHeaders: requestHeaders,
            responseHeaders: responseHeaders, mirror: mirror)
    }

    mutating func match(_ node: Node, _ path: String) -> Configuration.Match {
        var match = Configuration.Match()
        let keys = ["path_prefix", "path", "path_template", "methods", "headers", "host", "query"]
        guard let fields = self.fields(node, path, allowed: keys) else {
            return match
        }
        if let value = fields["path_prefix"] { match.pathPrefix = self.path(value, fields.path("path_prefix")) }
        if let value = fields["path"] { match.path = self.path(value, fields.path("path")) }
        if let value = fields["path_template"],
            let text = self.string(value, fields.path("path_template"))
        {
            do {
                _ = try PathTemplate(parsing: text)
                match.pathTemplate = text
            } catch {
                self.problem(fields.path("path_template"), "\(error), got \(Self.quoted(text))", value)
            }
        }
        let given = ["path", "path_prefix", "path_template"].filter { fields[$0] != nil }
        if given.count > 1 {
            self.problem(
                fields.path(given[1]),
                "give one of path, path_prefix or path_template, not \(given.joined(separator: " and "))",
                fields[given[1]])
        }
        if let value = fields["host"], let text = self.string(value, fields.path("host")) {
            let name = text.hasPrefix("*.") ? String(text.dropFirst(2)) : text
            let valid =
                !name.isEmpty && !name.hasPrefix(".")
                && name.unicodeScalars.allSatisfy {
                    $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == ".")
                }
            if valid {
                match.host = text
            } else {
                self.problem(
                    fields.path("host"),
                    "expected a host name such as api.example.com or *.example.com (no port), got \(Self.quoted(text))",
                    value)
            }
        }
        if let value = fields["query"] {
            for entry in self.namedEntries(value, fields.path("query"), what: "query parameter names to values") {
                let entryPath = "\(fields.path("query")).\(entry.name)"
                if case .mapping = entry.value {
                    guard let condition = self.fields(entry.value, entryPath, allowed: ["present"]) else { continue }
                    if let flag = condition["present"],
                        let text = self.scalar(flag, condition.path("present"), expected: "true")
                    {
                        if text == "true" {
                            match.query[entry.name] = .present
                        } else {
                            self.problem(
                                condition.path("present"),
                                "expected true (leave the parameter out to not test it), got \(Self.quoted(text))", flag
                            )
                        }
                    } else if condition["present"] == nil {
                        self.problem(condition.path("present"), "is missing: expected {present: true}", entry.value)
                    }
                } else if let text = self.scalar(
                    entry.value, entryPath, expected: "a value, or {present: true} for any value")
                {
                    match.query[entry.name] = .equals(text)
                }
            }
        }
        if let value = fields["methods"], let items = self.list(value, fields.path("methods")) {
            for (index, item) in items.enumerated() {
                let itemPath = "\(fields.path("methods"))[\(index)]"
                guard let text = self.string(item, itemPath) else { continue }
                if text.allSatisfy({ $0.isASCII && ($0.isUppercase || $0 == "-" || $0 == "_") }) {
                    match.methods.append(text)
                } else {
                    self.problem(itemPath, "expected an upper-case method such as GET, got \(Self.quoted(text))", item)
                }
            }
        }
        if let value = fields["headers"] {
            for entry in self.namedEntries(value, fields.path("headers"), what: "header names to values") {
                if let text = self.scalar(entry.value, "\(fields.path("headers")).\(entry.name)", expected: "a string")
                {
                    match.headers[entry.name.lowercased()] = text
                }
            }
        }
        return match
    }

    mutating func destination(
        _ fields: Fields, _ node: Node, clusters: Set<String>, writtenClusters: Set<String>
    ) -> Configuration.Destination? {
        let kinds = ["cluster", "split", "direct_response", "redirect", "compose"].filter { fields[$0] != nil }
        if kinds.count > 1 {
            self.problem(
                fields.path(kinds[1]),
                "give one of cluster, split, direct_response, redirect or compose, not \(kinds.joined(separator: " and "))",
                fields[kinds[1]])
            return nil
        }
        if let value = fields["direct_response"] {
            return self.directResponse(value, fields.path("direct_response")).map { .directResponse($0) }
        }
        if let value = fields["redirect"] {
            return self.redirect(value, fields.path("redirect")).map { .redirect($0) }
        }
        if fields["compose"] != nil { return nil }  // parsed by `compose`, which knows the match
        switch (fields["cluster"], fields["split"]) {
        case (nil, nil):
            self.problem(
                fields.path("cluster"), "is missing: expected cluster, split, direct_response, redirect or compose",
                node)
            return nil
        case (.some, .some):
            self.problem(fields.path("split"), "give cluster or split, not both", fields["split"])
            return nil
        case (let value?, nil):
            guard let name = self.clusterReference(value, fields.path("cluster"), clusters, writtenClusters) else {
                return nil
            }
            return .cluster(name)
        case (nil, let value?):
            let path = fields.path("split")
            guard let items = self.list(value, path) else { return nil }
            var parts: [Configuration.WeightedCluster] = []
            for (index, item) in items.enumerated() {
                let itemPath = "\(path)[\(index)]"
                guard let part = self.fields(item, itemPath, allowed: ["cluster", "weight"]) else { continue }
                let name = part["cluster"].flatMap {
                    self.clusterReference($0, part.path("cluster"), clusters, writtenClusters)
                }
                if part["cluster"] == nil { self.problem(part.path("cluster"), "is missing: expected a cluster", item) }
                let weight = part["weight"].flatMap {
                    self.int($0, part.path("weight"), in: 0...1_000_000, expected: "a weight in 0...1000000")
                }
                if part["weight"] == nil { self.problem(part.path("weight"), "is missing: expected a weight", item) }
                if let name, let weight { parts.append(.init(cluster: name, weight: weight)) }
            }
            if items.isEmpty {
                self.problem(path, "expected at least one {cluster, weight}", value)
                return nil
            }
            if parts.count == items.count && parts.allSatisfy({ $0.weight == 0 }) {
                self.problem(path, "expected at least one weight above 0", value)
                return nil
            }
            return .split(parts)
        }
    }

    mutating func clusterReference(
        _ node: Node, _ path: String, _ clusters: Set<String>, _ writtenClusters: Set<String>
    ) -> String? {
        guard let name = self.string(node, path) else { return nil }
        guard clusters.contains(name) else {
            // A cluster that is written but invalid has its own problems already.
            if !writtenClusters.contains(name) {
                let known = clusters.sorted().joined(separator: ", ")
                self.problem(
                    path, "unknown cluster \(Self.quoted(name)), expected one of \(known.isEmpty ? "(none)" : known)",
                    node)
            }
            return nil
        }
        return name
    }

    mutating func routeAuth(
        _ node: Node, _ path: String, jwtConfigured: Bool, clientCertificatesConfigured: Bool
    ) -> Configuration.RouteAuth? {
        guard let fields = self.fields(node, path, allowed: ["require", "scopes", "claims", "principals"]) else {
            return nil
        }
        var auth = Configuration.RouteAuth()
        if let value = fields["require"], let text = self.string(value, fields.path("require")) {
            switch text {
            case "jwt":
                if !jwtConfigured {
                    self.problem(fields.path("require"), "requires auth.jwt to be configured", value)
                }
            case "client_certificate":
                auth.require = text
                if !clientCertificatesConfigured {
                    self.problem(
                        fields.path("require"),
                        "requires listen.tls.client_ca (clients' certificates) to be configured",
                        value)
                }
            default:
                self.problem(
                    fields.path("require"), "expected jwt or client_certificate, got \(Self.quoted(text))", value)
            }
        }
        let byCertificate = auth.require == "client_certificate"
        if let value = fields["scopes"], let scopes = self.stringList(value, fields.path("scopes")) {
            auth.scopes = scopes
            if byCertificate { self.problem(fields.path("scopes"), "only applies with require: jwt", value) }
        }
        if let value = fields["claims"] {
            if byCertificate { self.problem(fields.path("claims"), "only applies with require: jwt", value) }
            for entry in self.namedEntries(value, fields.path("claims"), what: "claim names to values") {
                if let text = self.scalar(entry.value, "\(fields.path("claims")).\(entry.name)", expected: "a string") {
                    auth.claims[entry.name] = text
                }
            }
        }
        if let value = fields["principals"], let principals = self.stringList(value, fields.path("principals")) {
            auth.principals = principals
            if !byCertificate {
                self.problem(fields.path("principals"), "only applies with require: client_certificate", value)
            }
        }
        return auth
    }

    mutating func retry(_ node: Node, _ path: String) -> Configuration.Retry? {
        let keys = ["attempts", "per_try_timeout", "on", "budget"]
        guard let fields = self.fields(node, path, allowed: keys) else { return nil }
        var retry = Configuration.Retry(attempts: 1)
        if let value = fields["attempts"] {
            if let number = self.positiveInt(value, fields.path("attempts")) { retry.attempts = number }
        } else {
            self.problem(fields.path("attempts"), "is missing: expected a positive integer", node)
        }
        if let value = fields["per_try_timeout"] {
            retry.perTryTimeout = self.positiveDuration(value, fields.path("per_try_timeout"))
        }
        if let value = fields["on"], let items = self.list(value, fields.path("on")) {
            for (index, item) in items.enumerated() {
                let itemPath = "\(fields.path("on"))[\(index)]"
                guard let text = self.scalar(item, itemPath, expected: "a retry condition") else { continue }
                switch text {
                case "connect-failure": retry.on.append(.connectFailure)
                case "reset": retry.on.append(.reset)
                default:
                    if let status = Int(text), (500...599).contains(status) || status == 429 || status == 408 {
                        retry.on.append(.status(status))
                    } else {
                        self.problem(
                            itemPath,
                            "expected connect-failure, reset or a status in 500...599, 408 or 429, got \(Self.quoted(text))",
                            item)
                    }
                }
            }
        }
        if let value = fields["budget"] { retry.budget = self.ratio(value, fields.path("budget")) }
        return retry
    }

    mutating func rateLimit(_ node: Node, _ path: String) -> Configuration.RateLimit? {
        guard let fields = self.fields(node, path, allowed: ["key", "rate", "burst"]) else { return nil }
        var key = "client_address"
        if let value = fields["key"], let text = self.string(value, fields.path("key")) {
            let valid =
                text == "client_address" || text == "client_ip" || text == "client_certificate"
                || (text.hasPrefix("jwt.") && text.count > 4) || (text.hasPrefix("header.") && text.count > 7)
            if valid {
                key = text == "client_ip" ? "client_address" : text
            } else {
                self.problem(
                    fields.path("key"),
                    "expected client_address, client_ip, client_certificate, jwt.<claim> or header.<name>, got \(Self.quoted(text))",
                    value)
            }
        }
        var rate: (count: Int, period: Duration)?
        if let value = fields["rate"],
            let text = self.scalar(value, fields.path("rate"), expected: "a rate such as 10/s")
        {
            rate = GatewayUnits.rate(text)
            if let parsed = rate, parsed.period.aviaryNanoseconds / Int64(parsed.count) < 1 {
                // A token bucket refills one request at a time, at least a nanosecond apart.
                self.problem(
                    fields.path("rate"), "expected at most one request per nanosecond, got \(Self.quoted(text))", value)
                rate = nil
            } else if rate == nil {
                self.problem(
                    fields.path("rate"), "expected a rate such as 10/s, 600/m or 5/500ms, got \(Self.quoted(text))",
                    value)
            }
        } else if fields["rate"] == nil {
            self.problem(fields.path("rate"), "is missing: expected a rate such as 10/s", node)
        }
        var burst: Int?
        if let value = fields["burst"] {
            burst = self.positiveInt(value, fields.path("burst"))
        }
        guard let rate else { return nil }
        return .init(key: key, requests: rate.count, period: rate.period, burst: burst ?? rate.count)
    }

    mutating func cache(_ node: Node, _ path: String) -> Configuration.Cache? {
        guard let fields = self.fields(node, path, allowed: ["ttl", "stale_if_error", "max_bytes"]) else { return nil }
        var ttl: Duration?
        if let value = fields["ttl"] {
            ttl = self.positiveDuration(value, fields.path("ttl"))
        } else {
            self.problem(fields.path("ttl"), "is missing: expected a duration", node)
        }
        var cache = Configuration.Cache(ttl: ttl ?? .seconds(1))
        if let value = fields["stale_if_error"] {
            cache.staleIfError = self.duration(value, fields.path("stale_if_error"))
        }
        if let value = fields["max_bytes"], let size = self.size(value, fields.path("max_bytes")) {
            cache.maxBytes = size
        }
        return ttl == nil ? nil : cache
    }
}

/// `routes[i].cors` and `routes[i].fault`.
extension ConfigurationParser {
    mutating func cors(_ node: Node, _ path: String) -> Configuration.CORS? {
        let keys = ["allow_origins", "allow_methods", "allow_headers", "max_age", "allow_credentials"]
        guard let fields = self.fields(node, path, allowed: keys) else { return nil }
        var cors = Configuration.CORS(allowOrigins: [])
        if let value = fields["allow_origins"], let origins = self.stringList(value, fields.path("allow_origins")) {
            for (index, origin) in origins.enumerated()
            where origin != "*" && !(origin.hasPrefix("http://") || origin.hasPrefix("https://")) {
                self.problem(
                    "\(fields.path("allow_origins"))[\(index)]",
                    "expected an origin such as https://shop.example or *, got \(Self.quoted(origin))", value)
            }
            cors.allowOrigins = origins
        } else if fields["allow_origins"] == nil {
            self.problem(fields.path("allow_origins"), "is missing: expected a list of origins", node)
        }
        if let value = fields["allow_methods"], let methods = self.stringList(value, fields.path("allow_methods")) {
            cors.allowMethods = methods
        }
        if let value = fields["allow_headers"], let headers = self.stringList(value, fields.path("allow_headers")) {
            cors.allowHeaders = headers.map { $0.lowercased() }
        }
        if let value = fields["max_age"] { cors.maxAge = self.duration(value, fields.path("max_age")) }
        if let value = fields["allow_credentials"],
            let text = self.scalar(value, fields.path("allow_credentials"), expected: "true or false")
        {
            switch text {
            case "true": cors.allowCredentials = true
            case "false": cors.allowCredentials = false
            default:
                self.problem(
                    fields.path("allow_credentials"), "expected true or false, got \(Self.quoted(text))", value)
            }
            if cors.allowCredentials && cors.allowOrigins.contains("*") {
                self.problem(
                    fields.path("allow_credentials"), "cannot be true with allow_origins *: list the origins", value)
            }
        }
        return cors
    }

    mutating func fault(_ node: Node, _ path: String) -> Configuration.Fault? {
        guard let fields = self.fields(node, path, allowed: ["delay", "abort"]) else { return nil }
        var fault = Configuration.Fault()
        if let value = fields["delay"],
            let delay = self.fields(value, fields.path("delay"), allowed: ["percent", "duration"])
        {
            let ratio = delay["percent"].flatMap { self.ratio($0, delay.path("percent")) }
            let duration = delay["duration"].flatMap { self.positiveDuration($0, delay.path("duration")) }
            if delay["percent"] == nil {
                self.problem(delay.path("percent"), "is missing: expected a percentage", value)
            }
            if delay["duration"] == nil {
                self.problem(delay.path("duration"), "is missing: expected a duration", value)
            }
            if let ratio, let duration { fault.delay = (ratio, duration) }
        }
        if let value = fields["abort"],
            let abort = self.fields(value, fields.path("abort"), allowed: ["percent", "status"])
        {
            let ratio = abort["percent"].flatMap { self.ratio($0, abort.path("percent")) }
            let status = abort["status"].flatMap {
                self.int($0, abort.path("status"), in: 400...599, expected: "a status in 400...599")
            }
            if abort["percent"] == nil {
                self.problem(abort.path("percent"), "is missing: expected a percentage", value)
            }
            if let ratio { fault.abort = (ratio, status ?? 503) }
        }
        return fault
    }
}
