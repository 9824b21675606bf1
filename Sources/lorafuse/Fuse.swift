import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse fuse`: learned fusion from a few examples per task. The methods come from
/// `LearnedFusionMethod`, so a new case there is listed and dispatched here without changes.
struct Fuse: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Learn how to combine adapters from a few examples per task, and write the fused adapter.",
        discussion: """
        Methods (--method):
          atlas        one coefficient per adapter and coefficient group (--granularity block|layer|module|adapter; \
        block = one projection of one layer), learned by Adam on the few-shot loss through the model. \
        The gradient of each coefficient is exact and comes from the LoRA gradients of the concatenated adapter; \
        no dense ΔW is formed. Optional --l1/--l2 on the coefficients; early stopping on --val with --patience.
          cat-learned  LoRA Soups' learned CAT: per group (default: per layer and projection) softmax weights over \
        the adapters, times S = number of adapters (so training starts at the plain sum; --cat-scale 1 gives the \
        paper's convex mix), adapters frozen.
          lorahub      one weight per adapter found by CMA-ES within --evaluations loss evaluations on \
        loss + --l1·mean|w| (LoraHub: 0.05, w in [-1.5, 1.5]). LoraHub composes A = Σ w_i A_i and B = Σ w_i B_i \
        separately, so B·A holds cross terms w_i w_j B_i A_j between different adapters (and needs equal ranks): \
        that is --composition factors. The default --composition exact applies Σ w_i ΔW_i.

          icm-fusion   ICM-Fusion (docs/icm-fusion.md): a Fusion VAE with one latent per whole adapter over a fixed basis of the z-scored adapters \
        (and their checkpoint-<step>/ trajectories), conditioned on each task's mean last-layer hidden state over \
        its shots and meta-learned (first-order MAML); the tasks' latents are fused with learned weights and \
        conflict projections on the union of the shots, decoded, and adapted for --adapt-steps. Options under \
        "icm-fusion"; --generator re-makes the adapter from a saved state without retraining.

        The objective is the mean over tasks (one per --shots file) of the mean cross-entropy over answer tokens, \
        as `lorafuse eval` scores them. Coefficients start at --initial, by default 1/n (the mean of the n adapters, \
        what `merge --method linear` with weights 1/n gives; 1 would be their plain sum). cat-learned's default \
        --cat-scale is 1 (the convex mix), which also starts at 1/n.

        Writes OUT_DIR as a plain PEFT adapter with the coefficients folded in exactly (concatenation, rank Σ r_i) \
        or, with --rank R, the exact truncated SVD of the `svd` method; plus coefficients.json (method, granularity, \
        per adapter, module and layer the coefficient applied, loss curve, options, seed), loss.csv and loss.svg.
        """
    )

    @Option(name: .long, help: "Learned fusion method: \(LearnedFusionMethod.fuseMethodNames.joined(separator: ", ")).")
    var method: String

    @Argument(help: "Adapters to combine (PEFT directories, GGUF LoRA files or mlx-lm directories).")
    var adapters: [String]

    @Option(name: .long, parsing: .upToNextOption, help: "Few-shot examples, one .jsonl per task ({\"prompt\", \"answer\"} lines).")
    var shots: [String]

    @Option(name: .customLong("shots-per-task"), help: "Use only the first N examples of each --shots file.")
    var shotsPerTask: Int?

    @Option(name: .long, parsing: .upToNextOption, help: "Validation examples, one .jsonl per task: early stopping and the kept coefficients.")
    var val: [String] = []

    @Option(name: .customLong("val-per-task"), help: "Use only the first N examples of each --val file.")
    var valPerTask: Int?

    @Option(name: [.short, .customLong("output")], help: "Output adapter directory.")
    var output: String

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions

    @Option(name: .long, help: "Optimizer steps (atlas, cat-learned).") var steps = 40
    @Option(name: .long, help: "Adam learning rate on the coefficients (atlas, cat-learned).") var lr: Float = 0.02
    @Option(name: .long, help: "Sequences per step (atlas, cat-learned).") var batch = 8
    @Option(name: .long, help: "Seed of the minibatch order and of CMA-ES.") var seed: UInt64 = 0
    @Option(name: .long, help: "Coefficient groups: block (one projection of one layer), layer, module (projection type) or adapter (atlas, cat-learned).")
    var granularity = "block"
    @Option(name: .long, help: "L1 penalty weight (atlas: on the coefficients; cat-learned: on the logits; lorahub: on mean|w|, default 0.05).")
    var l1: Float?
    @Option(name: .long, help: "L2 penalty weight (atlas: on the coefficients; cat-learned: on the logits).") var l2: Float = 0
    @Option(name: .long, help: "Stop after this many validation checks without improvement (needs --val).") var patience: Int?
    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (default: about ten times per run).") var evalEvery: Int?
    @Option(name: .long, help: "LoraHub budget: few-shot loss evaluations, the start included.") var evaluations = 40
    @Option(name: .long, help: "LoraHub composition: exact (Σ w_i ΔW_i) or factors (LoraHub's (Σ w_i B_i)(Σ w_i A_i), with cross terms; equal ranks).")
    var composition = "exact"
    @Option(name: .long, help: "Starting coefficient of every adapter (atlas, lorahub; default 1/n, the adapters' mean; 1 is their sum; LoraHub's paper uses 0).") var initial: Double?
    @Option(name: .customLong("cat-scale"), help: "cat-learned: coefficients = S·softmax (default 1, the convex mix; S = number of adapters starts at their sum).") var catScale: Double?
    @Option(name: .long, help: "Rank of the written adapter via the exact truncated SVD (default: exact concatenation).") var rank: Int?
    @Option(name: .long, help: "Adapter weight dtype: f32, bf16 or f16.") var dtype = "f32"

    @OptionGroup(title: "icm-fusion generator") var icmGen: ICMGeneratorArguments
    @OptionGroup(title: "icm-fusion fusion") var icmFusion: ICMFusionArguments
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var overwrite: OverwriteOptions

    /// Everything this command reads: no output may be, hold or lie inside one of them.
    var inputPaths: [String] {
        adapters + shots + val + [icmGen.generator, model ?? ModelLocator.defaultModelPath()].compactMap { $0 }
    }

    func validate() throws {
        guard LearnedFusionMethod.fuseMethodNames.contains(method) else {
            throw ValidationError("--method must be one of \(LearnedFusionMethod.fuseMethodNames.joined(separator: ", ")), got \(method)")
        }
        if method == ICMPipeline.method, let p = ICMPipeline.fusionInputProblem(adapters: adapters.count, shots: shots.count) {
            throw ValidationError(p)
        }
        if adapters.isEmpty { throw ValidationError("give at least one adapter") }
        if shots.isEmpty { throw ValidationError("give at least one --shots file") }
        if CoefficientGranularity(rawValue: granularity) == nil {
            throw ValidationError("--granularity must be block, layer, module or adapter, got \(granularity)")
        }
        if !["exact", "factors"].contains(composition) { throw ValidationError("--composition must be exact or factors, got \(composition)") }
        if DType(name: dtype) == nil { throw ValidationError("--dtype must be f32, bf16 or f16, got \(dtype)") }
        if steps < 1 { throw ValidationError("--steps must be at least 1, got \(steps)") }
        if batch < 1 { throw ValidationError("--batch must be at least 1, got \(batch)") }
        if evaluations < 2 { throw ValidationError("--evaluations must be at least 2, got \(evaluations)") }
        if let n = shotsPerTask, n < 1 { throw ValidationError("--shots-per-task must be at least 1, got \(n)") }
        if let n = valPerTask, n < 1 { throw ValidationError("--val-per-task must be at least 1, got \(n)") }
        if let r = rank, r < 1 { throw ValidationError("--rank must be at least 1, got \(r)") }
        if patience != nil && val.isEmpty { throw ValidationError("--patience needs --val") }
        if let p = patience, p < 1 { throw ValidationError("--patience must be at least 1, got \(p)") }
        if let e = evalEvery, e < 1 { throw ValidationError("--eval-every must be at least 1, got \(e)") }
        // NaN passes every comparison; these would turn into NaN coefficients and an inf loss.
        if !(lr.isFinite && lr > 0) { throw ValidationError("--lr must be finite and > 0, got \(lr)") }
        for (flag, v) in [("--l1", l1 ?? 0), ("--l2", l2)] where !(v.isFinite && v >= 0) {
            throw ValidationError("\(flag) must be finite and ≥ 0, got \(v)")
        }
        if let i = initial, !i.isFinite || abs(i) > 1e4 { throw ValidationError("--initial must be finite with |value| ≤ 1e4, got \(i)") }
        if let c = catScale, !(c.isFinite && c > 0) { throw ValidationError("--cat-scale must be finite and > 0, got \(c)") }
    }

    func run() throws {
        compute.apply()
        try OutputGuard.check(output, kind: .directory, inputs: inputPaths, force: overwrite.force)
        if let s = icmGen.saveGenerator { try OutputGuard.check(s, kind: .file, inputs: inputPaths, force: overwrite.force, what: "--save-generator") }
        if method == ICMPipeline.method { return try runICMFusion() }
        let m = LearnedFusionMethod(rawValue: method)!
        var o = LearnedFusionOptions.defaults(for: m, adapters: adapters.count)
        o.steps = steps; o.learningRate = lr; o.batchSize = batch; o.seed = seed; o.shotsPerTask = shotsPerTask
        o.valPerTask = valPerTask
        o.granularity = CoefficientGranularity(rawValue: granularity)!
        if let v = l1 { o.l1 = v }
        o.l2 = l2
        o.patience = patience; o.evalEvery = evalEvery; o.evaluations = evaluations
        o.lorahubComposition = composition; o.foldRank = rank
        if let v = initial { o.initialCoefficient = v }
        if let v = catScale { o.catScale = v }

        let lm = try loadModel(modelPath: model, compute: weights.compute)
        let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
        let loaded = AdapterNames.disambiguated(try adapters.map { try AdapterIO.read(path: $0, hints: hints) })
        let shotTasks = try shots.map { try TaskData.read(path: $0) }
        let valTasks = try val.map { try TaskData.read(path: $0) }
        let total = m == .lorahub ? evaluations : steps
        let bar = ProgressBar(total: total, label: method, enabled: !compute.quiet)
        let start = Date()
        let result = try LearnedFusion.fuse(method: m, adapters: loaded, model: lm, shots: shotTasks, val: valTasks,
                                            options: o) { step, total, loss in
            bar.update(step, total: total, detail: String(format: "loss %.4f", loss))
        }
        let seconds = Date().timeIntervalSince(start)
        try result.write(to: output, dtype: DType(name: dtype)!, protecting: inputPaths, force: overwrite.force)
        let c = result.coefficients
        var summary = String(format: "%@: few-shot loss %.4f -> %.4f", method, c.initialTrainLoss, c.finalTrainLoss)
        if let a = c.initialValLoss, let b = c.finalValLoss { summary += String(format: ", val %.4f -> %.4f", a, b) }
        summary += String(format: " (kept step %d, %.1f s, %.2f s per %@)", c.bestStep, seconds,
                          seconds / Double(max(m == .lorahub ? c.lossCurve.count : c.lossCurve.count - 1, 1)), m == .lorahub ? "evaluation" : "step")
        print(summary + "; adapter written to \(output)")
    }

    /// ICM-Fusion: the library does the work (ICMPipeline); this prints and writes.
    func runICMFusion() throws {
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
        let inputs = try ICMPipeline.taskInputs(adapters: adapters, shots: shots, hints: hints)
        let say: (String) -> Void = { line in if !compute.quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) } }
        let start = Date()
        let r = try ICMPipeline.fuse(model: lm, tasks: inputs, options: icmPipelineOptions(icmGen, icmFusion, seed: seed, shotsPerTask: shotsPerTask),
                                     generator: icmGeneratorSource(icmGen), progress: say)
        if let s = icmGen.saveGenerator { try r.generator.save(to: s); say("generator state written to \(s)") }
        try PEFTAdapter.write(r.adapter, to: output, dtype: DType(name: dtype)!, protecting: inputPaths, force: overwrite.force)
        print(String(format: "icm-fusion: weights [%@] (%.1f s); adapter written to %@",
                     r.result.fusion.weights.map { String(format: "%.3f", $0) }.joined(separator: ", "), Date().timeIntervalSince(start), output))
    }
}
