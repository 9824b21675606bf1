import ArgumentParser
import Foundation
import LoRAFuse
import LoRAFuseServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model and its adapters over an OpenAI-compatible HTTP API.",
        discussion: """
        Routes: POST /v1/chat/completions, POST /v1/completions (stream: true for server-sent \
        events), GET /v1/models, POST /v1/adapters {name, path}, DELETE /v1/adapters/NAME, \
        GET /health, GET /metrics (Prometheus).

        A request picks its weights with "model": the base model's name, an adapter's or a cached \
        fusion's; or with "adapters": [{"name", "weight"}] and an optional "merge": {"method": \
        "ties", "density": 0.5, ...} (any static method of lorafuse merge), built once and cached \
        under a digest name that /v1/models then lists. Requests for different adapters are \
        decoded together (continuous batching).

        --adapters DIR registers every adapter and routed model under DIR by its folder or file \
        name, loaded on first use, and every fusion plan (a merge --config YAML over adapters of \
        DIR) by its file name, built on first use; DIR is also the only place POST /v1/adapters \
        may load from. --adapters PATH \
        (an adapter itself) registers that adapter. SIGTERM or SIGINT stops taking requests and \
        lets the running ones finish.

        BLAS runs single-threaded unless --threads says otherwise: the engine spreads each step \
        over its own threads (one per core).
        """
    )

    @Option(name: .long, help: "Model GGUF file or HF folder (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?

    @Option(name: .long, parsing: .upToNextOption, help: "Adapter folders (every adapter in them) or adapters (repeatable).")
    var adapters: [String] = []

    @Option(name: .long, help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "Port to listen on (0: any free port).")
    var port = 8080

    @Option(name: .customLong("max-batch"), help: "Sequences decoded together; more wait in a queue.")
    var maxBatch = ServeLimits().maxBatch

    @Option(name: .customLong("prefill-chunk"), help: "Prompt tokens per step, over all sequences still reading their prompts (batched with the decoding tokens; larger: earlier first tokens, slower steps meanwhile).")
    var prefillChunk = ServeLimits().prefillChunk

    @Option(name: .customLong("max-queue"), help: "Requests waiting beyond --max-batch before new ones get 429.")
    var maxQueue = 64

    @Option(name: .customLong("memory-budget"), help: "MB shared by resident adapter weights and the sequences' key/value cache blocks (unused adapters evicted least recently used first, then the newest sequences preempted and queued again; 0: no limit).")
    var memoryBudget = 0

    @Option(name: .customLong("prefix-reuse"), help: "Shortest prompt prefix, in tokens, that a request copies from a running one on the same adapters instead of reading it (a chat template's system prompt, a shared preamble); 0: off.")
    var prefixReuse = ServeLimits().prefixReuseMin

    @Option(name: .customLong("kv-block"), help: "Positions per key/value cache block (a sequence takes one block at a time as it grows; at most --context).")
    var kvBlock = KVBlockPool.defaultBlockTokens

    @Option(name: .customLong("api-key"), help: "Require Authorization: Bearer KEY on /v1/* (default: $LORAFUSE_API_KEY, else none).")
    var apiKey: String?

    @Option(name: .long, help: "Positions per sequence, prompt and completion (default: 2048 or the model's context, if smaller).")
    var context: Int?

    @Option(name: .customLong("max-tokens"), help: "Largest max_tokens a request may ask for (and the default).")
    var maxTokens = 1024

    @Option(name: .customLong("max-body"), help: "Largest request body in bytes (413 beyond).")
    var maxBody = 4 << 20

    @Option(name: .long, help: "Seconds from submission: a running request then ends with finish_reason length, one still waiting (queue, memory, an adapter loading or fusing) gets a 503 (default: no limit).")
    var timeout: Double?

    @OptionGroup var weights: WeightComputeOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if maxBatch < 1 { throw ValidationError("--max-batch must be at least 1, got \(maxBatch)") }
        if prefillChunk < 1 { throw ValidationError("--prefill-chunk must be at least 1, got \(prefillChunk)") }
        if maxQueue < 0 { throw ValidationError("--max-queue must be at least 0, got \(maxQueue)") }
        if memoryBudget < 0 { throw ValidationError("--memory-budget must be at least 0, got \(memoryBudget)") }
        if kvBlock < 1 { throw ValidationError("--kv-block must be at least 1, got \(kvBlock)") }
        if prefixReuse < 0 { throw ValidationError("--prefix-reuse must be at least 0, got \(prefixReuse)") }
        if !(0...65535).contains(port) { throw ValidationError("--port must be in 0...65535, got \(port)") }
        if let context, context < 2 { throw ValidationError("--context must be at least 2, got \(context)") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1, got \(maxTokens)") }
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be positive, got \(timeout)") }
    }

    func run() throws {
        // The engine's compute threads do the parallel work. Left at all cores, OpenBLAS threads
        // the LoRA products of a step once one adapter has ~57 rows (64 requests on one adapter)
        // and its threads then spin in sched_yield against the engine's between steps: 11% of
        // the samples in such a run, throughput 234 against 254 tok/s with one BLAS thread
        // (2026-12-08, 2 cores). --threads still sets it.
        if compute.threads == nil { BLAS.setThreadCount(1) } else { compute.apply() }
        let modelPath = model ?? ModelLocator.defaultModelPath()
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        if let context { try lm.checkContext(context, option: "--context") }
        let hints = (try? ModelHints.load(path: modelPath)) ?? ModelHints()
        var baseName = (modelPath as NSString).lastPathComponent
        if baseName.hasSuffix(".gguf") { baseName = String(baseName.dropLast(5)) }
        let registry = AdapterRegistry(model: lm, baseName: baseName, hints: hints, budgetBytes: memoryBudget << 20)
        var root: String?
        for a in adapters {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: a, isDirectory: &isDir) else { throw AdapterIOError.notFound(path: a) }
            if isDir.boolValue && (try? AdapterIO.detect(path: a)) == nil {
                let names = try registry.registerDirectory(a)
                root = root ?? a
                FileHandle.standardError.write(Data("registered \(names.count) adapter(s) from \(a)\n".utf8))
            } else {
                var name = ((a as NSString).standardizingPath as NSString).lastPathComponent
                if name.hasSuffix(".gguf") { name = String(name.dropLast(5)) }
                try registry.register(name: name, path: a, validate: true)
            }
        }
        var limits = ServeLimits(maxBatch: maxBatch, maxQueue: maxQueue, contextLength: context ?? min(2048, lm.contextLength),
                                 maxTokensCap: maxTokens, prefillChunk: prefillChunk, timeout: timeout)
        limits.kvBlockTokens = kvBlock
        limits.prefixReuseMin = prefixReuse
        let engine = ServeEngine(registry: registry, limits: limits)
        let blockMB = Double(engine.kvPool.blockBytes) / Double(1 << 20)
        if memoryBudget > 0 && engine.kvPool.blockBytes > memoryBudget << 20 {
            throw ValidationError("--memory-budget \(memoryBudget) MB cannot hold one key/value block of \(engine.kvPool.blockTokens) positions "
                                  + "(\(String(format: "%.2f", blockMB)) MB for this model); raise it or lower --kv-block")
        }
        FileHandle.standardError.write(Data(("key/value cache: blocks of \(engine.kvPool.blockTokens) positions, \(String(format: "%.2f", blockMB)) MB each, "
            + (memoryBudget > 0 ? "in the \(memoryBudget) MB budget with the adapters\n" : "no memory budget\n")).utf8))
        let key = apiKey ?? ProcessInfo.processInfo.environment["LORAFUSE_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        let options = ServerOptions(host: host, port: port, apiKey: key, maxBodyBytes: maxBody, adaptersRoot: root)

        let done = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        Task {
            do {
                let server = try await RunningServer.start(engine: engine, options: options, signals: [.sigterm, .sigint])
                let kinds = Dictionary(grouping: registry.list(), by: \.kind).mapValues(\.count)
                let what = [(AdapterRegistry.Kind.adapter, "adapter"), (.routed, "routed model"), (.fusion, "fusion plan")]
                    .compactMap { k, word in kinds[k].map { "\($0) \(word)\($0 == 1 ? "" : "s")" } }
                FileHandle.standardError.write(Data("lorafuse serve: \(baseName) on http://\(host):\(server.port) (\(what.isEmpty ? "no adapters" : what.joined(separator: ", ")))\n".utf8))
                try await server.wait()
            } catch {
                outcome.error = error
            }
            done.signal()
        }
        done.wait()
        if let e = outcome.error { throw e }
    }
}

/// The server task's error, read after it signals.
private final class Outcome: @unchecked Sendable {
    var error: (any Error)?
}
