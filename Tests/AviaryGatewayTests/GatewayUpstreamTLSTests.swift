//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import Testing

@testable import AviaryGateway

/// TLS from the gateway to its upstreams (`clusters.<name>.tls`), against real HTTPS origins on
/// 127.0.0.1 with throwaway certificates made by the openssl CLI.
@Suite("Gateway upstream TLS", .timeLimit(.minutes(2)))
struct GatewayUpstreamTLSTests {
    /// Server certificates for `localhost` and `127.0.0.1` (`server`) and for `localhost` only
    /// (`named`: NIOSSL also accepts a certificate naming the connection's address), and one
    /// used as the gateway's client certificate.
    struct Certificates {
        let server: TestCertificate
        let named: TestCertificate
        let client: TestCertificate

        static func make() async throws -> Certificates {
            Certificates(
                server: try await TestCertificate.make(),
                named: try await TestCertificate.make(subjectAltName: "DNS:localhost"),
                client: try await TestCertificate.make())
        }

        /// An origin's context presenting `certificate`; with `requireClient`, it requires a
        /// client certificate signed by (here: equal to) `client`.
        func origin(_ certificate: TestCertificate, requireClient: Bool = false) throws -> NIOSSLContext {
            var configuration = try certificate.serverConfiguration()
            if requireClient {
                configuration.certificateVerification = .noHostnameVerification
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(self.client.certificateFile))
            }
            return try NIOSSLContext(configuration: configuration)
        }

        func remove() {
            self.server.remove()
            self.named.remove()
            self.client.remove()
        }
    }

    static func yaml(port: Int, tls: String) -> String {
        """
        listen: {address: 127.0.0.1:0, admin: 127.0.0.1:0}
        clusters: {secure: {endpoints: [127.0.0.1:\(port)], tls: \(tls)}}
        routes:
          - {match: {path_prefix: /}, cluster: secure}
        """
    }

    /// Runs `body` with an HTTPS origin.
    func withTLSOrigin<T>(_ context: NIOSSLContext, _ body: (TestOrigin) async throws -> T) async throws -> T {
        try await withServers(
            [context],
            start: { try await TestOrigin.start(name: "tls", group: MultiThreadedEventLoopGroup.singleton, tls: $0) },
            stop: { await $0.stop() }
        ) { origins in try await body(origins[0]) }
    }

    @Test("requests reach an HTTPS upstream verified by its CA, by address or by server_name, on kept connections")
    func verifiedUpstream() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        for (certificate, tls) in [
            (certificates.server, "{ca: \(certificates.server.certificateFile)}"),
            (certificates.named, "{ca: \(certificates.named.certificateFile), server_name: localhost}"),
        ] {
            try await withTLSOrigin(try certificates.origin(certificate)) { origin in
                try await withGateway(Self.yaml(port: origin.port, tls: tls)) { gateway in
                    for index in 0..<3 {
                        let response = try await gateway.get("/hello/\(index)")
                        #expect(response.status == 200, "\(tls): \(response.text)")
                        #expect(response.text.hasPrefix("GET /hello/\(index)\n"), "\(tls)")
                        #expect(response.header("x-origin") == "tls")
                    }
                }
                // One TLS connection, kept alive across the three requests.
                #expect(origin.state.connections.load(ordering: .relaxed) == 1, "\(tls)")
            }
        }
    }

    @Test("an upstream certificate that is not trusted, or not for the name or address, is a 502 connect failure")
    func unverifiedUpstream() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        let named = certificates.named.certificateFile
        for (certificate, tls, why) in [
            (certificates.server, "{}", "self-signed, not among the system's roots"),
            (certificates.server, "{ca: \(certificates.client.certificateFile)}", "another CA"),
            (certificates.named, "{ca: \(named)}", "for localhost, reached by address"),
            (certificates.named, "{ca: \(named), server_name: other.example}", "for localhost, not other.example"),
        ] {
            try await withTLSOrigin(try certificates.origin(certificate)) { origin in
                try await withGateway(Self.yaml(port: origin.port, tls: tls)) { gateway in
                    let response = try await gateway.get("/x")
                    #expect(response.status == 502, "\(why)")
                    #expect(response.text.contains("upstream-connect-failure"), "\(why): \(response.text)")
                    #expect(response.text.contains("TLS handshake failed"), "\(why): \(response.text)")
                    #expect(origin.state.requests.load(ordering: .relaxed) == 0, "\(why)")
                }
            }
        }
    }

    @Test("mutual TLS: an upstream that requires a client certificate gets the configured one; without it, 502")
    func clientCertificate() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        try await withTLSOrigin(try certificates.origin(certificates.server, requireClient: true)) { origin in
            let ca = certificates.server.certificateFile
            try await withGateway(Self.yaml(port: origin.port, tls: "{ca: \(ca)}")) { gateway in
                let refused = try await gateway.get("/x")
                #expect(refused.status == 502, "\(refused.text)")
                #expect(origin.state.requests.load(ordering: .relaxed) == 0)
            }
            let client = "certificate: \(certificates.client.certificateFile), key: \(certificates.client.keyFile)"
            try await withGateway(Self.yaml(port: origin.port, tls: "{ca: \(ca), \(client)}")) { gateway in
                let response = try await gateway.get("/x")
                #expect(response.status == 200, "\(response.text)")
                #expect(origin.state.requests.load(ordering: .relaxed) == 1)
                // The admin API shows the files, never the key.
                let config = try await gateway.admin("GET", "/config")
                let clusters = try await gateway.adminJSON("/config")["clusters"] as? [String: Any]
                let shown = (clusters?["secure"] as? [String: Any])?["tls"] as? [String: Any]
                #expect(shown?["certificate"] as? String == certificates.client.certificateFile)
                #expect(shown?["client_certificate"] as? Bool == true)
                #expect(shown?["ca"] as? String == ca)
                #expect(!config.text.replacingOccurrences(of: "\\/", with: "/").contains(certificates.client.keyFile))
                #expect(!config.text.contains("PRIVATE KEY"))
            }
        }
    }

    @Test(
        "a reload reads the tls files again: a rotated ca file is used; a broken one is refused and the running one kept"
    )
    func reloadRereadsFiles() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        let ca = certificates.server.directory.appendingPathComponent("rotating-ca.pem").path
        // At first the file holds a CA that does not sign the origin's certificate.
        try FileManager.default.copyItem(atPath: certificates.client.certificateFile, toPath: ca)
        try await withTLSOrigin(try certificates.origin(certificates.server)) { origin in
            let yaml = Self.yaml(port: origin.port, tls: "{ca: \(ca)}")
            try await withGateway(yaml) { gateway in
                #expect(try await gateway.get("/x").status == 502)
                // The same configuration text, the file rotated: the cluster gets the new trust.
                try FileManager.default.removeItem(atPath: ca)
                try FileManager.default.copyItem(atPath: certificates.server.certificateFile, toPath: ca)
                #expect(try await gateway.admin("POST", "/reload", body: yaml).status == 200)
                #expect(try await gateway.get("/x").status == 200)
                try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: ca))
                let refused = try await gateway.admin("POST", "/reload", body: yaml)
                #expect(refused.status == 400)
                #expect(refused.text.contains("clusters.secure.tls.ca: no PEM certificate"), "\(refused.text)")
                #expect(try await gateway.get("/x").status == 200)
                #expect(origin.state.requests.load(ordering: .relaxed) == 2)
            }
        }
    }

    @Test("health probes of a TLS cluster speak TLS and verify the endpoint as requests do")
    func healthProbes() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        try await withTLSOrigin(try certificates.origin(certificates.server)) { origin in
            let endpoint = Endpoint(host: "127.0.0.1", port: origin.port)
            func probe(_ tls: GatewayConfiguration.Cluster.TLS?) async -> Bool {
                var cluster = GatewayConfiguration.Cluster(name: "secure", endpoints: [endpoint])
                cluster.tls = tls
                // The probe's timeout is real time: 10 s, so that a loaded machine does not fail the
                // trusted probe (the default 1 s did once); the refused ones fail at once.
                let checker = HealthChecker(
                    state: ClusterState(cluster: cluster, clock: SystemClock()),
                    check: .init(path: "/readyz", interval: .seconds(10), timeout: .seconds(10)),
                    eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: quietLogger)
                return await checker.probe(endpoint) == .success
            }
            let trusted = try GatewayConfiguration.Cluster.TLS.files(ca: certificates.server.certificateFile)
            let otherCA = try GatewayConfiguration.Cluster.TLS.files(ca: certificates.client.certificateFile)
            #expect(await probe(trusted))
            #expect(origin.state.requests.load(ordering: .relaxed) == 1)
            #expect(!(await probe(nil)), "cleartext to a TLS endpoint")
            #expect(!(await probe(.init())), "the system's roots do not trust it")
            #expect(!(await probe(otherCA)), "another CA")
            #expect(origin.state.requests.load(ordering: .relaxed) == 1)
        }
    }

    @Test("tls settings are checked when the configuration is read: one line per problem, naming the setting")
    func configurationProblems() async throws {
        let certificates = try await Certificates.make()
        defer { certificates.remove() }
        let notPEM = certificates.server.directory.appendingPathComponent("not.pem").path
        try Data("hello".utf8).write(to: URL(fileURLWithPath: notPEM))
        let cert = certificates.server.certificateFile
        func clusterProblems(_ tls: String) -> [String] {
            problems(Self.yaml(port: 8443, tls: tls)).map { $0.replacing(#/\s\(gateway\.yaml:\d+\)$/#, with: "") }
        }
        #expect(
            clusterProblems("{cafile: x}")
                == ["clusters.secure.tls.cafile: unknown key, expected one of ca, server_name, certificate, key"])
        #expect(
            clusterProblems("{ca: /nonexistent/ca.pem}") == [
                "clusters.secure.tls.ca: cannot read \"/nonexistent/ca.pem\""
            ])
        #expect(clusterProblems("{ca: \(notPEM)}") == ["clusters.secure.tls.ca: no PEM certificate in \"\(notPEM)\""])
        #expect(
            clusterProblems("{certificate: \(cert)}")
                == ["clusters.secure.tls.key: is missing: a client certificate needs its private key"])
        #expect(
            clusterProblems("{key: \(certificates.server.keyFile)}")
                == ["clusters.secure.tls.certificate: is missing: a client key needs its certificate"])
        #expect(
            clusterProblems("{certificate: \(cert), key: \(notPEM)}").first?.hasPrefix(
                "clusters.secure.tls.key: not a PEM private key") == true)
        #expect(
            clusterProblems("{server_name: 10.0.0.1}") == [
                "clusters.secure.tls.server_name: expected a host name, got \"10.0.0.1\""
            ])
        #expect(clusterProblems("{ca: \(cert), server_name: localhost}").isEmpty)
        #expect(clusterProblems("{}").isEmpty)
    }

    @Test(
        "the handshake waiter completes when the handshake does and then leaves the pipeline; a close before it fails it"
    )
    func handshakeWaiterLeaves() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(TLSHandshakeWaiter())
        let waiter = try channel.pipeline.syncOperations.handler(type: TLSHandshakeWaiter.self)
        let done = try #require(waiter.done)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "http/1.1"))
        try done.wait()
        #expect(throws: ChannelPipelineError.notFound) {
            try channel.pipeline.syncOperations.handler(type: TLSHandshakeWaiter.self)
        }
        _ = try channel.finish()

        let closing = EmbeddedChannel()
        try closing.pipeline.syncOperations.addHandler(TLSHandshakeWaiter())
        let pending = try #require(try closing.pipeline.syncOperations.handler(type: TLSHandshakeWaiter.self).done)
        closing.pipeline.fireChannelInactive()
        #expect(throws: UpstreamTLSHandshakeFailed.self) { try pending.wait() }
        _ = try? closing.finish()
    }
}
