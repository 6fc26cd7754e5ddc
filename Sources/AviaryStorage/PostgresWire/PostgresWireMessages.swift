//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOCore

/// One statement of a ``PostgresWireConnection`` call: a named prepared statement and the text of
/// its parameters.
///
/// The connection prepares `statement` the first time it runs it and keeps it by name for its
/// life, so a name must always stand for the same text.
///
/// ```swift
/// static let insert = PostgresWireStatement(name: "orders_insert", sql: "INSERT INTO orders VALUES ($1, $2)")
/// let step = PostgresWireStep(Self.insert, [.text(order.id), .integer(order.total)])
/// ```
package struct PostgresWireStep: Sendable {
    package var statement: PostgresWireStatement
    package var parameters: [PostgresWireValue]

    /// `statement` with `parameters`, `$1` first.
    ///
    /// ```swift
    /// let step = PostgresWireStep(Self.insert, [.text("o-1"), .integer(1250)])
    /// ```
    package init(_ statement: PostgresWireStatement, _ parameters: [PostgresWireValue]) {
        self.statement = statement
        self.parameters = parameters
    }
}

/// A statement a ``PostgresWireConnection`` prepares once under `name`.
///
/// ```swift
/// static let bump = PostgresWireStatement(name: "counter_bump", sql: "UPDATE counters SET n = n + 1 RETURNING n")
/// ```
package struct PostgresWireStatement: Sendable, Hashable {
    package var name: String
    package var sql: String

    /// A statement named `name` (unique per text on a connection) running `sql`.
    ///
    /// ```swift
    /// let statement = PostgresWireStatement(name: "now", sql: "SELECT now()")
    /// ```
    package init(name: String, sql: String) {
        self.name = name
        self.sql = sql
    }
}

/// A parameter, sent in PostgreSQL's text format (the server converts it to the parameter's type).
///
/// ```swift
/// let parameters: [PostgresWireValue] = [.text("orders"), .integer(3), .null]
/// ```
package enum PostgresWireValue: Sendable, Hashable {
    case text(String)
    case integer(Int64)
    case null
}

/// The rows of one statement of a call, each value in PostgreSQL's text format (`nil` for NULL).
///
/// ```swift
/// let offset = reply.results[0].rows.first?.integer(0)
/// ```
package struct PostgresWireResult: Sendable {
    package var rows: [PostgresWireRow] = []
}

/// One row: its values in text format, in column order.
///
/// ```swift
/// if let id = row.integer(0), let name = row.text(1) { print(id, name) }
/// ```
package struct PostgresWireRow: Sendable {
    package var values: [ByteBuffer?]

    /// Column `index` as an integer, `nil` when NULL or not an integer.
    ///
    /// ```swift
    /// let count = row.integer(0) ?? 0
    /// ```
    package func integer(_ index: Int) -> Int64? {
        guard index < self.values.count, let value = self.values[index] else { return nil }
        return value.withUnsafeReadableBytes { bytes in
            guard !bytes.isEmpty, bytes.count <= 20 else { return nil }
            // Negative numbers are summed downwards, so that Int64.min, whose magnitude has no
            // positive Int64, reads too.
            let negative = bytes[0] == UInt8(ascii: "-")
            guard !negative || bytes.count > 1 else { return nil }
            var result: Int64 = 0
            for byte in bytes.dropFirst(negative ? 1 : 0) {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                let digit = Int64(byte - UInt8(ascii: "0"))
                let (times, overflowTimes) = result.multipliedReportingOverflow(by: 10)
                let (next, overflowNext) =
                    negative ? times.subtractingReportingOverflow(digit) : times.addingReportingOverflow(digit)
                guard !overflowTimes, !overflowNext else { return nil }
                result = next
            }
            return result
        }
    }

    /// Column `index` as text, `nil` when NULL.
    ///
    /// ```swift
    /// let name = row.text(1)
    /// ```
    package func text(_ index: Int) -> String? {
        guard index < self.values.count, let value = self.values[index] else { return nil }
        return String(buffer: value)
    }
}

/// An error the server reported (an `ErrorResponse`): its SQLSTATE and message, as PostgreSQL
/// sent them.
///
/// ```swift
/// catch let error as PostgresWireServerError where error.sqlState == "23505" { /* duplicate */ }
/// ```
package struct PostgresWireServerError: Error, Sendable, CustomStringConvertible {
    /// The severity (`ERROR`, `FATAL`, `PANIC`).
    package var severity: String
    /// The five-character SQLSTATE code.
    package var sqlState: String
    package var message: String
    package var detail: String?
    package var hint: String?

    package var description: String {
        var text = "\(self.severity) \(self.sqlState): \(self.message)"
        if let detail = self.detail { text += " (\(detail))" }
        if let hint = self.hint { text += " hint: \(hint)" }
        return text
    }

    /// The fields of an `ErrorResponse` body.
    init(fields body: inout ByteBuffer) {
        self.severity = "ERROR"
        self.sqlState = "XX000"
        self.message = ""
        while let field = body.readInteger(as: UInt8.self), field != 0 {
            let value = body.readNullTerminatedString() ?? ""
            switch field {
            case UInt8(ascii: "V"): self.severity = value
            case UInt8(ascii: "C"): self.sqlState = value
            case UInt8(ascii: "M"): self.message = value
            case UInt8(ascii: "D"): self.detail = value
            case UInt8(ascii: "H"): self.hint = value
            default: break
            }
        }
    }
}

/// The frontend messages of protocol 3.0 the connection sends.
enum PostgresWireFrontend {
    /// The protocol version of the startup message (3.0).
    static let protocolVersion: Int32 = 196_608
    /// The code of `SSLRequest`.
    static let sslRequestCode: Int32 = 80_877_103

    static func startup(_ parameters: [(String, String)], into out: inout ByteBuffer) {
        out.writeMessage(nil) { body in
            body.writeInteger(Self.protocolVersion)
            for (name, value) in parameters {
                body.writeNullTerminatedString(name)
                body.writeNullTerminatedString(value)
            }
            body.writeInteger(UInt8(0))
        }
    }

    static func sslRequest(into out: inout ByteBuffer) {
        out.writeInteger(Int32(8))
        out.writeInteger(Self.sslRequestCode)
    }

    /// `PasswordMessage`, `SASLInitialResponse` and `SASLResponse` share the tag `p`.
    static func password(_ bytes: [UInt8], into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "p")) { body in
            body.writeBytes(bytes)
            body.writeInteger(UInt8(0))
        }
    }

    static func saslInitialResponse(mechanism: String, _ bytes: [UInt8], into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "p")) { body in
            body.writeNullTerminatedString(mechanism)
            body.writeInteger(Int32(bytes.count))
            body.writeBytes(bytes)
        }
    }

    static func saslResponse(_ bytes: [UInt8], into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "p")) { body in body.writeBytes(bytes) }
    }

    static func parse(_ statement: PostgresWireStatement, into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "P")) { body in
            body.writeNullTerminatedString(statement.name)
            body.writeNullTerminatedString(statement.sql)
            body.writeInteger(Int16(0))  // the server infers every parameter's type
        }
    }

    /// `Bind` of the unnamed portal: every parameter and result in text format.
    static func bind(_ step: PostgresWireStep, into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "B")) { body in
            body.writeInteger(UInt8(0))
            body.writeNullTerminatedString(step.statement.name)
            body.writeInteger(Int16(0))
            body.writeInteger(Int16(truncatingIfNeeded: step.parameters.count))
            for parameter in step.parameters {
                switch parameter {
                case .null:
                    body.writeInteger(Int32(-1))
                case .text(let text):
                    let lengthAt = body.writerIndex
                    body.writeInteger(Int32(0))
                    let written = body.writeString(text)
                    body.setInteger(Int32(written), at: lengthAt)
                case .integer(let value):
                    let lengthAt = body.writerIndex
                    body.writeInteger(Int32(0))
                    let written = body.writeDecimal(value)
                    body.setInteger(Int32(written), at: lengthAt)
                }
            }
            body.writeInteger(Int16(0))
        }
    }

    /// `Execute` of the unnamed portal, all its rows.
    static func execute(into out: inout ByteBuffer) {
        out.writeMessage(UInt8(ascii: "E")) { body in
            body.writeInteger(UInt8(0))
            body.writeInteger(Int32(0))
        }
    }

    static func sync(into out: inout ByteBuffer) {
        out.writeInteger(UInt8(ascii: "S"))
        out.writeInteger(Int32(4))
    }

    static func terminate(into out: inout ByteBuffer) {
        out.writeInteger(UInt8(ascii: "X"))
        out.writeInteger(Int32(4))
    }
}

extension ByteBuffer {
    /// Writes a message: its tag (none for the startup messages), its length (itself included,
    /// the tag not), then what `body` writes.
    mutating func writeMessage(_ tag: UInt8?, _ body: (inout ByteBuffer) -> Void) {
        if let tag { self.writeInteger(tag) }
        let lengthAt = self.writerIndex
        self.writeInteger(Int32(0))
        body(&self)
        self.setInteger(Int32(self.writerIndex - lengthAt), at: lengthAt)
    }

    /// Writes `value` in decimal ASCII digits; returns how many bytes.
    @discardableResult
    mutating func writeDecimal(_ value: Int64) -> Int {
        var magnitude = value.magnitude
        var digits = 1
        var probe = magnitude
        while probe >= 10 {
            probe /= 10
            digits += 1
        }
        let total = digits + (value < 0 ? 1 : 0)
        let start = self.writerIndex
        self.writeRepeatingByte(UInt8(ascii: "-"), count: total)
        var position = start + total - 1
        repeat {
            self.setInteger(UInt8(ascii: "0") + UInt8(magnitude % 10), at: position)
            magnitude /= 10
            position -= 1
        } while magnitude > 0
        return total
    }
}
