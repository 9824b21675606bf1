import ArgumentParser
import Foundation
import LoRAFuse

/// Training variants against plain LoRA in lorafuse (PEFT implements none of them, so the peer is
/// lorafuse's own LoRA): the same model, batches, schedule and threads; step time, tokens/s, peak
/// RSS and the bytes of the written adapter. Each variant runs in its own child process (this
/// binary with `--only NAME`), so that every peak RSS is its own.
struct VariantBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "variants",
        abstract: "Training variants (nola, lora-pro, flylora, smora, loramoe, mixlora) against plain LoRA: step time, peak memory, stored bytes.")

    @OptionGroup var peerOptions: PeerBenchOptions
    @Option(help: "Training task (JSONL of prompt/answer).")
    var task: String = "tasks/add_2digit.train.jsonl"
    @Option(help: "Variants to compare with lora, comma-separated.")
    var variants: String = "nola,lora-pro,flylora,smora,loramoe,mixlora"
    @Option(help: "NOLA basis size (per factor per module).")
    var nolaBasis: Int = 512
    @Option(help: "FlyLoRA rank (default 2 × --rank: B alone then holds about as many values as LoRA's A and B).")
    var flyloraRank: Int?
    @Option(help: "FlyLoRA ranks kept per token (default a quarter of its rank, as the authors' 8 of 32).")
    var flyloraTopK: Int?
    @Option(help: "Sequences per step.")
    var batch: Int = 8
    @Option(help: "LoRA rank.")
    var rank: Int = 8
    @Option(help: "Untimed steps first.")
    var warmupSteps: Int = 2
    @Option(help: "Timed steps.")
    var steps: Int = 10
    @Option(help: "Where to write the results (JSON; a Markdown twin beside it).")
    var results: String = "Benchmarks/results/variants.json"
    @Option(help: "Run one variant and print its measurements as JSON (used by the parent run).")
    var only: String?

    func validate() throws {
        for v in variants.split(separator: ",").map(String.init) + [only].compactMap({ $0 }) where !TrainingVariants.names.contains(v) {
            throw ValidationError("unknown variant \(v); known: \(TrainingVariants.names.joined(separator: ", "))")
        }
        if steps < 1 || warmupSteps < 0 || batch < 1 || rank < 1 || nolaBasis < 1 {
            throw ValidationError("--steps, --batch, --rank and --nola-basis must be ≥ 1, --warmup-steps ≥ 0")
        }
        guard flyTopK >= 1 && flyTopK < flyRank else {
            throw ValidationError("--flylora-top-k must be in 1…\(flyRank - 1) (of --flylora-rank \(flyRank)), got \(flyTopK)")
        }
    }

    var flyRank: Int { flyloraRank ?? 2 * rank }
    var flyTopK: Int { flyloraTopK ?? max(1, flyRank / 4) }

    func run() throws {
        if let v = only { return try child(v) }
        let names = ["lora"] + variants.split(separator: ",").map(String.init).filter { $0 != "lora" }
        var sides: [String: VariantSide] = [:]
        let before = loadAverage()
        for n in names {
            FileHandle.standardError.write(Data("variant \(n): \(warmupSteps) + \(steps) steps, batch \(batch)…\n".utf8))
            var args = ["variants", "--only", n, "--task", task, "--nola-basis", "\(nolaBasis)", "--batch", "\(batch)",
                        "--flylora-rank", "\(flyRank)", "--flylora-top-k", "\(flyTopK)",
                        "--rank", "\(rank)", "--warmup-steps", "\(warmupSteps)", "--steps", "\(steps)",
                        "--model", peerOptions.model, "--threads", "\(peerOptions.threads)", "--compute", peerOptions.compute.rawValue]
            if peerOptions.skipPeer { args.append("--skip-peer") }
            let out = try runProcess(Bundle.main.executablePath ?? CommandLine.arguments[0], args)
            sides[n] = try JSONDecoder().decode(VariantSide.self, from: out)
        }
        let rep = VariantBenchReport(
            date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(), threads: peerOptions.threads,
            model: (peerOptions.model as NSString).lastPathComponent, blas_core: BLAS.coreName,
            openblas_coretype_env: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "unset",
            load_average_before: before, load_average_after: loadAverage(), task: task, batch: batch, rank: rank,
            nola_basis: nolaBasis, flylora_rank: flyRank, flylora_top_k: flyTopK, warmup_steps: warmupSteps, steps: steps, variants: names, sides: sides)
        print(rep.markdown)
        if !peerOptions.skipPeer { try rep.write(to: results) }
    }

    private func child(_ name: String) throws {
        let (lm, _, _) = try peerOptions.loadModel()
        let seqs = try TrainingData.sequences(try TaskData.read(path: task), model: lm)
        var o = TrainingOptions()
        o.rank = rank; o.alpha = Double(2 * rank); o.targets = Projection.allCases
        o.batchSize = batch; o.steps = warmupSteps + steps; o.learningRate = name == "nola" ? 3e-3 : 1e-3; o.seed = 1
        // lora-pro with train's defaults for it: lr 1e-3 and 5 warm-up steps (without them its
        // first full-size Adam steps blow the loss up).
        if name == "lora-pro" { o.optimizer = .loraPro; o.learningRate = 1e-3; o.warmup = 5 }
        if name == "flylora" { o.rank = flyRank; o.alpha = Double(2 * flyRank) }
        // SMoRA at LoRA's rank, keeping a quarter of the ranks per token.
        let t0 = Date()
        let variant: (any TrainingVariant)?
        switch name {
        case "nola": variant = try NOLAVariant(model: lm.config, options: o, basisA: nolaBasis, basisB: nolaBasis, baseModel: lm.sourcePath)
        case "flylora": variant = try FlyLoRAVariant(config: lm.config, options: o, topK: flyTopK, biasRate: FlyLoRADefaults.biasRate)
        case "smora": variant = try SMoRAVariant(config: lm.config, options: o, topK: max(1, rank / 4), biasRate: SMoRADefaults.biasRate)
        // The mixtures with 4 experts of half LoRA's rank (LoRAMoE on gate, up, down as its
        // authors place it; MixLoRA's experts on the FFN, 2 per token, plus attention LoRA).
        case "loramoe":
            o.rank = max(1, rank / 2); o.alpha = Double(2 * o.rank); o.targets = LoRAMoEDefaults.targets
            variant = try LoRAMoEVariant(config: lm.config, options: o, experts: 4,
                                         balance: ExpertBalance(alpha: LoRAMoEDefaults.blcAlpha, weight: LoRAMoEDefaults.blcWeight))
        case "mixlora":
            o.rank = max(1, rank / 2); o.alpha = Double(2 * o.rank)
            variant = try MixLoRAVariant(config: lm.config, options: o, experts: 4, topK: 2,
                                         loss: MixtureLoss(aux: MixLoRADefaults.auxLoss, z: 0))
        default: variant = nil
        }
        let trainer = try LoRATrainer(model: lm, train: seqs, options: o, variant: variant)
        var side = VariantSide()
        side.lr = Double(o.learningRate)
        side.warmup = o.warmup
        side.setup_seconds = Date().timeIntervalSince(t0)
        var tokens = 0, secs = 0.0
        for k in 1...(warmupSteps + steps) {
            let row = trainer.trainStep()
            side.losses.append(row.trainLoss)
            if k > warmupSteps { secs += row.seconds; tokens += row.tokens }
        }
        side.mean_step_seconds = secs / Double(steps)
        side.tokens_per_s = Double(tokens) / secs
        side.trained_values = trainer.trainableCount
        let dir = NSTemporaryDirectory() + "lorafuse-variant-bench-\(name)-\(ProcessInfo.processInfo.processIdentifier)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func bytes() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: dir).reduce(0) {
                $0 + ((try FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? Int) ?? 0)
            }
        }
        if let v = variant {
            try v.writeFiles(into: URL(fileURLWithPath: dir), name: name, baseModel: nil, path: dir)
            side.stored_bytes = try bytes()
        } else {
            try PEFTAdapter.writeFiles(trainer.adapter(), into: URL(fileURLWithPath: dir), dtype: .f32, path: dir)
            side.stored_bytes = try bytes()
            for f in try FileManager.default.contentsOfDirectory(atPath: dir) { try FileManager.default.removeItem(atPath: dir + "/" + f) }
            try PEFTAdapter.writeFiles(trainer.adapter(), into: URL(fileURLWithPath: dir), dtype: .bf16, path: dir)
            side.stored_bytes_bf16 = try bytes()
        }
        side.peak_rss_mb = peakRSSMB()
        let enc = JSONEncoder()
        FileHandle.standardOutput.write(try enc.encode(side))
    }
}

struct VariantSide: Codable {
    var setup_seconds = 0.0
    var mean_step_seconds = 0.0
    var tokens_per_s = 0.0
    var losses: [Double] = []
    var peak_rss_mb = 0.0
    var trained_values = 0
    var stored_bytes = 0
    var stored_bytes_bf16: Int?
    var lr: Double?
    var warmup: Int?
}

struct VariantBenchReport: Codable, BenchReport {
    var date: String
    var machine: String
    var threads: Int
    var model: String
    var blas_core: String
    var openblas_coretype_env: String
    var load_average_before: String
    var load_average_after: String
    var task: String
    var batch: Int
    var rank: Int
    var nola_basis: Int
    var flylora_rank: Int?
    var flylora_top_k: Int?
    var warmup_steps: Int
    var steps: Int
    var variants: [String]
    var sides: [String: VariantSide]

    var markdown: String {
        let f = RatioTable.format
        var s = "\(model) · rank \(rank), all seven projections · batch \(batch) of \(task) · NOLA basis \(nola_basis)"
        if let r = flylora_rank, let k = flylora_top_k { s += " · FlyLoRA rank \(r), top-\(k)" }
        s += " · \(date) · \(machine) · \(threads) threads · OpenBLAS kernels: \(blas_core) (OPENBLAS_CORETYPE=\(openblas_coretype_env))\n"
        s += "load average before / after: \(load_average_before) / \(load_average_after)\n\n"
        guard let lora = sides["lora"] else { return s }
        for v in variants where v != "lora" {
            guard let o = sides[v] else { continue }
            var t = RatioTable(peer: "plain LoRA (lorafuse)")
            t.row("\(v) step time (s, mean of \(steps) after \(warmup_steps) warm-up)", o.mean_step_seconds, lora.mean_step_seconds, "%.3f", higherBetter: false)
            t.row("\(v) training throughput (tokens/s)", o.tokens_per_s, lora.tokens_per_s, "%.1f")
            t.row("\(v) peak RSS (MB)", o.peak_rss_mb, lora.peak_rss_mb, "%.0f", higherBetter: false)
            t.row("\(v) setup before step 1 (s: bases, initialisation)", o.setup_seconds, lora.setup_seconds, "%.2f", higherBetter: false)
            t.row("\(v) trained values", Double(o.trained_values), Double(lora.trained_values), "%.0f", higherBetter: false)
            t.row("\(v) bytes written (LoRA in F32)", Double(o.stored_bytes), Double(lora.stored_bytes), "%.0f", higherBetter: false)
            if let b = lora.stored_bytes_bf16 {
                t.row("\(v) bytes written (LoRA in BF16, as the suite stores it)", Double(o.stored_bytes), Double(b), "%.0f", higherBetter: false)
            }
            s += t.text + "\n"
            s += "Train loss of step 1 / step \(o.losses.count): \(v) \(f(o.losses.first, "%.4f")) / \(f(o.losses.last, "%.4f")), "
            s += "LoRA \(f(lora.losses.first, "%.4f")) / \(f(lora.losses.last, "%.4f")) (lr \(f(o.lr, "%g")) for \(v), \(f(lora.lr, "%g")) for LoRA as the suite trains it; warm-up steps \(o.warmup ?? 0) and \(lora.warmup ?? 0)).\n"
        }
        return s
    }
}
