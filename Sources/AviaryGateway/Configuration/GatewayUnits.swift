//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore

/// Parsers of the units written in `gateway.yaml`: durations, sizes, percentages and rates.
///
/// ```swift
/// GatewayUnits.duration("500ms")   // .milliseconds(500)
/// GatewayUnits.size("10MiB")       // 10_485_760
/// GatewayUnits.ratio("20%")        // 0.2
/// GatewayUnits.rate("10/s")        // (10, .seconds(1))
/// ```
public enum GatewayUnits {
    /// A non-negative duration: an integer and `ms`, `s`, `m` or `h`.
    public static func duration(_ text: String) -> Duration? {
        Duration(aviaryText: text.trimmingWhitespace())
    }

    /// A size in bytes: an integer, optionally followed by `B`, `KiB`, `MiB`, `GiB` (powers of
    /// 1024) or `KB`, `MB`, `GB` (powers of 1000).
    public static func size(_ text: String) -> Int? {
        let text = text.trimmingWhitespace()
        let digits = text.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let amount = Int(digits) else { return nil }
        let unit: Int
        switch text.dropFirst(digits.count).trimmingWhitespace() {
        case "", "B": unit = 1
        case "KiB": unit = 1 << 10
        case "MiB": unit = 1 << 20
        case "GiB": unit = 1 << 30
        case "KB": unit = 1000
        case "MB": unit = 1_000_000
        case "GB": unit = 1_000_000_000
        default: return nil
        }
        let (result, overflow) = amount.multipliedReportingOverflow(by: unit)
        return overflow ? nil : result
    }

    /// A ratio in 0...1, written as a percentage (`20%`, `12.5%`) or a plain number in 0...1.
    public static func ratio(_ text: String) -> Double? {
        let text = text.trimmingWhitespace()
        if text.hasSuffix("%") {
            guard let percent = Double(text.dropLast()), percent.isFinite, (0...100).contains(percent) else {
                return nil
            }
            return percent / 100
        }
        guard let value = Double(text), value.isFinite, (0...1).contains(value) else { return nil }
        return value
    }

    /// A rate: a positive count per period, written `10/s`, `600/m`, `1/h` or `5/500ms`.
    public static func rate(_ text: String) -> (count: Int, period: Duration)? {
        let parts = text.trimmingWhitespace().split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let count = Int(parts[0]), count > 0 else { return nil }
        let periodText = String(parts[1])
        let period: Duration?
        switch periodText {
        case "s": period = .seconds(1)
        case "m": period = .seconds(60)
        case "h": period = .seconds(3600)
        default: period = duration(periodText)
        }
        guard let period, period > .zero else { return nil }
        return (count, period)
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> Substring {
        let characters = Substring(self)
        let start = characters.firstIndex { !$0.isWhitespace } ?? characters.endIndex
        let end = characters.lastIndex { !$0.isWhitespace }.map { characters.index(after: $0) } ?? start
        return characters[start..<Swift.max(start, end)]
    }
}
