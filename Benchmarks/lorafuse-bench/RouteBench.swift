import ArgumentParser
import Foundation
import LoRAFuse

/// What routing costs: the same SmolLM2 with no adapter, one adapter merged into the weights (the
/// fused answer: base speed), one adapter unmerged, and a routed model over every adapter of the
/// shelf (top-k per token at every projection). All in one process on one loaded model, the same
/// prompt and greedy loop as `lorafuse-bench model`; best of `repeats` after a warm-up.
/// Memory: the resident set added by preparing each configuration (its factors, merged copies or
/// stacked experts and gates), and the process peak.
struct RouteBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Routed model (N adapters, top-k) against the base and one merged adapter: decode and prompt speed, memory.")

    @Option(help: "The GGUF model (default: the one scripts/setup.sh fetches).")
    var model: String = ModelLocator.defaultModelPath()
    @Option(help: "Folder of adapter folders to route over (every subfolder that is an adapter).")
    var adapters: String = "adapters"
    @Option(name: .customLong("top-k"), help: "Adapters kept per token.")
    var topK = 2
    @Option(help: "Threads for BLAS and the quantized kernels.")
    var threads = 2
    @Option(help: "lorafuse's weights: stored (quantized blocks) or f32.")
    var compute: WeightCompute = .stored
    @Option(help: "Prompt-processing length in tokens.") var ppTokens = 512
    @Option(help: "Decode prompt length in tokens.") var decodePrompt = 64
    @Option(help: "Greedy tokens to decode.") var decodeTokens = 128
    @Option(help: "Timed repetitions (best kept) after a warm-up.") var repeats = 3
    @Option(help: "Where to write the results (JSON; a Markdown twin beside it).")
    var results = "Benchmarks/results/route.json"

    func validate() throws {
        if threads < 1 || repeats < 1 || ppTokens < 1 || decodeTokens < 1 || decodePrompt < 1 {
            throw ValidationError("--threads, --repeats and the token counts must be at least 1")
        }
    }

    struct Config: Codable {
        var name: String
        var pp_tokens_per_s: Double
        var decode_tokens_per_s: Double
        var prepared_mb: Double
        var decode_ids: [Int]
    }

    struct Report: Codable, BenchReport {
        var date: String
        var machine: String
        var threads: Int
        var model: String
        var compute: String
        var blas_core: String
        var openblas_coretype_env: String
        var load_average_before: String
        var load_average_after: String
        var adapters: Int
        var top_k: Int
        var pp_tokens: Int
        var decode_prompt: Int
        var decode_tokens: Int
        var configs: [Config]
        var peak_rss_mb: Double

        var markdown: String {
            var s = "\(model), weights \(compute) · \(date) · \(machine) · \(threads) threads · OpenBLAS kernels: \(blas_core) (OPENBLAS_CORETYPE=\(openblas_coretype_env))\n"
            s += "load average before / after: \(load_average_before) / \(load_average_after)\n\n"
            let merged = configs.first { $0.name.hasPrefix("one adapter, merged") }
            s += "| configuration | prompt \(pp_tokens) tok (tokens/s) | decode \(decode_tokens) after \(decode_prompt) (tokens/s) | decode vs one merged adapter | memory added (MB) |\n|---|---:|---:|---:|---:|\n"
            for c in configs {
                let ratio = merged.map { String(format: "%.2f×", c.decode_tokens_per_s / $0.decode_tokens_per_s) } ?? "—"
                s += String(format: "| %@ | %.1f | %.2f | %@ | %.0f |\n", c.name, c.pp_tokens_per_s, c.decode_tokens_per_s, ratio, c.prepared_mb)
            }
            s += String(format: "\nProcess peak RSS: %.0f MB. Routed: %d adapters, top-%d at every projection they touch; the gates are Arrow's (training-free; which experts a token keeps does not change the cost). X-LoRA: a base pass for the classifier, then the routed pass, per token.\n",
                        peak_rss_mb, adapters, top_k)
            return s
        }
    }

    func run() throws {
        BLAS.setThreadCount(threads)
        let before = loadAverage()
        let lm = try LlamaModel.load(path: model, compute: compute)
        let hints = (try? ModelHints.load(path: model)) ?? ModelHints()
        let dirs = try FileManager.default.contentsOfDirectory(atPath: adapters).sorted()
            .map { (adapters as NSString).appendingPathComponent($0) }
            .filter { (try? AdapterIO.detect(path: $0)) != nil }
        guard dirs.count >= 2 else { throw ValidationError("\(adapters): fewer than two adapters to route over") }
        let shelf = try dirs.map { p -> LoRAAdapter in var a = try AdapterIO.read(path: p, hints: hints); a.sourcePath = p; return a }
        var o = RouteOptions(method: .arrow)
        o.topK = topK
        var textIds: [Int] = []
        while textIds.count < max(ppTokens, decodePrompt) { textIds += lm.tokenizer.encode(ModelBench.text + " ") }
        let ppIds = Array(textIds.prefix(ppTokens)), promptIds = Array(textIds.prefix(decodePrompt))

        func measure(_ name: String, _ make: () throws -> AdapterSet) throws -> Config {
            FileHandle.standardError.write(Data("lorafuse: \(name)…\n".utf8))
            let rss0 = currentRSSMB()
            let set = try make()
            let prepared = max(0, currentRSSMB() - rss0)
            let pp = try lm.makeLlamaSession(maxTokens: ppTokens, adapters: set)
            func timePP() throws -> Double {
                pp.reset()
                let t = Date()
                _ = try pp.feed(ppIds, lastOnly: true)
                return Date().timeIntervalSince(t)
            }
            _ = try timePP()
            let ppBest = try (0..<repeats).map { _ in try timePP() }.min()!
            let dec = try lm.makeLlamaSession(maxTokens: decodePrompt + decodeTokens + 1, adapters: set)
            func decode(_ steps: Int) throws -> (Double, [Int]) {
                dec.reset()
                var next = Sampler.argmax(try dec.feed(promptIds, lastOnly: true).row(0))
                var got = [next]
                let t = Date()
                for _ in 0..<steps {
                    next = Sampler.argmax(try dec.feed([next], lastOnly: true).row(0))
                    got.append(next)
                }
                return (Date().timeIntervalSince(t), got)
            }
            _ = try decode(8)
            let runs = try (0..<repeats).map { _ in try decode(decodeTokens) }
            return Config(name: name, pp_tokens_per_s: Double(ppTokens) / ppBest,
                          decode_tokens_per_s: Double(decodeTokens) / runs.map(\.0).min()!, prepared_mb: prepared, decode_ids: runs[0].1)
        }
        var configs: [Config] = []
        configs.append(try measure("base, no adapter") { .none })
        configs.append(try measure("one adapter, merged (\(shelf[0].name))") { try lm.prepare([(shelf[0], 1)], mode: .merged) })
        configs.append(try measure("one adapter, unmerged (\(shelf[0].name))") { try lm.prepare([(shelf[0], 1)], mode: .unmerged) })
        configs.append(try measure("routed, \(shelf.count) adapters, top-\(topK)") {
            try lm.prepare(routed: try RouterBuilder.build(model: lm, adapters: shelf, shots: [], options: o))
        })
        // X-LoRA at its default (dense over every adapter) and at top-k: a base pass and a routed
        // pass per token. The classifier's values do not change the cost; a seeded random one.
        let L = lm.config.numHiddenLayers, C = lm.config.hiddenSize
        var rng = SeededRNG(seed: 1)
        let table = (0..<(L * shelf.count * (C + 1))).map { _ in rng.nextNormal() * 0.01 }
        for k in [shelf.count, topK] {
            let cfg = RouterConfig(method: "xlora", gate: .xlora, topK: k, temperature: 1, placement: .all,
                                   base: RouterBase(config: lm.config, name: nil),
                                   adapters: shelf.map { RouterAdapterEntry(name: $0.name, path: $0.sourcePath ?? $0.name, sha256: "") }, training: [:])
            let xl = RoutedModel(config: cfg, adapters: shelf, gates: [XLoRAClassifier.tensorName: Matrix(rows: L * shelf.count, cols: C + 1, data: table)])
            configs.append(try measure("X-LoRA, \(shelf.count) adapters, \(k == shelf.count ? "dense (its default)" : "top-\(k)")") { try lm.prepare(routed: xl) })
        }
        let rep = Report(date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(), threads: threads,
                         model: (model as NSString).lastPathComponent, compute: compute.rawValue, blas_core: BLAS.coreName,
                         openblas_coretype_env: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "unset",
                         load_average_before: before, load_average_after: loadAverage(), adapters: shelf.count, top_k: topK,
                         pp_tokens: ppTokens, decode_prompt: decodePrompt, decode_tokens: decodeTokens, configs: configs,
                         peak_rss_mb: peakRSSMB())
        print(rep.markdown)
        try rep.write(to: results)
    }
}
