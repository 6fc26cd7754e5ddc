//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOHTTP1

// Hot path: one pass over the headers per message, no arrays or lower-cased copies unless a
// header actually has to go.

/// Header rules of a proxy (RFC 9110 section 7.6.1): hop-by-hop headers stay on their hop.
enum ProxyHeaders {
    /// What one pass over a request head found.
    struct RequestInspection: Equatable {
        /// The first problem with the message framing, if any (request smuggling defences,
        /// RFC 9112 section 6.3): more than one `Content-Length`, a `Content-Length` that is not
        /// digits, `Content-Length` together with `Transfer-Encoding`, or a `Transfer-Encoding`
        /// that is not exactly `chunked`.
        var framingProblem: String?
        var contentLength: Int?
        var isChunked = false
        var expectsContinue = false
        /// Bytes of the request line and headers, as counted against `limits.max_header_bytes`.
        var headBytes = 0
        var hasHopByHop = false
        var hasForwardedHeaders = false
        /// Whether the client sent `x-aviary-subject`, which only the gateway may set.
        var hasSubjectHeader = false
        /// An `X-Forwarded-Client-Cert` from the client, which the gateway removes.
        var hasClientCertificateHeader = false

        /// Whether the upstream head needs the client's fields edited (so as NIO's head): a field
        /// to remove or extend, or an expectation the gateway answers itself.
        var editsFields: Bool {
            self.hasHopByHop || self.hasForwardedHeaders || self.hasSubjectHeader || self.hasClientCertificateHeader
                || self.expectsContinue
        }
    }

    static func inspect(_ head: HTTPRequestHead) -> RequestInspection {
        var result = RequestInspection()
        var total = head.method.rawValue.utf8.count + head.uri.utf8.count + 12
        var lengths = 0
        var encodings = 0
        for (name, value) in head.headers {
            total += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 14 where name.equalsLowercase("content-length"):
                lengths += 1
                if let length = Self.digits(value) {
                    result.contentLength = length
                } else if result.framingProblem == nil {
                    result.framingProblem =
                        value.utf8.contains(UInt8(ascii: ","))
                        ? "more than one Content-Length value" : "Content-Length is not a number"
                }
            case 17 where name.equalsLowercase("transfer-encoding"):
                encodings += 1
                result.hasHopByHop = true
                if value.equalsLowercase("chunked") {
                    result.isChunked = true
                } else if result.framingProblem == nil {
                    result.framingProblem = "Transfer-Encoding other than chunked"
                }
            case 6 where name.equalsLowercase("expect"):
                result.expectsContinue = value.equalsLowercase("100-continue")
            case 9 where name.equalsLowercase("forwarded"):
                result.hasForwardedHeaders = true
            case 15 where name.equalsLowercase("x-forwarded-for"):
                result.hasForwardedHeaders = true
            case 16 where name.equalsLowercase("x-forwarded-host"):
                result.hasForwardedHeaders = true
            case 16 where name.equalsLowercase("x-aviary-subject"):
                result.hasSubjectHeader = true
            case 17 where name.equalsLowercase("x-forwarded-proto"):
                result.hasForwardedHeaders = true
            case 23 where name.equalsLowercase("x-forwarded-client-cert"):
                result.hasClientCertificateHeader = true
            default:
                if Self.isHopByHop(name) { result.hasHopByHop = true }
            }
        }
        result.headBytes = total
        if result.framingProblem == nil {
            if lengths > 1 {
                result.framingProblem = "more than one Content-Length header"
            } else if encodings > 1 {
                result.framingProblem = "Transfer-Encoding other than chunked"
            } else if lengths == 1 && encodings > 0 {
                result.framingProblem = "both Content-Length and Transfer-Encoding"
            }
        }
        return result
    }

    /// A non-negative decimal number without signs or spaces, or `nil`.
    static func digits(_ text: String) -> Int? {
        var value = 0
        var count = 0
        for byte in text.utf8 {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return nil }
            let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = sum
            count += 1
        }
        return count > 0 ? value : nil
    }

    /// Whether `name` is a hop-by-hop header (any case).
    static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: name.equalsLowercase("te")
        case 7: name.equalsLowercase("trailer") || name.equalsLowercase("upgrade")
        case 10: name.equalsLowercase("connection") || name.equalsLowercase("keep-alive")
        case 16: name.equalsLowercase("proxy-connection")
        case 17: name.equalsLowercase("transfer-encoding")
        case 18: name.equalsLowercase("proxy-authenticate")
        case 19: name.equalsLowercase("proxy-authorization")
        default: false
        }
    }

    /// Removes the hop-by-hop headers and every header the `Connection` header names.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        var found = false
        var named: [Substring] = []
        for (name, value) in headers where Self.isHopByHop(name) {
            found = true
            if name.utf8.count == 10 && name.equalsLowercase("connection") {
                for token in value.split(separator: ",") {
                    let trimmed = token.trimmingWhitespace()
                    if !trimmed.isEmpty && !trimmed.equalsLowercase("close") && !trimmed.equalsLowercase("keep-alive") {
                        named.append(trimmed)
                    }
                }
            }
        }
        guard found else { return }
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers where !Self.isHopByHop(name) {
            if !named.isEmpty
                && named.contains(where: { name.utf8.count == $0.utf8.count && name.equalsIgnoringCase($0) })
            {
                continue
            }
            kept.add(name: name, value: value)
        }
        headers = kept
    }
}

extension StringProtocol {
    /// ASCII case-insensitive equality with a lower-case literal.
    func equalsLowercase(_ lowercase: StaticString) -> Bool {
        let other = UnsafeRawBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        guard self.utf8.count == other.count else { return false }
        var index = other.startIndex
        for byte in self.utf8 {
            let lowered = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            guard lowered == other[index] else { return false }
            index += 1
        }
        return true
    }

    /// ASCII case-insensitive equality.
    func equalsIgnoringCase<Other: StringProtocol>(_ other: Other) -> Bool {
        guard self.utf8.count == other.utf8.count else { return false }
        for (a, b) in zip(self.utf8, other.utf8) {
            let la = a >= UInt8(ascii: "A") && a <= UInt8(ascii: "Z") ? a | 0x20 : a
            let lb = b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b | 0x20 : b
            guard la == lb else { return false }
        }
        return true
    }
}
