//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOHTTP1

/// `match.host`, compiled: an exact name or a `*.` wildcard suffix, lower-cased once.
struct HostMatcher: Sendable {
    /// The name, or for a wildcard the suffix with its dot (`.example.com`).
    let name: [UInt8]
    let isWildcard: Bool

    init(_ pattern: String) {
        let lower = pattern.lowercased()
        if lower.hasPrefix("*.") {
            self.name = Array(lower.utf8.dropFirst())
            self.isWildcard = true
        } else {
            self.name = Array(lower.utf8)
            self.isWildcard = false
        }
    }

    /// Whether a `Host` value (port ignored, case ignored, a trailing dot ignored) matches.
    func matches(_ host: String) -> Bool {
        var utf8 = Substring(host).utf8
        // The port: after the last `:` unless inside an IPv6 literal's brackets.
        if utf8.first == UInt8(ascii: "[") {
            if let close = utf8.firstIndex(of: UInt8(ascii: "]")) { utf8 = utf8[...close] }
        } else if let colon = utf8.lastIndex(of: UInt8(ascii: ":")) {
            utf8 = utf8[..<colon]
        }
        if utf8.last == UInt8(ascii: ".") { utf8 = utf8.dropLast() }
        if self.isWildcard {
            // `*.example.com` takes `a.example.com` and `a.b.example.com`, not `example.com`.
            guard utf8.count > self.name.count else { return false }
            return Self.equalIgnoringCase(utf8.suffix(self.name.count), self.name)
        }
        return utf8.count == self.name.count && Self.equalIgnoringCase(utf8, self.name)
    }

    private static func equalIgnoringCase(_ bytes: Substring.UTF8View.SubSequence, _ lower: [UInt8]) -> Bool {
        var index = 0
        for byte in bytes {
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            guard folded == lower[index] else { return false }
            index += 1
        }
        return true
    }
}

/// `match.query`, compiled.
struct QueryMatcher: Sendable {
    let conditions: [(name: String, value: String?)]

    init(_ conditions: [String: GatewayConfiguration.QueryCondition]) {
        let unsorted: [(name: String, value: String?)] = conditions.map { entry in
            switch entry.value {
            case .present: return (entry.key, nil)
            case .equals(let value): return (entry.key, value)
            }
        }
        self.conditions = unsorted.sorted { $0.name < $1.name }
    }

    /// Whether every condition holds for the query of `uri` (the part after `?`, before `#`).
    func matches(uri: String) -> Bool {
        let utf8 = uri.utf8
        guard let question = utf8.firstIndex(of: UInt8(ascii: "?")) else { return false }
        var query = Substring(uri)[utf8.index(after: question)...]
        if let hash = query.utf8.firstIndex(of: UInt8(ascii: "#")) { query = query[..<hash] }
        condition: for condition in self.conditions {
            for item in query.split(separator: "&", omittingEmptySubsequences: true) {
                let name: Substring
                let value: Substring
                if let equals = item.utf8.firstIndex(of: UInt8(ascii: "=")) {
                    name = item[..<equals]
                    value = item[item.utf8.index(after: equals)...]
                } else {
                    name = item
                    value = ""
                }
                guard Self.decoded(name) == condition.name else { continue }
                guard let expected = condition.value else { continue condition }
                if Self.decoded(value) == expected { continue condition }
            }
            return false
        }
        return true
    }

    /// A query component with `+` as space and `%XX` escapes decoded; allocates only when there
    /// is something to decode. An invalid escape is kept as written.
    static func decoded(_ text: Substring) -> Substring {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "+") }) else { return text }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let high = Self.hex(iterator[iterator.startIndex]),
                let low = Self.hex(iterator[iterator.startIndex + 1])
            {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return Substring(String(decoding: bytes, as: UTF8.self))
    }

    private static func hex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// What `%{...}` variables in header values stand for, for one request.
struct HeaderVariables: Sendable {
    var clientIP: String
    var requestID: String
    var host: String
    var method: String

    init(clientIP: String?, request: HTTPRequestHead) {
        self.clientIP = clientIP ?? ""
        self.requestID = request.headers.first(name: "x-request-id") ?? ""
        self.host = request.headers.first(name: "host") ?? ""
        self.method = request.method.rawValue
    }
}

/// `request_headers:` or `response_headers:`, compiled: values split into text and variables once.
struct CompiledHeaderRewrite: Sendable {
    enum Piece: Sendable, Hashable {
        case text(String)
        case clientIP, requestID, host, method
    }

    struct Value: Sendable {
        let name: String
        let pieces: [Piece]
        /// The value when it has no variables.
        let constant: String?
    }

    /// One rewrite's steps, applied in the order remove, set, add.
    struct Stage: Sendable {
        let remove: [String]
        let set: [Value]
        let add: [Value]
    }

    /// The top-level rewrite's stage, if any, then the route's.
    let stages: [Stage]
    /// Whether any value uses a variable (then ``HeaderVariables`` are gathered per request).
    let usesVariables: Bool

    /// The variables a value may use.
    static let variableNames = ["client_ip", "request_id", "host", "method"]

    /// Headers no rewrite may touch: hop-by-hop and framing headers, whose values the proxy
    /// decides, `host`, the subject header only authentication writes and the client
    /// certificate header only the TLS handshake gives.
    static let forbiddenNames: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length", "proxy-authenticate", "proxy-authorization", "host", subjectHeaderName,
        clientCertificateHeaderName,
    ]

    init(_ rewrite: GatewayConfiguration.HeaderRewrite) {
        self.init(stages: [rewrite])
    }

    /// The rewrites given, applied in order; nil when there is none.
    init?(_ rewrites: [GatewayConfiguration.HeaderRewrite?]) {
        let present = rewrites.compactMap { $0 }
        guard !present.isEmpty else { return nil }
        self.init(stages: present)
    }

    private init(stages rewrites: [GatewayConfiguration.HeaderRewrite]) {
        self.stages = rewrites.map {
            Stage(remove: $0.remove, set: $0.set.map { Self.compile($0) }, add: $0.add.map { Self.compile($0) })
        }
        self.usesVariables = self.stages.contains { ($0.set + $0.add).contains { $0.constant == nil } }
    }

    private static func compile(_ header: GatewayConfiguration.HeaderValue) -> Value {
        // A value was validated by the parser (`parseValue`); anything unknown stays text.
        let pieces = (try? Self.parseValue(header.value)) ?? [.text(header.value)]
        var constant: String?
        if pieces.allSatisfy({ if case .text = $0 { true } else { false } }) {
            constant = pieces.map { if case .text(let text) = $0 { text } else { "" } }.joined()
        }
        return Value(name: header.name, pieces: pieces, constant: constant)
    }

    /// Splits a value into text and variables.
    ///
    /// - Throws: a message naming an unknown variable or an unclosed `%{`.
    static func parseValue(_ value: String) throws(PathTemplate.Problem) -> [Piece] {
        var pieces: [Piece] = []
        var text = ""
        var rest = Substring(value)
        while let percent = rest.firstIndex(of: "%") {
            text += rest[..<percent]
            let after = rest[rest.index(after: percent)...]
            if after.hasPrefix("%") {
                text += "%"
                rest = after.dropFirst()
                continue
            }
            guard after.hasPrefix("{"), let close = after.firstIndex(of: "}") else {
                throw PathTemplate.Problem("a % starts a variable such as %{client_ip} (write %% for a %)")
            }
            let name = after[after.index(after: after.startIndex)..<close]
            let piece: Piece
            switch name {
            case "client_ip": piece = .clientIP
            case "request_id": piece = .requestID
            case "host": piece = .host
            case "method": piece = .method
            default:
                throw PathTemplate.Problem(
                    "unknown variable %{\(name)}, expected one of \(Self.variableNames.map { "%{\($0)}" }.joined(separator: ", "))"
                )
            }
            if !text.isEmpty { pieces.append(.text(text)) }
            text = ""
            pieces.append(piece)
            rest = after[after.index(after: close)...]
        }
        text += rest
        if !text.isEmpty || pieces.isEmpty { pieces.append(.text(text)) }
        return pieces
    }

    private func render(_ value: Value, _ variables: HeaderVariables?) -> String {
        if let constant = value.constant { return constant }
        var result = ""
        for piece in value.pieces {
            switch piece {
            case .text(let text): result += text
            case .clientIP: result += variables?.clientIP ?? ""
            case .requestID: result += variables?.requestID ?? ""
            case .host: result += variables?.host ?? ""
            case .method: result += variables?.method ?? ""
            }
        }
        return result
    }

    /// Applies the rewrite: removes, then sets, then adds.
    func apply(to headers: inout HTTPHeaders, _ variables: HeaderVariables?) {
        for stage in self.stages {
            for name in stage.remove { headers.remove(name: name) }
            for value in stage.set { headers.replaceOrAdd(name: value.name, value: self.render(value, variables)) }
            for value in stage.add { headers.add(name: value.name, value: self.render(value, variables)) }
        }
    }
}
