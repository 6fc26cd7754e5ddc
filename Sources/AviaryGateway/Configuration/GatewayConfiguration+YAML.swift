//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Yams

extension GatewayConfiguration {
    /// Parses and validates `gateway.yaml`.
    ///
    /// ```swift
    /// let configuration = try GatewayConfiguration(yaml: try String(contentsOfFile: "gateway.yaml"), file: "gateway.yaml")
    /// ```
    ///
    /// Every problem is reported at once, one line each, naming its place, what was found and what
    /// was expected, with the line it is on:
    /// `routes[2].retry.attempts: expected a positive integer, got "three" (gateway.yaml:31)`.
    /// Unknown keys are problems, and so are routes naming clusters that do not exist.
    ///
    /// - Parameters:
    ///   - yaml: the file's text.
    ///   - file: the file's name, used in problem lines; `nil` writes `line N` instead.
    /// - Throws: ``GatewayConfigurationError`` listing every problem.
    public init(yaml: String, file: String? = nil) throws(GatewayConfigurationError) {
        var parser = ConfigurationParser(file: file)
        let configuration = parser.parse(yaml)
        guard parser.problems.isEmpty, let configuration else {
            throw GatewayConfigurationError(problems: parser.problems)
        }
        self = configuration
    }

    /// Reads and parses a configuration file.
    ///
    /// ```swift
    /// let configuration = try GatewayConfiguration(contentsOfFile: "gateway.yaml")
    /// ```
    ///
    /// - Throws: ``GatewayConfigurationError`` when the file cannot be read or is invalid.
    public init(contentsOfFile path: String) throws(GatewayConfigurationError) {
        let text: String
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let decoded = String(data: data, encoding: .utf8) else {
                throw GatewayConfigurationError(problems: ["\(path): expected UTF-8 text"])
            }
            text = decoded
        } catch let error as GatewayConfigurationError {
            throw error
        } catch {
            throw GatewayConfigurationError(problems: ["\(path): cannot read the file (\(error.localizedDescription))"])
        }
        try self.init(yaml: text, file: path)
    }
}

/// An invalid gateway configuration: every problem found, one line each.
///
/// ```swift
/// do { _ = try GatewayConfiguration(yaml: text) } catch {
///     for line in error.problems { print(line) }   // routes[2].retry.attempts: expected a positive integer, got "three" (line 31)
/// }
/// ```
public struct GatewayConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// One line per problem, each starting with the place (`routes[2].retry.attempts: ...`).
    public var problems: [String]

    /// Creates the error.
    public init(problems: [String]) {
        self.problems = problems
    }

    /// The problems, one per line.
    public var description: String { self.problems.joined(separator: "\n") }
}

// MARK: - The parser

/// Walks the YAML tree, building typed values and collecting every problem with its path.
struct ConfigurationParser {
    let file: String?
    /// Problems with the line they are on (0 when none), in the order found.
    private var found: [(line: Int, text: String)] = []

    /// The problems in file order (stable for problems on one line).
    var problems: [String] {
        self.found.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(
            \.element.text)
    }

    /// How many problems were found so far.
    var problemCount: Int { self.found.count }

    init(file: String?) {
        self.file = file
    }

    // MARK: Problems and paths

    mutating func problem(_ path: String, _ message: String, _ node: Node?) {
        var line = path.isEmpty ? message : "\(path): \(message)"
        if let mark = node?.mark {
            line += self.file.map { " (\($0):\(mark.line))" } ?? " (line \(mark.line))"
        }
        self.found.append((node?.mark?.line ?? 0, line))
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for character in text {
            switch character {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            default: result.append(character)
            }
        }
        return result + "\""
    }

    /// How a node is shown after `got`: a scalar quoted, other kinds by name.
    static func shown(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): quoted(scalar.string)
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    // MARK: Mappings

    /// The entries of a mapping node, unknown keys reported.
    struct Fields {
        var entries: [String: (key: Node, value: Node)] = [:]
        let path: String
        subscript(_ key: String) -> Node? { self.entries[key]?.value }
        func path(_ key: String) -> String { ConfigurationParser.join(self.path, key) }
    }

    mutating func fields(_ node: Node, _ path: String, allowed: [String]) -> Fields? {
        guard case .mapping(let mapping) = node else {
            self.problem(
                path, "expected a mapping with keys \(allowed.joined(separator: ", ")), got \(Self.shown(node))", node)
            return nil
        }
        var fields = Fields(path: path)
        for (key, value) in mapping {
            let name = key.string ?? "\(key)"
            guard allowed.contains(name) else {
                self.problem(
                    Self.join(path, name), "unknown key, expected one of \(allowed.joined(separator: ", "))", key)
                continue
            }
            fields.entries[name] = (key, value)
        }
        return fields
    }

    /// A mapping of names to values, in written order.
    mutating func namedEntries(_ node: Node, _ path: String, what: String) -> [(name: String, key: Node, value: Node)] {
        guard case .mapping(let mapping) = node else {
            self.problem(path, "expected a mapping of \(what), got \(Self.shown(node))", node)
            return []
        }
        return mapping.map { (name: $0.key.string ?? "\($0.key)", key: $0.key, value: $0.value) }
    }

    mutating func list(_ node: Node, _ path: String) -> [Node]? {
        guard case .sequence(let sequence) = node else {
            self.problem(path, "expected a list, got \(Self.shown(node))", node)
            return nil
        }
        return Array(sequence)
    }

    // MARK: Scalars

    mutating func scalar(_ node: Node, _ path: String, expected: String) -> String? {
        guard case .scalar(let scalar) = node else {
            self.problem(path, "expected \(expected), got \(Self.shown(node))", node)
            return nil
        }
        return scalar.string
    }

    mutating func string(_ node: Node, _ path: String, nonEmpty: Bool = true) -> String? {
        guard let text = self.scalar(node, path, expected: "a string") else { return nil }
        if nonEmpty && text.isEmpty {
            self.problem(path, "expected a non-empty string", node)
            return nil
        }
        return text
    }

    mutating func int(_ node: Node, _ path: String, in range: ClosedRange<Int>, expected: String) -> Int? {
        guard let text = self.scalar(node, path, expected: expected) else { return nil }
        guard let value = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
            self.problem(path, "expected \(expected), got \(Self.quoted(text))", node)
            return nil
        }
        return value
    }

    mutating func positiveInt(_ node: Node, _ path: String) -> Int? {
        self.int(node, path, in: 1...Int.max, expected: "a positive integer")
    }

    mutating func duration(_ node: Node, _ path: String) -> Duration? {
        let expected = "a duration such as 500ms, 10s, 5m or 1h"
        guard let text = self.scalar(node, path, expected: expected) else { return nil }
        guard let value = GatewayUnits.duration(text) else {
            self.problem(path, "expected \(expected), got \(Self.quoted(text))", node)
            return nil
        }
        return value
    }

    mutating func positiveDuration(_ node: Node, _ path: String) -> Duration? {
        guard let value = self.duration(node, path) else { return nil }
        guard value > .zero else {
            self.problem(path, "expected a duration longer than 0, got \(Self.shown(node))", node)
            return nil
        }
        return value
    }

    mutating func size(_ node: Node, _ path: String) -> Int? {
        let expected = "a size in bytes such as 65536, 512KiB or 10MiB"
        guard let text = self.scalar(node, path, expected: expected) else { return nil }
        guard let value = GatewayUnits.size(text), value > 0 else {
            self.problem(path, "expected \(expected), got \(Self.quoted(text))", node)
            return nil
        }
        return value
    }

    /// A ratio written `20%` (or a number in 0...1).
    mutating func ratio(_ node: Node, _ path: String) -> Double? {
        let expected = "a percentage such as 20%"
        guard let text = self.scalar(node, path, expected: expected) else { return nil }
        guard let value = GatewayUnits.ratio(text) else {
            self.problem(path, "expected \(expected), got \(Self.quoted(text))", node)
            return nil
        }
        return value
    }

    mutating func endpoint(_ node: Node, _ path: String) -> Endpoint? {
        guard let text = self.scalar(node, path, expected: "host:port") else { return nil }
        guard let endpoint = try? Endpoint(parsing: text) else {
            self.problem(path, "expected host:port with a port in 0...65535, got \(Self.quoted(text))", node)
            return nil
        }
        return endpoint
    }

    mutating func stringList(_ node: Node, _ path: String) -> [String]? {
        guard let items = self.list(node, path) else { return nil }
        var result: [String] = []
        for (index, item) in items.enumerated() {
            if let text = self.string(item, "\(path)[\(index)]") { result.append(text) }
        }
        return result
    }

    mutating func path(_ node: Node, _ path: String) -> String? {
        guard let text = self.string(node, path) else { return nil }
        guard text.hasPrefix("/") else {
            self.problem(path, "expected a path starting with /, got \(Self.quoted(text))", node)
            return nil
        }
        return text
    }

    // MARK: The document

    mutating func parse(_ yaml: String) -> GatewayConfiguration? {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                self.problem("", "the configuration is empty: expected at least clusters and routes", nil)
                return nil
            }
            root = node
        } catch let error as YamlError {
            self.problem("", "invalid YAML: \(self.describe(error))", nil)
            return nil
        } catch {
            self.problem("", "invalid YAML: \(error)", nil)
            return nil
        }
        guard
            let top = self.fields(
                root, "",
                allowed: [
                    "listen", "limits", "clusters", "auth", "routes", "access_log", "discovery", "request_headers",
                    "response_headers",
                ])
        else {
            return nil
        }
        var configuration = GatewayConfiguration()
        if let node = top["listen"] { configuration.listen = self.listen(node, "listen") }
        if let node = top["limits"] { configuration.limits = self.limits(node, "limits") }
        if let node = top["clusters"] {
            for entry in self.namedEntries(node, "clusters", what: "cluster names to clusters") {
                if let cluster = self.cluster(entry.value, "clusters.\(entry.name)", name: entry.name) {
                    configuration.clusters.append(cluster)
                }
            }
        }
        if let node = top["auth"] { configuration.auth = self.auth(node, "auth") }
        if let node = top["access_log"] { configuration.accessLog = self.accessLog(node, "access_log") }
        if let node = top["discovery"] { configuration.discovery = self.discovery(node, "discovery") }
        if let node = top["request_headers"] {
            configuration.requestHeaders = self.headerRewrite(node, "request_headers")
        }
        if let node = top["response_headers"] {
            configuration.responseHeaders = self.headerRewrite(node, "response_headers")
        }
        if let node = top["routes"], let items = self.list(node, "routes") {
            let clusterNames = Set(configuration.clusters.map(\.name))
            let allClusters = top["clusters"].map { self.writtenClusterNames($0) } ?? []
            for (index, item) in items.enumerated() {
                let route = self.route(
                    item, "routes[\(index)]", clusters: clusterNames, writtenClusters: allClusters,
                    jwtConfigured: configuration.auth.jwt != nil,
                    clientCertificatesConfigured: (configuration.listen.tls?.clientCertificate ?? .none) != .none)
                if let route { configuration.routes.append(route) }
            }
        } else if top["routes"] == nil {
            self.problem("routes", "is missing: expected a list of routes", root)
        }
        return configuration
    }

    /// Names of clusters written (valid or not), so a route naming an invalid cluster is not
    /// also reported as naming an unknown one.
    func writtenClusterNames(_ node: Node) -> Set<String> {
        guard case .mapping(let mapping) = node else { return [] }
        return Set(mapping.keys.compactMap(\.string))
    }

    /// The message of a YAML error, with its line, without the snippet Yams adds.
    func describe(_ error: YamlError) -> String { Self.describe(error, file: self.file) }

    static func describe(_ error: YamlError, file: String?) -> String {
        let at = { (line: Int) in file.map { "\($0):\(line)" } ?? "line \(line)" }
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
            .composer(_, let problem, let mark, _):
            return "\(problem) (\(at(mark.line)))"
        case .duplicatedKeysInMapping(let duplicates, let context):
            let names = Set(duplicates).sorted().joined(separator: ", ")
            return "duplicate key \(names) (\(at(context.mark.line)))"
        default:
            return "\(error)"
        }
    }

    static func describe(_ error: YamlError) -> String { describe(error, file: nil) }
}
