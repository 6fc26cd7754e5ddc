//===----------------------------------------------------------------------===//
// This source file is part of the Aviary open source project.
// SPDX-License-Identifier: Apache-2.0
//===----------------------------------------------------------------------===//

import AviaryCore
import Foundation
import Testing

@testable import AviaryMessaging

/// The consumer's reader of stored events must give what `JSONDecoder` gives (except that JSON
/// data keeps the stored bytes), and decline whatever it does not read itself.
@Suite("StoredEventReader")
struct StoredEventReaderTests {
    static let time = Date(timeIntervalSince1970: 1_800_000_000.125)

    static var events: [CloudEvent] {
        get throws {
            [
                CloudEvent(id: "1", source: "/s", type: "t", time: nil),
                try CloudEvent(
                    id: "2", source: "/shop/orders", type: "order.placed", subject: "o-1", time: Self.time,
                    json: ["order": "o-1", "total": "12.50"], extensions: ["traceparent": "00-ab-cd-01", "aa": "first"]),
                CloudEvent(
                    id: "é \"quoted\" \\ back\tslash\n😀 \u{1}", source: "/s", type: "t", time: Self.time,
                    dataContentType: "application/cloudevents+json", dataSchema: "https://example.com/s",
                    data: Data(#"[1,2.5,-3e2,true,false,null,"x\u00e9\ud83d\ude00\n"]"#.utf8),
                    extensions: ["zz": "last ✓"]),
                CloudEvent(
                    id: "4", source: "/s", type: "t", dataContentType: "application/json", data: Data("null".utf8)),
                CloudEvent(
                    id: "5", source: "/s", type: "t", dataContentType: "text/plain",
                    data: Data("plain \"text\" ✓\n".utf8)),
                CloudEvent(
                    id: "6", source: "/s", type: "t", dataContentType: "application/json", data: Data(#""s""#.utf8)),
            ]
        }
    }

    @Test("stored events read back as JSONDecoder reads them, JSON data as the same value in the stored bytes")
    func matchesDecoder() throws {
        for event in try Self.events {
            let stored = try StoredJSON.event(event)
            let decoded = try JSONDecoder().decode(CloudEvent.self, from: Data(stored.utf8))
            guard !stored.contains("\"data_base64\"") else {
                // Data that is not JSON is stored as base64 (StoredJSON.slow): the decoder's part.
                #expect(StoredEventReader.event(stored) == nil)
                #expect(try StoredEventReader.decodeEvent(stored) == decoded)
                continue
            }
            var read = try #require(StoredEventReader.event(stored), "declined \(stored)")
            #expect(read.data == event.data)
            if let data = read.data, let other = decoded.data {
                #expect(try Self.value(data) == Self.value(other))
            }
            read.data = decoded.data
            #expect(read == decoded, "\(stored)")
        }
        // Data of another content type given as a JSON string (as other writers store it).
        let text =
            #"{"data":"plain \"text\" \u2713","datacontenttype":"text/plain","id":"1","source":"/s","specversion":"1.0","type":"t"}"#
        let read = try #require(StoredEventReader.event(text))
        #expect(read == (try JSONDecoder().decode(CloudEvent.self, from: Data(text.utf8))))
        #expect(read.data == Data("plain \"text\" ✓".utf8))
    }

    /// A JSON value, comparable.
    static func value(_ data: Data) throws -> NSObject? {
        try JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed) as? NSObject
    }

    @Test("JSON data keeps the stored bytes, which decode to the same value")
    func dataAsStored() throws {
        let bytes = Data(#"{ "b" : [1, 2],"a":{"y":1, "x":"é"} }"#.utf8)
        let event = CloudEvent(id: "1", source: "/s", type: "t", dataContentType: "application/json", data: bytes)
        let stored = try StoredJSON.event(event)
        let read = try #require(StoredEventReader.event(stored))
        #expect(read.data == bytes)
        let decoded = try JSONDecoder().decode(CloudEvent.self, from: Data(stored.utf8))
        #expect(decoded.data != bytes)  // the decoder re-encodes with sorted keys
        struct Payload: Decodable, Equatable {
            struct Inner: Decodable, Equatable {
                var x: String
                var y: Int
            }
            var a: Inner
            var b: [Int]
        }
        #expect(try read.decodeData(as: Payload.self) == decoded.decodeData(as: Payload.self))
    }

    @Test(
        "declines what JSONDecoder must read or reject",
        arguments: [
            #"{"data_base64":"AAE=","id":"1","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"count":3,"id":"1","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"id":"1","id":"2","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"id":"1","source":"/s","specversion":"0.3","type":"t"}"#,
            #"{"id":"1","source":"/s","specversion":"1.0"}"#,
            #"{"id":"1","source":"/s","specversion":"1.0","type":"t","time":"yesterday"}"#,
            #"{"id":"1","source":"/s","specversion":"1.0","type":"t""#,
            #"{"id":"1","source":"/s","specversion":"1.0","type":"t"} x"#,
            #"{"id":"1\u","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"id":"\udc00","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"data":{"a":},"id":"1","source":"/s","specversion":"1.0","type":"t"}"#,
            #"{"data":5,"datacontenttype":"text/plain","id":"1","source":"/s","specversion":"1.0","type":"t"}"#,
            #"[]"#,
        ])
    func declines(text: String) throws {
        #expect(StoredEventReader.event(text) == nil)
        // Then JSONDecoder decides: the base64 data and the numeric extension are events.
        if text.contains("data_base64") || text.contains("count") {
            let event = try StoredEventReader.decodeEvent(text)
            #expect(event == (try JSONDecoder().decode(CloudEvent.self, from: Data(text.utf8))))
        }
    }

    @Test("headers read back as stored; anything but an object of distinct strings is declined")
    func headers() throws {
        let headers = ["traceparent": "00-ab-cd-01", "quote\"d": "back\\slash\n😀", "é": ""]
        #expect(StoredEventReader.headers(StoredJSON.headers(headers)) == headers)
        #expect(StoredEventReader.headers("{}") == [:])
        #expect(StoredEventReader.headers(#" { "a" : "\u00e9" } "#) == ["a": "é"])
        #expect(StoredEventReader.headers(#"{"a":"1","a":"2"}"#) == nil)
        #expect(StoredEventReader.headers(#"{"a":1}"#) == nil)
        #expect(StoredEventReader.headers(#"{"a":"1""#) == nil)
        #expect(throws: DecodingError.self) { try StoredEventReader.decodeHeaders(#"{"a":1}"#) }
    }
}
