import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse route`: fit per-token gates over frozen adapters and write a routed model.
struct Route: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Route between adapters per token: fit gates over the frozen adapters and write a routed model.",
        discussion: """
        At every routed projection, y = W x + Σ_{i ∈ top-k} g_i(x) s_i B_i A_i x with g = softmax(kept scores / T). \
        All adapters' A are stacked into one GEMM per projection; each B runs only over the tokens that kept it.

        Methods (--method):
          sequence one choice per request: a linear classifier on the prompt's mean last hidden state (one base \
        pass over the prompt) picks the adapter (--top-k > 1: the top-k merged linearly by their probabilities), \
        fitted on the shots' prompts. The baseline servers use today; token routing should beat it.
          arrow    training-free (Arrow): each adapter's gate row is the top right singular vector of its ΔW \
        (from the factors); score |cos(row, x)|. Needs no --shots.
          hidden   training-free (mergekit-moe's hidden gates): row i = the normalised mean input of the projection \
        over adapter i's shots through the base model, minus the mean over all adapters; score row · x.
          xlora    X-LoRA: a linear classifier on the base model's last hidden state (a first pass without \
        adapters, over the same tokens) gives each token a weight for every adapter in every layer (softmax with \
        --temperature; dense over all adapters unless --top-k); trained by Adam on the routed model's LM \
        cross-entropy of the shots' answers only. Generation runs two forwards per token.
          meteora  MeteoRA: a linear gate (N × in) per projection, trained by Adam through the routed forward on \
        --lm-weight × the LM cross-entropy of the shots' answers plus --gate-weight × the cross-entropy of each \
        token's gate against its shot's adapter (MeteoRA's supervised routing, λ = 50 in its code); --balance \
        adds a Switch load-balance term.

        GenKnowSub (--general ADAPTER...): the mean of these general adapters (trained on plain text, not on a         task) is subtracted from every adapter first, and the router is fitted to and routes over what is left,         as the GenKnowSub paper does before Arrow. --gks-composition exact (default) subtracts the mean ΔW exactly         (each expert becomes a LoRA of rank r + Σ r_general); factors subtracts the mean A and the mean B factor         by factor as PEFT's arrow does (equal ranks needed; not the same ΔW). The general adapters are recorded         with their digests and the subtraction is redone on load; no altered adapter file is written.

        --shots gives one .jsonl per adapter, in the same order: its examples label that adapter's task. \
        Writes ROUTED_DIR with router_config.json, router.safetensors and, with --copy-adapters, the adapters; \
        otherwise the adapters are referenced by relative path and their sha256 digests are checked on load. \
        Use it anywhere an adapter is taken: lorafuse eval --adapter ROUTED_DIR, lorafuse generate --adapter ROUTED_DIR.
        """
    )

    @Option(name: .long, help: "Routing method: \(RouteMethod.allCases.map(\.rawValue).joined(separator: ", ")).")
    var method: String

    @Argument(help: "Adapters to route between (PEFT directories, GGUF LoRA files or mlx-lm directories).")
    var adapters: [String]

    @Option(name: .long, parsing: .upToNextOption, help: "Examples, one .jsonl per adapter in the same order (hidden, meteora, xlora, sequence).")
    var shots: [String] = []

    @Option(name: .customLong("shots-per-task"), help: "Use the first N examples of each --shots file.")
    var shotsPerTask = 16

    @Option(name: .customLong("top-k"), help: "Adapters kept per token at each projection (sequence: per request, merged linearly; xlora: per layer). Default 2, sequence 1, xlora all.")
    var topK: Int?

    @Option(name: .long, help: "Softmax temperature over the kept scores.")
    var temperature: Float = 1

    @Option(name: .long, help: "Projections that get gates: all, attention (q, k, v, o) or mlp (gate, up, down). Adapter modules elsewhere are not applied.")
    var placement = "all"

    @Option(name: .long, help: "meteora, xlora: optimizer steps (each runs one shot of every adapter's task).") var steps = RouteOptions(method: .meteora).steps
    @Option(name: .long, help: "meteora, xlora: Adam learning rate of the gates or the classifier (default: meteora \(RouteOptions(method: .meteora).learningRate), xlora \(RouteOptions.xloraLearningRate)).")
    var lr: Float?
    @Option(name: .long, help: "meteora: weight of the Switch load-balance term (0: off).") var balance: Float = 0
    @Option(name: .long, help: "Seed of the shot order (meteora, xlora) and of the classifier's start (xlora).") var seed: UInt64 = 0
    @Option(name: .customLong("lm-weight"), help: "meteora: weight of the routed model's LM cross-entropy on the shots' answers (0: the supervised gate loss alone).")
    var lmWeight: Float = RouteOptions(method: .meteora).lmWeight
    @Option(name: .customLong("gate-weight"), help: "meteora: weight λ of the gate cross-entropy against each shot's adapter (MeteoRA: 50).")
    var gateWeight: Float = RouteOptions(method: .meteora).gateWeight
    @Option(name: .long, help: "meteora: weight of the mean routing entropy (LoRA-Mixer's entropy shaping; with --balance its specialization loss, usable with --gate-weight 0 when shots carry no task label).")
    var entropy: Float = 0
    @Option(name: .long, help: "meteora: tokens that carry the gate loss: all (MeteoRA: every token) or answer (only the rows that predict the answer; measured worse on the suite, mean loss 1.33 vs 1.08).")
    var supervise = "all"

    @Option(name: .long, parsing: .upToNextOption, help: "GenKnowSub: general adapters whose mean is subtracted from every adapter before routing (any method).")
    var general: [String] = []
    @Option(name: .customLong("gks-composition"), help: "GenKnowSub's subtraction: exact (the mean ΔW, by concatenated factors) or factors (PEFT's: mean A and mean B subtracted separately).")
    var gksComposition = "exact"

    @Flag(name: .customLong("copy-adapters"), help: "Copy the adapters (and --general ones) into ROUTED_DIR instead of referencing them.")
    var copyAdapters = false

    @Option(name: [.short, .customLong("output")], help: "Output routed-model directory.")
    var output: String

    @Option(name: .long, help: "Model GGUF file or HF directory (default: the SmolLM2-135M-Instruct model in $LORAFUSE_HOME/models).")
    var model: String?
    @OptionGroup var weights: WeightComputeOptions
    @OptionGroup var overwrite: OverwriteOptions
    @OptionGroup var compute: ComputeOptions

    func options() throws -> RouteOptions {
        guard let m = RouteMethod(rawValue: method) else {
            throw ValidationError("unknown --method '\(method)'; choose one of \(RouteMethod.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let p = RoutePlacement(rawValue: placement) else {
            throw ValidationError("unknown --placement '\(placement)'; choose all, attention or mlp")
        }
        guard let sup = GateSupervision(rawValue: supervise) else {
            throw ValidationError("unknown --supervise '\(supervise)'; choose answer or all")
        }
        guard let gks = GenKnowSubComposition(rawValue: gksComposition) else {
            throw ValidationError("unknown --gks-composition '\(gksComposition)'; choose exact or factors")
        }
        var o = RouteOptions(method: m)
        o.genKnowSub = gks
        o.supervise = sup
        o.topK = topK ?? m.defaultTopK
        o.temperature = temperature
        o.placement = p
        o.steps = steps
        o.learningRate = lr ?? o.learningRate
        o.balance = balance
        o.lmWeight = lmWeight
        o.gateWeight = gateWeight
        o.entropy = entropy
        o.seed = seed
        o.shotsPerTask = shotsPerTask
        return o
    }

    func validate() throws {
        let o = try options()
        if adapters.isEmpty { throw ValidationError("give the adapters to route between") }
        // The same adapter twice would be two identical experts splitting every token between them.
        var seen: [String: String] = [:]
        for a in adapters {
            let key = OutputGuard.resolve(a)
            if let first = seen[key] { throw ValidationError("\(a) is given twice (also as \(first)); each adapter is one expert") }
            seen[key] = a
        }
        for g in general {
            let key = OutputGuard.resolve(g)
            if let first = seen[key] {
                throw ValidationError("\(g) is given both as an adapter (\(first)) and as --general; subtracting it from itself leaves nothing of it")
            }
            seen[key] = g
        }
        do { try RouterBuilder.validate(o, adapters: adapters.count, shots: shots.count) } catch let e as RouteError {
            throw ValidationError(e.description)
        }
    }

    func run() throws {
        compute.apply()
        let o = try options()
        let start = Date()
        let inputs = adapters + general + shots + [model].compactMap { $0 }
        let target = try OutputGuard.check(output, kind: .directory, inputs: inputs, force: overwrite.force)
        let loaded = try loadModel(modelPath: model, compute: weights.compute)
        let modelPath = model ?? ModelLocator.defaultModelPath()
        let hints = (try? ModelHints.load(path: modelPath)) ?? ModelHints()
        var read: [LoRAAdapter] = []
        var names = Set<String>()
        for path in adapters {
            var a = try AdapterIO.read(path: path, hints: hints)
            a.sourcePath = path
            var name = a.name, n = 2
            while !names.insert(name).inserted { name = "\(a.name)-\(n)"; n += 1 }
            a.name = name
            read.append(a)
        }
        // Named apart like the experts: with --copy-adapters each goes to general/NAME.
        var generalNames = Set<String>()
        let generalRead = try general.map { path -> LoRAAdapter in
            var a = try AdapterIO.read(path: path, hints: hints)
            a.sourcePath = path
            var name = a.name, n = 2
            while !generalNames.insert(name).inserted { name = "\(a.name)-\(n)"; n += 1 }
            a.name = name
            return a
        }
        let tasks = try TaskData.read(paths: shots)
        let bar = ProgressBar(total: 1, label: "route \(o.method.rawValue)", enabled: !compute.quiet)
        let routed = try RouterBuilder.build(model: loaded, adapters: read, shots: tasks, options: o, general: generalRead,
                                             baseName: (modelPath as NSString).lastPathComponent) { done, total in
            bar.update(done, total: total)
        }
        try OutputGuard.writeDirectory(target) { url in
            try routed.write(into: url.path, finalPath: target.path, sources: adapters, generalSources: general, copyAdapters: copyAdapters)
        }
        // The summary: how often each adapter's own shots send their tokens to it (top-1, all routed projections).
        let what = o.method == .sequence ? "one choice per request"
            : o.method == .xlora ? "per-layer scalings on \(routed.routedProjectionCount) routed projections"
            : "\(routed.gates.count) routed projections"
        var line = String(format: "%@: %d adapters, %@, top-%d, T=%g (%.1f s)", o.method.rawValue,
                          read.count, what, routed.config.topK, Double(o.temperature), Date().timeIntervalSince(start))
        if !general.isEmpty {
            line += "\n  GenKnowSub (\(o.genKnowSub.rawValue)): the mean of \(general.count) general adapter\(general.count == 1 ? "" : "s") subtracted from each"
        }
        if !tasks.isEmpty {
            let set = try loaded.prepare(routed: routed)
            let own = try RoutingSummary.ownTopOne(model: loaded, set: set, tasks: tasks, shotsPerTask: o.shotsPerTask)
            let unit = o.method == .sequence ? "prompts" : "answer tokens"
            line += "\n" + zip(read, own).map { String(format: "  %@: own adapter top-1 on %.0f%% of its shots' %@", $0.name, 100 * $1, unit) }.joined(separator: "\n")
        }
        print(line + "\nrouted model written to \(output)")
    }
}
