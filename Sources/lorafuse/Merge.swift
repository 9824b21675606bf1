import ArgumentParser
import Foundation
import LoRAFuse

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fuse adapters with a static method and write a PEFT, GGUF or MLX adapter (--format).",
        discussion: """
        Methods: \(FusionMethods.names.joined(separator: ", ")).
        Every method works on ΔW_i = s_i·B_i·A_i with each adapter's scaling applied once; weights
        may be negative. Modules missing from some adapters count as zero there (with a warning).
        Example:  lorafuse merge math:1 code:0.5 --method ties --density 0.5 --rank 16 -o fused
        Or:       lorafuse merge --config fuse.yaml
        """
    )

    @Argument(help: "Adapters as PATH[:WEIGHT] (weight defaults to 1; negative subtracts).", transform: AdapterSpec.parse)
    var adapters: [AdapterSpec] = []

    @Option(name: .long, help: "Fusion method (see the list above).")
    var method: String?

    @Option(name: .long, help: "Read adapters, method, parameters and output from a YAML file.")
    var config: String?

    @Option(name: .long, help: "Rank of the fused adapter (svd, dense methods, knots, lego; linear re-ranks when set).")
    var rank: Int?

    @Option(name: .long, help: "Fraction of entries kept: TIES trim, DARE/DELLA keep probability, Breadcrumbs. In (0, 1].")
    var density: Double?

    @Option(name: .long, help: "Seed for every random choice (DARE masks, randomized SVD, k-means).")
    var seed: UInt64?

    @Option(name: .long, help: "Scale of the merged task vector (dense methods).")
    var lambda: Double?

    @Option(name: .long, help: "Breadcrumbs: fraction of the largest entries dropped.")
    var gamma: Double?

    @Option(name: .long, help: "DELLA: spread of the keep probabilities.")
    var epsilon: Double?

    @Option(name: .customLong("sign-election"), help: "TIES sign election: sum or count.")
    var signElection: String?

    @Option(name: .long, help: "TIES divisor: count (disjoint mean), weight (Σ w_i over agreeing entries) or none.")
    var divisor: String?

    @Option(name: .long, help: "DARE/DELLA survivor rescaling: inverse (1/p), l1 or none.")
    var rescale: String?

    @Option(name: .long, help: "LEGO reweighting of the centroids: both, unit, output or none.")
    var reweight: String?

    @Option(name: .customLong("merge-rule"), help: "KnOTS merge rule for the aligned blocks: ties, linear or dare.")
    var mergeRule: String?

    @Option(name: .long, help: "Element type of the output: f32, f16 or bf16 (default: the first input's).")
    var dtype: String?

    @Option(name: [.short, .customLong("output")], help: "Output adapter (a directory for peft/mlx, a file for gguf); must not exist or be empty unless --force.")
    var output: String?

    @Flag(name: .long, help: "Print a machine-readable summary on stdout.")
    var json = false

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var out: AdapterOutputOptions
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if config == nil {
            if adapters.isEmpty { throw ValidationError("give adapters as PATH[:WEIGHT], or --config FILE") }
            if method == nil { throw ValidationError("--method is required (one of \(FusionMethods.names.joined(separator: ", ")))") }
            if output == nil { throw ValidationError("-o/--output is required") }
        } else if !adapters.isEmpty {
            throw ValidationError("give adapters either on the command line or in --config, not both")
        }
        if let m = method, !FusionMethods.names.contains(m) {
            throw ValidationError("unknown method '\(m)'; known: \(FusionMethods.names.joined(separator: ", "))")
        }
        if let d = dtype, DType(name: d) == nil { throw ValidationError("--dtype must be f32, f16 or bf16, got \(d)") }
        if let r = rank, r < 1 { throw ValidationError("--rank must be at least 1, got \(r)") }
        if let d = density, !(d > 0 && d <= 1) { throw ValidationError("--density must be in (0, 1], got \(d)") }
    }

    /// Flags override what the YAML says, so a config can be reused with another seed or rank.
    func plan() throws -> FusionPlan {
        var plan: FusionPlan
        if let c = config {
            plan = try FusionPlan.load(path: c)
        } else {
            plan = FusionPlan(method: method!, adapters: adapters.map { .init(path: $0.path, weight: $0.weight) })
        }
        if let m = method { plan.method = m }
        var p = plan.parameters
        if let v = rank { p.rank = v }
        if let v = density { p.density = v }
        if let v = seed { p.seed = v }
        if let v = lambda { p.lambda = v }
        if let v = gamma { p.gamma = v }
        if let v = epsilon { p.epsilon = v }
        if let v = signElection { p.signElection = v }
        if let v = divisor { p.divisor = v }
        if let v = rescale { p.rescale = v }
        if let v = reweight { p.reweight = v }
        if let v = mergeRule { p.mergeRule = v }
        plan.parameters = p
        if let d = dtype { plan.dtype = DType(name: d) }
        if let o = output { plan.output = o }
        guard plan.output != nil else { throw ValidationError("no output: give -o/--output or `output:` in the config") }
        return plan
    }

    func run() throws {
        compute.apply()
        let plan = try plan()
        let method = try FusionMethods.make(name: plan.method, parameters: plan.parameters)
        let hints = try out.hints()
        let inputs = plan.adapters.map(\.path) + [hints.source].compactMap { $0 }
        try AdapterIO.checkOutput(plan.output!, format: out.format, inputs: inputs, force: overwrite.force)
        let loaded = try plan.adapters.map { try AdapterIO.read(path: $0.path, hints: hints) }
        let bar = ProgressBar(total: loaded.map(\.modules.count).max() ?? 1, label: "fusing (\(plan.method))",
                              enabled: !compute.quiet)
        let (fused, report) = try Fuser.fuse(loaded, weights: plan.adapters.map(\.weight), method: method,
                                             seed: plan.parameters.seed, name: (plan.output! as NSString).lastPathComponent) { done, total, name in
            bar.update(done, total: total, detail: name)
        }
        for w in report.warnings { printError("warning: \(w)") }
        let dtype = plan.dtype ?? loaded[0].sourceDType
        try AdapterIO.write(fused, to: plan.output!, format: out.format, dtype: dtype, hints: hints,
                            protecting: inputs, force: overwrite.force)
        let summary = MergeSummary(plan: plan, dtype: dtype, report: report, adapter: fused)
        if json {
            try printJSON(summary)
        } else {
            print(summary.text)
        }
    }
}

/// What `merge` reports: per module rank and retained energy, plus totals.
struct MergeSummary: Encodable {
    struct InputInfo: Encodable { var path: String; var weight: Float }
    var method: String
    var parameters: FusionParameters
    var inputs: [InputInfo]
    var output: String
    var dtype: String
    var modules: [ModuleFusionReport]
    var warnings: [String]
    var seconds: Double
    var parameterCount: Int
    var minRetainedEnergy: Double?
    var meanRetainedEnergy: Double?

    init(plan: FusionPlan, dtype: DType, report: FusionReport, adapter: LoRAAdapter) {
        method = plan.method
        parameters = plan.parameters
        inputs = plan.adapters.map { InputInfo(path: $0.path, weight: $0.weight) }
        output = plan.output ?? ""
        self.dtype = dtype.rawValue
        modules = report.modules
        warnings = report.warnings
        seconds = report.seconds
        parameterCount = adapter.parameterCount
        let energies = report.modules.compactMap(\.retainedEnergy)
        minRetainedEnergy = energies.min()
        meanRetainedEnergy = energies.isEmpty ? nil : energies.reduce(0, +) / Double(energies.count)
    }

    var text: String {
        var lines: [String] = []
        lines.append("method      \(method)")
        lines.append("inputs      " + inputs.map { "\(($0.path as NSString).lastPathComponent) (w=\($0.weight))" }.joined(separator: ", "))
        let ranks = Dictionary(grouping: modules, by: \.rank).map { "\($0.value.count)×r\($0.key)" }.sorted().joined(separator: ", ")
        lines.append("modules     \(modules.count) (\(ranks))")
        lines.append("parameters  \(parameterCount)")
        if let mn = minRetainedEnergy, let me = meanRetainedEnergy {
            let worst = modules.filter { $0.retainedEnergy != nil }.min { $0.retainedEnergy! < $1.retainedEnergy! }!
            lines.append(String(format: "energy      mean %.4f, min %.4f (%@)", me, mn, worst.module))
        } else {
            lines.append(["cat", "linear"].contains(method) && parameters.rank == nil
                         ? "energy      exact (no truncation)" : "energy      n/a (no SVD truncation to measure)")
        }
        lines.append(String(format: "time        %.2fs", seconds))
        lines.append("wrote       \(output) (\(dtype))")
        return lines.joined(separator: "\n")
    }
}
