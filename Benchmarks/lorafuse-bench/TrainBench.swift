import ArgumentParser
import Foundation
import LoRAFuse

/// LoRA training against PEFT + torch on the CPU: the same GGUF (float32), LoRA config, batches,
/// learning rates and thread count; step time, tokens/s and peak RSS.
/// lorafuse runs `LoRATrainer.trainStep` (forward, backward, clipping, AdamW) here; the peer is
/// scripts/bench_torch_train.py (its doc says exactly what one step is there), in its own process
/// so that each peak RSS is its own. The first `warmupSteps` steps run on both sides untimed.
struct TrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "SmolLM2 LoRA training steps: lorafuse against PEFT + torch (float32) on the same batches.")

    @OptionGroup var peerOptions: PeerBenchOptions
    @Option(help: "Training task (JSONL of prompt/answer).")
    var task: String = "tasks/add_2digit.train.jsonl"
    @Option(help: "Sequences per step.")
    var batch: Int = 8
    @Option(help: "LoRA rank.")
    var rank: Int = 8
    @Option(help: "LoRA alpha.")
    var alpha: Double = 16
    @Option(help: "Untimed steps first (both sides).")
    var warmupSteps: Int = 2
    @Option(help: "Timed steps.")
    var steps: Int = 10
    @Option(help: "Peak learning rate (cosine schedule over all steps, the same on both sides).")
    var learningRate: Float = 2e-4
    @Option(help: "Where to write the results (JSON; a Markdown twin beside it).")
    var results: String = "Benchmarks/results/train.json"
    @Option(help: "Directory for the generated inputs.")
    var work: String = NSTemporaryDirectory() + "lorafuse-train-bench"

    func validate() throws {
        if batch < 1 { throw ValidationError("--batch must be at least 1, got \(batch)") }
        if rank < 1 { throw ValidationError("--rank must be at least 1, got \(rank)") }
        if warmupSteps < 0 { throw ValidationError("--warmup-steps must be at least 0, got \(warmupSteps)") }
        if steps < 1 { throw ValidationError("--steps must be at least 1, got \(steps)") }
    }

    func run() throws {
        let (lm, loadSeconds, loadBefore) = try peerOptions.loadModel()
        let seqs = try TrainingData.sequences(try TaskData.read(path: task), model: lm)

        var opts = TrainingOptions()
        opts.rank = rank
        opts.alpha = alpha
        opts.targets = Projection.allCases
        opts.dropout = 0
        opts.batchSize = batch
        opts.gradAccum = 1
        opts.steps = warmupSteps + steps
        opts.learningRate = learningRate
        let trainer = try LoRATrainer(model: lm, train: seqs, options: opts)
        let total = warmupSteps + steps
        let batches = (1...total).map { k in trainer.batchIndices(step: k, micro: 0).map { seqs[$0] } }

        // Inputs for the peer: the very same sequences and learning rates, step by step.
        let a = AdamW(like: trainer.params)
        let inputs: [String: Any] = [
            "rank": rank, "alpha": alpha,
            "targets": opts.targets.map(\.peftName), "warmup_steps": warmupSteps,
            "batches": batches.map { $0.map { ["tokens": $0.tokens, "targets": $0.targets] } },
            "lrs": (1...total).map { Double(trainer.schedule.lr(step: $0)) },
            "max_grad_norm": opts.maxGradNorm, "weight_decay": Double(opts.weightDecay),
            "betas": [Double(a.beta1), Double(a.beta2)], "eps": Double(a.eps),
        ]

        FileHandle.standardError.write(Data("lorafuse: \(warmupSteps) + \(steps) steps, batch \(batch)…\n".utf8))
        var ours = TrainSide()
        ours.load_seconds = loadSeconds
        var tokens = 0
        for k in 1...total {
            let row = trainer.trainStep()
            ours.losses.append(row.trainLoss)
            if k > warmupSteps {
                ours.step_seconds.append(row.seconds)
                tokens += row.tokens
            }
        }
        ours.mean_step_seconds = ours.step_seconds.reduce(0, +) / Double(steps)
        ours.tokens_per_s = Double(tokens) / ours.step_seconds.reduce(0, +)
        ours.peak_rss_mb = peakRSSMB()
        ours.method = "LoRATrainer.trainStep: the batch packed into one (N, C) matrix (no padding), lm_head on answer rows only, backward, clipping, AdamW"

        let peerRun = try peerOptions.runPeer("scripts/bench_torch_train.py", inputs: inputs, work: work,
                                              note: "PEFT + torch: the same steps (its own process)…", as: TrainSide.self)
        let peer = peerRun?.result
        let peerVersions = peerRun.map {
            "peft \($0.raw["peft_version"] ?? "?"), torch \($0.raw["torch_version"] ?? "?"), transformers \($0.raw["transformers_version"] ?? "?")"
        } ?? ""
        let rep = TrainBenchReport(
            date: ISO8601DateFormatter().string(from: Date()), machine: machineDescription(), threads: peerOptions.threads,
            model: (peerOptions.model as NSString).lastPathComponent, blas_core: BLAS.coreName,
            load_average_before: loadBefore, load_average_after: loadAverage(), task: task, batch: batch,
            rank: rank, alpha: alpha, targets: opts.targets.map(\.rawValue).joined(separator: ","),
            warmup_steps: warmupSteps, steps: steps, tokens_per_step: Double(tokens) / Double(steps),
            peer: peerVersions, lorafuse: ours, peft: peer)
        print(rep.markdown)
        if peer != nil { try rep.write(to: results) }
    }
}

/// One side's measurements (the peer's JSON decodes into the same fields).
struct TrainSide: Codable {
    var load_seconds = 0.0
    var step_seconds: [Double] = []
    var mean_step_seconds = 0.0
    var tokens_per_s = 0.0
    /// Mean answer-token cross-entropy of every step (warm-up ones included), before its update.
    var losses: [Double] = []
    var peak_rss_mb = 0.0
    var padded_fraction: Double?
    var method: String?
}

struct TrainBenchReport: Codable, BenchReport {
    var date: String
    var machine: String
    var threads: Int
    var model: String
    var blas_core: String
    var load_average_before: String
    var load_average_after: String
    var task: String
    var batch: Int
    var rank: Int
    var alpha: Double
    var targets: String
    var warmup_steps: Int
    var steps: Int
    var tokens_per_step: Double
    var peer: String
    var lorafuse: TrainSide
    var peft: TrainSide?

    var markdown: String {
        let f = RatioTable.format
        var s = "\(model), float32 · LoRA r \(rank), α \(f(alpha, "%g")) on \(targets), dropout 0 · batch \(batch) of \(task)"
        s += " · \(date) · \(machine) · \(threads) threads · \(peer.isEmpty ? "no peer run" : peer) · OpenBLAS kernels: \(blas_core)\n"
        s += "load average before / after: \(load_average_before) / \(load_average_after)\n\n"
        let o = lorafuse, p = peft
        var t = RatioTable(peer: "PEFT + torch")
        t.row("step time (s, mean of \(steps) after \(warmup_steps) warm-up; ratio = PEFT / lorafuse)",
              o.mean_step_seconds, p?.mean_step_seconds, "%.3f", higherBetter: false)
        t.row("training throughput (tokens/s, \(f(tokens_per_step, "%.0f")) tokens a step)", o.tokens_per_s, p?.tokens_per_s, "%.1f")
        t.row("peak RSS (MB; ratio = PEFT / lorafuse)", o.peak_rss_mb, p?.peak_rss_mb, "%.0f", higherBetter: false)
        s += t.text + "\n"
        if let p {
            s += "Loss of step 1 (the base model's, before any update): lorafuse \(f(o.losses.first, "%.5f")), "
            s += "PEFT \(f(p.losses.first, "%.5f")); of step \(o.losses.count): lorafuse \(f(o.losses.last, "%.5f")), PEFT \(f(p.losses.last, "%.5f")).\n"
            s += "PEFT step: \(p.method ?? "?") (padding: \(f(p.padded_fraction.map { $0 * 100 }, "%.1f")) % of its batch positions).\n"
        }
        s += "lorafuse step: \(o.method ?? "?").\n"
        return s
    }
}
