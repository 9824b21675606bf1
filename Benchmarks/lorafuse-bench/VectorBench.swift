import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse-bench vectors`: full-model task arithmetic and LoRA extraction, lorafuse vs mergekit,
/// on one generated multi-shard Llama-shaped BF16 checkpoint pair (written once into a cache dir).
///
/// lorafuse runs as a subprocess (the release `lorafuse` next to this binary) under
/// /usr/bin/time -v, mergekit through scripts/bench_mergekit.py (RUSAGE_CHILDREN): both peaks are
/// the child's ru_maxrss. Throughput is (bytes read + bytes written) / wall time, set against this
/// machine's copy bandwidth measured here (STREAM-style: a 1 GiB memcpy counts 2 GiB moved).
struct VectorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vectors",
        abstract: "Task vectors and extract-lora vs mergekit on a generated multi-shard checkpoint."
    )

    @Option(help: "Transformer layers.") var layers = 12
    @Option(help: "Hidden size.") var hidden = 1536
    @Option(help: "MLP intermediate size.") var ffn = 4096
    @Option(help: "Attention heads.") var heads = 12
    @Option(help: "KV heads.") var kvHeads = 4
    @Option(help: "Vocabulary size.") var vocab = 32000
    @Option(help: "Rank of the synthetic fine-tuning delta per projection.") var deltaRank = 8
    @Option(help: "Shard size of the generated checkpoints (bytes).") var shardBytes = 300_000_000
    @Option(help: "Task-arithmetic weight α.") var alpha: Float = 0.7
    @Option(help: "extract-lora rank.") var rank = 16
    @Option(help: "Cache dir for the generated checkpoints.") var cache: String?
    @Option(help: "Python of the mergekit venv wrapper.") var python = "/usr/bin/python3"
    @Option(help: "Where to write vectors.json / vectors.md.") var results = "Benchmarks/results"
    @Flag(help: "Skip mergekit (lorafuse numbers only).") var noPeer = false

    struct Run: Codable {
        var tool: String
        var step: String
        var seconds: Double
        var peak_rss_mb: Double
        var bytes_read: Int
        var bytes_written: Int
        var gb_per_s: Double
        var ok: Bool
    }

    struct Output: Codable {
        var format = "lorafuse-vectors-bench-v1"
        var date: String
        var machine: String
        var memcpy_gb_per_s: Double
        var model: [String: Int]
        var checkpoint_bytes: Int
        var shards: Int
        var runs: [Run]
        var ratios: [String: Double]
        var agreement: [String: Double]
        var notes: [String]
    }

    func run() throws {
        let fm = FileManager.default
        let cacheDir = cache ?? ((ProcessInfo.processInfo.environment["LORAFUSE_HOME"] ?? (NSHomeDirectory() + "/.cache/lorafuse")) + "/bench")
        let tag = "llama-L\(layers)-H\(hidden)-F\(ffn)-V\(vocab)-r\(deltaRank)"
        let root = cacheDir + "/vectors-" + tag
        let base = root + "/base", tuned = root + "/tuned"
        if !fm.fileExists(atPath: root + "/.complete") {
            try? fm.removeItem(atPath: root)
            print("generating \(tag) into \(root) …")
            let t0 = Date()
            try generate(base: base, tuned: tuned)
            try Data().write(to: URL(fileURLWithPath: root + "/.complete"))
            print(String(format: "  generated in %.1fs", Date().timeIntervalSince(t0)))
        }
        let ckBase = try HFCheckpoint(path: base), ckTuned = try HFCheckpoint(path: tuned)
        let ckBytes = ckBase.totalBytes
        let shards = Set(ckBase.filePaths.values).count
        print(String(format: "checkpoint: %.0f MB per model in %d shards", Double(ckBytes) / 1e6, shards))

        let bw = memcpyBandwidth()
        print(String(format: "memcpy bandwidth: %.2f GB/s (read + write)", bw))

        let work = root + "/runs"
        try? fm.removeItem(atPath: work)
        try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
        let exe = Bundle.main.executableURL!.deletingLastPathComponent().appendingPathComponent("lorafuse").path
        var runs: [Run] = []
        var notes: [String] = []

        // lorafuse task arithmetic = vector extract + vector apply.
        let vec = work + "/lf-vec", lfTA = work + "/lf-ta"
        let (t1, r1, ok1) = try timed([exe, "vector", "extract", "--from", tuned, "--minus", base, "-o", vec, "--quiet", "--max-shard-size", "\(shardBytes)"])
        let vecBytes = try HFCheckpoint(path: vec).totalBytes
        runs.append(Run(tool: "lorafuse", step: "vector extract", seconds: t1, peak_rss_mb: r1, bytes_read: 2 * ckBytes,
                        bytes_written: vecBytes, gb_per_s: Double(2 * ckBytes + vecBytes) / t1 / 1e9, ok: ok1))
        let (t2, r2, ok2) = try timed([exe, "vector", "apply", vec, "--to", base, "--scale", "\(alpha)", "-o", lfTA, "--quiet", "--max-shard-size", "\(shardBytes)"])
        runs.append(Run(tool: "lorafuse", step: "vector apply", seconds: t2, peak_rss_mb: r2, bytes_read: ckBytes + vecBytes,
                        bytes_written: ckBytes, gb_per_s: Double(ckBytes + vecBytes + ckBytes) / t2 / 1e9, ok: ok2))
        runs.append(Run(tool: "lorafuse", step: "task arithmetic (extract + apply)", seconds: t1 + t2, peak_rss_mb: max(r1, r2),
                        bytes_read: 3 * ckBytes + vecBytes, bytes_written: vecBytes + ckBytes,
                        gb_per_s: Double(4 * ckBytes + 2 * vecBytes) / (t1 + t2) / 1e9, ok: ok1 && ok2))
        let lfLora = work + "/lf-lora"
        let (t3, r3, ok3) = try timed([exe, "extract-lora", "--base", base, "--tuned", tuned, "--rank", "\(rank)", "-o", lfLora, "--quiet"])
        let loraBytes = fileSize(lfLora + "/adapter_model.safetensors")
        runs.append(Run(tool: "lorafuse", step: "extract-lora r\(rank)", seconds: t3, peak_rss_mb: r3, bytes_read: 2 * projBytes(ckBase),
                        bytes_written: loraBytes, gb_per_s: Double(2 * projBytes(ckBase) + loraBytes) / t3 / 1e9, ok: ok3))

        var agreement: [String: Double] = [:]
        var ratios: [String: Double] = [:]
        if !noPeer {
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("scripts/bench_mergekit.py").path
            let mkTA = work + "/mk-ta"
            let ta = try peer([python, script, "task-arithmetic", "--base", base, "--tuned", tuned, "--weight", "\(alpha)",
                               "--dtype", "bfloat16", "--out", mkTA])
            let mkOut = (try? HFCheckpoint(path: mkTA))
            let mkBytes = mkOut?.totalBytes ?? 0
            runs.append(Run(tool: "mergekit", step: "task_arithmetic", seconds: ta.seconds, peak_rss_mb: ta.rss, bytes_read: 2 * ckBytes,
                            bytes_written: mkBytes, gb_per_s: Double(2 * ckBytes + mkBytes) / ta.seconds / 1e9, ok: ta.ok && mkOut != nil))
            let mkLora = work + "/mk-lora"
            let el = try peer([python, script, "extract-lora", "--base", base, "--tuned", tuned, "--rank", "\(rank)", "--out", mkLora])
            let mkLoraBytes = fileSize(mkLora + "/adapter_model.safetensors")
            runs.append(Run(tool: "mergekit", step: "mergekit-extract-lora r\(rank)", seconds: el.seconds, peak_rss_mb: el.rss,
                            bytes_read: 2 * projBytes(ckBase), bytes_written: mkLoraBytes,
                            gb_per_s: Double(2 * projBytes(ckBase) + mkLoraBytes) / el.seconds / 1e9, ok: el.ok))
            ratios["task_arithmetic_time_mergekit_over_lorafuse"] = ta.seconds / (t1 + t2)
            ratios["task_arithmetic_rss_mergekit_over_lorafuse"] = ta.rss / max(r1, r2)
            ratios["extract_lora_time_mergekit_over_lorafuse"] = el.seconds / t3
            ratios["extract_lora_rss_mergekit_over_lorafuse"] = el.rss / r3
            if let mk = mkOut {
                let lf = try HFCheckpoint(path: lfTA)
                var maxDiff: Float = 0, maxRef: Float = 0, differing = 0, total = 0
                for n in ckBase.names {
                    let a = try lf.floats(n), b = try mk.floats(n)
                    for (x, y) in zip(a, b) {
                        maxDiff = max(maxDiff, abs(x - y)); maxRef = max(maxRef, abs(y))
                        if x != y { differing += 1 }
                    }
                    total += a.count
                }
                agreement["task_arithmetic_max_abs_diff"] = Double(maxDiff)
                agreement["task_arithmetic_max_abs_value"] = Double(maxRef)
                agreement["task_arithmetic_fraction_elements_differing"] = Double(differing) / Double(max(total, 1))
            }
            if el.ok, let a = try? PEFTAdapter.read(directory: lfLora), let b = try? PEFTAdapter.read(directory: mkLora) {
                var worst = 0.0
                for n in a.moduleNames.prefix(14) {
                    guard let mb = b.modules[n] else { continue }
                    let da = a.modules[n]!.delta(), db = mb.delta()
                    worst = max(worst, (da - db).frobeniusNorm / max(db.frobeniusNorm, 1e-30))
                }
                agreement["extract_lora_worst_rel_diff_first_14_modules"] = worst
                // Fidelity against the true τ for one MLP module.
                let n = "model.layers.0.mlp.down_proj.weight"
                let info = try ckBase.info(n)
                let tau = Matrix(rows: info.shape[0], cols: info.shape[1], data: zip(try ckTuned.floats(n), try ckBase.floats(n)).map { $0 - $1 })
                let key = "base_model.model." + String(n.dropLast(7))
                if let ma = a.modules[key] { agreement["extract_lora_lorafuse_rel_err_vs_tau_down_proj0"] = (ma.delta() - tau).frobeniusNorm / tau.frobeniusNorm }
                if let mb = b.modules[key] { agreement["extract_lora_mergekit_rel_err_vs_tau_down_proj0"] = (mb.delta() - tau).frobeniusNorm / tau.frobeniusNorm }
            }
        } else {
            notes.append("mergekit skipped (--no-peer)")
        }
        notes.append("lorafuse task arithmetic is two streamed passes (vector extract writes τ in BF16, then vector apply); mergekit does base + α·(tuned − base) in one pass")
        notes.append("extract-lora targets every *_proj (mergekit: --include-regex _proj); lorafuse uses a randomized SVD (oversample max(16, r/4), 4 power iterations) for min dim > 512, mergekit a full torch.linalg.svd")
        notes.append("inputs were in the page cache for both tools (written by the generator just before or by an earlier run)")

        let date = ISO8601DateFormatter().string(from: Date())
        let out = Output(date: date, machine: machineDescription(), memcpy_gb_per_s: bw,
                         model: ["layers": layers, "hidden": hidden, "ffn": ffn, "heads": heads, "kv_heads": kvHeads, "vocab": vocab, "delta_rank": deltaRank],
                         checkpoint_bytes: ckBytes, shards: shards, runs: runs, ratios: ratios, agreement: agreement, notes: notes)
        try fm.createDirectory(atPath: results, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(out).write(to: URL(fileURLWithPath: results + "/vectors.json"))
        let md = markdown(out)
        try Data(md.utf8).write(to: URL(fileURLWithPath: results + "/vectors.md"))
        print(md)
        try? fm.removeItem(atPath: work)
    }

    func markdown(_ o: Output) -> String {
        var s = "# Full-model task vectors and LoRA extraction: lorafuse vs mergekit\n\n"
        s += "- date: \(o.date)\n- machine: \(o.machine)\n"
        s += String(format: "- memcpy bandwidth (1 GiB copy, read + write): %.2f GB/s\n", o.memcpy_gb_per_s)
        s += "- model: Llama-shaped BF16, \(o.model["layers"]!) layers, hidden \(o.model["hidden"]!), ffn \(o.model["ffn"]!), vocab \(o.model["vocab"]!); "
        s += String(format: "%.0f MB per checkpoint in %d shards; tuned = base + rank-%d delta per projection\n\n", Double(o.checkpoint_bytes) / 1e6, o.shards, o.model["delta_rank"]!)
        s += "| tool | step | time (s) | peak RSS (MB) | GB/s (read+written) | % of memcpy | ok |\n|---|---|---:|---:|---:|---:|---|\n"
        for r in o.runs {
            s += String(format: "| %@ | %@ | %.2f | %.0f | %.3f | %.1f%% | %@ |\n", r.tool, r.step, r.seconds, r.peak_rss_mb, r.gb_per_s,
                        100 * r.gb_per_s / o.memcpy_gb_per_s, r.ok ? "yes" : "NO")
        }
        if !o.ratios.isEmpty {
            s += "\n| ratio | value |\n|---|---:|\n"
            for (k, v) in o.ratios.sorted(by: { $0.key < $1.key }) { s += String(format: "| %@ | %.2f |\n", k, v) }
        }
        if !o.agreement.isEmpty {
            s += "\n| agreement | value |\n|---|---:|\n"
            for (k, v) in o.agreement.sorted(by: { $0.key < $1.key }) { s += String(format: "| %@ | %.3g |\n", k, v) }
        }
        s += "\n" + o.notes.map { "- " + $0 }.joined(separator: "\n") + "\n"
        return s
    }

    func projBytes(_ c: HFCheckpoint) -> Int {
        c.names.filter { $0.hasSuffix("_proj.weight") }.reduce(0) { $0 + c.infos[$1]!.byteRange.count }
    }

    func fileSize(_ p: String) -> Int { (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? 0 }

    /// Runs a lorafuse subprocess under /usr/bin/time -v: (seconds, peak RSS MB, success).
    func timed(_ args: [String]) throws -> (Double, Double, Bool) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/time")
        p.arguments = ["-v"] + args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        let t0 = Date()
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let dt = Date().timeIntervalSince(t0)
        let text = String(decoding: data, as: UTF8.self)
        var rss = 0.0
        for line in text.split(separator: "\n") where line.contains("Maximum resident set size") {
            rss = Double(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)).map { $0 / 1024 } ?? 0
        }
        let ok = p.terminationStatus == 0
        print(String(format: "  lorafuse %@: %.2fs, peak RSS %.0f MB%@", args[1...2].joined(separator: " "), dt, rss, ok ? "" : " FAILED"))
        if !ok { print(text.suffix(2000)) }
        return (dt, rss, ok)
    }

    func peer(_ args: [String]) throws -> (seconds: Double, rss: Double, ok: Bool) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last,
              let j = try? JSONValue.parse(String(line)),
              let s = j["seconds"]?.doubleValue, let r = j["peak_rss_mb"]?.doubleValue else {
            print("  mergekit \(args[2]): no result (\(String(decoding: data, as: UTF8.self).suffix(500)))")
            return (0, 0, false)
        }
        let ok = j["returncode"]?.intValue == 0
        print(String(format: "  mergekit %@: %.2fs, peak RSS %.0f MB%@", args[2], s, r, ok ? "" : " FAILED"))
        return (s, r, ok)
    }

    /// STREAM-style copy: best of 5 memcpy of 1 GiB; bytes moved = 2 × size.
    func memcpyBandwidth() -> Double {
        let n = 1 << 30
        let src = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        defer { src.deallocate(); dst.deallocate() }
        memset(src, 1, n)
        memset(dst, 0, n)
        var best = Double.infinity
        for _ in 0..<5 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            memcpy(dst, src, n)
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return 2 * Double(n) / best / 1e9
    }

    /// Writes base and tuned Llama-shaped BF16 checkpoints, streamed shard by shard:
    /// base ~ N(0, 0.02²) (norms 1), tuned = base + B·A of rank `deltaRank` per projection
    /// (‖ΔW‖ ≈ 10% of ‖W‖), norms + 0.01.
    func generate(base: String, tuned: String) throws {
        let hd = hidden / heads
        var shapes: [(String, [Int])] = [("model.embed_tokens.weight", [vocab, hidden])]
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            shapes += [(p + "input_layernorm.weight", [hidden]),
                       (p + "self_attn.q_proj.weight", [heads * hd, hidden]), (p + "self_attn.k_proj.weight", [kvHeads * hd, hidden]),
                       (p + "self_attn.v_proj.weight", [kvHeads * hd, hidden]), (p + "self_attn.o_proj.weight", [hidden, heads * hd]),
                       (p + "post_attention_layernorm.weight", [hidden]),
                       (p + "mlp.gate_proj.weight", [ffn, hidden]), (p + "mlp.up_proj.weight", [ffn, hidden]), (p + "mlp.down_proj.weight", [hidden, ffn])]
        }
        shapes += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
        let plan = shapes.map { PlannedTensor(name: $0.0, shape: $0.1, dtype: "BF16") }
        let wb = try StreamingShardedWriter(directory: URL(fileURLWithPath: base), plan: plan, maxShardBytes: shardBytes)
        let wt = try StreamingShardedWriter(directory: URL(fileURLWithPath: tuned), plan: plan, maxShardBytes: shardBytes)
        var rng = SeededRNG(seed: 2024)
        var bytes: [UInt8] = []
        for (name, shape) in shapes {
            var w: [Float]
            var t: [Float]
            if shape.count == 1 {
                w = [Float](repeating: 1, count: shape[0])
                t = w.map { $0 + 0.01 }
            } else {
                w = (0..<(shape[0] * shape[1])).map { _ in rng.nextNormal() * 0.02 }
                t = w
                if name.hasSuffix("_proj.weight") {
                    // ‖B·A‖_F ≈ 0.1·‖W‖_F: entries of B·A have std 0.002.
                    let s = Float(0.002 / Double(deltaRank).squareRoot()).squareRoot()
                    let b = Matrix.randomNormal(shape[0], deltaRank, std: s, rng: &rng)
                    let a = Matrix.randomNormal(deltaRank, shape[1], std: s, rng: &rng)
                    BLAS.gemm(transA: false, transB: false, m: shape[0], n: shape[1], k: deltaRank, alpha: 1,
                              a: b.data, lda: deltaRank, b: a.data, ldb: shape[1], beta: 1, c: &t, ldc: shape[1])
                }
            }
            TensorCodec.encode(w, dtype: .bf16, into: &bytes)
            try wb.write(name: name, bytes: bytes)
            TensorCodec.encode(t, dtype: .bf16, into: &bytes)
            try wt.write(name: name, bytes: bytes)
        }
        try wb.finish()
        try wt.finish()
        let cfg = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": \(hidden), "intermediate_size": \(ffn),
         "num_hidden_layers": \(layers), "num_attention_heads": \(heads), "num_key_value_heads": \(kvHeads), "vocab_size": \(vocab),
         "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
         "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
        """
        for d in [base, tuned] { try Data(cfg.utf8).write(to: URL(fileURLWithPath: d + "/config.json")) }
    }
}
