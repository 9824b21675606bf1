import ArgumentParser
import Foundation
import LoRAFuse

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a LoRA adapter on prompt/answer JSONL (CPU, base model frozen).",
        discussion: """
        Each line of --data is {"prompt": "...", "answer": "..."}; the prompt is rendered by the chat \
        template as one user turn with the generation prompt, the answer's tokens followed by the \
        end-of-turn token are the targets, and the loss is the mean cross-entropy over answer tokens \
        (exactly what `lorafuse eval` reports).

        A is initialised as PEFT does (Kaiming-uniform, bound 1/√in), B = 0; scale α/r (α/√r with \
        --rslora). AdamW with linear warmup then cosine decay to 0, gradients clipped to global norm \
        --max-grad-norm, --grad-accum micro-batches of --batch sequences per step.

        Writes OUT_DIR/adapter_config.json + adapter_model.safetensors (PEFT), loss.csv (step, lr, \
        train_loss, val_loss, grad_norm, tokens, seconds), loss.svg, training.json (options, data, base \
        model, final losses: how the adapter was made), and with --save-every \
        OUT_DIR/checkpoint-<step>/ (or under --checkpoint-dir) (a PEFT adapter + trainer_state.safetensors), keeping the last --keep. \
        --resume continues from a checkpoint (or the newest one in a folder) with the same options, and \
        gives the same result as an uninterrupted run.

        --variant nola (NOLA, Koohpayegani et al. 2024) trains, per module, --nola-basis coefficients \
        for A = A₀ + Σ αᵢUᵢ and as many for B = Σ βⱼVⱼ, with A₀ (PEFT's initial A), U and V fixed random \
        matrices regenerated from --seed (each projection's U and V shared by its layers); only the \
        coefficients and the seed are stored: OUT_DIR/nola_config.json + nola_coefficients.safetensors, \
        which eval, generate, report and serve load as an adapter and `lorafuse convert OUT_DIR --format \
        peft` turns into A and B for other tools. It takes a higher --lr than LoRA (see docs/variants.md).

        --variant lora-pro (LoRA-Pro, Wang et al. 2025) trains A and B, adjusting their gradients so that \
        the low-rank step s·(B·dA + dB·A) follows AdamW's full fine-tuning step: AdamW's moments are kept \
        at full size for the equivalent gradient (2 × out × in F32 values per module: 850 MB for SmolLM2 \
        with all seven projections, and as much again in each checkpoint), then A and B take an SGD step \
        along the closed-form adjusted gradients. The output is a plain PEFT adapter. No --weight-decay; \
        --warmup defaults to max(5, 3% of the steps), since its first steps are full-size Adam steps.

        --variant flexora (Flexora, Wei et al. 2025) first searches which layers to fine-tune: each \
        layer's LoRA output is weighted by α = L·softmax(α̂), and --flexora-search-steps steps alternate \
        one AdamW step of A and B on a training batch with one Adam step of α̂ (--flexora-lr) on a --val \
        batch. The layers with α > 1 (or the --flexora-layers largest) are kept, and a fresh LoRA is \
        trained on them only, for --steps steps as a plain run: the output is a plain PEFT adapter \
        (layers_to_transform names the layers), plus flexora.json (α per layer, the selection, the \
        search's losses) and flexora.svg. Needs --val. --resume continues the fine-tuning stage on the \
        checkpoint's layers without searching again.

        --variant flylora (FlyLoRA, Zou et al. 2025) freezes a sparse random A (⌊in·k/r⌋ non-zeros per \
        row, N(0, 1/r²)) that acts as a router: per token only the --top-k ranks of largest |x·Aᵀ + d| pass \
        to B, the only trained factor; the bias d moves by --bias-rate towards even use of the ranks after \
        every step. Defaults as the authors' run: --rank 32, --top-k 8, --alpha 64, --bias-rate 0.001. \
        The output is a PEFT folder as the authors' PEFT fork writes it (top_k and bias_u in the config, \
        lora_topk_bias tensors); eval, generate, report and serve apply it unmerged; `fuse --method \
        linear` averages FlyLoRA adapters that share A (same --seed, --rank, --targets). Stock PEFT, \
        llama.cpp and mlx-lm would apply every rank to every token, so convert refuses it.

        --variant smora (SMoRA, Zhao et al. 2025) makes every rank an expert of a trained router: per \
        token the --top-k ranks of largest x·W_gᵀ + d are kept, each weighted by the softmax of its \
        router logit over the kept ones; A, B and W_g are trained, d balances as for flylora. Defaults \
        --rank 16 --top-k 4 --alpha 32 --bias-rate 0.001. PEFT-style folder (lora_router.weight and \
        lora_topk_bias per module), applied unmerged; no fusion, no convert.

        --variant loramoe (LoRAMoE, Dou et al. 2023) puts --experts LoRA experts of rank --rank on each \
        targeted projection, mixed per token by a dense softmax router (every expert, no top-k); A, B \
        and the router are trained. Its localized balancing constraint adds --blc-weight · CV² of the \
        experts' per-example importance, the first half of the experts weighted 1 + --blc-alpha on \
        world-knowledge examples (--knowledge-data) and the second half on task examples (--data). \
        Defaults as the authors' released script: --experts 8 --rank 4 --alpha 32 on gate,up,down; \
        that script runs with the constraint off, we default --blc-alpha 0.1 --blc-weight 0.1. The \
        output is the authors' PEFT-fork layout (lora_nums in the config, lora_A{i}, lora_B{i}, \
        lora_route per module), applied unmerged; no fusion, no convert.

        --variant mixlora (MixLoRA, Li et al. 2024) turns each layer's FFN into --experts experts,         each the frozen FFN with its own LoRA of rank --rank on gate, up and down, and trains a router         that sends every token to --top-k of them (softmax, top-k, renormalised, as Mixtral); the         attention projections get a plain LoRA. The loss adds --aux-loss × the Switch load-balance         term over all layers' router choices (and --z-loss × the router z-loss, off by default).         Defaults: --experts 8 --top-k 2 --rank 8 --alpha 16 --aux-loss 0.01 on every projection. The         output is the authors' layout (peft_type MIXLORA; mixlora.layers.N.gate / experts.E.*         tensors) in safetensors, applied unmerged; no fusion, no convert.

        --layers trains LoRA on the listed layers only (PEFT's layers_to_transform).
        """
    )

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions

    @Option(name: .long, help: "Training examples (.jsonl).")
    var data: String

    @Option(name: .long, help: "Validation examples (.jsonl); loss every --eval-every steps and at the end.")
    var val: String?

    @Option(name: [.short, .customLong("output")], help: "Output adapter directory.")
    var output: String

    @Option(name: .long, help: "LoRA rank (default 8; with --variant flylora 32, smora 16, loramoe 4 per expert; mixlora 8 per expert).") var rank: Int?
    @Option(name: .long, help: "LoRA alpha (default 16; with --variant flylora 64, smora 32, loramoe 32).") var alpha: Double?
    @Option(name: .long, help: "Target projections, comma-separated, of q,k,v,o,gate,up,down (or all; default all, with --variant loramoe gate,up,down).")
    var targets: String?
    @Option(name: .long, help: "Optimizer steps (default: from --epochs).") var steps: Int?
    @Option(name: .long, help: "Passes over the data when --steps is not given.") var epochs = 1.0
    @Option(name: .long, help: "Sequences per micro-batch.") var batch = 4
    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step.") var gradAccum = 1
    @Option(name: .long, help: "Peak learning rate (default 2e-4; with --variant nola 3e-3 and lora-pro 1e-3, each the best of three on add_2digit's validation split, see docs/variants.md).")
    var lr: Float?
    @Option(name: .long, help: "Warmup steps (linear from 0; default 0, with --variant lora-pro max(5, 3% of the steps)).") var warmup: Int?
    @Option(name: .customLong("weight-decay"), help: "AdamW decoupled weight decay.") var weightDecay: Float = 0
    @Option(name: .customLong("max-grad-norm"), help: "Clip gradients to this global norm (0: off).") var maxGradNorm = 1.0
    @Option(name: .long, help: "Seed of initialisation, data order and dropout.") var seed: UInt64 = 0
    @Option(name: .long, help: "LoRA dropout on the adapter input.") var dropout: Float = 0
    @Flag(name: .long, help: "rsLoRA scaling α/√r.") var rslora = false
    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (default: about 10 times per run).") var evalEvery: Int?
    @Option(name: .customLong("save-every"), help: "Checkpoint every N steps (0: none).") var saveEvery = 0
    @Option(name: .long, help: "Checkpoints to keep.") var keep = 2
    @Option(name: .customLong("checkpoint-dir"), help: "Where checkpoint-<step>/ folders go (default: the output directory).")
    var checkpointDir: String?
    @Option(name: .long, help: "Adapter weight dtype: f32, bf16 or f16.") var dtype = "f32"
    @Option(name: .customLong("init-from"), help: "Start from this adapter's A and B (same --rank and --targets) instead of PEFT's initialisation: a warm start from a related task.")
    var initFrom: String?
    @Option(name: .long, help: "Resume from a checkpoint-<step> folder, or from the newest checkpoint in a folder.")
    var resume: String?
    @Option(name: .long, help: "What is trained: lora (A and B), nola (coefficients of fixed random bases), lora-pro (A and B along LoRA-Pro's adjusted gradients), flexora (LoRA on the layers a validation search selects), flylora (B only, over a frozen sparse random A that picks --top-k ranks per token), smora (A, B and a router that picks --top-k ranks per token), loramoe (--experts LoRA experts per projection under a trained dense softmax router), or mixlora (--experts LoRA-adapted copies of each FFN, --top-k per token by a trained router, plus attention LoRA).")
    var variant = "lora"
    @Option(name: .customLong("nola-basis"), help: "nola: basis matrices per factor per module (the coefficients trained for each of A and B).")
    var nolaBasis: Int?
    @Option(name: .customLong("top-k"), help: "flylora, smora: ranks each token keeps, of --rank (default 8 for flylora, 4 for smora); mixlora: experts per token (default 2).")
    var topK: Int?
    @Option(name: .customLong("bias-rate"), help: "flylora, smora: step of the balancing bias after each update, d += rate·sign(mean use − use) per rank (default 0.001; 0: off).")
    var biasRate: Double?
    @Option(name: .long, help: "loramoe: LoRA experts per projection; mixlora: experts per layer's FFN (default 8 for both).")
    var experts: Int?
    @Option(name: .customLong("aux-loss"), help: "mixlora: coefficient of the load-balance loss over the routers' choices (default 0.01; 0: off).")
    var auxLoss: Float?
    @Option(name: .customLong("z-loss"), help: "mixlora: coefficient of the router z-loss, mean logsumexp(logits)² (default 0: off).")
    var zLoss: Float?
    @Option(name: .customLong("blc-alpha"), help: "loramoe: δ of the localized balancing constraint, the experts' groups weighted 1 ± δ by example type (default 0.1).")
    var blcAlpha: Float?
    @Option(name: .customLong("blc-weight"), help: "loramoe: β, the constraint's weight in the loss (default 0.1; 0: off, as the authors' released script).")
    var blcWeight: Float?
    @Option(name: .customLong("knowledge-data"), help: "loramoe: world-knowledge examples (.jsonl), trained with --data; the constraint weights the first half of the experts 1 + δ for them, the second half for --data examples.")
    var knowledgeData: String?
    @Option(name: .long, help: "Train LoRA on these layers only, comma-separated indices from 0 (default: all).")
    var layers: String?
    @Option(name: .customLong("flexora-search-steps"), help: "flexora: search steps before fine-tuning (default: a quarter of the fine-tuning steps, at least 10).")
    var flexoraSearchSteps: Int?
    @Option(name: .customLong("flexora-lr"), help: "flexora: Adam learning rate of the layer logits α̂ (default 0.05).")
    var flexoraLR: Float?
    @Option(name: .customLong("flexora-layers"), help: "flexora: keep this many layers, those of largest α (default: every layer with α > 1).")
    var flexoraLayers: Int?

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if DType(name: dtype) == nil { throw ValidationError("--dtype must be f32, bf16 or f16, got \(dtype)") }
        _ = try Projection.parseList(targets ?? "all")
        guard TrainingVariants.names.contains(variant) else {
            throw ValidationError("--variant must be one of \(TrainingVariants.names.joined(separator: ", ")), got \(variant)")
        }
        if variant != "nola" && nolaBasis != nil { throw ValidationError("--nola-basis is for --variant nola") }
        if let k = nolaBasis, !(1...65_536).contains(k) { throw ValidationError("--nola-basis must be in 1…65536, got \(k)") }
        if variant == "lora-pro" && weightDecay > 0 {
            throw ValidationError("--weight-decay is not used by --variant lora-pro (SGD along the adjusted gradients, as the authors' code, without decay)")
        }
        if variant == "nola" && initFrom != nil {
            throw ValidationError("--init-from sets A and B; --variant \(variant) trains its own parameters from its initialisation")
        }
        if variant != "flexora" && (flexoraSearchSteps != nil || flexoraLR != nil || flexoraLayers != nil) {
            throw ValidationError("--flexora-search-steps, --flexora-lr and --flexora-layers are for --variant flexora")
        }
        if variant == "flexora" {
            if val == nil { throw ValidationError("--variant flexora chooses layers on a validation split: give --val") }
            if layers != nil { throw ValidationError("--variant flexora chooses the layers itself; --layers is for the other variants") }
            if initFrom != nil { throw ValidationError("--init-from sets every layer's A and B; --variant flexora trains a fresh LoRA on the layers it selects") }
            if let s = flexoraSearchSteps, s < 1 { throw ValidationError("--flexora-search-steps must be ≥ 1, got \(s)") }
            if let r = flexoraLR, !(r.isFinite && r > 0) { throw ValidationError("--flexora-lr must be finite and > 0, got \(r)") }
            if let k = flexoraLayers, k < 1 { throw ValidationError("--flexora-layers must be ≥ 1, got \(k)") }
        }
        let gated = variant == "flylora" || variant == "smora"
        if !gated && variant != "mixlora" && topK != nil { throw ValidationError("--top-k is for --variant flylora, smora and mixlora") }
        if !gated && biasRate != nil { throw ValidationError("--bias-rate is for --variant flylora and smora") }
        if gated {
            let fly = variant == "flylora"
            let r = rank ?? (fly ? FlyLoRADefaults.rank : SMoRADefaults.rank), k = topK ?? (fly ? FlyLoRADefaults.topK : SMoRADefaults.topK)
            guard k >= 1 && k < r else { throw ValidationError("--top-k must be in 1…\(r - 1) (\(fly ? "FlyLoRA" : "SMoRA") keeps k of the --rank \(r) ranks per token), got \(k)") }
            if let b = biasRate, !(b.isFinite && b >= 0) { throw ValidationError("--bias-rate must be finite and ≥ 0, got \(b)") }
            if initFrom != nil { throw ValidationError("--init-from sets A and B; --variant \(variant) trains from its own initialisation") }
        }
        if variant != "loramoe" && variant != "mixlora" && experts != nil { throw ValidationError("--experts is for --variant loramoe and mixlora") }
        if variant != "loramoe" && (blcAlpha != nil || blcWeight != nil || knowledgeData != nil) {
            throw ValidationError("--blc-alpha, --blc-weight and --knowledge-data are for --variant loramoe")
        }
        if let k = knowledgeData, URL(fileURLWithPath: k).standardizedFileURL.path == URL(fileURLWithPath: data).standardizedFileURL.path {
            throw ValidationError("--knowledge-data \(k) is the --data file: its examples would be trained twice, once as each type; give the world-knowledge examples in a file of their own")
        }
        if variant != "mixlora" && (auxLoss != nil || zLoss != nil) { throw ValidationError("--aux-loss and --z-loss are for --variant mixlora") }
        if variant == "mixlora" {
            let e = experts ?? MixLoRADefaults.experts, k = topK ?? MixLoRADefaults.topK
            if e < 2 { throw ValidationError("--experts must be ≥ 2 (MixLoRA routes among experts), got \(e)") }
            if k < 1 || k > e { throw ValidationError("--top-k must be in 1…\(e) (experts per token, of --experts \(e)), got \(k)") }
            for (n, v) in [("--aux-loss", auxLoss), ("--z-loss", zLoss)] {
                if let v, !(v.isFinite && v >= 0) { throw ValidationError("\(n) must be finite and ≥ 0, got \(v)") }
            }
            if initFrom != nil { throw ValidationError("--init-from sets A and B; --variant mixlora trains its experts from its own initialisation") }
            if rslora { throw ValidationError("--rslora: MixLoRA scales each expert by α/r") }
        }
        if variant == "loramoe" {
            if let e = experts, e < 2 { throw ValidationError("--experts must be ≥ 2 (LoRAMoE mixes experts per projection), got \(e)") }
            if let a = blcAlpha, !(a.isFinite && a >= 0 && a < 1) { throw ValidationError("--blc-alpha must be in [0, 1) (the groups are weighted 1 ± δ), got \(a)") }
            if let w = blcWeight, !(w.isFinite && w >= 0) { throw ValidationError("--blc-weight must be finite and ≥ 0, got \(w)") }
            if initFrom != nil { throw ValidationError("--init-from sets A and B; --variant loramoe trains its experts from its own initialisation") }
            if rslora { throw ValidationError("--rslora: LoRAMoE scales each expert by α/r") }
        }
        if let r = rank, r < 1 { throw ValidationError("--rank must be ≥ 1, got \(r)") }
        if variant == "nola" && layers != nil { throw ValidationError("--layers is not taken by --variant nola (its bases cover every layer)") }
        if let l = layers { _ = try Self.parseLayers(l) }
    }

    static func parseLayers(_ s: String) throws -> [Int] {
        let parts = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        var out: [Int] = []
        for p in parts {
            guard let i = Int(p), i >= 0 else { throw ValidationError("--layers takes layer indices ≥ 0 separated by commas, got '\(p)' in '\(s)'") }
            guard !out.contains(i) else { throw ValidationError("--layers names layer \(i) twice") }
            out.append(i)
        }
        return out.sorted()
    }

    static let defaultNOLABasis = 512
    static let defaultNOLALearningRate: Float = 3e-3
    static let defaultLoRAProLearningRate: Float = 1e-3

    var defaultLearningRate: Float {
        switch variant {
        case "nola": return Self.defaultNOLALearningRate
        case "lora-pro": return Self.defaultLoRAProLearningRate
        default: return TrainingOptions().learningRate
        }
    }

    func run() throws {
        compute.apply()
        var o = TrainingOptions()
        switch variant {
        case "flylora": o.rank = rank ?? FlyLoRADefaults.rank; o.alpha = alpha ?? FlyLoRADefaults.alpha
        case "smora": o.rank = rank ?? SMoRADefaults.rank; o.alpha = alpha ?? SMoRADefaults.alpha
        case "loramoe": o.rank = rank ?? LoRAMoEDefaults.rank; o.alpha = alpha ?? LoRAMoEDefaults.alpha
        case "mixlora": o.rank = rank ?? MixLoRADefaults.rank; o.alpha = alpha ?? MixLoRADefaults.alpha
        default: o.rank = rank ?? o.rank; o.alpha = alpha ?? o.alpha
        }
        o.targets = try targets.map(Projection.parseList) ?? (variant == "loramoe" ? LoRAMoEDefaults.targets : Projection.parseList("all"))
        o.rsLoRA = rslora
        o.dropout = dropout; o.steps = steps; o.epochs = epochs; o.batchSize = batch; o.gradAccum = gradAccum
        o.learningRate = lr ?? defaultLearningRate; o.warmup = warmup ?? 0; o.weightDecay = weightDecay; o.maxGradNorm = maxGradNorm
        o.seed = seed; o.saveEvery = saveEvery; o.keep = keep; o.dtype = DType(name: dtype)!
        if variant == "lora-pro" { o.optimizer = .loraPro }
        o.layers = try layers.map(Self.parseLayers)

        // Decided before the model loads: a refused output costs nothing.
        let inputs = [model ?? ModelLocator.defaultModelPath(), data] + [val, initFrom, knowledgeData].compactMap { $0 }
        if initFrom != nil && resume != nil { throw ValidationError("give either --init-from or --resume, not both") }
        let out = try TrainingOutput.prepare(output: output, inputs: inputs, resume: resume, force: overwrite.force)
        if let c = checkpointDir { try OutputGuard.check(c, kind: .directory, inputs: inputs, force: true, what: "--checkpoint-dir") }
        do { try train(o, out: out) } catch { out.abandon(); throw error }
    }

    func train(_ options: TrainingOptions, out: TrainingOutput) throws {
        var o = options
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        var trainSeqs = try TrainingData.sequences(TaskData.read(path: data), model: lm)
        if let k = knowledgeData {
            for var s in try TrainingData.sequences(TaskData.read(path: k), model: lm) {
                s.knowledge = true
                trainSeqs.append(s)
            }
        }
        let valSeqs = try val.map { try TrainingData.sequences(TaskData.read(path: $0), model: lm) } ?? []
        let total = o.totalSteps(examples: trainSeqs.count)
        o.evalEvery = evalEvery ?? max(1, total / 10)
        if warmup == nil && self.variant == "lora-pro" {
            // LoRA-Pro's first Adam steps are full-size sign steps of the whole weight: without a
            // warm-up, lr 1e-3 took add_2digit's loss from 2.81 to 9.61 at step 3 (the variants
            // bench). The authors warm up over 3% of the run; the default lr was chosen with 5 steps.
            o.warmup = max(5, Int((0.03 * Double(total)).rounded()))
        }
        var variant: (any TrainingVariant)?
        if self.variant == "nola" {
            if o.dtype != .f32 {
                FileHandle.standardError.write(Data("note: NOLA coefficients are stored in F32 (--dtype \(dtype) applies to checkpoints' PEFT adapters): rounding one coefficient moves every entry of its factor\n".utf8))
            }
            let k = nolaBasis ?? Self.defaultNOLABasis
            variant = try NOLAVariant(model: lm.config, options: o, basisA: k, basisB: k, baseModel: lm.sourcePath)
        }
        if self.variant == "flylora" {
            variant = try FlyLoRAVariant(config: lm.config, options: o, topK: topK ?? FlyLoRADefaults.topK,
                                         biasRate: biasRate ?? FlyLoRADefaults.biasRate)
        }
        if self.variant == "smora" {
            variant = try SMoRAVariant(config: lm.config, options: o, topK: topK ?? SMoRADefaults.topK,
                                       biasRate: biasRate ?? SMoRADefaults.biasRate)
        }
        if self.variant == "loramoe" {
            variant = try LoRAMoEVariant(config: lm.config, options: o, experts: experts ?? LoRAMoEDefaults.experts,
                                         balance: ExpertBalance(alpha: blcAlpha ?? LoRAMoEDefaults.blcAlpha,
                                                                weight: blcWeight ?? LoRAMoEDefaults.blcWeight))
        }
        if self.variant == "mixlora" {
            variant = try MixLoRAVariant(config: lm.config, options: o, experts: experts ?? MixLoRADefaults.experts,
                                         topK: topK ?? MixLoRADefaults.topK,
                                         loss: MixtureLoss(aux: auxLoss ?? MixLoRADefaults.auxLoss, z: zLoss ?? MixLoRADefaults.zLoss))
        }
        var flexora: FlexoraSelection?
        if self.variant == "flexora" {
            if let r = resume {
                // The fine-tuning stage resumes on the layers its checkpoint holds; the search is not redone.
                let ck = try LoRATrainer.checkpoint(resuming: r)
                let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
                o.layers = try AdapterIO.read(path: ck, hints: hints).metadata.layersToTransform
            } else {
                let sel = try flexoraSearch(lm: lm, train: trainSeqs, val: valSeqs, options: o, total: total)
                try out.writeFile(FlexoraSelection.fileName, try sel.json())
                try out.writeFile("flexora.svg", sel.chartSVG())
                o.layers = sel.selected
                flexora = sel
            }
        }
        let trainer = try LoRATrainer(model: lm, train: trainSeqs, val: valSeqs, options: o, variant: variant)

        if let i = initFrom {
            let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
            try trainer.warmStart(from: AdapterIO.read(path: i, hints: hints))
        }
        if let r = resume {
            let ck = try LoRATrainer.checkpoint(resuming: r)
            try trainer.resume(from: ck)
            FileHandle.standardError.write(Data("resumed from \(ck) at step \(trainer.step)\n".utf8))
        }
        let startStep = trainer.step
        FileHandle.standardError.write(Data(("train: \(trainSeqs.count) examples, \(valSeqs.count) validation, \(total) steps of "
            + "\(batch)×\(gradAccum) sequences, \(trainer.params.modules.count) LoRA modules, "
            + "\(trainer.trainableCount) trained values\(trainer.variantName == "lora" ? "" : " (\(trainer.variantName))")\n").utf8))
        if let pro = trainer.loraPro {
            FileHandle.standardError.write(Data(String(format: "lora-pro: full-size AdamW moments take %.0f MB\n", Double(pro.stateBytes) / 1e6).utf8))
        }
        let bar = ProgressBar(total: total, label: "train", enabled: !compute.quiet)
        bar.update(trainer.step)
        var lastVal: Double?
        var tokens = 0, seconds = 0.0
        let started = Date()
        try trainer.run(checkpointDir: checkpointDir ?? out.runDirectory) { row in
            if let v = row.valLoss { lastVal = v }
            tokens += row.tokens; seconds += row.seconds
            var detail = String(format: "loss %.4f", row.trainLoss)
            if let v = lastVal { detail += String(format: " val %.4f", v) }
            detail += String(format: " %.0f tok/s", Double(tokens) / max(seconds, 1e-9))
            bar.update(row.step, detail: detail)
        }
        let name = (output as NSString).lastPathComponent
        if let v = variant {
            try v.writeFiles(into: URL(fileURLWithPath: out.runDirectory), name: name, baseModel: lm.sourcePath, path: output)
        } else {
            try PEFTAdapter.writeFiles(trainer.adapter(name: name), into: URL(fileURLWithPath: out.runDirectory), dtype: o.dtype, path: output)
        }
        try out.writeFile("loss.csv", trainer.lossCSV())
        try out.writeFile("loss.svg", trainer.lossChartSVG())
        let done = trainer.step - startStep
        let record = TrainingRecord(options: o, data: data, val: val, model: lm.sourcePath, examples: trainSeqs.count,
                                    log: trainer.log, wallSeconds: Date().timeIntervalSince(started), finished: started,
                                    initFrom: initFrom,
                                    variant: self.variant == "flexora" ? ("flexora", trainer.trainableCount, 0)
                                        : trainer.variantName == "lora" ? nil : (trainer.variantName, trainer.trainableCount, nolaBasis ?? Self.defaultNOLABasis))
        try out.writeFile(TrainingRecord.fileName, try record.json())
        try out.finish()
        var summary = "trained \(done) steps"
        if done > 0 {
            summary += String(format: ": %.3f s/step, %.0f tokens/s", seconds / Double(done), Double(tokens) / max(seconds, 1e-9))
        }
        if let last = trainer.log.last {
            summary += String(format: ", final train loss %.4f", last.trainLoss)
            if let v = last.valLoss { summary += String(format: ", val loss %.4f", v) }
        }
        if let sel = flexora {
            summary += "; flexora kept layers \(sel.selected.map(String.init).joined(separator: ","))"
        }
        print(summary + "; adapter written to \(output)")
    }

    /// Flexora's search stage, with its progress bar and a table of α per layer.
    func flexoraSearch(lm: LlamaModel, train: [TrainingSequence], val: [TrainingSequence], options o: TrainingOptions,
                       total: Int) throws -> FlexoraSelection {
        let fo = FlexoraOptions(searchSteps: flexoraSearchSteps ?? FlexoraOptions.defaultSearchSteps(trainingSteps: total),
                                learningRate: flexoraLR ?? FlexoraOptions.defaultLearningRate, keep: flexoraLayers)
        let search = try FlexoraSearch(model: lm, train: train, val: val, training: o, flexora: fo)
        FileHandle.standardError.write(Data("flexora: searching \(lm.config.numHiddenLayers) layer weights for \(fo.searchSteps) steps (training and validation batches alternating)\n".utf8))
        let bar = ProgressBar(total: fo.searchSteps, label: "flexora search", enabled: !compute.quiet)
        let sel = search.run { step, t, v in bar.update(step, detail: String(format: "loss %.4f val batch %.4f", t, v)) }
        var table = "flexora: α per layer (kept: *)\n"
        for (l, w) in sel.weights.enumerated() {
            table += String(format: "  layer %2d  α %.3f", l, w) + (sel.selected.contains(l) ? " *\n" : "\n")
        }
        table += "flexora: kept \(sel.selected.count) of \(sel.weights.count) layers (\(sel.rule)): \(sel.selected.map(String.init).joined(separator: ","))\n"
        FileHandle.standardError.write(Data(table.utf8))
        return sel
    }
}
