import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import XCTest
@testable import LoRAFuse
import LoRAFuseServer

/// The HTTP server on a loopback port with the tiny model, driven by async-http-client.
final class ServeHTTPTests: XCTestCase {
    struct Reply {
        var status: Int
        var body: String
        var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]) ?? [:] }
        var error: [String: Any] { json["error"] as? [String: Any] ?? [:] }
    }

    final class Harness: @unchecked Sendable {
        let server: RunningServer
        let engine: ServeEngine
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        let dir: String
        var base: String { "http://127.0.0.1:\(server.port)" }

        init(server: RunningServer, engine: ServeEngine, dir: String) {
            self.server = server
            self.engine = engine
            self.dir = dir
        }

        func request(_ method: HTTPMethod, _ path: String, json: String? = nil, key: String? = nil) async throws -> Reply {
            var req = HTTPClientRequest(url: base + path)
            req.method = method
            if let json {
                req.headers.add(name: "content-type", value: "application/json")
                req.body = .bytes(ByteBuffer(string: json))
            }
            if let key { req.headers.add(name: "authorization", value: "Bearer " + key) }
            let resp = try await client.execute(req, timeout: .seconds(60))
            let body = try await resp.body.collect(upTo: 16 << 20)
            return Reply(status: Int(resp.status.code), body: String(buffer: body))
        }

        /// A streamed request's `data:` payloads in order (the last is "[DONE]").
        func stream(_ path: String, json: String) async throws -> (contentType: String, events: [String]) {
            var req = HTTPClientRequest(url: base + path)
            req.method = .POST
            req.body = .bytes(ByteBuffer(string: json))
            let resp = try await client.execute(req, timeout: .seconds(60))
            var text = ""
            for try await part in resp.body { text += String(buffer: part) }
            let events = text.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { e -> String in
                XCTAssertTrue(e.hasPrefix("data: "), e)
                return String(e.dropFirst(6))
            }
            return (resp.headers.first(name: "content-type") ?? "", events)
        }

        func stop() async throws {
            try await client.shutdown()
            try await server.shutdown()
        }
    }

    private func start(limits: ServeLimits = ServeLimits(maxBatch: 8, contextLength: 256, maxTokensCap: 64, prefillChunk: 16),
                       apiKey: String? = nil, maxBody: Int = 1 << 20, decode: DecodeStep? = nil) async throws -> Harness {
        let model = ServeFixtures.model()
        let dir = try ServeFixtures.adapterDirectory(model, names: ["alpha", "beta", "gamma"])
        let reg = AdapterRegistry(model: model, baseName: "tiny")
        try reg.registerDirectory(dir)
        let engine = ServeEngine(registry: reg, limits: limits, decode: decode)
        let server = try await RunningServer.start(engine: engine, options: ServerOptions(host: "127.0.0.1", port: 0, apiKey: apiKey,
                                                                                          maxBodyBytes: maxBody, adaptersRoot: dir))
        return Harness(server: server, engine: engine, dir: dir)
    }

    private func chat(_ model: String, _ text: String, max: Int = 10, extra: String = "") -> String {
        #"{"model":"\#(model)","messages":[{"role":"user","content":"\#(text)"}],"max_tokens":\#(max)\#(extra)}"#
    }

    func testHealthModelsAndMetrics() async throws {
        let h = try await start()
        let health = try await h.request(.GET, "/health")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json["status"] as? String, "ok")
        let models = try await h.request(.GET, "/v1/models")
        XCTAssertEqual(models.status, 200)
        let data = models.json["data"] as? [[String: Any]] ?? []
        XCTAssertEqual(data.map { $0["id"] as? String }, ["tiny", "alpha", "beta", "gamma"])
        XCTAssertTrue(data[0]["parent"] is NSNull)
        XCTAssertEqual(data[1]["parent"] as? String, "tiny")
        _ = try await h.request(.POST, "/v1/chat/completions", json: chat("alpha", "hi", max: 3, extra: #","temperature":0"#))
        let metrics = try await h.request(.GET, "/metrics")
        XCTAssertEqual(metrics.status, 200)
        for name in ["lorafuse_requests_total{endpoint=\"chat\",status=\"200\"} 1", "lorafuse_prompt_tokens_total",
                     "lorafuse_completion_tokens_total 3", "lorafuse_time_to_first_token_seconds_bucket",
                     "lorafuse_time_per_output_token_seconds_count", "lorafuse_decode_batch_size_bucket",
                     "lorafuse_model_requests_total{model=\"alpha\"} 1", "lorafuse_queue_depth", "lorafuse_adapters_resident 1",
                     "lorafuse_adapter_loads_total 1", "lorafuse_adapter_evictions_total 0", "lorafuse_fusions_built_total 0",
                     "lorafuse_kv_blocks 0", "lorafuse_kv_blocks_peak 1", "lorafuse_kv_bytes 0", "lorafuse_preemptions_total 0",
                     "lorafuse_prefix_tokens_reused_total 0"] {
            XCTAssertTrue(metrics.body.contains(name), "metrics lack \(name)")
        }
        try await h.stop()
    }

    func testChatAndCompletionStreamingEqualNonStreaming() async throws {
        let h = try await start()
        for (path, body) in [("/v1/chat/completions", chat("beta", "tell me", max: 12, extra: #","temperature":0.8,"seed":5"#)),
                             ("/v1/completions", #"{"model":"gamma","prompt":"once upon","max_tokens":12,"temperature":0}"#)] {
            let plain = try await h.request(.POST, path, json: body)
            XCTAssertEqual(plain.status, 200, plain.body)
            let choice = (plain.json["choices"] as? [[String: Any]])?.first ?? [:]
            let isChat = path.contains("chat")
            let text = isChat ? (choice["message"] as? [String: Any])?["content"] as? String : choice["text"] as? String
            XCTAssertEqual(plain.json["object"] as? String, isChat ? "chat.completion" : "text_completion")
            XCTAssertEqual((plain.json["usage"] as? [String: Any])?["completion_tokens"] as? Int, 12)
            XCTAssertEqual(choice["finish_reason"] as? String, "length")

            let streamed = try await h.stream(path, json: String(body.dropLast()) + #","stream":true,"stream_options":{"include_usage":true}}"#)
            XCTAssertEqual(streamed.contentType, "text/event-stream")
            XCTAssertEqual(streamed.events.last, "[DONE]")
            var joined = "", finish: String?, usage: [String: Any]?
            for e in streamed.events.dropLast() {
                let o = try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any]
                XCTAssertEqual(o["object"] as? String, isChat ? "chat.completion.chunk" : "text_completion")
                XCTAssertEqual(o["id"] as? String, (try JSONSerialization.jsonObject(with: Data(streamed.events[0].utf8)) as! [String: Any])["id"] as? String)
                if let u = o["usage"] as? [String: Any] { usage = u }
                guard let c = (o["choices"] as? [[String: Any]])?.first else { continue }
                joined += isChat ? ((c["delta"] as? [String: Any])?["content"] as? String ?? "") : (c["text"] as? String ?? "")
                if let f = c["finish_reason"] as? String { finish = f }
            }
            XCTAssertEqual(joined, text, path)
            XCTAssertEqual(finish, "length")
            XCTAssertEqual(usage?["completion_tokens"] as? Int, 12)
        }
        try await h.stop()
    }

    func testConcurrentMixedAdaptersEqualEachAlone() async throws {
        let h = try await start()
        let bodies = [
            #"{"model":"tiny","prompt":"aaa","max_tokens":16,"temperature":0}"#,
            #"{"model":"alpha","prompt":"bbb","max_tokens":16,"temperature":0}"#,
            #"{"model":"beta","prompt":"a longer prompt that takes two chunks","max_tokens":16,"temperature":1,"seed":3}"#,
            #"{"model":"gamma","prompt":"ddd","max_tokens":16,"temperature":0.7,"top_p":0.9,"seed":9}"#,
            #"{"model":"x","prompt":"eee","max_tokens":16,"temperature":0,"adapters":[{"name":"alpha"},{"name":"beta","weight":-0.5}]}"#,
            #"{"model":"x","prompt":"fff","max_tokens":16,"temperature":0.9,"seed":1,"adapters":[{"name":"alpha"},{"name":"gamma"}],"merge":{"method":"svd","rank":2}}"#,
            #"{"model":"alpha","prompt":"bbb","max_tokens":16,"temperature":0.5,"seed":2,"top_k":5,"presence_penalty":0.5}"#,
        ]
        func text(_ r: Reply) -> String { ((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? "<\(r.body)>" }
        var alone: [String] = []
        for b in bodies { alone.append(text(try await h.request(.POST, "/v1/completions", json: b))) }
        let together = try await withThrowingTaskGroup(of: (Int, String).self) { g in
            for (i, b) in bodies.enumerated() { g.addTask { (i, text(try await h.request(.POST, "/v1/completions", json: b))) } }
            var out = Array(repeating: "", count: bodies.count)
            for try await (i, t) in g { out[i] = t }
            return out
        }
        XCTAssertEqual(together, alone)
        let fusionModel = try await h.request(.POST, "/v1/completions", json: bodies[5]).json["model"] as? String
        XCTAssertTrue(fusionModel?.hasPrefix("fusion-") == true)
        let models = try await h.request(.GET, "/v1/models")
        XCTAssertTrue(models.body.contains(fusionModel ?? "?"), "the cached fusion is listed")
        // The fusion can be asked for by its name.
        let byName = try await h.request(.POST, "/v1/completions", json: bodies[5].replacingOccurrences(of: #""model":"x""#, with: #""model":"\#(fusionModel!)""#))
        XCTAssertEqual(text(byName), alone[5])
        try await h.stop()
    }

    func testLoadAndUnloadAdaptersAtRunTime() async throws {
        let h = try await start()
        let load = try await h.request(.POST, "/v1/adapters", json: #"{"name":"delta","path":"alpha","pinned":true}"#)
        XCTAssertEqual(load.status, 200, load.body)
        let models = try await h.request(.GET, "/v1/models")
        XCTAssertTrue(models.body.contains(#""id":"delta""#))
        let viaDelta = try await h.request(.POST, "/v1/completions", json: #"{"model":"delta","prompt":"q","max_tokens":6,"temperature":0}"#)
        let viaAlpha = try await h.request(.POST, "/v1/completions", json: #"{"model":"alpha","prompt":"q","max_tokens":6,"temperature":0}"#)
        XCTAssertEqual((viaDelta.json["choices"] as? [[String: Any]])?.first?["text"] as? String,
                       (viaAlpha.json["choices"] as? [[String: Any]])?.first?["text"] as? String)
        let r1 = try await h.request(.POST, "/v1/adapters", json: #"{"name":"delta","path":"beta"}"#)
        XCTAssertEqual(r1.status, 409)
        let r2 = try await h.request(.POST, "/v1/adapters", json: #"{"name":"evil","path":"../"}"#)
        XCTAssertEqual(r2.status, 400)
        let r3 = try await h.request(.POST, "/v1/adapters", json: #"{"name":"evil","path":"/etc"}"#)
        XCTAssertEqual(r3.error["code"] as? String, "path_outside_root")
        let r4 = try await h.request(.POST, "/v1/adapters", json: #"{"name":"none","path":"missing"}"#)
        XCTAssertEqual(r4.status, 404)
        let r5 = try await h.request(.DELETE, "/v1/adapters/delta")
        XCTAssertEqual(r5.status, 200)
        let gone = try await h.request(.POST, "/v1/completions", json: #"{"model":"delta","prompt":"q","max_tokens":6}"#)
        XCTAssertEqual(gone.status, 404)
        XCTAssertEqual(gone.error["code"] as? String, "model_not_found")
        let r6 = try await h.request(.DELETE, "/v1/adapters/delta")
        XCTAssertEqual(r6.status, 404)
        try await h.stop()
    }

    /// `lorafuse: {"routing": true}`: one {token_id, adapter} per generated token, in the response
    /// or spread over the stream's chunks (a plain adapter reports itself; routed models are
    /// checked in ServeRoutedTests).
    func testRoutingExtensionReportsEachTokensAdapter() async throws {
        let h = try await start()
        let body = chat("beta", "which adapter", max: 9, extra: #","temperature":0,"lorafuse":{"routing":true}"#)
        let plain = try await h.request(.POST, "/v1/chat/completions", json: body)
        XCTAssertEqual(plain.status, 200, plain.body)
        let routing = (plain.json["lorafuse"] as? [String: Any])?["routing"] as? [[String: Any]] ?? []
        let n = (plain.json["usage"] as? [String: Any])?["completion_tokens"] as? Int
        XCTAssertEqual(routing.count, n)
        XCTAssertTrue(routing.allSatisfy { $0["adapter"] as? String == "beta" && $0["token_id"] is Int }, plain.body)
        let streamed = try await h.stream("/v1/chat/completions", json: String(body.dropLast()) + #","stream":true}"#)
        var ids: [Int] = []
        for e in streamed.events.dropLast() {
            let o = try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any]
            for r in (o["lorafuse"] as? [String: Any])?["routing"] as? [[String: Any]] ?? [] { ids.append(r["token_id"] as! Int) }
        }
        XCTAssertEqual(ids, routing.map { $0["token_id"] as! Int })
        // Without the extension the response has no lorafuse field.
        let none = try await h.request(.POST, "/v1/chat/completions", json: chat("beta", "which adapter", max: 3))
        XCTAssertNil(none.json["lorafuse"])
        try await h.stop()
    }

    func testErrorStatuses() async throws {
        // The decode step marks that a request is running, so the 429 check below starts only once
        // the long request holds the one place (under load its HTTP round trip can lose the race
        // to the first short request, which then makes the long one the 429).
        final class Flag: @unchecked Sendable {
            private let lock = NSLock(); private var value = false
            func set() { lock.lock(); value = true; lock.unlock() }
            var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
        }
        let started = Flag()
        let slow: DecodeStep = { inputs in started.set(); Thread.sleep(forTimeInterval: 0.01); return try ServeEngine.sequentialDecode(inputs) }
        let h = try await start(limits: ServeLimits(maxBatch: 1, maxQueue: 0, contextLength: 64, maxTokensCap: 40), apiKey: "sekret",
                                maxBody: 2048, decode: slow)
        let k = "sekret"
        func check(_ r: Reply, _ status: Int, _ type: String, param: String? = nil, line: UInt = #line) {
            XCTAssertEqual(r.status, status, r.body, line: line)
            XCTAssertEqual(r.error["type"] as? String, type, r.body, line: line)
            XCTAssertNotNil(r.error["message"] as? String, line: line)
            XCTAssertTrue(r.error.keys.contains("code") && r.error.keys.contains("param"), line: line)
            if let param { XCTAssertEqual(r.error["param"] as? String, param, line: line) }
        }
        check(try await h.request(.GET, "/v1/models"), 401, "authentication_error")
        check(try await h.request(.GET, "/v1/models", key: "wrong"), 401, "authentication_error")
        let r7 = try await h.request(.GET, "/v1/models", key: k)
        XCTAssertEqual(r7.status, 200)
        let r8 = try await h.request(.GET, "/health")
        XCTAssertEqual(r8.status, 200, "health needs no key")
        check(try await h.request(.POST, "/v1/chat/completions", json: "{oops", key: k), 400, "invalid_request_error")
        check(try await h.request(.POST, "/v1/chat/completions", json: chat("nope", "hi"), key: k), 404, "not_found_error", param: "model")
        check(try await h.request(.POST, "/v1/chat/completions", json: chat("alpha", "hi", extra: #","n":2"#), key: k), 400, "invalid_request_error", param: "n")
        check(try await h.request(.POST, "/v1/completions",
                                  json: #"{"model":"x","prompt":"p","adapters":[{"name":"alpha"}],"merge":{"method":"avg"}}"#, key: k),
              400, "invalid_request_error", param: "merge.method")
        check(try await h.request(.POST, "/v1/completions",
                                  json: #"{"model":"x","prompt":"p","adapters":[{"name":"alpha"}],"merge":{"method":"ties","gamma":0.2}}"#, key: k),
              400, "invalid_request_error", param: "merge")
        for (extra, param) in [(#","lorafuse":5"#, "lorafuse"), (#","lorafuse":{"routing":"yes"}"#, "lorafuse.routing"),
                               (#","lorafuse":{"gates":true}"#, "lorafuse.gates")] {
            check(try await h.request(.POST, "/v1/chat/completions", json: chat("alpha", "hi", extra: extra), key: k),
                  400, "invalid_request_error", param: param)
        }
        check(try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"p","max_tokens":41}"#, key: k),
              400, "invalid_request_error", param: "max_tokens")
        check(try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"\#(String(repeating: "w", count: 80))"}"#, key: k),
              400, "invalid_request_error", param: "prompt")
        check(try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"\#(String(repeating: "w", count: 3000))"}"#, key: k),
              413, "invalid_request_error")
        // One running, none may wait: the second concurrent request gets 429, and the server keeps serving.
        let long = Task { try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"p","max_tokens":40}"#, key: k) }
        for _ in 0..<500 where !started.isSet { try await Task.sleep(nanoseconds: 2_000_000) }
        var busy: Reply?
        for _ in 0..<100 {
            try await Task.sleep(nanoseconds: 10_000_000)
            let r = try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"p","max_tokens":2}"#, key: k)
            if r.status == 429 { busy = r; break }
        }
        XCTAssertNotNil(busy)
        if let busy { check(busy, 429, "rate_limit_error") }
        let r9 = try await long.value
        XCTAssertEqual(r9.status, 200)
        let r10 = try await h.request(.POST, "/v1/completions", json: #"{"model":"tiny","prompt":"p","max_tokens":2}"#, key: k)
        XCTAssertEqual(r10.status, 200)
        try await h.stop()
    }

    func testShutdownLetsRunningRequestsFinish() async throws {
        let slow: DecodeStep = { inputs in Thread.sleep(forTimeInterval: 0.005); return try ServeEngine.sequentialDecode(inputs) }
        let h = try await start(decode: slow)
        let running = Task { try await h.request(.POST, "/v1/completions", json: #"{"model":"alpha","prompt":"p","max_tokens":40,"temperature":0}"#) }
        try await Task.sleep(nanoseconds: 50_000_000)
        try await h.server.shutdown()
        let r = try await running.value
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(((r.json["usage"] as? [String: Any])?["completion_tokens"]) as? Int, 40)
        try await h.client.shutdown()
    }

    /// A client that goes away frees its sequence: streamed (the next chunk cannot be written) or
    /// not (its connection's inbound side closes while the server still computes). Decoding is
    /// slowed to 20 ms a step, so 400 tokens would take 8 s; the engine must be empty well before.
    func testClientThatGoesAwayIsCancelled() async throws {
        let slow: DecodeStep = { inputs in Thread.sleep(forTimeInterval: 0.02); return try ServeEngine.sequentialDecode(inputs) }
        let h = try await start(limits: ServeLimits(maxBatch: 8, contextLength: 512, maxTokensCap: 400, prefillChunk: 16), decode: slow)
        for stream in [false, true] {
            let body = #"{"model":"alpha","prompt":"p","max_tokens":400,"temperature":0,"stream":\#(stream)}"#
            let client = HTTPClient(eventLoopGroupProvider: .singleton)
            let gone = Task {
                var req = HTTPClientRequest(url: h.base + "/v1/completions")
                req.method = .POST
                req.body = .bytes(ByteBuffer(string: body))
                let resp = try await client.execute(req, timeout: .seconds(60))
                for try await _ in resp.body {}
            }
            var admitted = false
            for _ in 0..<200 where !admitted {
                try await Task.sleep(nanoseconds: 10_000_000)
                admitted = h.engine.runningCount > 0
            }
            XCTAssertTrue(admitted, "stream \(stream): the request never started")
            gone.cancel()                                   // async-http-client closes the connection
            _ = await gone.result
            try await client.shutdown()
            let start = Date()
            while h.engine.runningCount + h.engine.queueDepth > 0 && Date().timeIntervalSince(start) < 8 {
                try await Task.sleep(nanoseconds: 20_000_000)
            }
            let waited = Date().timeIntervalSince(start)
            XCTAssertEqual(h.engine.runningCount + h.engine.queueDepth, 0, "stream \(stream)")
            XCTAssertLessThan(waited, 3, "stream \(stream): the sequence ran on after its client left (\(waited) s)")
        }
        // The server still answers, and says it closes the connection after a completion.
        var req = HTTPClientRequest(url: h.base + "/v1/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"alpha","prompt":"p","max_tokens":2,"temperature":0}"#))
        let resp = try await h.client.execute(req, timeout: .seconds(60))
        XCTAssertEqual(resp.status.code, 200)
        XCTAssertEqual(resp.headers.first(name: "connection"), "close")
        _ = try await resp.body.collect(upTo: 1 << 20)
        try await h.stop()
    }

    /// A seeded fuzz of the JSON endpoints: valid chat/completion/adapter bodies with fields
    /// replaced by values of every JSON type (and out-of-range numbers), fields dropped or added,
    /// and byte-level damage (truncation, flipped and inserted bytes). Every answer must be a 200
    /// (a JSON completion, or an event stream ending in [DONE]) or OpenAI's error object with a
    /// 4xx status, never a 5xx or a dropped connection, and the server must still serve after.
    func testFuzzedRequestBodiesGetA200OrA4xxErrorObject() async throws {
        let h = try await start(maxBody: 1 << 16)
        var rng = SeededRNG(seed: 2026)
        let values: [Any] = [NSNull(), true, false, 0, -1, 1, 2, 1e300, -1e300, 0.5, 3.7, Int.max, Int.min, "", "x",
                             "alpha", "tiny", "ties", String(repeating: "é", count: 300), [] as [Any], [1, 2], ["a"],
                             [[:] as [String: Any]], [:] as [String: Any], ["method": "ties"], ["name": "alpha", "weight": "w"]]
        func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }
        let bases: [(String, [String: Any])] = [
            ("/v1/chat/completions", ["model": "alpha", "messages": [["role": "user", "content": "hi"]], "max_tokens": 4]),
            ("/v1/chat/completions", ["model": "tiny", "messages": [["role": "system", "content": "s"], ["role": "user", "content": "q"]],
                                      "max_tokens": 3, "stream": true, "temperature": 0.7, "seed": 3, "stop": ["a"]]),
            ("/v1/completions", ["model": "beta", "prompt": "abc", "max_tokens": 4, "top_p": 0.9, "top_k": 5]),
            ("/v1/completions", ["model": "tiny", "prompt": "x", "max_tokens": 2,
                                 "adapters": [["name": "alpha", "weight": 0.5], ["name": "gamma"]], "merge": ["method": "ties", "density": 0.5]]),
            ("/v1/adapters", ["name": "fz", "path": "alpha"]),
        ]
        let keys = ["model", "messages", "prompt", "max_tokens", "stream", "temperature", "top_p", "top_k", "seed", "stop",
                    "n", "logprobs", "tools", "adapters", "merge", "stream_options", "presence_penalty", "name", "path", "pinned"]
        var statuses: [Int: Int] = [:]
        for i in 0..<400 {
            let (path, base) = pick(bases)
            var body = base
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                switch rng.next() % 4 {
                case 0: body[pick(keys)] = pick(values)                      // a field of another type or range
                case 1: if !body.isEmpty { body[pick(Array(body.keys))] = nil }   // a field dropped
                case 2: if var m = body["messages"] as? [[String: Any]], !m.isEmpty {
                            m[0][pick(["role", "content"])] = pick(values); body["messages"] = m
                        }
                default: if var a = body["adapters"] as? [[String: Any]] {
                            a[0][pick(["name", "weight"])] = pick(values); body["adapters"] = a
                        }
                }
            }
            body["max_tokens"] = body["max_tokens"].map { v in (v as? Int).map { min(max($0, -5), 8) } ?? v }   // keep runs short
            var bytes = [UInt8]((try? JSONSerialization.data(withJSONObject: body)) ?? Data("{}".utf8))
            switch rng.next() % 5 {                                          // byte-level damage on 3 of 5
            case 0: bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count + 1))))
            case 1: for _ in 0..<3 where !bytes.isEmpty { bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            case 2: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: Int(rng.next() % UInt64(bytes.count + 1)))
            default: break
            }
            let text = String(decoding: bytes, as: UTF8.self)
            let r = try await h.request(.POST, path, json: text)
            statuses[r.status, default: 0] += 1
            if r.status == 200 {
                if r.body.hasPrefix("data: ") {
                    XCTAssertTrue(r.body.hasSuffix("data: [DONE]\n\n"), "request \(i): \(text) → \(r.body.suffix(200))")
                } else {
                    XCTAssertFalse(r.json.isEmpty, "request \(i): \(text) → \(r.body.prefix(200))")
                }
            } else {
                XCTAssertTrue([400, 404, 409, 413, 429].contains(r.status), "request \(i): \(text) → \(r.status) \(r.body.prefix(300))")
                XCTAssertNotNil(r.error["message"] as? String, "request \(i): \(text) → \(r.body.prefix(300))")
                XCTAssertNotNil(r.error["type"] as? String, "request \(i): \(text)")
            }
            if path == "/v1/adapters" && r.status == 200 { _ = try await h.request(.DELETE, "/v1/adapters/fz") }
        }
        print("fuzzed request statuses: \(statuses.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(statuses[200] ?? 0, 20, "some requests stay valid")
        XCTAssertGreaterThan(statuses[400] ?? 0, 50, "most damage is refused as a bad request")
        let health = try await h.request(.GET, "/health")
        XCTAssertEqual(health.status, 200)
        try await h.stop()
    }
}
