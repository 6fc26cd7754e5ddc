//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Crypto
import Foundation
import NIOCore
import NIOSSL
import Synchronization
import Testing

@testable import AviaryGateway

/// Mutual TLS on the listener (`listen.tls.client_ca`): clients' certificates are verified in the
/// handshake and forwarded to upstreams in `X-Forwarded-Client-Cert`, over real sockets.
@Suite("Gateway client certificates", .timeLimit(.minutes(2)))
struct GatewayClientCertificateTests {
    /// The gateway's certificate, a client certificate its `client_ca` trusts (with a URI and a
    /// DNS name), and one it does not.
    struct Certificates {
        let gateway: TestCertificate
        let client: TestCertificate
        let stranger: TestCertificate

        static func make() async throws -> Certificates {
            Certificates(
                gateway: try await TestCertificate.make(),
                client: try await TestCertificate.make(subjectAltName: "URI:spiffe://shop/orders,DNS:orders.internal"),
                stranger: try await TestCertificate.make())
        }

        /// A client context trusting the gateway, presenting `certificate` if given.
        func clientContext(_ certificate: TestCertificate?, protocols: [String] = ["http/1.1"]) throws -> NIOSSLContext
        {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(self.gateway.certificateFile))
            configuration.applicationProtocols = protocols
            if let certificate {
                (configuration.certificateChain, configuration.privateKey) = try certificate.identity()
            }
            return try NIOSSLContext(configuration: configuration)
        }

        /// What the gateway should forward for the trusted client's certificate.
        func expectedField() throws -> String {
            let der = try NIOSSLCertificate.fromPEMFile(self.client.certificateFile)[0].toDERBytes()
            let hash = SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined()
            return "Hash=\(hash);Subject=\"CN=localhost\";URI=spiffe://shop/orders;DNS=orders.internal"
        }

        func remove() {
            self.gateway.remove()
            self.client.remove()
            self.stranger.remove()
        }
    }

    static func yaml(origin: Int, certificates: Certificates, mode: String) -> String {
        """
        listen:
          address: 127.0.0.1:0
          http2: true
          tls: {certificate: \(certificates.gateway.certificateFile), key: \(certificates.gateway.keyFile),
                client_ca: \(certificates.client.certificateFile), client_certificate: \(mode)}
        limits: {header_timeout: 60s}
        clusters: {a: {endpoints: [127.0.0.1:\(origin)]}}
        routes: [{match: {path_prefix: /}, cluster: a}]
        """
    }

    static let spoofed =
        "GET /who HTTP/1.1\r\nHost: gateway.test\r\nX-Forwarded-Client-Cert: Hash=forged\r\nConnection: close\r\n\r\n"

    /// The origin's view of the request (its echoed fields), or nil when no answer came.
    static func exchange(_ gateway: GatewayHarness, _ context: NIOSSLContext) async -> String? {
        guard
            let (_, text) = try? await TLSRawClient.exchange(
                Self.spoofed, port: gateway.port, group: gateway.clients, context: context),
            text.hasPrefix("HTTP/1.1 200")
        else { return nil }
        return text
    }

    @Test("require: a trusted client's certificate reaches the upstream as X-Forwarded-Client-Cert; others are refused")
    func required() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        let expected = "x-forwarded-client-cert: \(try certificates.expectedField())\n"
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml(origin: origins[0].port, certificates: certificates, mode: "require")
            try await withGateway(yaml) { gateway in
                let seen = try #require(
                    await Self.exchange(gateway, try certificates.clientContext(certificates.client)))
                #expect(seen.contains(expected), "\(seen)")
                #expect(!seen.contains("forged"))

                // HTTP/2 streams of the connection carry it too.
                let h2 = try await H2Client.connect(
                    port: gateway.port, group: gateway.clients,
                    tls: try certificates.clientContext(certificates.client, protocols: ["h2"]))
                let response = try await h2.request("GET", "/h2", scheme: "https")
                await h2.close()
                #expect(response.status == 200)
                #expect(response.text.contains(expected), "\(response.text)")

                #expect(await Self.exchange(gateway, try certificates.clientContext(nil)) == nil)
                #expect(await Self.exchange(gateway, try certificates.clientContext(certificates.stranger)) == nil)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("optional: a client without a certificate is served without the header; a forged one is removed")
    func optional() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        try await withOrigins(["a"]) { origins in
            let yaml = Self.yaml(origin: origins[0].port, certificates: certificates, mode: "optional")
            try await withGateway(yaml) { gateway in
                let anonymous = try #require(await Self.exchange(gateway, try certificates.clientContext(nil)))
                #expect(!anonymous.contains("x-forwarded-client-cert"), "\(anonymous)")
                let known = try #require(
                    await Self.exchange(gateway, try certificates.clientContext(certificates.client)))
                #expect(known.contains("x-forwarded-client-cert: \(try certificates.expectedField())\n"))
                // A presented certificate is still verified.
                #expect(await Self.exchange(gateway, try certificates.clientContext(certificates.stranger)) == nil)
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("routes authorize on the certificate's names: none is 403 required, another name is 403 forbidden")
    func routeAuthorization() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen:
                  address: 127.0.0.1:0
                  tls: {certificate: \(certificates.gateway.certificateFile), key: \(certificates.gateway.keyFile),
                        client_ca: \(certificates.client.certificateFile), client_certificate: optional}
                limits: {header_timeout: 60s}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - {match: {path_prefix: /orders}, cluster: a,
                     auth: {require: client_certificate, principals: [spiffe://shop/orders]}}
                  - {match: {path_prefix: /dns}, cluster: a,
                     auth: {require: client_certificate, principals: [orders.internal]}}
                  - {match: {path_prefix: /payments}, cluster: a,
                     auth: {require: client_certificate, principals: [spiffe://shop/payments]}}
                  - {match: {path_prefix: /any}, cluster: a, auth: {require: client_certificate}}
                """
            try await withGateway(yaml) { gateway in
                func get(_ path: String, as certificate: TestCertificate?) async throws -> String {
                    let (_, text) = try await TLSRawClient.exchange(
                        "GET \(path) HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n", port: gateway.port,
                        group: gateway.clients, context: try certificates.clientContext(certificate))
                    return text
                }
                for path in ["/orders", "/any"] {
                    let anonymous = try await get(path, as: nil)
                    #expect(anonymous.hasPrefix("HTTP/1.1 403"), "\(anonymous)")
                    #expect(anonymous.contains("client-certificate-required"), "\(anonymous)")
                }
                for path in ["/orders", "/dns", "/any"] {
                    #expect(try await get(path, as: certificates.client).hasPrefix("HTTP/1.1 200"), "\(path)")
                }
                let other = try await get("/payments", as: certificates.client)
                #expect(other.hasPrefix("HTTP/1.1 403"), "\(other)")
                #expect(other.contains("client-certificate-forbidden"))
                #expect(other.contains("spiffe://shop/payments"))
                #expect(origins[0].state.requests.load(ordering: .relaxed) == 3)
            }
        }
        let base = "listen: {address: 127.0.0.1:0}\nclusters: {a: {endpoints: [127.0.0.1:1]}}\nroutes:\n"
        func routeProblems(_ auth: String) -> [String] {
            problems(base + "  - {match: {path_prefix: /}, cluster: a, auth: \(auth)}").map {
                $0.replacing(#/\s\(gateway\.yaml:\d+\)$/#, with: "")
            }
        }
        #expect(
            routeProblems("{require: client_certificate}")
                == ["routes[0].auth.require: requires listen.tls.client_ca (clients' certificates) to be configured"])
        #expect(
            routeProblems("{require: client_certificate, scopes: [a]}").contains(
                "routes[0].auth.scopes: only applies with require: jwt"))
        #expect(
            routeProblems("{require: jwt, principals: [a]}").contains(
                "routes[0].auth.principals: only applies with require: client_certificate"))
        // A client certificate is not a token: a composition cannot use {jwt.sub} with it.
        let composed = problems(
            """
            listen: {address: 127.0.0.1:0}
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            routes:
              - match: {path_prefix: /}
                auth: {require: client_certificate}
                compose: {parts: [{name: me, cluster: a, path: "/users/{jwt.sub}"}]}
            """)
        #expect(
            composed.contains {
                $0.hasPrefix("routes[0].compose.parts[0].path:") && $0.contains("need auth: {require: jwt}")
            })
        #expect(
            routeProblems("{require: mtls}").contains(
                "routes[0].auth.require: expected jwt or client_certificate, got \"mtls\""))
    }

    @Test("rate_limit keyed by client_certificate keeps one quota per certificate identity")
    func rateLimitPerCertificate() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        // Both client certificates are trusted: the CA file holds the two.
        let both = certificates.gateway.directory.appendingPathComponent("clients.pem").path
        let pem =
            try String(contentsOfFile: certificates.client.certificateFile, encoding: .utf8)
            + String(contentsOfFile: certificates.stranger.certificateFile, encoding: .utf8)
        try pem.write(toFile: both, atomically: true, encoding: .utf8)
        let clock = ManualClock()
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen:
                  address: 127.0.0.1:0
                  tls: {certificate: \(certificates.gateway.certificateFile), key: \(certificates.gateway.keyFile),
                        client_ca: \(both)}
                limits: {header_timeout: 60s}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes:
                  - {match: {path_prefix: /}, cluster: a, rate_limit: {key: client_certificate, rate: 1/s, burst: 1}}
                """
            try await withGateway(yaml, clock: clock) { gateway in
                func status(as certificate: TestCertificate) async throws -> Substring {
                    let (_, text) = try await TLSRawClient.exchange(
                        "GET /r HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n", port: gateway.port,
                        group: gateway.clients, context: try certificates.clientContext(certificate))
                    return text.prefix(12)
                }
                var seen = [try await status(as: certificates.client)]
                // Another connection with the same certificate shares its quota; another
                // certificate has its own.
                seen.append(try await status(as: certificates.client))
                seen.append(try await status(as: certificates.stranger))
                clock.advance(by: .seconds(1))
                seen.append(try await status(as: certificates.client))
                #expect(seen == ["HTTP/1.1 200", "HTTP/1.1 429", "HTTP/1.1 200", "HTTP/1.1 200"])
            }
        }
    }

    @Test("without TLS a client's X-Forwarded-Client-Cert is removed too, and rewrites cannot set it")
    func plaintextRemovesForgery() async throws {
        try await withOrigins(["a"]) { origins in
            let yaml = """
                listen: {address: 127.0.0.1:0}
                clusters: {a: {endpoints: [127.0.0.1:\(origins[0].port)]}}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """
            try await withGateway(yaml) { gateway in
                let response = try await gateway.request(Self.spoofed)
                #expect(response.status == 200)
                #expect(!response.text.contains("forged"), "\(response.text)")
            }
        }
        let rewrite = problems(
            """
            listen: {address: 127.0.0.1:0}
            clusters: {a: {endpoints: [127.0.0.1:1]}}
            routes: [{match: {path_prefix: /}, cluster: a, request_headers: {set: {x-forwarded-client-cert: x}}}]
            """)
        #expect(rewrite.count == 1)
        #expect(rewrite.first?.contains("cannot be rewritten") == true)
    }

    @Test("client_ca and client_certificate are checked when the configuration is read")
    func configurationProblems() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        let (cert, key) = (certificates.gateway.certificateFile, certificates.gateway.keyFile)
        func listenProblems(_ tls: String) -> [String] {
            problems(
                """
                listen: {address: 127.0.0.1:0, tls: \(tls)}
                clusters: {a: {endpoints: [127.0.0.1:1]}}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """
            ).map { $0.replacing(#/\s\(gateway\.yaml:\d+\)$/#, with: "") }
        }
        #expect(
            listenProblems("{certificate: \(cert), key: \(key), client_ca: \(cert), client_certificate: sometimes}")
                == ["listen.tls.client_certificate: expected require or optional, got \"sometimes\""])
        #expect(
            listenProblems("{certificate: \(cert), key: \(key), client_certificate: require}")
                == ["listen.tls.client_ca: is missing: client_certificate needs the CAs that sign them"])
        #expect(
            listenProblems("{certificate: \(cert), key: \(key), client_ca: /nonexistent/ca.pem}")
                == ["listen.tls.client_ca: cannot read \"/nonexistent/ca.pem\""])
        let parsed = try GatewayConfiguration(
            yaml: """
                listen: {address: 127.0.0.1:0, tls: {certificate: \(cert), key: \(key), client_ca: \(cert)}}
                clusters: {a: {endpoints: [127.0.0.1:1]}}
                routes: [{match: {path_prefix: /}, cluster: a}]
                """)
        #expect(parsed.listen.tls?.clientCertificate == .require)
        #expect(parsed.listen.tls?.clientCAFile == cert)
    }
}
