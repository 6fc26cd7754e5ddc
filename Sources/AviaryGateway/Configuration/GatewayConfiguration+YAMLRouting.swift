//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Yams

/// `routes[i].rewrite`, `request_headers`/`response_headers`, `direct_response` and `redirect`.
extension ConfigurationParser {
    mutating func rewrite(_ node: Node, _ path: String, match: Configuration.Match) -> Configuration.Rewrite? {
        guard let fields = self.fields(node, path, allowed: ["path_prefix", "path_template"]) else { return nil }
        switch (fields["path_prefix"], fields["path_template"]) {
        case (nil, nil):
            self.problem(fields.path("path_prefix"), "is missing: expected path_prefix or path_template", node)
            return nil
        case (.some, .some):
            self.problem(fields.path("path_template"), "give path_prefix or path_template, not both", node)
            return nil
        case (let value?, nil):
            guard let text = self.path(value, fields.path("path_prefix")) else { return nil }
            if match.pathPrefix == nil && match.path == nil {
                self.problem(path, "path_prefix needs match.path_prefix or match.path to replace", node)
                return nil
            }
            return .init(pathPrefix: text)
        case (nil, let value?):
            guard let text = self.path(value, fields.path("path_template")) else { return nil }
            guard let source = match.pathTemplate, let template = try? PathTemplate(parsing: source) else {
                self.problem(path, "path_template needs match.path_template for its variables", node)
                return nil
            }
            do {
                _ = try RewriteTemplate(parsing: text, variables: template.variables)
            } catch {
                self.problem(fields.path("path_template"), "\(error), got \(Self.quoted(text))", value)
                return nil
            }
            return .init(pathTemplate: text)
        }
    }

    mutating func headerRewrite(_ node: Node, _ path: String) -> Configuration.HeaderRewrite? {
        guard let fields = self.fields(node, path, allowed: ["add", "set", "remove"]) else { return nil }
        var rewrite = Configuration.HeaderRewrite()
        for key in ["set", "add"] {
            guard let value = fields[key] else { continue }
            var values: [Configuration.HeaderValue] = []
            for entry in self.namedEntries(value, fields.path(key), what: "header names to values") {
                let entryPath = "\(fields.path(key)).\(entry.name)"
                guard self.rewritableHeaderName(entry.name, entryPath, entry.key),
                    let text = self.scalar(entry.value, entryPath, expected: "a header value")
                else { continue }
                if text.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                    self.problem(
                        entryPath, "expected a value without line breaks, got \(Self.quoted(text))", entry.value)
                    continue
                }
                do {
                    _ = try CompiledHeaderRewrite.parseValue(text)
                } catch {
                    self.problem(entryPath, "\(error), got \(Self.quoted(text))", entry.value)
                    continue
                }
                values.append(.init(name: entry.name.lowercased(), value: text))
            }
            if key == "set" { rewrite.set = values } else { rewrite.add = values }
        }
        if let value = fields["remove"], let items = self.list(value, fields.path("remove")) {
            for (index, item) in items.enumerated() {
                let itemPath = "\(fields.path("remove"))[\(index)]"
                guard let name = self.string(item, itemPath), self.rewritableHeaderName(name, itemPath, item) else {
                    continue
                }
                rewrite.remove.append(name.lowercased())
            }
        }
        return rewrite
    }

    /// A header name a rewrite may use: a token, and not one the proxy owns.
    mutating func rewritableHeaderName(_ name: String, _ path: String, _ node: Node) -> Bool {
        let lower = name.lowercased()
        let tokenBytes = Set("!#$%&'*+-.^_`|~".utf8)
        guard !lower.isEmpty,
            lower.utf8.allSatisfy({
                ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || tokenBytes.contains($0)
            })
        else {
            self.problem(path, "expected a header name (letters, digits, - and _), got \(Self.quoted(name))", node)
            return false
        }
        if CompiledHeaderRewrite.forbiddenNames.contains(lower) {
            self.problem(
                path,
                "\(Self.quoted(lower)) cannot be rewritten: hop-by-hop, framing, host, x-aviary-subject and x-forwarded-client-cert headers are the gateway's",
                node)
            return false
        }
        return true
    }

    mutating func directResponse(_ node: Node, _ path: String) -> Configuration.DirectResponse? {
        guard let fields = self.fields(node, path, allowed: ["status", "body", "content_type"]) else { return nil }
        let before = self.problemCount
        var direct = Configuration.DirectResponse()
        if let value = fields["status"],
            let status = self.int(value, fields.path("status"), in: 200...599, expected: "a status in 200...599")
        {
            if status == 204 || status == 304, fields["body"] != nil {
                self.problem(fields.path("body"), "a \(status) response has no body", fields["body"])
            }
            direct.status = status
        }
        if let value = fields["body"], let text = self.string(value, fields.path("body"), nonEmpty: false) {
            direct.body = text
        }
        if let value = fields["content_type"], let text = self.string(value, fields.path("content_type")) {
            if text.contains("/") && !text.utf8.contains(where: { $0 < 0x20 }) {
                direct.contentType = text
            } else {
                self.problem(
                    fields.path("content_type"),
                    "expected a media type such as application/json, got \(Self.quoted(text))",
                    value)
            }
        }
        return self.problemCount == before ? direct : nil
    }

    mutating func redirect(_ node: Node, _ path: String) -> Configuration.Redirect? {
        guard let fields = self.fields(node, path, allowed: ["status", "location", "strip_query"]) else { return nil }
        let before = self.problemCount
        var redirect = Configuration.Redirect(location: "/")
        if let value = fields["status"], let text = self.scalar(value, fields.path("status"), expected: "a status") {
            if let status = Int(text), [301, 302, 303, 307, 308].contains(status) {
                redirect.status = status
            } else {
                self.problem(
                    fields.path("status"), "expected 301, 302, 303, 307 or 308, got \(Self.quoted(text))", value)
            }
        }
        if let value = fields["location"], let text = self.string(value, fields.path("location")) {
            let absolute = text.hasPrefix("http://") || text.hasPrefix("https://")
            if (absolute && text.count > "https://".count || text.hasPrefix("/"))
                && !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F })
            {
                redirect.location = text
            } else {
                self.problem(
                    fields.path("location"),
                    "expected an http:// or https:// URL or a path starting with /, without spaces, got \(Self.quoted(text))",
                    value)
            }
        } else if fields["location"] == nil {
            self.problem(fields.path("location"), "is missing: expected a URL such as https://example.com", node)
        }
        if let value = fields["strip_query"],
            let text = self.scalar(value, fields.path("strip_query"), expected: "true or false")
        {
            switch text {
            case "true": redirect.stripQuery = true
            case "false": redirect.stripQuery = false
            default: self.problem(fields.path("strip_query"), "expected true or false, got \(Self.quoted(text))", value)
            }
        }
        return self.problemCount == before ? redirect : nil
    }
}

/// `routes[i].compose`.
extension ConfigurationParser {
    mutating func compose(
        _ node: Node, _ path: String, match: Configuration.Match, hasAuth: Bool, clusters: Set<String>,
        writtenClusters: Set<String>
    ) -> Configuration.Compose? {
        guard let fields = self.fields(node, path, allowed: ["parts", "part_timeout", "on_failure"]) else { return nil }
        let before = self.problemCount
        var compose = Configuration.Compose(parts: [])
        let templateVariables = match.pathTemplate.flatMap { try? PathTemplate(parsing: $0) }?.variables ?? []
        let variables = templateVariables + (hasAuth ? ["jwt.sub"] : [])
        if let value = fields["parts"], let items = self.list(value, fields.path("parts")) {
            var names: Set<String> = []
            for (index, item) in items.enumerated() {
                let itemPath = "\(fields.path("parts"))[\(index)]"
                guard let part = self.fields(item, itemPath, allowed: ["name", "cluster", "path", "timeout"]) else {
                    continue
                }
                var name: String?
                if let node = part["name"], let text = self.string(node, part.path("name")) {
                    if text.utf8.allSatisfy({ PathTemplate.isNameByte($0) || $0 == UInt8(ascii: "-") }),
                        !text.hasPrefix("_")
                    {
                        if names.insert(text).inserted {
                            name = text
                        } else {
                            self.problem(part.path("name"), "\(Self.quoted(text)) names two parts", node)
                        }
                    } else {
                        self.problem(
                            part.path("name"),
                            "expected letters, digits, - and _ (not starting with _), got \(Self.quoted(text))", node)
                    }
                } else if part["name"] == nil {
                    self.problem(part.path("name"), "is missing: expected the member name", item)
                }
                let cluster = part["cluster"].flatMap {
                    self.clusterReference($0, part.path("cluster"), clusters, writtenClusters)
                }
                if part["cluster"] == nil { self.problem(part.path("cluster"), "is missing: expected a cluster", item) }
                var target: String?
                if let node = part["path"], let text = self.path(node, part.path("path")) {
                    do {
                        let claims = hasAuth ? CompiledCompose.claimNames(in: text).map { "jwt." + $0 } : []
                        _ = try RewriteTemplate(parsing: text, variables: variables + claims)
                        target = text
                    } catch {
                        let hint = hasAuth ? "" : " ({jwt.sub} and {jwt.<claim>} need auth: {require: jwt})"
                        self.problem(part.path("path"), "\(error)\(hint), got \(Self.quoted(text))", node)
                    }
                } else if part["path"] == nil {
                    self.problem(part.path("path"), "is missing: expected a path such as /users/{id}", item)
                }
                let timeout = part["timeout"].flatMap { self.positiveDuration($0, part.path("timeout")) }
                if let name, let cluster, let target {
                    compose.parts.append(.init(name: name, cluster: cluster, path: target, timeout: timeout))
                }
            }
            if items.isEmpty { self.problem(fields.path("parts"), "expected at least one part", value) }
        } else if fields["parts"] == nil {
            self.problem(fields.path("parts"), "is missing: expected a list of {name, cluster, path}", node)
        }
        if let value = fields["part_timeout"], let duration = self.positiveDuration(value, fields.path("part_timeout"))
        {
            compose.partTimeout = duration
        }
        if let value = fields["on_failure"],
            let text = self.scalar(value, fields.path("on_failure"), expected: "fail or omit")
        {
            switch text {
            case "fail": compose.omitFailed = false
            case "omit": compose.omitFailed = true
            default: self.problem(fields.path("on_failure"), "expected fail or omit, got \(Self.quoted(text))", value)
            }
        }
        return self.problemCount == before ? compose : nil
    }
}
