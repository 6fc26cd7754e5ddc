//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import Crypto
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// The name of the header that carries a verified client certificate to upstreams. Only the
/// gateway writes it: it is removed from every client's request.
let clientCertificateHeaderName = "x-forwarded-client-cert"

/// A connection's verified client certificate: its `X-Forwarded-Client-Cert` value, and the
/// names routes authorize on (its URI and DNS subject alternative names).
struct ClientCertificateIdentity: Sendable {
    let field: String
    let names: [String]
    /// What `rate_limit: {key: client_certificate}` keeps a quota per: the first URI name (a
    /// service identity, shared by its replicas), else the first DNS name, else the hash.
    let rateKey: String
}

extension ProxyHandler {
    /// This connection's client certificate, when the listener asks for them
    /// (`listen.tls.client_ca`) and the client presented one (which the handshake verified);
    /// worked out once per connection (once per HTTP/2 connection, not per stream).
    var clientCertificate: ClientCertificateIdentity? {
        if let known = self.peer.clientCertificate { return known }
        var identity: ClientCertificateIdentity?
        if let tls = self.core.configuration.listen.tls, tls.clientCertificate != .none, let context = self.context,
            let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
            let certificate = handler.peerCertificate
        {
            identity = ClientCertificateField.identity(of: certificate)
        }
        self.peer.clientCertificate = .some(identity)
        return identity
    }

    /// `X-Forwarded-Client-Cert` for this connection's client certificate, if any.
    var clientCertificateField: String? { self.clientCertificate?.field }
}

/// Envoy's `X-Forwarded-Client-Cert` element for one certificate: `Hash` (SHA-256 of its DER,
/// hex), `Subject` (quoted), and its `URI` and `DNS` subject alternative names, e.g.
/// `Hash=4f1c…;Subject="CN=orders,O=Shop";URI=spiffe://shop/orders;DNS=orders.internal`.
enum ClientCertificateField {
    static func identity(of certificate: NIOSSLCertificate) -> ClientCertificateIdentity? {
        guard let der = try? certificate.toDERBytes() else { return nil }
        let digits = Array("0123456789abcdef".utf8)
        let hash = String(
            decoding: SHA256.hash(data: der).flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xF)]] }, as: UTF8.self)
        var parts = ["Hash=" + hash]
        var names: [String] = []
        var uris: [String] = []
        if let parsed = try? Certificate(derEncoded: der) {
            parts.append("Subject=" + Self.quoted(parsed.subject.description))
            if let alternatives = try? parsed.extensions.subjectAlternativeNames {
                for name in alternatives {
                    switch name {
                    case .uniformResourceIdentifier(let uri):
                        parts.append("URI=" + Self.quotedIfNeeded(uri))
                        names.append(uri)
                        uris.append(uri)
                    case .dnsName(let dns):
                        parts.append("DNS=" + Self.quotedIfNeeded(dns))
                        names.append(dns)
                    default: continue
                    }
                }
            }
        }
        return ClientCertificateIdentity(
            field: parts.joined(separator: ";"), names: names, rateKey: uris.first ?? names.first ?? hash)
    }

    /// A value in double quotes, with `"` and `\` escaped (RFC 7230 quoted-string).
    private static func quoted(_ value: String) -> String {
        var result = "\""
        for character in value {
            if character == "\"" || character == "\\" { result.append("\\") }
            // Header values cannot carry line breaks.
            result.append(character == "\r" || character == "\n" ? " " : character)
        }
        return result + "\""
    }

    /// Quoted when it holds a character that separates XFCC's elements or pairs.
    private static func quotedIfNeeded(_ value: String) -> String {
        value.contains(where: { ",;=\" \r\n\\".contains($0) }) ? Self.quoted(value) : value
    }
}
