import ArgumentParser
import AsyncHTTPClient
import Foundation
import LoRAFuse
import NIOCore

/// `lorafuse serve` against llama.cpp's own server on the same GGUF and the same GGUF LoRA files,
/// loopback only: many concurrent chat requests spread over 1…64 distinct adapters, and 1,000
/// registered adapters under a memory budget that holds 32 (S-LoRA's figure). Both servers run as
/// child processes with the same thread count and batch width; one client (this process) sends
/// the same requests to each and times them from the outside.
struct ServeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serving throughput and latency: lorafuse serve against llama-server (issue 15).",
        discussion: """
        Writes --registered random rank-r GGUF LoRA adapters (q_proj and v_proj, seeded) under \
        --work, then for each count D in --distinct sends --requests concurrent streaming chat \
        requests (request i uses adapter i mod D, greedy, --max-tokens each) to lorafuse serve \
        (--max-batch), to llama-server (--parallel of the same width, every adapter given with \
        --lora and picked per request by the "lora" field), and to lorafuse serve with \
        --max-batch 1 (the same requests one at a time). Then lorafuse serve with every adapter \
        registered and --memory-budget sized for --resident of them, each request on its own \
        adapter. Results: Benchmarks/results/serve.{json,md,svg}.
        """
    )

    @Option(help: "The GGUF model (default: the one scripts/setup.sh fetches).")
    var model: String = ModelLocator.defaultModelPath()
    @Option(help: "The lorafuse binary (default: the one beside this benchmark).")
    var lorafuse: String?
    @Option(name: .customLong("llama-server"), help: "llama.cpp's server binary (default: $LLAMA_SERVER, else $LORAFUSE_CACHE/bin/llama-server; scripts/setup_llama_server.sh builds it).")
    var llamaServer: String?
    @Flag(help: "Run lorafuse only (no results written).")
    var skipPeer = false
    @Flag(help: "Skip lorafuse serving the requests one at a time.")
    var skipSequential = false
    @Option(help: "Concurrent requests per run.")
    var requests = 64
    @Option(name: .customLong("max-tokens"), help: "Completion tokens per request (greedy).")
    var maxTokens = 64
    @Option(help: "Comma-separated counts of distinct adapters among the requests.")
    var distinct = "1,4,16,64"
    @Option(help: "Adapters registered for the paging run (0: skip it).")
    var registered = 1000
    @Option(name: .customLong("paging-kv"), help: "Key/value positions per sequence, for --max-batch sequences, that the paging run's --memory-budget holds beside the adapters (fewer: sequences are preempted for memory).")
    var pagingKV = 128

    @Option(help: "Adapters the paging run's --memory-budget holds.")
    var resident = 32
    @Option(name: .customLong("max-batch"), help: "Sequences decoded together: lorafuse's --max-batch, llama-server's --parallel.")
    var maxBatch = ServeLimits().maxBatch
    @Option(name: .customLong("prefill-chunk"), help: "lorafuse serve's --prefill-chunk (default: its own default).")
    var prefillChunk: Int?
    @Option(help: "lorafuse serve's weights: stored (the GGUF's quantized blocks, its default) or f32 (dequantized at load).")
    var compute: WeightCompute = .stored
    @Option(help: "Threads for each server.")
    var threads = 2
    @Option(help: "LoRA rank of the generated adapters.")
    var rank = 8
    @Option(help: "Seed of the generated adapters.")
    var seed: UInt64 = 1
    @Option(help: "First loopback port to use (the servers take this and the next).")
    var port = 18470
    @Option(help: "Scratch folder for the adapters and the servers' logs (reused when its adapters match).")
    var work: String = NSTemporaryDirectory() + "lorafuse-serve-bench"
    @Option(help: "Results JSON (a .md and an .svg are written beside it).")
    var results = "Benchmarks/results/serve.json"

    var counts: [Int] { distinct.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func validate() throws {
        if requests < 1 { throw ValidationError("--requests must be at least 1, got \(requests)") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1, got \(maxTokens)") }
        if maxBatch < 1 { throw ValidationError("--max-batch must be at least 1, got \(maxBatch)") }
        if threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
        if rank < 1 { throw ValidationError("--rank must be at least 1, got \(rank)") }
        let c = distinct.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !c.isEmpty, c.allSatisfy({ ($0 ?? 0) >= 1 }) else {
            throw ValidationError("--distinct must be comma-separated positive counts, got '\(distinct)'")
        }
        if registered < 0 { throw ValidationError("--registered must be at least 0, got \(registered)") }
        if registered > 0 && !(1...registered).contains(resident) {
            throw ValidationError("--resident must be in 1...\(registered), got \(resident)")
        }
        if !(1024...65534).contains(port) { throw ValidationError("--port must be in 1024...65534, got \(port)") }
        guard FileManager.default.fileExists(atPath: model) else {
            throw ValidationError("no model at \(model): run scripts/setup.sh or pass --model")
        }
    }

    func run() throws {
        let done = DispatchSemaphore(value: 0)
        let box = ResultBox()
        Task {
            do { try await runAsync() } catch { box.error = error }
            done.signal()
        }
        done.wait()
        if let e = box.error { throw e }
    }

    private func runAsync() async throws {
        let lorafuseBin = lorafuse ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("lorafuse").path
        guard FileManager.default.isExecutableFile(atPath: lorafuseBin) else {
            throw ValidationError("no lorafuse binary at \(lorafuseBin): build it (swift build -c release) or pass --lorafuse")
        }
        let cache = ProcessInfo.processInfo.environment["LORAFUSE_CACHE"] ?? (NSHomeDirectory() + "/.cache/lorafuse")
        let peerBin = llamaServer ?? ProcessInfo.processInfo.environment["LLAMA_SERVER"] ?? (cache + "/bin/llama-server")
        if !skipPeer && !FileManager.default.isExecutableFile(atPath: peerBin) {
            throw ValidationError("no llama-server at \(peerBin): run scripts/setup_llama_server.sh, pass --llama-server, or --skip-peer")
        }
        let needed = max(counts.max() ?? 1, registered)
        let dir = try makeAdapters(count: needed)
        let names = (0..<needed).map(Self.adapterName)
        let loadBefore = loadAverage()

        // Health checks and /metrics only; each workload opens its own connections (`workload`).
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            try await measureAll(client: client, dir: dir, names: names, peerBin: peerBin, lorafuseBin: lorafuseBin, loadBefore: loadBefore)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    private func measureAll(client: HTTPClient, dir: String, names: [String], peerBin: String, lorafuseBin: String,
                            loadBefore: String) async throws {
        let prompts = Self.prompts
        let chunkArgs = (prefillChunk.map { ["--prefill-chunk", String($0)] } ?? []) + ["--compute", compute.rawValue]

        // Request i: adapter (i mod D), prompt (i mod prompts).
        func bodies(_ d: Int, llama: Bool, adapters: [Int]? = nil) -> [Data] {
            (0..<requests).map { i in
                let a = adapters?[i] ?? (i % d)
                var o: [String: Any] = ["messages": [["role": "user", "content": prompts[i % prompts.count]]],
                                        "max_tokens": maxTokens, "temperature": 0, "stream": true,
                                        "stream_options": ["include_usage": true]]
                if llama {
                    o["model"] = "base"
                    o["lora"] = [["id": a, "scale": 1.0]]
                } else {
                    o["model"] = names[a]
                }
                return try! JSONSerialization.data(withJSONObject: o)
            }
        }

        var runs: [ServeRun] = []
        func record(_ r: ServeRun) {
            runs.append(r)
            FileHandle.standardError.write(Data("  \(r.server) D=\(r.distinct): \(String(format: "%.1f", r.tokens_per_s)) tok/s, TTFT p50/p99 \(String(format: "%.2f/%.2f", r.ttft_p50_s, r.ttft_p99_s)) s, \(r.errors) errors\n".utf8))
        }
        let maxD = counts.max() ?? 1

        // lorafuse, batched: one server for every D (adapters loaded on first use, kept).
        do {
            let srv = try ServerProcess.start(name: "lorafuse", exe: lorafuseBin,
                                              args: ["serve", "--model", model, "--adapters", dir, "--port", String(port),
                                                     "--max-batch", String(maxBatch), "--max-queue", String(requests),
                                                     "--threads", String(threads), "--max-tokens", String(max(maxTokens, 16))] + chunkArgs,
                                              port: port, log: work + "/logs/lorafuse.log")
            defer { srv.stop() }
            try await srv.waitHealthy(client)
            _ = try await Self.workload(url: srv.url, bodies: [bodies(1, llama: false)[0]])   // warm-up
            for d in counts {
                FileHandle.standardError.write(Data("lorafuse serve --max-batch \(maxBatch): \(requests) requests over \(d) adapter(s)…\n".utf8))
                record(try await Self.measure("lorafuse", d, srv, bodies(d, llama: false)))
            }
        }
        // lorafuse, one request at a time.
        if !skipSequential {
            let srv = try ServerProcess.start(name: "lorafuse-sequential", exe: lorafuseBin,
                                              args: ["serve", "--model", model, "--adapters", dir, "--port", String(port),
                                                     "--max-batch", "1", "--max-queue", String(requests),
                                                     "--threads", String(threads), "--max-tokens", String(max(maxTokens, 16))] + chunkArgs,
                                              port: port, log: work + "/logs/lorafuse-sequential.log")
            defer { srv.stop() }
            try await srv.waitHealthy(client)
            _ = try await Self.workload(url: srv.url, bodies: [bodies(1, llama: false)[0]])
            for d in counts where d == counts.min() || d == 16 || d == maxD {
                FileHandle.standardError.write(Data("lorafuse serve --max-batch 1: \(requests) requests over \(d) adapter(s)…\n".utf8))
                record(try await Self.measure("lorafuse-sequential", d, srv, bodies(d, llama: false)))
            }
        }
        // llama-server with every adapter of the largest D given at start.
        var peerVersion = ""
        if !skipPeer {
            var args = ["-m", model, "--host", "127.0.0.1", "--port", String(port + 1), "-t", String(threads),
                        "-tb", String(threads), "-np", String(maxBatch), "-c", String(maxBatch * 512),
                        "--lora-init-without-apply", "--no-webui"]
            for i in 0..<maxD { args += ["--lora", dir + "/" + names[i] + ".gguf"] }
            let srv = try ServerProcess.start(name: "llama-server", exe: peerBin, args: args, port: port + 1,
                                              log: work + "/logs/llama-server.log")
            defer { srv.stop() }
            try await srv.waitHealthy(client)
            peerVersion = (try? runProcess(peerBin, ["--version"])).map { String(decoding: $0, as: UTF8.self) } ?? ""
            if peerVersion.isEmpty { peerVersion = Self.versionLine(work + "/logs/llama-server.log") }
            _ = try await Self.workload(url: srv.url, bodies: [bodies(1, llama: true)[0]])
            for d in counts {
                FileHandle.standardError.write(Data("llama-server --parallel \(maxBatch): \(requests) requests over \(d) adapter(s)…\n".utf8))
                record(try await Self.measure("llama-server", d, srv, bodies(d, llama: true)))
            }
        }
        // Paging: every adapter registered, a budget for `resident` of them, each request its own adapter.
        var paging: PagingRun?
        if registered > 0 {
            let one = try AdapterIO.read(path: dir + "/" + names[0] + ".gguf").parameterCount * MemoryLayout<Float>.size
            // The budget is shared with the sequences' key/value blocks (unified paging): room for
            // `resident` adapters plus --paging-kv positions of each of --max-batch sequences.
            let pool = KVBlockPool(config: try LlamaModel.load(path: model).config)
            let kvBytes = maxBatch * pool.blocks(for: pagingKV) * pool.blockBytes
            let budgetMB = Int((Double(resident * one + kvBytes) / 1_048_576).rounded(.up))
            let held = ((budgetMB << 20) - kvBytes) / one
            var rng = SeededRNG(seed: seed &+ 7)
            let picks = Array((0..<registered).shuffled(using: &rng).prefix(requests))
            let srv = try ServerProcess.start(name: "lorafuse-paging", exe: lorafuseBin,
                                              args: ["serve", "--model", model, "--adapters", dir, "--port", String(port),
                                                     "--max-batch", String(maxBatch), "--max-queue", String(requests),
                                                     "--threads", String(threads), "--max-tokens", String(max(maxTokens, 16)),
                                                     "--memory-budget", String(budgetMB)] + chunkArgs,
                                              port: port, log: work + "/logs/lorafuse-paging.log")
            defer { srv.stop() }
            try await srv.waitHealthy(client)
            _ = try await Self.workload(url: srv.url, bodies: [bodies(1, llama: false)[0]])
            FileHandle.standardError.write(Data("lorafuse serve, \(registered) registered, budget \(budgetMB) MB (\(held) adapters): \(requests) requests on \(Set(picks).count) adapters…\n".utf8))
            let r = try await Self.measure("lorafuse-paging", Set(picks).count, srv, bodies(1, llama: false, adapters: picks))
            record(r)
            let metrics = try await Self.get(client, srv.url + "/metrics")
            paging = PagingRun(registered: registered, budget_mb: budgetMB, adapters_held: held, adapter_bytes: one,
                               distinct_requested: Set(picks).count, run: r,
                               evictions: Self.metric(metrics, "lorafuse_adapter_evictions_total"),
                               loads: Self.metric(metrics, "lorafuse_adapter_loads_total"),
                               kv_positions: pagingKV, kv_block_bytes: pool.blockBytes,
                               kv_blocks_peak: Self.metric(metrics, "lorafuse_kv_blocks_peak"),
                               preemptions: Self.metric(metrics, "lorafuse_preemptions_total"))
        }

        let rep = ServeBenchReport(
            date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(), threads: threads,
            model: (model as NSString).lastPathComponent, blas_core: BLAS.coreName,
            openblas_coretype_env: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "unset",
            quant_kernel: QuantKernels.kernelName,
            // The server decides by the same rule in the same environment (f32 weights: none).
            prompt_path: compute == .stored ? QuantizedPromptPath.automatic.rawValue : nil,
            load_average_before: loadBefore, load_average_after: loadAverage(),
            requests: requests, max_tokens: maxTokens, max_batch: maxBatch, prefill_chunk: prefillChunk ?? ServeLimits().prefillChunk, compute: compute.rawValue, rank: rank,
            peer: skipPeer ? "" : peerVersion.trimmingCharacters(in: .whitespacesAndNewlines),
            runs: runs, paging: paging)
        print(rep.markdown)
        if skipPeer {
            FileHandle.standardError.write(Data("--skip-peer: results not written\n".utf8))
            return
        }
        try rep.write(to: results)
        let svg = (results as NSString).deletingPathExtension + ".svg"
        try rep.chart().write(toFile: svg, atomically: true, encoding: .utf8)
        FileHandle.standardError.write(Data("wrote \(svg)\n".utf8))
    }

    static func adapterName(_ i: Int) -> String { String(format: "a%04d", i) }

    /// Random adapters as a user's shelf would have them: PEFT's default targets (q_proj, v_proj)
    /// at rank r, alpha 2r, A like PEFT's init and B small, so the output stays fluent text.
    /// Written as F16 GGUF LoRA, the one format both servers read. Kept between runs when the
    /// manifest matches.
    private func makeAdapters(count: Int) throws -> String {
        let dir = work + "/adapters"
        let manifest = "\(model)|rank \(rank)|seed \(seed)|v1"
        let manifestPath = dir + "/.manifest"
        let fm = FileManager.default
        if (try? String(contentsOfFile: manifestPath, encoding: .utf8)) == manifest,
           (0..<count).allSatisfy({ fm.fileExists(atPath: dir + "/" + Self.adapterName($0) + ".gguf") }) {
            return dir
        }
        // Only a folder this benchmark made (it has the manifest) is replaced; anything else at
        // that path is the user's.
        if fm.fileExists(atPath: dir) {
            guard fm.fileExists(atPath: manifestPath) else {
                throw ValidationError("\(dir) exists and was not written by lorafuse-bench serve: pass another --work")
            }
            try fm.removeItem(atPath: dir)
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let hints = try ModelHints.load(path: model)
        let lm = try LlamaModel.load(path: model)
        let c = lm.config
        FileHandle.standardError.write(Data("writing \(count) rank-\(rank) adapters to \(dir)…\n".utf8))
        for i in 0..<count {
            var rng = SeededRNG(seed: seed &* 1_000_003 &+ UInt64(i))
            var modules: [String: LoRAModule] = [:]
            for l in 0..<c.numHiddenLayers {
                for (p, out) in [(Projection.q, c.numAttentionHeads * c.headDim), (.v, c.numKeyValueHeads * c.headDim)] {
                    modules[ModuleAddress.projection(layer: l, p).peft] = LoRAModule(
                        A: .randomNormal(rank, c.hiddenSize, std: Float(1 / Double(c.hiddenSize).squareRoot()), rng: &rng),
                        B: .randomNormal(out, rank, std: 0.02, rng: &rng), scale: 2)
                }
            }
            let a = LoRAAdapter(name: Self.adapterName(i), modules: modules)
            try AdapterIO.write(a, to: dir + "/" + Self.adapterName(i) + ".gguf", format: .gguf, dtype: .f16, hints: hints)
        }
        try manifest.write(toFile: manifestPath, atomically: true, encoding: .utf8)
        return dir
    }

    static let prompts = [
        "Write a long story about a lighthouse keeper who finds a map.",
        "Explain in detail how a bicycle gear system works.",
        "Describe a day in the life of a baker in a small village.",
        "Write a detailed travel guide for a rainy city.",
        "Tell a long story about two robots learning to cook.",
        "Explain step by step how to plant a vegetable garden.",
        "Describe the history of the printing press in detail.",
        "Write a long letter from a sailor to his family.",
    ]

    // MARK: Client

    struct Outcome: Sendable {
        var ttft: Double?
        var latency: Double
        var tokens: Int
        var error: String?
    }

    static func measure(_ server: String, _ d: Int, _ srv: ServerProcess, _ bodies: [Data]) async throws -> ServeRun {
        let (wall, outs) = try await workload(url: srv.url, bodies: bodies)
        let ok = outs.filter { $0.error == nil }
        let tokens = ok.reduce(0) { $0 + $1.tokens }
        let ttfts = ok.compactMap(\.ttft).sorted(), lats = ok.map(\.latency).sorted()
        // Per-token latency after the first token, per request.
        let itl = ok.filter { $0.tokens > 1 && $0.ttft != nil }.map { ($0.latency - $0.ttft!) / Double($0.tokens - 1) }.sorted()
        return ServeRun(server: server, distinct: d, requests: bodies.count, wall_s: wall, completion_tokens: tokens,
                        tokens_per_s: Double(tokens) / wall,
                        ttft_p50_s: percentile(ttfts, 0.5), ttft_p99_s: percentile(ttfts, 0.99),
                        latency_p50_s: percentile(lats, 0.5), latency_p99_s: percentile(lats, 0.99),
                        inter_token_p50_ms: percentile(itl, 0.5) * 1000, errors: outs.count - ok.count,
                        first_error: outs.compactMap(\.error).first, server_peak_rss_mb: srv.peakRSSMB())
    }

    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let i = min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))
        return sorted[i]
    }

    /// Sends every body at once to `url`/v1/chat/completions (streaming) and times each from
    /// the outside: first content chunk, last byte, and the usage chunk's completion tokens.
    ///
    /// Each workload opens its own connections: a pooled connection left idle between runs may
    /// have been closed by the server (llama-server closes idle keep-alive connections after a few seconds), and reusing it fails
    /// the request ("I/O on closed channel"), which is the client's fault, not the server's.
    static func workload(url: String, bodies: [Data]) async throws -> (Double, [Outcome]) {
        var config = HTTPClient.Configuration()
        config.connectionPool = .init(idleTimeout: .seconds(1), concurrentHTTP1ConnectionsPerHostSoftLimit: bodies.count + 8)
        config.timeout = .init(connect: .seconds(10), read: .seconds(900))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        let t0 = Date()
        var outs = [Outcome?](repeating: nil, count: bodies.count)
        await withTaskGroup(of: (Int, Outcome).self) { g in
            for (i, b) in bodies.enumerated() {
                g.addTask { (i, await one(client, url: url + "/v1/chat/completions", body: b)) }
            }
            for await (i, o) in g { outs[i] = o }
        }
        let wall = Date().timeIntervalSince(t0)
        try? await client.shutdown()
        return (wall, outs.map { $0! })
    }

    static func one(_ client: HTTPClient, url: String, body: Data) async -> Outcome {
        let t0 = Date()
        var ttft: Double?, usage: Int?, chunks = 0
        do {
            var req = HTTPClientRequest(url: url)
            req.method = .POST
            req.headers.add(name: "Content-Type", value: "application/json")
            req.body = .bytes(ByteBuffer(bytes: body))
            let resp = try await client.execute(req, timeout: .seconds(900))
            guard resp.status.code == 200 else {
                let text = String(buffer: try await resp.body.collect(upTo: 1 << 20))
                return Outcome(latency: Date().timeIntervalSince(t0), tokens: 0, error: "HTTP \(resp.status.code): \(text.prefix(300))")
            }
            var pending = ""
            for try await part in resp.body {
                pending += String(buffer: part)
                while let r = pending.range(of: "\n\n") {
                    let event = String(pending[..<r.lowerBound])
                    pending = String(pending[r.upperBound...])
                    for line in event.split(separator: "\n") where line.hasPrefix("data: ") {
                        let payload = line.dropFirst(6)
                        if payload == "[DONE]" { continue }
                        guard let o = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any] else { continue }
                        if let e = o["error"] { return Outcome(latency: Date().timeIntervalSince(t0), tokens: 0, error: "\(e)") }
                        if let u = o["usage"] as? [String: Any], let n = u["completion_tokens"] as? Int { usage = n }
                        if let c = (o["choices"] as? [[String: Any]])?.first, let d = c["delta"] as? [String: Any],
                           let text = d["content"] as? String, !text.isEmpty {
                            chunks += 1
                            if ttft == nil { ttft = Date().timeIntervalSince(t0) }
                        }
                    }
                }
            }
        } catch {
            return Outcome(latency: Date().timeIntervalSince(t0), tokens: 0, error: "\(error)")
        }
        return Outcome(ttft: ttft, latency: Date().timeIntervalSince(t0), tokens: usage ?? chunks, error: nil)
    }

    static func get(_ client: HTTPClient, _ url: String) async throws -> String {
        let resp = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
        return String(buffer: try await resp.body.collect(upTo: 16 << 20))
    }

    /// The sum of a Prometheus counter's samples (all label sets), or nil if absent.
    static func metric(_ text: String, _ name: String) -> Double? {
        let values = text.split(separator: "\n").filter { $0.hasPrefix(name) && !$0.hasPrefix("#") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
        return values.isEmpty ? nil : values.reduce(0, +)
    }

    static func versionLine(_ log: String) -> String {
        guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return "" }
        return text.split(separator: "\n").first { $0.contains("build") && $0.contains("version") || $0.contains("build:") }
            .map(String.init) ?? ""
    }
}

private final class ResultBox: @unchecked Sendable {
    var error: (any Error)?
}

/// A server as a child process: its log in a file, health polled, stopped with SIGTERM.
final class ServerProcess: @unchecked Sendable {
    let name: String
    let process: Process
    let url: String

    private init(name: String, process: Process, url: String) {
        self.name = name
        self.process = process
        self.url = url
    }

    static func start(name: String, exe: String, args: [String], port: Int, log: String) throws -> ServerProcess {
        if portTaken(port) {
            throw ValidationError("port \(port) on 127.0.0.1 is already in use (a server from an earlier run?): stop it or pass --port")
        }
        try FileManager.default.createDirectory(atPath: (log as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        return ServerProcess(name: name, process: p, url: "http://127.0.0.1:\(port)")
    }

    /// Polls GET /health until 200 (llama-server answers 503 while it loads). Only once this
    /// process has had a moment to bind: a server left running on the port (an earlier run killed
    /// halfway) would otherwise answer for it; this one then exits on the taken port.
    func waitHealthy(_ client: HTTPClient, timeout: Double = 180) async throws {
        try await Task.sleep(nanoseconds: 300_000_000)
        let t0 = Date()
        while Date().timeIntervalSince(t0) < timeout {
            guard process.isRunning else { throw ValidationError("\(name) exited with \(process.terminationStatus) before it was healthy (see its log)") }
            if let r = try? await client.execute(HTTPClientRequest(url: url + "/health"), timeout: .seconds(5)), r.status.code == 200 {
                return
            }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
        throw ValidationError("\(name) was not healthy after \(Int(timeout)) s")
    }

    /// Whether something accepts connections on 127.0.0.1:port.
    static func portTaken(_ port: Int) -> Bool {
        #if os(Linux)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return r == 0
    }

    /// The server's peak resident set (VmHWM), in MB.
    func peakRSSMB() -> Double? {
        guard let s = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) }) else { return nil }
        return kb / 1024
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let t0 = Date()
        while process.isRunning && Date().timeIntervalSince(t0) < 20 { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

struct ServeRun: Codable {
    var server: String
    var distinct: Int
    var requests: Int
    var wall_s: Double
    var completion_tokens: Int
    var tokens_per_s: Double
    var ttft_p50_s: Double
    var ttft_p99_s: Double
    var latency_p50_s: Double
    var latency_p99_s: Double
    var inter_token_p50_ms: Double
    var errors: Int
    var first_error: String?
    var server_peak_rss_mb: Double?
}

struct PagingRun: Codable {
    var registered: Int
    var budget_mb: Int
    var adapters_held: Int
    var adapter_bytes: Int
    var distinct_requested: Int
    var run: ServeRun
    var evictions: Double?
    var loads: Double?
    var kv_positions: Int?
    var kv_block_bytes: Int?
    var kv_blocks_peak: Double?
    var preemptions: Double?
}

struct ServeBenchReport: BenchReport {
    var date: String
    var machine: String
    var threads: Int
    var model: String
    var blas_core: String
    var openblas_coretype_env: String
    var quant_kernel: String
    /// How the server's quantized weights multiply prompt chunks (nil: f32 weights; absent in
    /// results written before 2026-12-08).
    var prompt_path: String?
    var load_average_before: String
    var load_average_after: String
    var requests: Int
    var max_tokens: Int
    var max_batch: Int
    var prefill_chunk: Int
    var compute: String
    var rank: Int
    var peer: String
    var runs: [ServeRun]
    var paging: PagingRun?

    func run(_ server: String, _ d: Int) -> ServeRun? { runs.first { $0.server == server && $0.distinct == d } }

    var markdown: String {
        func f(_ x: Double?, _ fmt: String = "%.1f") -> String { x.map { $0.isFinite ? String(format: fmt, $0) : "—" } ?? "—" }
        var s = "\(model) · \(date) · \(machine) · \(threads) threads per server · OpenBLAS kernels: \(blas_core) (OPENBLAS_CORETYPE=\(openblas_coretype_env)) · quant kernels \(quant_kernel)" + (prompt_path.map { ", prompts through \($0 == "kernels" ? "the kernels" : "dequantized tiles + sgemm")" } ?? "") + "\n"
        s += "load average before \(load_average_before), after \(load_average_after) · \(requests) concurrent streaming chat requests, \(max_tokens) tokens each (greedy), rank-\(rank) adapters on q_proj/v_proj · batch width \(max_batch) (lorafuse --max-batch, llama-server --parallel) · lorafuse --prefill-chunk \(prefill_chunk), --compute \(compute)"
        s += peer.isEmpty ? "\n\n" : " · peer: \(peer)\n\n"
        s += "| distinct adapters | lorafuse tok/s | llama-server tok/s | ratio | lorafuse one at a time tok/s | TTFT p50 / p99 s (lorafuse) | TTFT p50 / p99 s (llama-server) | latency p99 s (lorafuse / llama-server) | errors |\n"
        s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for d in Set(runs.filter { $0.server != "lorafuse-paging" }.map(\.distinct)).sorted() {
            let o = run("lorafuse", d), p = run("llama-server", d), q = run("lorafuse-sequential", d)
            let ratio = o.flatMap { o in p.map { o.tokens_per_s / $0.tokens_per_s } }
            s += "| \(d) | \(f(o?.tokens_per_s)) | \(f(p?.tokens_per_s)) | \(f(ratio, "%.2f×")) | \(f(q?.tokens_per_s)) | "
            s += "\(f(o?.ttft_p50_s, "%.2f")) / \(f(o?.ttft_p99_s, "%.2f")) | \(f(p?.ttft_p50_s, "%.2f")) / \(f(p?.ttft_p99_s, "%.2f")) | "
            s += "\(f(o?.latency_p99_s, "%.1f")) / \(f(p?.latency_p99_s, "%.1f")) | \((o?.errors ?? 0) + (p?.errors ?? 0) + (q?.errors ?? 0)) |\n"
        }
        if let g = paging {
            s += "\n**Paging**: \(g.registered) adapters registered, --memory-budget \(g.budget_mb) MB (holds \(g.adapters_held) of \(g.adapter_bytes / 1024) KiB each in Float32"
            if let kv = g.kv_positions, let bb = g.kv_block_bytes {
                s += " beside the key/value blocks of \(kv) positions for each of \(max_batch) sequences, \(f(Double(bb) / 1_048_576, "%.2f")) MB per block"
            }
            s += "), "
            s += "\(g.run.requests) requests on \(g.distinct_requested) distinct adapters: \(f(g.run.tokens_per_s)) tok/s, TTFT p50/p99 \(f(g.run.ttft_p50_s, "%.2f"))/\(f(g.run.ttft_p99_s, "%.2f")) s, "
            s += "latency p99 \(f(g.run.latency_p99_s)) s, \(f(g.evictions, "%.0f")) evictions, \(f(g.loads, "%.0f")) loads, "
            if g.kv_positions != nil { s += "\(f(g.kv_blocks_peak, "%.0f")) key/value blocks at most, \(f(g.preemptions, "%.0f")) preemptions, " }
            s += "\(g.run.errors) errors, server peak RSS \(f(g.run.server_peak_rss_mb, "%.0f")) MB\n"
        }
        let rss = runs.filter { $0.server == "lorafuse" || $0.server == "llama-server" }
        if !rss.isEmpty {
            s += "\nServer peak RSS after the runs: lorafuse \(f(run("lorafuse", runs.map(\.distinct).max() ?? 0)?.server_peak_rss_mb, "%.0f")) MB, "
            s += "llama-server \(f(run("llama-server", runs.map(\.distinct).max() ?? 0)?.server_peak_rss_mb, "%.0f")) MB\n"
        }
        // The issue's targets at 16 distinct adapters.
        if let o = run("lorafuse", 16) {
            s += "\nTargets at 16 distinct adapters: "
            if let p = run("llama-server", 16) {
                let r = o.tokens_per_s / p.tokens_per_s
                s += "throughput \(f(r, "%.2f"))× llama-server (≥ 3×: \(r >= 3 ? "met" : "NOT met")); "
            }
            if let one = run("lorafuse", 1) {
                let r = o.tokens_per_s / one.tokens_per_s
                s += "\(f(r, "%.2f"))× lorafuse with one adapter (≥ 0.7×: \(r >= 0.7 ? "met" : "NOT met")); "
            }
            s += "TTFT p99 \(f(o.ttft_p99_s, "%.2f")) s (< 2 s: \(o.ttft_p99_s < 2 ? "met" : "NOT met"))\n"
        }
        return s
    }

    /// Throughput against distinct adapters (log2 x), one line per server.
    func chart() -> String {
        let ds = Set(runs.filter { $0.server != "lorafuse-paging" }.map(\.distinct)).sorted()
        var series: [SVGLineChart.Series] = []
        for (server, label) in [("lorafuse", "lorafuse serve (batch \(max_batch))"), ("llama-server", "llama-server (--parallel \(max_batch))"),
                                ("lorafuse-sequential", "lorafuse serve, one at a time")] {
            let pts = ds.compactMap { d in run(server, d).map { (log2(Double(d)), $0.tokens_per_s) } }
            if !pts.isEmpty { series.append(.init(name: label, points: pts, markers: true, dashed: server == "lorafuse-sequential")) }
        }
        return SVGLineChart(title: "\(requests) concurrent requests, \(max_tokens) tokens each · \(model) · \(date.prefix(10))",
                            xLabel: "distinct adapters among the requests", yLabel: "completion tokens/s", series: series,
                            xTicks: ds.map { (log2(Double($0)), String($0)) }, legendWidth: 250).render()
    }
}
