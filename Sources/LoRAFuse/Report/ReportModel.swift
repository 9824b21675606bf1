import Foundation

/// What kind of row a method is in the report; decides how its adapter is made.
public enum ReportFamily: String, Codable, Sendable, CaseIterable {
    /// The base model, no adapter.
    case base
    /// Each task's own adapter on its own task only (the reference to beat, not a fusion).
    case expert
    /// One adapter from a `FusionMethods` rule, no data.
    case `static`
    /// One adapter whose fusion coefficients were fitted on few-shot examples of every task.
    case learned
    /// ICM-Fusion and its ablations and settings: one adapter decoded by a Fusion VAE trained on
    /// the adapters, fused in its latent space on few-shot examples of every task.
    case icm
    /// No fusion: every adapter kept, chosen per token by gates (Routing/; training-free or fitted
    /// on the same shots as the learned rows).
    case routed
    /// One adapter trained on the union of the tasks' training data (multi-task LoRA or a mixture
    /// variant: `report --trained DIR`), the answer when every task's data is at hand.
    case trained
}

/// How the adapters are weighted in a static fusion.
public enum ReportWeighting: String, Codable, Sendable {
    /// w_i = 1/n: methods that sum their inputs then give the mean task vector.
    case mean
    /// w_i = 1: for methods that average by themselves (TIES-style disjoint means divide by the
    /// weight or count of the agreeing entries, so 1/n would only shrink the result).
    case one

    public func weight(adapters n: Int) -> Float {
        switch self {
        case .mean: return 1 / Float(max(n, 1))
        case .one: return 1
        }
    }
}

/// One row of the report as data: which family, which registry name, which parameters. The list
/// of rows is data too (`ReportMethods.defaults`), so a new method is a new entry, not a new path.
public struct ReportMethod: Codable, Sendable, Equatable {
    /// Unique row label; also names the cache file.
    public var id: String
    public var family: ReportFamily
    /// Registry name: a `FusionMethods` name for static rows, a learned method's name for learned ones.
    public var method: String
    /// Static rows: the fusion parameters.
    public var parameters: FusionParameters?
    /// Static rows: the adapters' weights.
    public var weighting: ReportWeighting?

    public init(id: String, family: ReportFamily, method: String, parameters: FusionParameters? = nil,
                weighting: ReportWeighting? = nil) {
        self.id = id
        self.family = family
        self.method = method
        self.parameters = parameters
        self.weighting = weighting
    }

    /// A short human description of the settings ("w = 1/n, rank 32, density 0.2").
    public var settingsText: String {
        switch family {
        case .base: return "no adapter"
        case .expert: return "each task's own adapter on its own task"
        case .learned: return "fitted from 1/n"
        case .icm: return ICMVariant(rawValue: method)?.summary ?? method
        case .routed: return ReportMethods.routedSummary[method] ?? method
        case .trained: return "one adapter trained on every task (\(method))"
        case .static:
            var parts: [String] = []
            switch weighting ?? .mean {
            case .mean: parts.append("w = 1/n")
            case .one: parts.append("w = 1")
            }
            if let p = parameters {
                if let r = p.rank { parts.append("rank \(r)") } else if ["linear", "cat"].contains(method) { parts.append("exact (rank Σ r_i)") }
                if let d = p.density { parts.append("density \(ReportFormat.short(d))") }
                if let g = p.gamma { parts.append("γ \(ReportFormat.short(g))") }
                if let e = p.epsilon { parts.append("ε \(ReportFormat.short(e))") }
                if let m = p.mergeRule { parts.append("merge rule \(m)") }
                if let d = p.divisor { parts.append("divisor \(d)") }
            }
            return parts.joined(separator: ", ")
        }
    }
}

/// The report's default rows and the documented defaults of each static method.
public enum ReportMethods {
    /// Static methods in the default report (`--methods` picks any `FusionMethods.names`).
    public static let defaultStatic = ["linear", "cat", "svd", "ties", "dare_ties", "magnitude_prune", "breadcrumbs",
                                       "della", "knots", "lego"]

    /// Methods whose result is a (disjoint) mean by construction get w = 1; the rest sum their
    /// inputs and get w = 1/n, so every static row is an average of the task vectors, not their
    /// sum (a sum of n task vectors is n times too strong for any one task).
    public static let selfAveraging: Set<String> = ["ties", "dare_ties", "breadcrumbs_ties", "della", "knots"]

    /// Static methods that are exact and take no rank (`linear` would re-rank with one).
    public static let exact: Set<String> = ["linear", "cat"]

    /// The documented defaults of one static method: w by `selfAveraging`, `rank` for every
    /// method that truncates, density and the other knobs from the registry's own defaults
    /// (TIES / magnitude prune / KnOTS 0.2, DARE / DELLA 0.5, Breadcrumbs 0.1 with γ 0.01, DELLA ε 0.15),
    /// written out so the report states them. TIES-style methods use mergekit's conventions (sign
    /// elected on the weighted deltas, divisor Σ w_i over agreeing entries).
    public static func staticMethod(_ name: String, rank: Int, seed: UInt64 = 0) -> ReportMethod {
        var p = FusionParameters(seed: seed)
        if !exact.contains(name) { p.rank = rank }
        switch name {
        case "ties", "magnitude_prune": p.density = 0.2
        case "dare_ties", "dare_linear": p.density = 0.5
        case "breadcrumbs", "breadcrumbs_ties": p.density = 0.1; p.gamma = 0.01
        case "della", "della_linear": p.density = 0.5; p.epsilon = 0.15
        case "knots": p.density = 0.2; p.mergeRule = "ties"
        default: break
        }
        return ReportMethod(id: name, family: .static, method: name, parameters: p,
                            weighting: selfAveraging.contains(name) ? .one : .mean)
    }

    /// The learned methods (data from the learned-fusion registry, so a new learned method
    /// appears here without a new code path).
    public static var learnedNames: [String] { LearnedFusionMethod.allCases.map(\.rawValue) }

    public static func learned(_ name: String) -> ReportMethod {
        ReportMethod(id: name, family: .learned, method: name)
    }

    public static let base = ReportMethod(id: "base", family: .base, method: "base")
    public static let experts = ReportMethod(id: "experts", family: .expert, method: "experts")

    /// The row of a `--trained` adapter named `name` (its folder's name).
    public static func trained(_ name: String) -> ReportMethod {
        ReportMethod(id: "trained-" + name, family: .trained, method: name)
    }
}

/// Settings of one report run (all of them recorded in results.json).
public struct ReportSettings: Codable, Sendable, Equatable {
    /// First N test lines per task (nil: all).
    public var testPerTask: Int?
    /// Greedy exact-match accuracy besides loss.
    public var accuracy: Bool
    /// Rank of the truncating static methods.
    public var rank: Int
    public var seed: UInt64
    /// Shots per task of the learned methods' main rows.
    public var shotsPerTask: Int
    /// Shots per task of the learned methods' curve (empty: no curve).
    public var shotsCurve: [Int]
    /// Optimisation steps of the learned methods (nil: their default).
    public var steps: Int?
    /// LoraHub's budget of loss evaluations (nil: `steps` when given, else its default). CMA-ES
    /// over n adapters samples 4 + 3·ln n points a generation (11 for 14 adapters), so a budget
    /// below a few generations leaves it at its starting point.
    public var evaluations: Int?
    /// Every adapter on every task (loss only).
    public var expertMatrix: Bool
    /// Model file or directory the numbers come from.
    public var model: String
    /// ICM rows' settings (generator, fusion, few-shot and long-tailed settings, trajectories).
    public var icm: ReportICMSettings
    /// How adapters are applied for evaluation.
    public var adapterMode: String

    public init(testPerTask: Int? = nil, accuracy: Bool = true, rank: Int = 32, seed: UInt64 = 0, shotsPerTask: Int = 16,
                shotsCurve: [Int] = [1, 4, 16], steps: Int? = nil, evaluations: Int? = nil, expertMatrix: Bool = false,
                model: String = "", adapterMode: String = LoRAMode.merged.rawValue, icm: ReportICMSettings = ReportICMSettings()) {
        self.icm = icm
        self.testPerTask = testPerTask
        self.accuracy = accuracy
        self.rank = rank
        self.seed = seed
        self.shotsPerTask = shotsPerTask
        self.shotsCurve = shotsCurve
        self.steps = steps
        self.evaluations = evaluations
        self.expertMatrix = expertMatrix
        self.model = model
        self.adapterMode = adapterMode
    }
}

/// Per-layer coefficients of a learned fusion, reduced for the report: `values[a][l]` is adapter
/// a's mean coefficient over the modules of layer l.
public struct ReportCoefficients: Codable, Sendable, Equatable {
    public var adapters: [String]
    public var layers: [Int]
    public var values: [[Double?]]
    /// The fitting objective per step (for the record).
    public var lossCurve: [Double]

    /// Few-shot loss at the start and at the kept coefficients (mean over tasks).
    public var initialTrainLoss: Double?
    public var finalTrainLoss: Double?
    /// The coefficient the fit started from (the heatmap's neutral colour).
    public var start: Double

    public init(adapters: [String], layers: [Int], values: [[Double?]], lossCurve: [Double] = [],
                initialTrainLoss: Double? = nil, finalTrainLoss: Double? = nil, start: Double = 1) {
        self.adapters = adapters
        self.layers = layers
        self.values = values
        self.lossCurve = lossCurve
        self.initialTrainLoss = initialTrainLoss
        self.finalTrainLoss = finalTrainLoss
        self.start = start
    }

    /// Reduces a learned fusion's coefficients (`values[adapter][projection][layer]`) to one
    /// value per adapter and layer: the mean over the projections the adapter adapts there.
    public init(_ c: LearnedCoefficients, layers: Int, start: Double) {
        var values: [[Double?]] = []
        for per in c.values {
            var row: [Double?] = []
            for l in 0..<layers {
                let v = per.values.compactMap { l < $0.count ? $0[l] : nil }
                row.append(v.isEmpty ? nil : v.reduce(0, +) / Double(v.count))
            }
            values.append(row)
        }
        self.init(adapters: c.adapterNames, layers: Array(0..<layers), values: values,
                  lossCurve: c.lossCurve.map(\.trainLoss), initialTrainLoss: c.initialTrainLoss, finalTrainLoss: c.finalTrainLoss,
                  start: start)
    }
}

/// One row's numbers.
public struct ReportRow: Codable, Sendable, Equatable {
    public var method: ReportMethod
    /// Per task; tasks the row does not cover (experts without an adapter for the task) are absent.
    public var tasks: [String: TaskEvalResult]
    /// Unweighted means over the tasks present (accuracy only when every present task has one).
    public var meanLoss: Double?
    public var meanAccuracy: Double?
    /// Shots per task the row's fusion saw (learned rows).
    public var shots: Int?
    /// Seconds spent making the adapter (fusion or fitting) and evaluating, in the run that
    /// computed them (cached rows keep their original times).
    public var fuseSeconds: Double?
    public var evalSeconds: Double
    public var coefficients: ReportCoefficients?
    /// ICM rows: the generator and fusion behind the row.
    public var icm: ReportICMDetails?
    /// Routed rows: what the gates did on the held-out answers.
    public var routing: ReportRouting?
    /// Rank-gated `--trained` rows (FlyLoRA, SMoRA): how each task's tokens spread over the ranks.
    public var rankUsage: ReportRankUsage?
    /// Per composite task (`--composite`): the row's result there, outside `tasks` and the means.
    public var composite: [String: TaskEvalResult]?
    public var warnings: [String]

    public init(method: ReportMethod, tasks: [String: TaskEvalResult], order: [String], shots: Int? = nil,
                fuseSeconds: Double? = nil, evalSeconds: Double = 0, coefficients: ReportCoefficients? = nil,
                icm: ReportICMDetails? = nil, warnings: [String] = []) {
        self.icm = icm
        self.method = method
        self.tasks = tasks
        let present = order.compactMap { tasks[$0] }
        meanLoss = present.isEmpty ? nil : present.map(\.loss).reduce(0, +) / Double(present.count)
        let acc = present.compactMap(\.accuracy)
        meanAccuracy = acc.isEmpty || acc.count != present.count ? nil : acc.reduce(0, +) / Double(acc.count)
        self.shots = shots
        self.fuseSeconds = fuseSeconds
        self.evalSeconds = evalSeconds
        self.coefficients = coefficients
        self.warnings = warnings
    }

    /// Mean loss over `subset` of the tasks (nil unless the row has every one of them).
    public func meanLoss(over subset: [String]) -> Double? {
        let v = subset.compactMap { tasks[$0]?.loss }
        return v.isEmpty || v.count != subset.count ? nil : v.reduce(0, +) / Double(v.count)
    }

    /// The row with its composite-task results (none: nil).
    func with(composite results: [String: TaskEvalResult]) -> ReportRow {
        var r = self
        r.composite = results.isEmpty ? nil : results
        return r
    }
}

/// Pairwise task-vector statistics, as matrices over the adapters (from `AdapterAnalyzer`).
public struct ReportAnalysis: Codable, Sendable, Equatable {
    public var adapters: [String]
    /// cos(τ_i, τ_j); the diagonal is 1 (nil for a zero task vector).
    public var cosine: [[Double?]]
    /// Fraction of entries nonzero in both with opposite signs; the diagonal is nil (not a pair).
    public var signConflict: [[Double?]]
    public var samplesPerModule: Int
    public var exactEntryLimit: Int
    public var warnings: [String]

    public init(_ a: AdapterAnalysis) {
        let names = a.adapters.map(\.name)
        let n = names.count
        var cos = [[Double?]](repeating: [Double?](repeating: nil, count: n), count: n)
        var sign = cos
        for i in 0..<n { cos[i][i] = a.adapters[i].taskVectorNorm > 0 ? 1 : nil }
        var k = 0
        for i in 0..<n {
            for j in (i + 1)..<n {
                let p = a.pairs[k]
                k += 1
                cos[i][j] = p.cosine; cos[j][i] = p.cosine
                sign[i][j] = p.signConflictRate; sign[j][i] = p.signConflictRate
            }
        }
        adapters = names
        cosine = cos
        signConflict = sign
        samplesPerModule = a.samplesPerModule
        exactEntryLimit = a.exactEntryLimit
        warnings = a.warnings
    }
}

/// One point of a learned method's shots curve.
public struct ReportShotsPoint: Codable, Sendable, Equatable {
    public var shots: Int
    public var meanLoss: Double?
    public var tasks: [String: Double]
}

/// Whether a learned method met the report's target.
public struct ReportTarget: Codable, Sendable, Equatable {
    public var method: String
    public var meanLoss: Double?
    public var bestStatic: String?
    public var bestStaticLoss: Double?
    /// meanLoss < bestStaticLoss (nil when either is missing).
    public var beatsBestStatic: Bool?
    /// meanLoss − the experts' mean loss, both over the tasks that have an expert.
    public var gapToExperts: Double?
    /// meanLoss / the experts' mean loss over the same tasks (ICM-Fusion's second target: ≤ 1.1).
    public var ratioToExperts: Double?
    /// ICM-Fusion rows carry the second target (within 10% of the experts).
    public var expertsTarget: Bool = false
    public var expertTasks: Int
}

/// Everything the report shows; written as results.json.
public struct ReportResults: Codable, Sendable, Equatable {
    public var generated: String
    public var settings: ReportSettings
    public var tasks: [String]
    /// Test examples per task actually evaluated.
    public var testExamples: [String: Int]
    public var adapters: [String]
    public var rows: [ReportRow]
    public var analysis: ReportAnalysis?
    /// `expertMatrix[a][t]`: adapter a's held-out loss on task t (`--expert-matrix`).
    public var expertMatrix: [[Double?]]?
    /// Per learned method id: its mean held-out loss at each shots count.
    public var shotsCurves: [String: [ReportShotsPoint]]
    public var targets: [ReportTarget]
    public var warnings: [String]
    /// Composite tasks (`--composite`), and each adapter alone on them (adapter → task → result).
    public var composite: [String]?
    public var compositeExperts: [String: [String: TaskEvalResult]]?

    public init(generated: String, settings: ReportSettings, tasks: [String], testExamples: [String: Int], adapters: [String],
                rows: [ReportRow], analysis: ReportAnalysis?, expertMatrix: [[Double?]]?,
                shotsCurves: [String: [ReportShotsPoint]], warnings: [String]) {
        self.generated = generated
        self.settings = settings
        self.tasks = tasks
        self.testExamples = testExamples
        self.adapters = adapters
        self.rows = rows
        self.analysis = analysis
        self.expertMatrix = expertMatrix
        self.shotsCurves = shotsCurves
        self.warnings = warnings
        targets = Self.targets(rows: rows)
    }

    /// The best static row by mean loss (over all tasks).
    public var bestStatic: ReportRow? {
        rows.filter { $0.method.family == .static && $0.meanLoss != nil }.min { $0.meanLoss! < $1.meanLoss! }
    }

    public static func targets(rows: [ReportRow]) -> [ReportTarget] {
        let best = rows.filter { $0.method.family == .static && $0.meanLoss != nil }.min { $0.meanLoss! < $1.meanLoss! }
        let experts = rows.first { $0.method.family == .expert }
        let expertTasks = experts.map { Array($0.tasks.keys).sorted() } ?? []
        // Targets are for the learned rows and ICM-Fusion's main row; its ablations and other
        // settings are compared with it in their own section.
        return rows.filter { $0.method.family == .learned || $0.method.id == ICMVariant.full.rawValue }.map { r in
            var gap: Double?, ratio: Double?
            if let e = experts?.meanLoss(over: expertTasks), let m = r.meanLoss(over: expertTasks) { gap = m - e; ratio = e > 0 ? m / e : nil }
            let beats: Bool? = r.meanLoss.flatMap { m in best?.meanLoss.map { m < $0 } }
            return ReportTarget(method: r.method.id, meanLoss: r.meanLoss, bestStatic: best?.method.id,
                                bestStaticLoss: best?.meanLoss, beatsBestStatic: beats, gapToExperts: gap,
                                ratioToExperts: ratio, expertsTarget: r.method.family == .icm, expertTasks: expertTasks.count)
        }
    }
}

/// Number formatting shared by the renderers.
public enum ReportFormat {
    /// Up to 4 significant decimals without trailing zeros (0.2, 0.01, 0.15).
    public static func short(_ v: Double) -> String {
        var s = String(format: "%.4f", v)
        while s.contains(".") && (s.hasSuffix("0") || s.hasSuffix(".")) { s.removeLast() }
        return s
    }
}
