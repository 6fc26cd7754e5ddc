//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Testing

@Suite("ServiceName and Endpoint", .timeLimit(.minutes(1)))
struct VocabularyTests {
    @Test("valid service names", arguments: ["orders", "a", "shop-users-2", String(repeating: "a", count: 63)])
    func validNames(name: String) throws {
        #expect(try ServiceName(name).rawValue == name)
    }

    @Test(
        "invalid service names are refused with the rule they break",
        arguments: [
            ("", "empty"), ("Orders", "lowercase letter first"), ("1orders", "lowercase letter first"),
            ("orders-", "last"), ("or_ders", "only lowercase"), (String(repeating: "a", count: 64), "at most 63"),
        ])
    func invalidNames(name: String, reason: String) {
        #expect {
            try ServiceName(name)
        } throws: { error in
            (error as? AviaryError)?.code == .invalidArgument && "\(error)".contains(reason)
        }
    }

    @Test(
        "endpoints parse host:port and IPv6",
        arguments: [
            ("127.0.0.1:8101", "127.0.0.1", 8101), ("[::1]:9900", "::1", 9900), ("localhost:0", "localhost", 0),
        ])
    func endpoints(text: String, host: String, port: Int) throws {
        let endpoint = try Endpoint(parsing: text)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        #expect(endpoint.description == text)
    }

    @Test("bad endpoints name the problem", arguments: ["127.0.0.1:99999", ":80", "host:http", "[::1", "host"])
    func badEndpoints(text: String) {
        #expect(throws: AviaryError.self) { try Endpoint(parsing: text) }
    }

    @Test("a missing port takes the default")
    func defaultPort() throws {
        #expect(try Endpoint(parsing: "example", defaultPort: 80).port == 80)
    }
}

@Suite("Problem details", .timeLimit(.minutes(1)))
struct ProblemDetailsTests {
    @Test("an AviaryError renders as RFC 9457 problem details with a stable type")
    func aviaryErrorRenders() throws {
        let error = AviaryError(.notFound, "no user 42", extensions: ["user_id": "42"])
        let problem = error.problemDetails
        #expect(problem.status == 404)
        #expect(problem.type == "urn:aviary:problem:not-found")
        #expect(problem.title == "Not Found")
        let json = try JSONSerialization.jsonObject(with: problem.jsonData()) as? [String: Any]
        #expect(json?["detail"] as? String == "no user 42")
        #expect(json?["user_id"] as? String == "42")
        #expect(json?["status"] as? Int == 404)
    }

    @Test("problem details round-trip through JSON, keeping extensions")
    func roundTrip() throws {
        let problem = ProblemDetails(
            status: 503, detail: "payments is unavailable", slug: "dependency-unavailable",
            extensions: ["dependency": "payments"])
        let decoded = try JSONDecoder().decode(ProblemDetails.self, from: problem.jsonData())
        #expect(decoded == problem)
    }
}

@Suite("CloudEvent", .timeLimit(.minutes(1)))
struct CloudEventTests {
    struct OrderPlaced: Codable, Equatable {
        var orderID: String
        var total: Int
    }

    @Test("JSON data is embedded as a JSON member and decodes back")
    func jsonRoundTrip() throws {
        let event = try CloudEvent(
            id: "e1", source: "/shop/orders", type: "order.placed", subject: "o-1",
            time: Date(timeIntervalSince1970: 1_700_000_000.5), json: OrderPlaced(orderID: "o-1", total: 4200),
            extensions: ["traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
        let bytes = try JSONEncoder().encode(event)
        let object = try JSONSerialization.jsonObject(with: bytes) as? [String: Any]
        #expect(object?["specversion"] as? String == "1.0")
        #expect((object?["data"] as? [String: Any])?["total"] as? Int == 4200)
        #expect(object?["traceparent"] != nil)
        let decoded = try JSONDecoder().decode(CloudEvent.self, from: bytes)
        #expect(decoded.id == "e1")
        #expect(decoded.time == event.time)
        #expect(try decoded.decodeData(as: OrderPlaced.self) == OrderPlaced(orderID: "o-1", total: 4200))
        #expect(decoded.extensions == event.extensions)
        #expect(decoded.validate().isEmpty)
    }

    @Test("binary data travels as data_base64")
    func binaryData() throws {
        let event = CloudEvent(
            source: "/x", type: "blob", dataContentType: "application/octet-stream", data: Data([0, 1, 2, 255]))
        let decoded = try JSONDecoder().decode(CloudEvent.self, from: JSONEncoder().encode(event))
        #expect(decoded.data == Data([0, 1, 2, 255]))
    }

    @Test("a wrong specversion is refused")
    func wrongVersion() {
        let json = Data(#"{"specversion":"0.3","id":"1","source":"/x","type":"t"}"#.utf8)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(CloudEvent.self, from: json) }
    }

    @Test("default ids are distinct lowercase version-4 UUIDs that Foundation parses back")
    func defaultIDs() throws {
        var seen = Set<String>()
        var nibbleSeen = [Set<Character>](repeating: [], count: 36)
        for _ in 0..<2000 {
            let id = CloudEvent(source: "/x", type: "t").id
            #expect(id.count == 36)
            #expect(id == id.lowercased())
            let parsed = try #require(UUID(uuidString: id), "not a UUID: \(id)")
            #expect(parsed.uuidString.lowercased() == id)
            let characters = Array(id)
            #expect(characters[14] == "4", "version nibble of \(id)")
            #expect("89ab".contains(characters[19]), "variant nibble of \(id)")
            for (index, character) in characters.enumerated() { nibbleSeen[index].insert(character) }
            seen.insert(id)
        }
        #expect(seen.count == 2000)
        // Every random position takes many values (a stuck or mis-shifted nibble would not).
        for index in 0..<36 where ![8, 13, 14, 18, 23].contains(index) {
            #expect(nibbleSeen[index].count >= (index == 19 ? 4 : 12), "position \(index)")
        }
    }

    @Test("invalid attributes are reported one per line")
    func validation() {
        let event = CloudEvent(id: "", source: "", type: "t", extensions: ["Bad_Name": "x"])
        #expect(event.validate().count == 3)
    }
}
