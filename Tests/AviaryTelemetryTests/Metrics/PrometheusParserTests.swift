//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryTelemetry
import AviaryTestSupport
import Foundation
import Testing

/// Validates the exposition with a parser we did not write: the Python `prometheus_client` text
/// parser (installed by `.ci/run`). A missing parser fails the test; it never skips.
@Suite("Exposition validated by prometheus_client", .timeLimit(.minutes(1)))
struct PrometheusParserTests {
    /// Parses stdin, refuses duplicate families, prints `{family: {type, help, samples}}` as JSON.
    static let script = """
        import sys, json
        try:
            from prometheus_client.parser import text_string_to_metric_families as parse
        except ImportError as error:
            sys.stderr.write("prometheus_client is not installed for %s (%s); run: %s -m pip install prometheus-client\\n"
                             % (sys.executable, error, sys.executable))
            sys.exit(3)
        families = {}
        for family in parse(sys.stdin.read()):
            if family.name in families:
                sys.stderr.write("duplicate family %s\\n" % family.name)
                sys.exit(4)
            families[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [[s.name, s.labels, s.value] for s in family.samples],
            }
        json.dump(families, sys.stdout)
        """

    struct Sample: Equatable, CustomStringConvertible {
        var name: String
        var labels: [String: String]
        var value: Double
        var description: String { "\(self.name)\(self.labels) \(self.value)" }
    }

    struct Family {
        var type: String
        var help: String
        var samples: [Sample]
    }

    /// Runs the parser on `text`; a failure to run or parse fails the test with the parser's message.
    static func parse(_ text: String) async throws -> [String: Family] {
        let output = try await Python.run(Self.script, stdin: Data(text.utf8), what: "prometheus_client parser")
        let json = try #require(
            try JSONSerialization.jsonObject(with: output) as? [String: [String: Any]]
        )
        return try json.mapValues { family in
            let samples = try #require(family["samples"] as? [[Any]])
            return Family(
                type: family["type"] as? String ?? "",
                help: family["help"] as? String ?? "",
                samples: try samples.map { sample in
                    try #require(sample.count == 3)
                    return Sample(
                        name: try #require(sample[0] as? String),
                        labels: try #require(sample[1] as? [String: String]),
                        value: try #require((sample[2] as? NSNumber)?.doubleValue)
                    )
                }
            )
        }
    }

    @Test("the full exposition parses, with every family and the expected samples")
    func fullExposition() async throws {
        let metrics = MetricsRegistry()
        MetricsRegistryTests.record(into: metrics)
        let families = try await Self.parse(metrics.exposition())

        let requests = try #require(families["aviary_http_server_requests"], "\(families.keys.sorted())")
        #expect(requests.type == "counter")
        #expect(requests.help == HTTPMetrics.help[HTTPMetrics.serverRequestsTotal])
        #expect(
            requests.samples.contains(
                Sample(
                    name: "aviary_http_server_requests_total",
                    labels: ["service": "orders", "route": #"/say/"hi"\n"#, "method": "POST", "status_code": "500"],
                    value: 1
                )
            ),
            "escaped label values round-trip: \(requests.samples)"
        )
        #expect(
            requests.samples.contains(
                Sample(
                    name: "aviary_http_server_requests_total",
                    labels: ["service": "orders", "route": "/orders/{id}", "method": "GET", "status_code": "200"],
                    value: 3
                )
            )
        )

        let duration = try #require(families["aviary_http_server_request_duration_seconds"])
        #expect(duration.type == "histogram")
        let buckets = duration.samples.filter { $0.name.hasSuffix("_bucket") }
        #expect(buckets.count == HTTPMetrics.durationBuckets.count + 1)
        #expect(buckets.last?.labels["le"] == "+Inf")
        #expect(buckets.last?.value == 3)
        #expect(buckets.map(\.value) == buckets.map(\.value).sorted(), "cumulative buckets")
        let sum = try #require(duration.samples.first { $0.name.hasSuffix("_sum") })
        #expect(abs(sum.value - 20.123) < 1e-9, "sum in seconds: \(sum.value)")
        #expect(duration.samples.first { $0.name.hasSuffix("_count") }?.value == 3)

        let active = try #require(families["aviary_http_server_active_requests"])
        #expect(active.type == "gauge")
        #expect(
            active.samples == [
                Sample(
                    name: "aviary_http_server_active_requests", labels: ["service": "orders", "method": "GET"], value: 4
                )
            ])

        #expect(families["aviary_http_client_requests"]?.type == "counter")
        #expect(families["aviary_http_client_request_duration_seconds"]?.type == "histogram")

        #if os(Linux)
        let expected: [(family: String, type: String, sample: String)] = [
            ("process_cpu_seconds", "counter", "process_cpu_seconds_total"),
            ("process_resident_memory_bytes", "gauge", "process_resident_memory_bytes"),
            ("process_virtual_memory_bytes", "gauge", "process_virtual_memory_bytes"),
            ("process_open_fds", "gauge", "process_open_fds"),
            ("process_max_fds", "gauge", "process_max_fds"),
            ("process_start_time_seconds", "gauge", "process_start_time_seconds"),
        ]
        for entry in expected {
            let family = try #require(families[entry.family], "\(entry.family) in \(families.keys.sorted())")
            #expect(family.type == entry.type, "\(entry.family)")
            #expect(!family.help.isEmpty, "\(entry.family)")
            #expect(family.samples.count == 1 && family.samples[0].name == entry.sample, "\(family.samples)")
            #expect((family.samples.first?.value ?? -1) > 0, "\(entry.family)")
        }
        #endif
    }

    @Test("the parser rejects a broken exposition, so the test above can fail")
    func parserRejects() async throws {
        let failure = await #expect(throws: Python.Failure.self) {
            _ = try await Self.parse("# TYPE broken counter\nbroken{label=\"unterminated} 1\n")
        }
        // Exit 1 is python's uncaught parse error; exit 3 (parser missing) must not pass here.
        #expect(failure?.description.contains("exited 1:") == true, "\(failure.map(String.init(describing:)) ?? "")")
    }
}
