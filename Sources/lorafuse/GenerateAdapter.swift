import ArgumentParser
import Foundation
import LoRAFuse

/// Generator options shared by `generate-adapter` and `fuse --method icm-fusion`; the defaults
/// are the library's (`ICMGeneratorOptions`, `ICMPipelineOptions`).
struct ICMGeneratorArguments: ParsableArguments {
    @Option(name: .long, help: "Load a saved generator state (.safetensors) instead of training one.")
    var generator: String?
    @Option(name: .customLong("save-generator"), help: "Write the generator state here (weights, statistics, config).")
    var saveGenerator: String?
    @Option(name: .customLong("chunk-size"), help: "Padding granularity of each flattened tensor (values).") var chunkSize = ICMGeneratorOptions().chunkSize
    @Option(name: .long, help: "Principal directions of the training adapters in the decoder's basis (at most samples − 1; each costs one adapter's worth of bf16 in the generator).") var basis = ICMGeneratorOptions().basis
    @Option(name: .long, help: "VAE hidden units.") var hidden = ICMGeneratorOptions().hidden
    @Option(name: .long, help: "VAE latent size (one latent per adapter).") var latent = ICMGeneratorOptions().latent
    @Flag(name: .customLong("standard-prior"), help: "Use the N(0, I) prior instead of the learned conditional prior p(z | c).") var standardPrior = false
    @Option(name: .long, help: "KL weight β.") var beta: Float = ICMGeneratorOptions().beta
    @Option(name: .customLong("vae-steps"), help: "VAE training steps (full batch over every sample).") var vaeSteps = ICMGeneratorOptions().steps
    @Option(name: .customLong("vae-lr"), help: "VAE Adam learning rate.") var vaeLR: Float = ICMGeneratorOptions().learningRate
    @Option(name: .customLong("meta-steps"), help: "First-order MAML outer steps, round robin over the tasks (0: no meta-learning; default: two rounds).") var metaSteps: Int?
    @Option(name: .customLong("inner-steps"), help: "Inner adaptation steps per meta step.") var innerSteps = ICMGeneratorOptions().innerSteps
    @Option(name: .customLong("inner-lr"), help: "Inner AdamW learning rate.") var innerLR: Float = ICMGeneratorOptions().innerLR
    @Option(name: .customLong("max-checkpoints"), help: "Trajectory checkpoints per adapter used as extra VAE samples.") var maxCheckpoints = ICMPipelineOptions().maxCheckpoints
    @Flag(name: .customLong("no-condition"), help: "Train without the task condition (ablation).") var noCondition = false

    func validate() throws {
        if chunkSize < 8 { throw ValidationError("--chunk-size must be at least 8, got \(chunkSize)") }
        if hidden < 1 || latent < 1 || basis < 1 { throw ValidationError("--hidden, --latent and --basis must be positive") }
        if vaeSteps < 0 || (metaSteps ?? 0) < 0 || innerSteps < 0 { throw ValidationError("step counts must not be negative") }
        if beta < 0 { throw ValidationError("--beta must not be negative") }
        if maxCheckpoints < 0 { throw ValidationError("--max-checkpoints must not be negative, got \(maxCheckpoints)") }
    }

    func options(seed: UInt64) -> ICMGeneratorOptions {
        var o = ICMGeneratorOptions()
        o.chunkSize = chunkSize; o.basis = basis; o.hidden = hidden; o.latent = latent; o.beta = beta; o.steps = vaeSteps
        o.conditionalPrior = !standardPrior
        o.learningRate = vaeLR; o.metaSteps = metaSteps; o.innerSteps = innerSteps; o.innerLR = innerLR
        o.useCondition = !noCondition; o.seed = seed
        return o
    }
}

/// ICM-Fusion's fusion options, shared by `generate-adapter --method icm-fusion` and `fuse --method icm-fusion`.
struct ICMFusionArguments: ParsableArguments {
    @Option(name: .customLong("fusion-steps"), help: "icm-fusion: steps learning the latent weights and conflict projections.") var fusionSteps = ICMFusionOptions().steps
    @Option(name: .customLong("adapt-steps"), help: "icm-fusion: in-context adaptation steps (AdamW) after decoding.") var adaptSteps = ICMFusionOptions().adaptSteps
    @Option(name: .customLong("adapt-lr"), help: "icm-fusion: in-context adaptation learning rate.") var adaptLR: Float = ICMFusionOptions().adaptLR
    @Option(name: .customLong("selection-fraction"), help: "icm-fusion: part of each task's shots held out of everything but choosing how many adaptation steps to keep (0: keep the last).") var selectionFraction = ICMPipelineOptions().selectionFraction
    @Option(name: .customLong("select-every"), help: "icm-fusion: score the held-out shots every N adaptation steps.") var selectEvery = ICMFusionOptions().selectEvery
    @Flag(name: .customLong("no-orientation"), help: "icm-fusion: no conflict projections (ablation).") var noOrientation = false
    @Flag(name: .customLong("no-gains"), help: "icm-fusion: keep the mean tensor statistics (no learned A/B gains).") var noGains = false

    func validate() throws {
        if fusionSteps < 0 || adaptSteps < 0 { throw ValidationError("--fusion-steps and --adapt-steps must not be negative") }
        if adaptLR <= 0 { throw ValidationError("--adapt-lr must be positive") }
        if !(0..<1).contains(selectionFraction) { throw ValidationError("--selection-fraction must be in [0, 1), got \(selectionFraction)") }
        if selectEvery < 1 { throw ValidationError("--select-every must be at least 1") }
    }

    func options(seed: UInt64) -> ICMFusionOptions {
        var fo = ICMFusionOptions()
        fo.steps = fusionSteps; fo.adaptSteps = adaptSteps; fo.adaptLR = adaptLR; fo.orientation = !noOrientation; fo.learnGains = !noGains; fo.seed = seed
        fo.selectEvery = selectEvery
        return fo
    }
}

/// The ICM pipeline's options from the two argument groups and one seed.
func icmPipelineOptions(_ gen: ICMGeneratorArguments, _ fusion: ICMFusionArguments, seed: UInt64, shotsPerTask: Int? = nil) -> ICMPipelineOptions {
    ICMPipelineOptions(generator: gen.options(seed: seed), fusion: fusion.options(seed: seed), maxCheckpoints: gen.maxCheckpoints,
                       selectionFraction: fusion.selectionFraction, shotsPerTask: shotsPerTask)
}

/// Where `ICMPipeline.fuse` gets its generator: `--generator`'s saved state, else trained.
func icmGeneratorSource(_ gen: ICMGeneratorArguments) -> ICMPipeline.GeneratorSource {
    gen.generator.map { .saved(path: $0) } ?? .train
}

struct GenerateAdapter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate-adapter",
        abstract: "Generate a LoRA from a task condition (ICM-LoRA), a description (SG-LoRA), or fuse adapters (ICM-Fusion).",
        discussion: """
        A conditional VAE with one latent per whole adapter, over a fixed basis (the mean and principal \
        directions of the z-scored samples), is trained on the given adapters and their checkpoint-<step>/ trajectories (or loaded with --generator). docs/icm-fusion.md maps the papers \
        to the code.
          icm-lora:   condition = mean last-layer hidden state over --task-shots (with the known task's \
        adapter when --task names one, else the base model); z = 0 (or --temperature noise).
          sg-lora:    --description TEXT is embedded by the base model; the top-k known tasks by \
        similarity (descriptions from --manifest) give the weighted latent prior.
          icm-fusion: the adapters' latents are fused with learned weights and conflict projections on \
        the union of the --shots (the same as `lorafuse fuse --method icm-fusion`).
        """
    )

    @Option(name: .long, help: "\(ICMGenerationMethod.allCases.map(\.rawValue).joined(separator: ", ")).") var method: String
    @Argument(help: "Known tasks' adapters (PEFT directories, with optional checkpoint-<step>/ folders; GGUF LoRA files; mlx-lm directories).")
    var adapters: [String] = []
    @Option(name: .long, parsing: .upToNextOption, help: "Few-shot JSONL per adapter, in the same order.")
    var shots: [String] = []
    @Option(name: .long, help: "Task-suite manifest.json with a description per task (SG-LoRA).") var manifest: String?
    @Option(name: .customLong("task"), help: "icm-lora: a known task whose stored condition to use.") var task: String?
    @Option(name: .customLong("task-shots"), help: "icm-lora: few-shot JSONL of the task to generate for.") var taskShots: String?
    @Option(name: .long, help: "sg-lora: the new task's description.") var description: String?
    @Option(name: .customLong("top-k"), help: "sg-lora: similar known tasks to combine.") var topK = ICMPipeline.sgLoRATopK
    @Option(name: .customLong("similarity-temperature"), help: "sg-lora: softmax temperature τ over similarities.") var tau = ICMPipeline.sgLoRASimilarityTemperature
    @Option(name: .long, help: "Latent sampling temperature (0: the prior mean).") var temperature: Float = 0
    @Option(name: .long, help: "Seed of the VAE initialisation, batches, noise and fusion minibatches.") var seed: UInt64 = 0
    @Option(name: .long, help: "Model GGUF file or HF directory (default: SmolLM2-135M-Instruct).") var model: String?
    @OptionGroup var weights: WeightComputeOptions
    @Option(name: [.short, .customLong("output")], help: "Output PEFT adapter directory.") var output: String
    @OptionGroup var gen: ICMGeneratorArguments
    @OptionGroup var fusion: ICMFusionArguments
    @OptionGroup var compute: ComputeOptions
    @OptionGroup var overwrite: OverwriteOptions

    /// Everything this command reads: no output may be, hold or lie inside one of them.
    var inputPaths: [String] {
        adapters + shots + [manifest, taskShots, gen.generator, model ?? ModelLocator.defaultModelPath()].compactMap { $0 }
    }

    func validate() throws {
        guard let m = ICMGenerationMethod(rawValue: method) else {
            throw ValidationError("--method must be \(ICMGenerationMethod.allCases.map(\.rawValue).joined(separator: ", ")), got \(method)")
        }
        if gen.generator == nil && adapters.isEmpty { throw ValidationError("give known adapters (with --shots) or --generator") }
        if !adapters.isEmpty && adapters.count != shots.count { throw ValidationError("give one --shots file per adapter") }
        if m == .icmLoRA && task == nil && taskShots == nil { throw ValidationError("icm-lora needs --task or --task-shots") }
        if m == .sgLoRA && description == nil { throw ValidationError("sg-lora needs --description") }
        if m == .icmFusion, let p = ICMPipeline.fusionInputProblem(adapters: adapters.count, shots: shots.count) { throw ValidationError(p) }
        if topK < 1 { throw ValidationError("--top-k must be at least 1") }
        if tau <= 0 { throw ValidationError("--similarity-temperature must be positive") }
    }

    func run() throws {
        compute.apply()
        try OutputGuard.check(output, kind: .directory, inputs: inputPaths, force: overwrite.force)
        if let s = gen.saveGenerator { try OutputGuard.check(s, kind: .file, inputs: inputPaths, force: overwrite.force, what: "--save-generator") }
        let m = ICMGenerationMethod(rawValue: method)!
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        let say: (String) -> Void = { line in if !compute.quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) } }
        let hints = (try? ModelHints.load(path: model ?? ModelLocator.defaultModelPath())) ?? ModelHints()
        let inputs = try ICMPipeline.taskInputs(adapters: adapters, shots: shots,
                                                descriptions: try manifest.map(TaskManifest.descriptions(path:)) ?? [:], hints: hints)
        let options = icmPipelineOptions(gen, fusion, seed: seed)
        let params: LoRAParameters
        let g: ICMGenerator
        if m == .icmFusion {
            let r = try ICMPipeline.fuse(model: lm, tasks: inputs, options: options, generator: icmGeneratorSource(gen), progress: say)
            g = r.generator; params = r.result.parameters
        } else {
            g = try gen.generator.map { try ICMGenerator.load(path: $0) }
                ?? ICMPipeline.trainGenerator(model: lm, tasks: inputs, maxCheckpoints: options.maxCheckpoints, options: options.generator, progress: say)
            if m == .icmLoRA {
                let r = try ICMPipeline.generateICMLoRA(model: lm, generator: g, task: task, taskShots: try taskShots.map(TaskData.read(path:)),
                                                        temperature: temperature, seed: seed)
                say("icm-lora: tensor statistics of the nearest known task, \(r.nearest)")
                params = r.parameters
            } else {
                let r = try ICMPipeline.generateSGLoRA(model: lm, generator: g, description: description!, topK: topK,
                                                       similarityTemperature: tau, temperature: temperature, seed: seed)
                say("sg-lora: " + zip(r.prior.topK, r.prior.alpha).map { String(format: "%@ α=%.3f", g.tasks[$0].name, $1) }.joined(separator: ", "))
                params = r.parameters
            }
        }
        if let s = gen.saveGenerator { try g.save(to: s); say("generator state written to \(s)") }
        try PEFTAdapter.write(params.adapter(name: method, baseModel: g.baseModel ?? lm.sourcePath), to: output, dtype: .f32,
                              protecting: inputPaths, force: overwrite.force)
        print("\(method): adapter written to \(output)")
    }
}
