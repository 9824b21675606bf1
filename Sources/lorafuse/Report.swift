import ArgumentParser
import Foundation
import LoRAFuse

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare the base model, the experts and every fusion method on held-out tasks; write an HTML report.",
        discussion: """
        Writes OUT/index.html (self-contained), OUT/report.md with its .svg charts, and OUT/results.json.
        Rows: base (no adapter), experts (each adapter on the task of the same name), one row per static
        method (\(ReportMethods.defaultStatic.joined(separator: ", ")) by default; any of \
        \(FusionMethods.names.joined(separator: ", ")) with --methods), and, with --shots, one row per
        learned method (\(ReportMethods.learnedNames.joined(separator: ", "))) fitted on the first
        --shots-per-task examples of each task's shots file, plus one fit per --shots-curve count; and \
        the ICM-Fusion rows (\(ReportMethods.icmNames.joined(separator: ", "))): ICM-Fusion, its \
        ablations, a few-shot (--icm-few-shots) and a long-tailed setting, and a control, with its \
        generator's reconstruction error and storage (--no-icm skips them; --trajectories adds \
        training checkpoints to its VAE's samples). Routed rows keep every adapter and choose per token         (\(ReportMethods.routedNames.joined(separator: ", ")); route-arrow and route-arrow-gks (Arrow after subtracting the routed adapters' mean, GenKnowSub) need no shots; --no-routing         skips them): their loss and accuracy, the share of each task's answer rows routed to its own         adapter, and a heatmap of that adapter's gate weight per layer.
        Static defaults: w = 1/n for methods that sum their inputs, w = 1 for TIES-style methods
        (\(ReportMethods.selfAveraging.sorted().joined(separator: ", "))), which take a disjoint mean
        themselves; rank --rank for truncating methods; densities from the registry (TIES, magnitude
        prune, KnOTS 0.2; DARE, DELLA 0.5; Breadcrumbs 0.1 with γ 0.01).
        Results are cached per method and task under OUT/cache/; a rerun computes only what changed
        (--force recomputes everything).
        Example:  lorafuse report --adapters adapters/ --test tasks/ --shots tasks/ --test-per-task 20 -o report/
        """
    )

    @Option(name: .long, parsing: .upToNextOption,
            help: "Adapters (directories or GGUF files), or directories holding one adapter per sub-directory. Each adapter is named after its task.")
    var adapters: [String] = []

    @Option(name: .long, parsing: .upToNextOption, help: "Held-out task files, or directories of NAME.test.jsonl files.")
    var test: [String] = []

    @Option(name: .long, parsing: .upToNextOption,
            help: "Pools the learned methods' shots come from (first lines first): files, or directories of NAME.train.jsonl files.")
    var shots: [String] = []

    @Option(name: .long, parsing: .upToNextOption, help: "Validation files, or directories of NAME.val.jsonl files (learned methods).")
    var val: [String] = []

    @Option(name: .long, parsing: .upToNextOption,
            help: "Adapters trained on the union of the tasks (multi-task LoRA, FlyLoRA, SMoRA…), or directories of them (as --adapters): each a row of the \"Trained as multi-task\" section, named after its folder.")
    var trained: [String] = []
    @Option(name: .long, parsing: .upToNextOption,
            help: "Composite prompt files (lorafuse tasks composite: several tasks asked in one prompt): every row but the experts is also scored on them, with each adapter alone, in a \"Composite prompts\" section apart from the means.")
    var composite: [String] = []
    @Option(name: [.short, .customLong("output")], help: "Output directory (created; its cache/ is reused on reruns).")
    var output: String

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions

    @Option(name: .long, help: "Comma-separated rows to run: base, experts and method names (default: base, experts and \(ReportMethods.defaultStatic.joined(separator: ",")).")
    var methods: String?

    @Option(name: .long, help: "Comma-separated task names to keep (default: every test task).")
    var tasks: String?

    @Option(name: .customLong("test-per-task"), help: "Evaluate only the first N test examples of each task.")
    var testPerTask: Int?

    @Option(name: .long, help: "Rank of the fused adapter for the truncating static methods (svd, TIES, DARE, …).")
    var rank: Int = 32

    @Option(name: .long, help: "Seed of every random choice (DARE masks, randomized SVD, k-means, sign-conflict samples).")
    var seed: UInt64 = 0

    @Option(name: .long, help: "Optimizer steps of atlas and cat-learned, and LoraHub's budget of loss evaluations (default: theirs, 40).")
    var steps: Int?

    @Option(name: .long, help: "LoraHub's budget of loss evaluations (default: --steps when given, else 40). CMA-ES samples 11 points a generation for 14 adapters.")
    var evaluations: Int?

    @Option(name: .customLong("shots-per-task"), help: "Shots per task for the learned methods' main rows.")
    var shotsPerTask: Int = 16

    @Option(name: .customLong("shots-curve"), help: "Comma-separated shots per task for the learned methods' curve.")
    var shotsCurve: String = "1,4,16"

    @Flag(name: .customLong("no-shots-curve"), help: "Skip the shots curve (only the main learned rows).")
    var noShotsCurve = false

    @Flag(name: .customLong("expert-matrix"), help: "Also evaluate every adapter on every task (loss only) for a heatmap.")
    var expertMatrix = false

    @Flag(name: .customLong("no-accuracy"), help: "Skip greedy decoding (loss only).")
    var noAccuracy = false

    @Flag(name: .customLong("no-routing"), help: "Skip the routed rows (route-arrow always, route-hidden, route-meteora and route-sequence with --shots; lorafuse route documents them).")
    var noRouting = false

    @Flag(name: .customLong("no-icm"), help: "Skip the ICM-Fusion rows (they run by default with --shots).")
    var noICM = false

    @Option(name: .long, help: "ICM-Fusion: directory with TASK/checkpoint-STEP/ training checkpoints (as `make adapters` leaves in out/trajectories), extra samples for its VAE. Without it the VAE sees the final adapters only.")
    var trajectories: String?

    @Option(name: .customLong("icm-few-shots"), help: "ICM-Fusion's few-shot row: shots per task.")
    var icmFewShots = ReportICMSettings().fewShots

    @Option(name: .customLong("icm-long-tail-task"), help: "ICM-Fusion's long-tailed row: the task cut to --icm-long-tail-shots (default: the task with the fewest shots available).")
    var icmLongTailTask: String?

    @Option(name: .customLong("icm-long-tail-shots"), help: "ICM-Fusion's long-tailed row: shots of that task (the others keep --shots-per-task).")
    var icmLongTailShots = ReportICMSettings().longTailShots

    @Option(name: .customLong("icm-latent"), help: "ICM-Fusion: VAE latent size (one per adapter).")
    var icmLatent = ICMGeneratorOptions().latent

    @Option(name: .customLong("icm-basis"), help: "ICM-Fusion: principal directions of the training adapters in the decoder's basis.")
    var icmBasis = ICMGeneratorOptions().basis

    @Option(name: .customLong("icm-chunk-size"), help: "ICM-Fusion: padding granularity of each flattened tensor.")
    var icmChunkSize = ICMGeneratorOptions().chunkSize

    @Option(name: .customLong("icm-vae-steps"), help: "ICM-Fusion: VAE training steps.")
    var icmVAESteps = ICMGeneratorOptions().steps

    @Option(name: .customLong("icm-meta-steps"), help: "ICM-Fusion: first-order MAML outer steps (default: two rounds over the tasks).")
    var icmMetaSteps: Int?

    @Option(name: .customLong("icm-meta-weight"), help: "ICM-Fusion: weight of the meta-learning gradient against the reconstruction gradient.")
    var icmMetaWeight: Float = ICMGeneratorOptions().metaWeight

    @Option(name: .customLong("icm-fusion-steps"), help: "ICM-Fusion: steps learning the latent weights and conflict projections.")
    var icmFusionSteps = ICMFusionOptions().steps

    @Option(name: .customLong("icm-adapt-steps"), help: "ICM-Fusion: most in-context adaptation steps (AdamW on the shots) after decoding; the kept step is chosen on the held-out part of the shots.")
    var icmAdaptSteps = ICMFusionOptions().adaptSteps

    @Option(name: .customLong("icm-adapt-lr"), help: "ICM-Fusion: in-context adaptation learning rate.")
    var icmAdaptLR: Float = ICMFusionOptions().adaptLR

    @Option(name: .customLong("icm-selection-fraction"), help: "ICM-Fusion: part of each task's shots held out of the generator and the fusion, used only to choose how many adaptation steps to keep (0: keep the last).")
    var icmSelectionFraction = ICMPipelineOptions().selectionFraction

    @Flag(name: .long, help: "Recompute everything instead of reusing OUT/cache/.")
    var force = false

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("give the adapters with --adapters DIR... (or a directory of adapter directories)") }
        if test.isEmpty { throw ValidationError("give the held-out tasks with --test FILE... (or a directory of NAME.test.jsonl)") }
        if let n = testPerTask, n < 1 { throw ValidationError("--test-per-task must be at least 1, got \(n)") }
        if rank < 1 { throw ValidationError("--rank must be at least 1, got \(rank)") }
        if let s = steps, s < 1 { throw ValidationError("--steps must be at least 1, got \(s)") }
        if let e = evaluations, e < 2 { throw ValidationError("--evaluations must be at least 2, got \(e)") }
        if shotsPerTask < 1 { throw ValidationError("--shots-per-task must be at least 1, got \(shotsPerTask)") }
        if icmFewShots < 1 || icmLongTailShots < 1 { throw ValidationError("--icm-few-shots and --icm-long-tail-shots must be at least 1") }
        if icmLatent < 1 || icmBasis < 1 || icmChunkSize < 8 { throw ValidationError("--icm-latent and --icm-basis must be positive and --icm-chunk-size at least 8") }
        if icmVAESteps < 0 || icmFusionSteps < 0 || icmAdaptSteps < 0 || (icmMetaSteps ?? 0) < 0 {
            throw ValidationError("ICM step counts must not be negative")
        }
        if !(0..<1).contains(icmSelectionFraction) { throw ValidationError("--icm-selection-fraction must be in [0, 1), got \(icmSelectionFraction)") }
        if let t = trajectories, !FileManager.default.fileExists(atPath: t) { throw ValidationError("--trajectories \(t) does not exist") }
        _ = try curve()
        _ = try methodList()
    }

    func curve() throws -> [Int] {
        if noShotsCurve { return [] }
        let parts = shotsCurve.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let v = parts.compactMap { Int($0) }
        guard v.count == parts.count, !v.isEmpty, v.allSatisfy({ $0 >= 1 }) else {
            throw ValidationError("--shots-curve must be comma-separated integers ≥ 1, got '\(shotsCurve)'")
        }
        return Array(Set(v)).sorted()
    }

    func methodList() throws -> [ReportMethod] {
        // Learned rows need shots; by default they run whenever --shots is given.
        let names = methods.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
            ?? (["base", "experts"] + ReportMethods.defaultStatic + (shots.isEmpty ? [] : ReportMethods.learnedNames)
                + (shots.isEmpty || noICM ? [] : ReportMethods.icmNames)
                + (noRouting ? [] : ReportMethods.routedNames.filter { !shots.isEmpty || !ReportMethods.routedNeedsShots($0) }))
        var out: [ReportMethod] = []
        for n in names {
            if out.contains(where: { $0.id == n }) { throw ValidationError("--methods lists '\(n)' twice") }
            switch n {
            case "base": out.append(ReportMethods.base)
            case "experts": out.append(ReportMethods.experts)
            case _ where FusionMethods.names.contains(n): out.append(ReportMethods.staticMethod(n, rank: rank, seed: seed))
            case _ where ReportMethods.learnedNames.contains(n):
                if shots.isEmpty { throw ValidationError("learned method '\(n)' needs --shots (the examples its coefficients are fitted on)") }
                out.append(ReportMethods.learned(n))
            case _ where ReportMethods.routedNames.contains(n):
                if shots.isEmpty && ReportMethods.routedNeedsShots(n) { throw ValidationError("'\(n)' needs --shots (the examples its gates are fitted on)") }
                out.append(ReportMethods.routed(n))
            case _ where ReportMethods.icmNames.contains(n):
                if shots.isEmpty { throw ValidationError("'\(n)' needs --shots (the examples its fusion is learned on)") }
                out.append(ReportMethods.icm(n))
            default:
                throw ValidationError("unknown method '\(n)' in --methods; known: base, experts, \((FusionMethods.names + ReportMethods.learnedNames + ReportMethods.icmNames + ReportMethods.routedNames).joined(separator: ", "))")
            }
        }
        if out.isEmpty && trained.isEmpty { throw ValidationError("--methods is empty") }
        for name in Self.trainedNames(try ReportInputs.adapterPaths(trained)) {
            let m = ReportMethods.trained(name)
            if out.contains(where: { $0.id == m.id }) { throw ValidationError("--trained names '\(m.method)' twice (rows are named after the folders)") }
            out.append(m)
        }
        return out
    }

    /// Row names of the `--trained` folders: the last path component, or as many trailing
    /// components as make them distinct (`out/multitask-flylora/adapter` and
    /// `out/multitask-smora/adapter` become `multitask-flylora/adapter` and `multitask-smora/adapter`).
    static func trainedNames(_ paths: [String]) -> [String] {
        let comps = paths.map { URL(fileURLWithPath: $0).standardizedFileURL.pathComponents }
        for depth in 1...max(1, comps.map(\.count).max() ?? 1) {
            let names = comps.map { $0.suffix(depth).joined(separator: "/") }
            if Set(names).count == names.count { return names }
        }
        return comps.map { $0.joined(separator: "/") }
    }

    func icmSettings() -> ReportICMSettings {
        var g = ICMGeneratorOptions()
        g.latent = icmLatent; g.basis = icmBasis; g.chunkSize = icmChunkSize; g.steps = icmVAESteps; g.metaWeight = icmMetaWeight; g.metaSteps = icmMetaSteps
        var f = ICMFusionOptions()
        f.steps = icmFusionSteps; f.adaptSteps = icmAdaptSteps; f.adaptLR = icmAdaptLR
        return ReportICMSettings(generator: g, fusion: f, fewShots: icmFewShots, longTailTask: icmLongTailTask,
                                 longTailShots: icmLongTailShots, trajectories: trajectories, selectionFraction: icmSelectionFraction)
    }

    func run() throws {
        compute.apply()
        let methods = try methodList()
        let modelPath = model ?? ModelLocator.defaultModelPath()
        let hints = (try? ModelHints.load(path: modelPath)) ?? ModelHints()
        let adapterPaths = try ReportInputs.adapterPaths(adapters)
        // The report folder is reused (its cache), so it may exist; it must not be an input.
        try OutputGuard.check(output, kind: .directory, inputs: [modelPath] + adapters + test + shots + val + trained + composite, force: true)
        let loaded = try adapterPaths.map { try AdapterIO.read(path: $0, hints: hints) }
        let trainedPaths = try ReportInputs.adapterPaths(trained)
        let trainedAdapters = try zip(trainedPaths, Self.trainedNames(trainedPaths)).map { p, name -> LoRAAdapter in
            var a = try AdapterIO.read(path: p, hints: hints)
            a.name = name
            return a
        }
        var inputs = ReportInputs(adapters: loaded,
                                  test: try TaskData.read(paths: try ReportInputs.taskFiles(test, suffix: ".test.jsonl")),
                                  shots: try TaskData.read(paths: try ReportInputs.taskFiles(shots, suffix: ".train.jsonl")),
                                  val: try TaskData.read(paths: try ReportInputs.taskFiles(val, suffix: ".val.jsonl")),
                                  trained: trainedAdapters)
        inputs.composite = try TaskData.read(paths: composite)
        if let t = tasks {
            inputs = try inputs.restricted(to: t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        }
        let lm = try loadModel(modelPath: model, compute: weights.compute)
        let settings = ReportSettings(testPerTask: testPerTask, accuracy: !noAccuracy, rank: rank, seed: seed,
                                      shotsPerTask: shotsPerTask, shotsCurve: try curve(), steps: steps, evaluations: evaluations,
                                      expertMatrix: expertMatrix, model: modelPath, icm: icmSettings())
        let runner = try ReportRunner(model: lm, inputs: inputs, settings: settings, methods: methods, directory: output, force: force)
        let bar = ProgressBar(total: runner.plannedUnits, label: "report", enabled: !compute.quiet)
        let results = try runner.run { p in bar.update(p.done, total: p.total, detail: p.detail) }
        try ReportRenderer.write(results, to: output)

        func f(_ v: Double?) -> String { v.map { String(format: "%.4f", $0) } ?? "-" }
        let width = max(8, (results.rows.map(\.method.id.count).max() ?? 0) + 2)
        func pad(_ s: String) -> String { s + String(repeating: " ", count: max(1, width - s.count)) }
        print(pad("method") + "mean loss  mean accuracy")
        for r in results.rows { print(pad(r.method.id) + f(r.meanLoss).padding(toLength: 11, withPad: " ", startingAt: 0) + f(r.meanAccuracy)) }
        print("")
        for s in ReportRenderer.targetSentences(results) { print(s) }
        print("")
        print("wrote \(output)/index.html, report.md, results.json (\(runner.evaluationsRun) task evaluations run, the rest from \(output)/cache)")
    }
}
