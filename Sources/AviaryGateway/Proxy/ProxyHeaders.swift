//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import NIOHTTP1

/// Header rules of a proxy (RFC 9110 section 7.6.1): hop-by-hop headers stay on their hop.
enum ProxyHeaders {
    /// Headers that describe one connection, not the message (lower-case).
    static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authenticate", "proxy-authorization",
    ]

    /// Removes the hop-by-hop headers and every header the `Connection` header names.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        var named: [String] = []
        for value in headers["connection"] {
            for token in value.split(separator: ",") {
                let name = token.trimmingWhitespace().lowercased()
                if !name.isEmpty { named.append(name) }
            }
        }
        for name in Self.hopByHop where headers.contains(name: name) {
            headers.remove(name: name)
        }
        for name in named {
            headers.remove(name: name)
        }
    }

    /// What is wrong with a request's framing headers, if anything (request smuggling defences,
    /// RFC 9112 section 6.3): more than one `Content-Length`, a `Content-Length` that is not
    /// digits, `Content-Length` together with `Transfer-Encoding`, or a `Transfer-Encoding` that is
    /// not exactly `chunked`.
    static func framingProblem(_ headers: HTTPHeaders) -> String? {
        let lengths = headers["content-length"]
        let encodings = headers["transfer-encoding"]
        if lengths.count > 1 { return "more than one Content-Length header" }
        if let length = lengths.first {
            if length.contains(",") { return "more than one Content-Length value" }
            if length.isEmpty || !length.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
                return "Content-Length is not a number"
            }
        }
        if !encodings.isEmpty {
            if !lengths.isEmpty { return "both Content-Length and Transfer-Encoding" }
            let tokens = encodings.flatMap { $0.split(separator: ",") }.map { $0.trimmingWhitespace().lowercased() }
            if tokens != ["chunked"] { return "Transfer-Encoding other than chunked" }
        }
        return nil
    }

    /// The bytes of the request line and headers, as counted against `limits.max_header_bytes`.
    static func headBytes(_ head: HTTPRequestHead) -> Int {
        var total = head.method.rawValue.utf8.count + head.uri.utf8.count + 12
        for (name, value) in head.headers {
            total += name.utf8.count + value.utf8.count + 4
        }
        return total
    }
}
