//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

/// How log lines look: JSON for collectors, a readable line for people, or chosen by the sink.
///
/// ```swift
/// var configuration = TelemetryConfiguration(service: "orders")
/// configuration.logFormat = .json          // always JSON, even in a terminal
/// ```
public struct LogFormat: Sendable, Hashable, CustomStringConvertible {
    private enum Wrapped: String, Hashable {
        case json, console, automatic
    }

    private let wrapped: Wrapped

    private init(_ wrapped: Wrapped) {
        self.wrapped = wrapped
    }

    /// One JSON object per line (``JSONLogHandler``).
    public static let json = LogFormat(.json)
    /// `time level [label] message key=value…` (``ConsoleLogHandler``).
    public static let console = LogFormat(.console)
    /// ``console`` when the sink is a terminal (`isatty`), ``json`` otherwise. The default.
    public static let automatic = LogFormat(.automatic)

    /// Parses `json`, `console` or `auto`/`automatic` (the values of `AVIARY_LOG_FORMAT`).
    ///
    /// ```swift
    /// LogFormat(parsing: "console") // .console
    /// LogFormat(parsing: "xml")     // nil
    /// ```
    public init?(parsing text: String) {
        switch text.lowercased() {
        case "json": self = .json
        case "console", "text": self = .console
        case "auto", "automatic": self = .automatic
        default: return nil
        }
    }

    /// ``json`` or ``console``: what ``automatic`` means for this sink.
    ///
    /// ```swift
    /// LogFormat.automatic.resolved(for: .standardOutput) // .console in a terminal, .json in a pipe
    /// ```
    public func resolved(for sink: LogSink) -> LogFormat {
        guard self.wrapped == .automatic else { return self }
        return sink.isTerminal ? .console : .json
    }

    /// `json`, `console` or `automatic`.
    ///
    /// ```swift
    /// print(LogFormat.json) // json
    /// ```
    public var description: String { self.wrapped.rawValue }
}
