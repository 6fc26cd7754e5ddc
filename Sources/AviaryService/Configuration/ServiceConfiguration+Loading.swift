//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

public import AviaryCore
import AviaryTelemetry
public import Foundation
import Yams

extension ServiceConfiguration {
    /// The file ``load(_:file:environment:)`` reads by default, relative to the working directory.
    public static let defaultFile = "aviary.yaml"

    /// Loads a service's configuration: each key's default, overridden by the service's section
    /// of the YAML file, overridden by the environment.
    ///
    /// ```swift
    /// // aviary.yaml:
    /// //   orders:
    /// //     port: 8102
    /// //     drain_delay: 5s
    /// //   payments:
    /// //     port: 8103
    /// let configuration = try ServiceConfiguration.load(schema, environment: ["AVIARY_ORDERS_PORT": "9000"])
    /// configuration.int("port")                  // 9000
    /// configuration.source(of: "drain_delay")    // aviary.yaml:3
    /// ```
    ///
    /// The file has one top-level mapping per service; only the section named like the schema's
    /// service is read. A missing file (or section) leaves the defaults. In the environment, a key
    /// is `AVIARY_<SERVICE>_<KEY>` (upper-cased, `-` and `.` as `_`: `AVIARY_ORDERS_DRAIN_DELAY`);
    /// `PORT` and `HOST` set `port` and `host` too, and the `AVIARY_<SERVICE>_` variable wins over
    /// them. The variables of `TelemetryConfiguration` (`AVIARY_LOG_LEVEL`, ...) are left to it.
    ///
    /// - Parameters:
    ///   - schema: the keys and the service's name.
    ///   - file: the YAML file; `nil` reads none.
    ///   - environment: the variables; the process environment by default.
    /// - Returns: the validated configuration.
    /// - Throws: `AviaryError` with code `.invalidArgument` whose message has one line per
    ///   problem (unknown keys in the section or `AVIARY_<SERVICE>_*` variables, invalid values,
    ///   missing required keys, an unreadable or invalid file), each naming the key, the value
    ///   (`<redacted>` for secrets and unknown keys), where it came from and what was expected:
    ///   `orders: port = "80a" (from AVIARY_ORDERS_PORT): expected an integer in 1...65535`.
    public static func load(
        _ schema: ConfigurationSchema,
        file: String? = ServiceConfiguration.defaultFile,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(AviaryError) -> ServiceConfiguration {
        var loader = Loader(schema: schema)
        if let file {
            loader.readFile(file)
        }
        loader.readEnvironment(environment)
        return try loader.finish()
    }
}

/// Collects values and problems, source by source.
private struct Loader {
    let schema: ConfigurationSchema
    var entries: [String: ServiceConfiguration.Entry] = [:]
    var problems: [String] = []

    init(schema: ConfigurationSchema) {
        self.schema = schema
        for key in schema.keys {
            if let value = key.defaultValue {
                self.entries[key.name] = .init(value: value, source: .default)
            }
        }
    }

    var service: String { self.schema.service }

    var knownKeys: String {
        "expected one of \(self.schema.keys.map(\.name).sorted().joined(separator: ", "))"
    }

    mutating func problem(_ line: String) {
        self.problems.append("\(self.service): \(line)")
    }

    /// Parses `text` as `key` and records it, or the problem.
    mutating func set(_ key: ConfigurationKey, text: String?, source: ConfigurationSource) {
        guard let text, let value = key.type.parse(text) else {
            let shown = key.isSecret ? "<redacted>" : text.map(Self.quoted) ?? "<not a scalar>"
            self.problem("\(key.name) = \(shown) (from \(source)): expected \(key.type.expectation)")
            return
        }
        self.entries[key.name] = .init(value: value, source: source)
    }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for character in text {
            switch character {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            default: result.append(character)
            }
        }
        return result + "\""
    }

    // MARK: The file

    mutating func readFile(_ path: String) {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let yaml: String
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let text = String(data: data, encoding: .utf8) else {
                self.problem("cannot read \(path): expected UTF-8 text")
                return
            }
            yaml = text
        } catch {
            self.problem("cannot read \(path): \(error.localizedDescription)")
            return
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            let (line, message) = Self.describe(error)
            self.problem("invalid YAML (from \(path):\(line)): \(message)")
            return
        } catch {
            self.problem("invalid YAML (from \(path)): \(error)")
            return
        }
        guard let root else { return }  // an empty file
        guard let services = root.mapping else {
            let line = root.mark?.line ?? 1
            self.problem(
                "invalid configuration (from \(path):\(line)): expected a mapping of service names to settings")
            return
        }
        guard let (nameNode, section) = services.first(where: { $0.key.string == self.service }) else { return }
        if section.null != nil { return }  // `orders:` with nothing under it
        guard let settings = section.mapping else {
            let line = section.mark?.line ?? nameNode.mark?.line ?? 1
            self.problem("section \(self.service) (from \(path):\(line)): expected a mapping of keys to values")
            return
        }
        for (keyNode, valueNode) in settings {
            let name = keyNode.string ?? "\(keyNode)"
            let source = ConfigurationSource.file(path: path, line: keyNode.mark?.line ?? 1)
            guard let key = self.schema.key(name) else {
                self.problem("\(name) = <redacted> (from \(source)): unknown key, \(self.knownKeys)")
                continue
            }
            self.set(key, text: valueNode.scalar?.string, source: source)
        }
    }

    /// The line and the problem of a YAML error, without the snippet Yams adds to its description.
    static func describe(_ error: YamlError) -> (line: Int, message: String) {
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let message = context.map { "\(problem) (\($0.text) at line \($0.mark.line))" } ?? problem
            return (mark.line, message)
        case .duplicatedKeysInMapping(let duplicates, let context):
            return (context.mark.line, "duplicate key \(Set(duplicates).sorted().joined(separator: ", "))")
        case .reader(let problem, _, _, _):
            return (1, problem)
        default:
            return (1, "\(error)")
        }
    }

    // MARK: The environment

    /// The variables `TelemetryConfiguration` reads, which may share the service's prefix.
    static let telemetryVariables: Set<String> = [
        TelemetryConfiguration.EnvironmentKey.service,
        TelemetryConfiguration.EnvironmentKey.instance,
        TelemetryConfiguration.EnvironmentKey.logLevel,
        TelemetryConfiguration.EnvironmentKey.logFormat,
    ]

    mutating func readEnvironment(_ environment: [String: String]) {
        for (key, name) in ConfigurationSchema.standardEnvironmentNames.sorted(by: { $0.key < $1.key }) {
            if let text = environment[name], let declared = self.schema.key(key) {
                self.set(declared, text: text, source: .environment(name))
            }
        }
        let prefix = self.schema.environmentPrefix
        let variables = environment.keys.filter { $0.hasPrefix(prefix) && !Self.telemetryVariables.contains($0) }
        for variable in variables.sorted() {
            let suffix = String(variable.dropFirst(prefix.count))
            guard let key = self.schema.keys.first(where: { ConfigurationSchema.environmentName($0.name) == suffix })
            else {
                self.problem("\(suffix.lowercased()) = <redacted> (from \(variable)): unknown key, \(self.knownKeys)")
                continue
            }
            self.set(key, text: environment[variable], source: .environment(variable))
        }
    }

    // MARK: Checks across keys

    mutating func finish() throws(AviaryError) -> ServiceConfiguration {
        for key in self.schema.keys where self.entries[key.name] == nil && !self.isReported(key.name) {
            self.problem(
                "\(key.name) is not set: expected \(key.type.expectation) in \(self.service).\(key.name) "
                    + "or \(self.schema.environmentVariable(for: key.name))"
            )
        }
        if case .duration(let drain)? = self.entries["drain_delay"]?.value,
            let grace = self.entries["grace_period"], case .duration(let period) = grace.value, period <= drain
        {
            self.problem(
                "grace_period = \(Self.quoted(grace.value.description)) (from \(grace.source)): "
                    + "expected a duration longer than drain_delay (\(ConfigurationValue.duration(drain)))"
            )
        }
        guard self.problems.isEmpty else {
            throw AviaryError(.invalidArgument, self.problems.joined(separator: "\n"))
        }
        return ServiceConfiguration(schema: self.schema, entries: self.entries)
    }

    /// Whether a problem about `key`'s value was reported already (so "is not set" is not added).
    func isReported(_ key: String) -> Bool {
        self.problems.contains { $0.hasPrefix("\(self.service): \(key) = ") }
    }
}
