//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// A path template, compiled once: `/api/orders/{id}` or `/files/{rest...}`.
///
/// A template is a list of `/`-separated segments. A literal segment matches itself byte by
/// byte; `{name}` matches exactly one non-empty segment; a last segment `{name...}` or `**`
/// matches the rest of the path (any number of segments, possibly none). Matching walks the
/// path's bytes once, without regular expressions and without allocating.
///
/// ```swift
/// let template = try PathTemplate(parsing: "/api/orders/{id}")
/// template.matches("/api/orders/42")            // true
/// template.captures("/api/orders/42")?["id"]    // "42"
/// ```
public struct PathTemplate: Sendable, Hashable {
    enum Segment: Sendable, Hashable {
        case literal(String)
        case variable(String)
        case rest(String)
    }

    let segments: [Segment]
    /// The variable names in order of appearance.
    public let variables: [String]

    /// Parses a template.
    ///
    /// - Throws: ``PathTemplate/Problem`` when the template does not start with `/`, a segment
    ///   mixes braces with text, a name is not `[A-Za-z0-9_]+`, a name repeats, or the tail
    ///   variable is not the last segment.
    public init(parsing text: String) throws(Problem) {
        guard text.hasPrefix("/") else { throw Problem("expected a path starting with /") }
        var segments: [Segment] = []
        var names: [String] = []
        let parts = text.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        for (index, part) in parts.enumerated() {
            let isLast = index == parts.count - 1
            if part == "**" {
                guard isLast else { throw Problem("** must be the last segment") }
                segments.append(.rest("**"))
                names.append("**")
                continue
            }
            if part.hasPrefix("{") || part.hasSuffix("}") || part.contains("{") || part.contains("}") {
                guard part.hasPrefix("{"), part.hasSuffix("}"), part.count > 2 else {
                    throw Problem("segment \"\(part)\" must be a whole {name}, {name...} or literal text")
                }
                var name = String(part.dropFirst().dropLast())
                let isRest = name.hasSuffix("...")
                if isRest { name = String(name.dropLast(3)) }
                guard !name.isEmpty, name.utf8.allSatisfy(Self.isNameByte) else {
                    throw Problem("variable \"\(part)\" needs a name of letters, digits and _")
                }
                guard !names.contains(name) else { throw Problem("variable {\(name)} appears twice") }
                if isRest {
                    guard isLast else { throw Problem("{\(name)...} must be the last segment") }
                    segments.append(.rest(name))
                } else {
                    segments.append(.variable(name))
                }
                names.append(name)
            } else {
                if part.contains("*") { throw Problem("* is only allowed as a whole last segment **") }
                segments.append(.literal(String(part)))
            }
        }
        self.segments = segments
        self.variables = names
    }

    /// Why a template is invalid.
    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        /// What is wrong.
        public var description: String
        init(_ description: String) { self.description = description }
    }

    static func isNameByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "_")
    }

    /// Whether `path` (without the query) fits the template.
    public func matches(_ path: Substring) -> Bool {
        var none: [Substring]? = nil
        return self.walk(path, &none)
    }

    /// The values of the variables when `path` fits, by name.
    public func captures(_ path: Substring) -> [String: Substring]? {
        guard let values = self.values(path) else { return nil }
        return Dictionary(zip(self.variables, values), uniquingKeysWith: { a, _ in a })
    }

    /// The values of the variables when `path` fits, in the order of ``variables``.
    func values(_ path: Substring) -> [Substring]? {
        var values: [Substring]? = []
        values?.reserveCapacity(self.variables.count)
        return self.walk(path, &values) ? values : nil
    }

    private func walk(_ path: Substring, _ captures: inout [Substring]?) -> Bool {
        let slash = UInt8(ascii: "/")
        let utf8 = path.utf8
        guard utf8.first == slash else { return false }
        var index = utf8.index(after: utf8.startIndex)
        for (position, segment) in self.segments.enumerated() {
            if position > 0 {
                if index == utf8.endIndex, case .rest = segment {
                    // `/files/{rest...}` takes `/files` with an empty rest.
                    captures?.append(path[index..<index])
                    return true
                }
                guard index < utf8.endIndex, utf8[index] == slash else { return false }
                index = utf8.index(after: index)
            }
            switch segment {
            case .rest:
                captures?.append(path[index...])
                return true
            case .literal(let text):
                let end = utf8[index...].firstIndex(of: slash) ?? utf8.endIndex
                guard utf8[index..<end].elementsEqual(text.utf8) else { return false }
                index = end
            case .variable:
                let end = utf8[index...].firstIndex(of: slash) ?? utf8.endIndex
                guard end > index else { return false }
                captures?.append(path[index..<end])
                index = end
            }
        }
        return index == utf8.endIndex
    }
}

/// A rewrite target built from a match template's variables: `/orders/{id}`.
///
/// Unlike a match template, a variable may sit anywhere in the text (`/v2/{id}.json`); each
/// must name a variable of the match template (`{rest}` and `{rest...}` are the same).
struct RewriteTemplate: Sendable {
    enum Piece: Sendable {
        case text(String)
        /// The index into the match template's captured values.
        case value(Int)
    }

    let pieces: [Piece]

    /// Compiles `text` against the variables of a match template.
    init(parsing text: String, variables: [String]) throws(PathTemplate.Problem) {
        guard text.hasPrefix("/") else { throw PathTemplate.Problem("expected a path starting with /") }
        var pieces: [Piece] = []
        var literal = ""
        var rest = Substring(text)
        while let open = rest.firstIndex(where: { $0 == "{" || $0 == "*" }) {
            if rest[open] == "*" {
                guard rest[open...].hasPrefix("**") else {
                    throw PathTemplate.Problem("* is only allowed as ** (the tail of the match template)")
                }
                guard let index = variables.firstIndex(of: "**") else {
                    throw PathTemplate.Problem("** is not in match.path_template")
                }
                literal += rest[..<open]
                if !literal.isEmpty { pieces.append(.text(literal)) }
                literal = ""
                pieces.append(.value(index))
                rest = rest[rest.index(open, offsetBy: 2)...]
                continue
            }
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw PathTemplate.Problem("{ without }")
            }
            var name = String(rest[rest.index(after: open)..<close])
            if name.hasSuffix("...") { name = String(name.dropLast(3)) }
            guard let index = variables.firstIndex(of: name) else {
                let known = variables.map { $0 == "**" ? "**" : "{\($0)}" }.joined(separator: ", ")
                throw PathTemplate.Problem(
                    "{\(name)} is not a variable of match.path_template (it has \(known.isEmpty ? "none" : known))")
            }
            literal += rest[..<open]
            if !literal.isEmpty { pieces.append(.text(literal)) }
            literal = ""
            pieces.append(.value(index))
            rest = rest[rest.index(after: close)...]
        }
        if rest.contains("}") { throw PathTemplate.Problem("} without {") }
        literal += rest
        if !literal.isEmpty { pieces.append(.text(literal)) }
        self.pieces = pieces
    }

    /// The path with the captured values in place.
    func render(_ values: [Substring]) -> String {
        var result = ""
        for piece in self.pieces {
            switch piece {
            case .text(let text): result += text
            case .value(let index): if index < values.count { result += values[index] }
            }
        }
        return result
    }
}
