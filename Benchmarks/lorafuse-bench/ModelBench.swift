import ArgumentParser
import Foundation
import LoRAFuse

/// The inference engine against PyTorch transformers (float32, same GGUF dequantized, same thread
/// count, same token ids): prompt processing, decoding, the eval loss pass and peak RSS.
/// The peer is scripts/bench_torch_model.py (its doc says exactly what it times); this side times
/// the same things on `LlamaSession` / `Evaluator`:
/// - prompt processing: `feed(ppIds, lastOnly: true)` on a fresh session (HF: logits_to_keep=1);
/// - decode: the prompt fed untimed, then `decodeTokens` one-token feeds with greedy argmax;
/// - eval: `Evaluator` with accuracy off over the task (one teacher-forced batch per example);
/// each timed part is run once to warm up, then the best of `repeats` is kept (eval: one timed pass).
/// Each side runs in its own process, so each peak RSS (ru_maxrss) is its own, model loading included.
struct ModelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "SmolLM2 inference: lorafuse against transformers (float32) or llama.cpp (--peer llamacpp) on the same GGUF.")

    @OptionGroup var peerOptions: PeerBenchOptions
    @Option(help: "Prompt-processing length in tokens.")
    var ppTokens: Int = 512
    @Option(help: "Decode prompt length in tokens.")
    var decodePrompt: Int = 64
    @Option(help: "Greedy tokens to decode.")
    var decodeTokens: Int = 128
    @Option(help: "Timed repetitions (best kept) after a warm-up.")
    var repeats: Int = 3
    @Option(help: "Task file for the eval throughput.")
    var task: String = "tasks/add_2digit.test.jsonl"
    @Option(help: "Where to write the results (JSON; a Markdown twin beside it).")
    var results: String = "Benchmarks/results/model.json"
    @Option(help: "Directory for the generated inputs.")
    var work: String = NSTemporaryDirectory() + "lorafuse-model-bench"
    @Flag(help: "Also time `eval` with accuracy (greedy decoding) on the lorafuse side.")
    var withAccuracy = false
    @Option(help: "The peer: torch (transformers float32, scripts/bench_torch_model.py) or llamacpp (llama.cpp on the same GGUF, scripts/bench_llamacpp.py in the venv of scripts/setup_llamacpp.sh).")
    var peer: Peer = .torch
    @Option(help: "Sequence counts for batched decode (comma-separated; empty: skip).")
    var batchSizes: String = "8,32"

    enum Peer: String, ExpressibleByArgument, CaseIterable { case torch, llamacpp }

    var batchCounts: [Int] { batchSizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func validate() throws {
        for (name, v) in [("--pp-tokens", ppTokens), ("--decode-prompt", decodePrompt), ("--decode-tokens", decodeTokens), ("--repeats", repeats)] where v < 1 {
            throw ValidationError("\(name) must be at least 1, got \(v)")
        }
        if batchSizes.split(separator: ",").contains(where: { Int($0.trimmingCharacters(in: .whitespaces)).map { $0 < 1 } ?? true }) {
            throw ValidationError("--batch-sizes takes positive counts separated by commas, got '\(batchSizes)'")
        }
    }

    /// A fixed English text: its first `ppTokens` ids are the prompt on both sides.
    static let text = """
    The history of computing is a story of ideas that were first thought impossible. Early machines \
    filled whole rooms, consumed enormous amounts of power and could only perform a handful of \
    operations each second. Engineers wrote programs by rewiring panels and flipping switches, and a \
    single mistake could cost a day of work. Over the following decades transistors replaced vacuum \
    tubes, integrated circuits replaced individual transistors, and the number of components on a chip \
    doubled again and again. Programming languages grew from raw machine code to assemblers, then to \
    compilers that let people describe what they wanted in something closer to mathematics or plain \
    language. Networks connected universities, then businesses, then homes, and information began to \
    move faster than anyone had predicted. Today a phone in a pocket holds more computing power than \
    all the machines of the nineteen sixties combined, and researchers train language models that can \
    summarize books, translate between dozens of languages and answer questions about almost anything. \
    Yet the basic ideas remain: store numbers, combine them with simple rules, and repeat those rules \
    very many times, very quickly.
    """

    func run() throws {
        let (lm, loadSeconds, loadBefore) = try peerOptions.loadModel()
        let threads = peerOptions.threads

        var textIds: [Int] = []
        while textIds.count < max(ppTokens, decodePrompt) { textIds += lm.tokenizer.encode(Self.text + " ") }
        let ppIds = Array(textIds.prefix(ppTokens)), promptIds = Array(textIds.prefix(decodePrompt))
        let evalTask = try TaskData.read(path: task)
        let ev = Evaluator(model: lm, options: EvalOptions(computeAccuracy: false))
        let evalIds = try evalTask.examples.map { (p: try ev.promptTokens($0.prompt), a: try ev.answerTokens($0.answer)) }

        // Batched decode: sequence i's prompt is ppIds[8i ..< 8i + decodePrompt] (wrapping), so
        // every sequence differs; the peer gets the same lists.
        let maxB = batchCounts.max() ?? 0
        let batchPrompts: [[Int]] = (0..<maxB).map { i in
            (0..<decodePrompt).map { ppIds[(8 * i + $0) % ppIds.count] }
        }
        // Inputs for the peer: the very same ids.
        let inputs: [String: Any] = [
            "repeats": repeats,
            "pp_ids": ppIds, "decode_prompt": promptIds, "decode_tokens": decodeTokens,
            "eval": evalIds.map { ["prompt_ids": $0.p, "answer_ids": $0.a] },
            "batch_sizes": batchCounts, "batch_prompts": batchPrompts,
        ]

        var ours = SideResult()
        ours.load_seconds = loadSeconds
        // Prompt processing.
        let pp = try lm.makeLlamaSession(maxTokens: ppTokens)
        func timePP() throws -> Double {
            pp.reset()
            let t = Date()
            _ = try pp.feed(ppIds, lastOnly: true)
            return Date().timeIntervalSince(t)
        }
        FileHandle.standardError.write(Data("lorafuse: prompt processing…\n".utf8))
        _ = try timePP()
        ours.pp_seconds = try (0..<repeats).map { _ in try timePP() }.min()!
        ours.pp_tokens_per_s = Double(ppTokens) / ours.pp_seconds

        // Decode.
        let dec = try lm.makeLlamaSession(maxTokens: decodePrompt + decodeTokens + 1)
        func decode(_ steps: Int) throws -> (Double, [Int]) {
            dec.reset()
            var logits = try dec.feed(promptIds, lastOnly: true)
            var next = Sampler.argmax(logits.row(0))
            var got = [next]
            let t = Date()
            for _ in 0..<steps {
                logits = try dec.feed([next], lastOnly: true)
                next = Sampler.argmax(logits.row(0))
                got.append(next)
            }
            return (Date().timeIntervalSince(t), got)
        }
        FileHandle.standardError.write(Data("lorafuse: decode…\n".utf8))
        _ = try decode(min(8, decodeTokens))   // warm-up, within the session's length
        let runs = try (0..<repeats).map { _ in try decode(decodeTokens) }
        ours.decode_seconds = runs.map(\.0).min()!
        ours.decode_tokens_per_s = Double(decodeTokens) / ours.decode_seconds
        ours.decode_ids = runs[0].1
        // The same decode drawing each token (temperature 1, top_p 1: OpenAI's defaults and what
        // `serve` does unless asked otherwise), so the sampler's own cost is on record.
        func sampledDecode(_ steps: Int) throws -> Double {
            dec.reset()
            var sampler = try Sampler(temperature: 1, topP: 1, seed: 0)
            var next = sampler.sample(try dec.feed(promptIds, lastOnly: true).row(0))
            let t = Date()
            for _ in 0..<steps { next = sampler.sample(try dec.feed([next], lastOnly: true).row(0)) }
            return Date().timeIntervalSince(t)
        }
        FileHandle.standardError.write(Data("lorafuse: sampled decode…\n".utf8))
        ours.sampled_decode_tokens_per_s = Double(decodeTokens) / (try (0..<repeats).map { _ in try sampledDecode(decodeTokens) }.min()!)

        // Eval loss pass.
        FileHandle.standardError.write(Data("lorafuse: eval loss pass…\n".utf8))
        for ex in evalTask.examples.prefix(2) { _ = try ev.score(ex) }
        let te = Date()
        let report = try ev.evaluate(evalTask)
        ours.eval_seconds = Date().timeIntervalSince(te)
        let fedTokens = evalIds.reduce(0) { $0 + $1.p.count + $1.a.count - 1 }
        ours.eval_examples_per_s = Double(evalIds.count) / ours.eval_seconds
        ours.eval_tokens_per_s = Double(fedTokens) / ours.eval_seconds
        ours.eval_loss = report.loss
        ours.peak_rss_mb = peakRSSMB()

        // Batched decode: B sequences, each its own KV cache, one `decodeStep` per token for all.
        for B in batchCounts {
            FileHandle.standardError.write(Data("lorafuse: batched decode of \(B) sequences…\n".utf8))
            let sessions = try (0..<B).map { _ in try lm.makeLlamaSession(maxTokens: decodePrompt + decodeTokens + 1) }
            func run(_ steps: Int) throws -> (Double, [Int]) {
                var next = try sessions.enumerated().map { i, s -> Int in
                    s.reset()
                    return Sampler.argmax(try s.feed(batchPrompts[i], lastOnly: true).row(0))
                }
                var first = [next[0]]
                let t = Date()
                for _ in 0..<steps {
                    let l = try lm.decodeStep(sessions, tokens: next)
                    next = (0..<B).map { Sampler.argmax(l.row($0)) }
                    first.append(next[0])
                }
                return (Date().timeIntervalSince(t), first)
            }
            _ = try run(4)
            let r = try (0..<repeats).map { _ in try run(decodeTokens) }
            let best = r.map(\.0).min()!
            ours.batched.append(BatchedRun(sequences: B, decode_tokens: decodeTokens, tokens_per_s: Double(B * decodeTokens) / best,
                                           seconds: best, ids_first_sequence: r[0].1))
        }
        ours.batched_peak_rss_mb = peakRSSMB()

        var accuracyRun: AccuracyRun?
        if withAccuracy {
            FileHandle.standardError.write(Data("lorafuse: eval with accuracy…\n".utf8))
            let full = Evaluator(model: lm)
            let ta = Date()
            let r = try full.evaluate(evalTask)
            let s = Date().timeIntervalSince(ta)
            accuracyRun = AccuracyRun(seconds: s, examples_per_s: Double(evalIds.count) / s,
                                      accuracy: r.accuracy ?? .nan)
        }

        var options = peerOptions
        if self.peer == .llamacpp && options.python == defaultPeersPython { options.python = llamaCppPython }
        let peerRun = try options.runPeer(self.peer == .torch ? "scripts/bench_torch_model.py" : "scripts/bench_llamacpp.py",
                                          inputs: inputs, work: work,
                                          note: "\(self.peer == .torch ? "transformers" : "llama.cpp"): same measurements (its own process)…",
                                          as: SideResult.self)
        let peer = peerRun?.result
        let peerVersions = peerRun.map {
            self.peer == .torch ? "torch \($0.raw["torch_version"] ?? "?"), transformers \($0.raw["transformers_version"] ?? "?")"
                : "llama-cpp-python \($0.raw["llama_cpp_python_version"] ?? "?") (OMP_WAIT_POLICY \($0.raw["omp_wait_policy"] ?? "unset"))"
        } ?? ""
        let rep = ModelBenchReport(
            date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(), threads: threads,
            model: (peerOptions.model as NSString).lastPathComponent, compute: peerOptions.compute.rawValue, blas_core: BLAS.coreName,
            openblas_coretype_env: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "unset",
            quant_kernel: QuantKernels.kernelName, prompt_path: lm.base.holdsQuantizedWeights ? lm.promptPath.rawValue : nil, load_average_before: loadBefore, load_average_after: loadAverage(),
            pp_tokens: ppTokens, decode_prompt: decodePrompt, decode_tokens: decodeTokens, task: task,
            eval_examples: evalIds.count, peer: peerVersions, peer_name: self.peer == .torch ? "transformers" : "llama.cpp",
            lorafuse: ours, transformers: peer, lorafuse_eval_with_accuracy: accuracyRun)
        print(rep.markdown)
        if peer != nil {
            // Each peer has its own results file unless --results names one.
            let path = self.peer == .llamacpp && results == "Benchmarks/results/model.json" ? "Benchmarks/results/model-llamacpp.json" : results
            try rep.write(to: path)
        }
    }
}

/// The 1-, 5- and 15-minute load averages (the machine is shared; numbers depend on it).
struct SideResult: Codable {
    var load_seconds = 0.0
    var pp_seconds = 0.0
    var pp_tokens_per_s = 0.0
    var decode_seconds = 0.0
    var decode_tokens_per_s = 0.0
    var decode_ids: [Int] = []
    var decode_method: String? = "LlamaSession.feed of one token at a time (KV cache), greedy argmax"
    /// lorafuse only: the decode with Sampler(temperature: 1, topP: 1) instead of argmax.
    var sampled_decode_tokens_per_s: Double?
    var eval_method: String? = "Evaluator, accuracy off: common prompt prefix fed once, truncate(to:) per example, head on answer rows only"
    var eval_seconds = 0.0
    var eval_examples_per_s = 0.0
    var eval_tokens_per_s = 0.0
    var eval_loss = 0.0
    var peak_rss_mb = 0.0
    var batched: [BatchedRun] = []
    var batched_peak_rss_mb: Double?

    enum CodingKeys: String, CodingKey {
        case load_seconds, pp_seconds, pp_tokens_per_s, decode_seconds, decode_tokens_per_s, decode_ids, decode_method, sampled_decode_tokens_per_s,
             eval_method, eval_seconds, eval_examples_per_s, eval_tokens_per_s, eval_loss, peak_rss_mb, batched, batched_peak_rss_mb
    }

    init() {}

    /// Peers' JSON may lack the newer fields (the torch peer has no batched decode).
    init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        func v<T: Decodable>(_ k: CodingKeys, _ dflt: T) throws -> T { try c.decodeIfPresent(T.self, forKey: k) ?? dflt }
        load_seconds = try v(.load_seconds, 0); pp_seconds = try v(.pp_seconds, 0); pp_tokens_per_s = try v(.pp_tokens_per_s, 0)
        decode_seconds = try v(.decode_seconds, 0); decode_tokens_per_s = try v(.decode_tokens_per_s, 0)
        decode_ids = try v(.decode_ids, []); decode_method = try c.decodeIfPresent(String.self, forKey: .decode_method)
        sampled_decode_tokens_per_s = try c.decodeIfPresent(Double.self, forKey: .sampled_decode_tokens_per_s)
        eval_method = try c.decodeIfPresent(String.self, forKey: .eval_method)
        eval_seconds = try v(.eval_seconds, 0); eval_examples_per_s = try v(.eval_examples_per_s, 0)
        eval_tokens_per_s = try v(.eval_tokens_per_s, 0); eval_loss = try v(.eval_loss, 0); peak_rss_mb = try v(.peak_rss_mb, 0)
        batched = try v(.batched, []); batched_peak_rss_mb = try c.decodeIfPresent(Double.self, forKey: .batched_peak_rss_mb)
    }
}

struct BatchedRun: Codable {
    var sequences: Int
    var decode_tokens: Int
    var tokens_per_s: Double
    var seconds: Double
    var ids_first_sequence: [Int]?
}

/// The llama.cpp venv's Python (scripts/setup_llamacpp.sh).
let llamaCppPython = ProcessInfo.processInfo.environment["LORAFUSE_LLAMACPP_PYTHON"]
    ?? ((ProcessInfo.processInfo.environment["LORAFUSE_CACHE"] ?? (NSHomeDirectory() + "/.cache/lorafuse")) + "/venvs/llamacpp/bin/python")

struct AccuracyRun: Codable {
    var seconds: Double
    var examples_per_s: Double
    var accuracy: Double
}

struct ModelBenchReport: Codable, BenchReport {
    var date: String
    var machine: String
    var threads: Int
    var model: String
    /// lorafuse's weights: "stored" (quantized kernels) or "f32"; nil in results older than it.
    var compute: String?
    var blas_core: String?
    /// The machine's OPENBLAS_CORETYPE ("unset" when it has none) and lorafuse's quantized kernel
    /// set; nil in results older than them.
    var openblas_coretype_env: String?
    var quant_kernel: String?
    /// How lorafuse multiplied prompts on stored weights (QuantizedPromptPath); nil in older results.
    var prompt_path: String?
    var load_average_before: String
    var load_average_after: String
    var pp_tokens: Int
    var decode_prompt: Int
    var decode_tokens: Int
    var task: String
    var eval_examples: Int
    var peer: String
    /// "transformers" or "llama.cpp"; nil in results older than it (transformers).
    var peer_name: String?
    var lorafuse: SideResult
    var transformers: SideResult?
    var lorafuse_eval_with_accuracy: AccuracyRun?

    var markdown: String {
        let f = RatioTable.format
        let pn = peer_name ?? "transformers"
        var s = "\(model), lorafuse weights \(compute ?? "f32") (\(pn == "transformers" ? "transformers float32" : pn + " on the same file")) · \(date) · \(machine) · \(threads) threads · \(peer.isEmpty ? "no peer run" : peer)"
        s += (blas_core.map { " · OpenBLAS kernels: \($0)" } ?? "") + (openblas_coretype_env.map { " (OPENBLAS_CORETYPE=\($0))" } ?? "")
        s += (quant_kernel.map { " · quantized kernels: \($0)" } ?? "")
        s += (prompt_path.map { ", prompts through \($0 == "kernels" ? "the kernels" : "dequantized tiles + sgemm")" } ?? "") + "\n"
        s += "load average before / after: \(load_average_before) / \(load_average_after)\n\n"
        let o = lorafuse, p = transformers
        var t = RatioTable(peer: pn)
        t.row("prompt processing, \(pp_tokens) tokens (tokens/s)", o.pp_tokens_per_s, p?.pp_tokens_per_s, "%.1f")
        t.row("decode, \(decode_tokens) tokens after \(decode_prompt) (tokens/s)", o.decode_tokens_per_s, p?.decode_tokens_per_s, "%.2f")
        if let sd = o.sampled_decode_tokens_per_s {
            t.row("decode sampled at temperature 1, top_p 1 (tokens/s; lorafuse only)", sd, nil, "%.2f")
        }
        t.row("eval loss pass, \(eval_examples) examples (examples/s)", o.eval_examples_per_s, p?.eval_examples_per_s, "%.2f")
        t.row("eval loss pass (tokens/s)", o.eval_tokens_per_s, p?.eval_tokens_per_s, "%.1f")
        for b in o.batched {
            let pb = p?.batched.first { $0.sequences == b.sequences }
            t.row("batched decode, \(b.sequences) sequences × \(b.decode_tokens) tokens (tokens/s)", b.tokens_per_s, pb?.tokens_per_s, "%.1f")
        }
        t.row("peak RSS (MB; ratio = \(pn) / lorafuse)", o.peak_rss_mb, p?.peak_rss_mb, "%.0f", higherBetter: false)
        if let ob = o.batched_peak_rss_mb {
            t.row("peak RSS with the batched caches (MB)", ob, p?.batched_peak_rss_mb, "%.0f", higherBetter: false)
        }
        t.row("model load (s; ratio = \(pn) / lorafuse)", o.load_seconds, p?.load_seconds, "%.2f", higherBetter: false)
        s += t.text
        s += "\n"
        if let p {
            let same = zip(o.decode_ids, p.decode_ids).prefix { $0 == $1 }.count
            s += "Decode: the first \(same) of \(o.decode_ids.count) greedy ids agree. "
            s += "Eval loss on \(task): lorafuse \(f(o.eval_loss, "%.5f")), \(pn) \(f(p.eval_loss, "%.5f")).\n"
            s += "\(pn) decode: \(p.decode_method ?? "?"); eval: \(p.eval_method ?? "?").\n"
            s += "lorafuse eval: \(o.eval_method ?? "?").\n"
        }
        if let a = lorafuse_eval_with_accuracy {
            s += "lorafuse `eval` with accuracy (greedy, early stop): \(f(a.examples_per_s, "%.2f")) examples/s, accuracy \(f(a.accuracy, "%.3f")).\n"
        }
        return s
    }
}
