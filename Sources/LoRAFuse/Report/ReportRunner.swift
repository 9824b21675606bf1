import Foundation

public final class ReportRunner {
    public let model: LlamaModel
    public let inputs: ReportInputs
    public let settings: ReportSettings
    public let methods: [ReportMethod]
    public let directory: String
    /// Recompute everything, ignoring (and overwriting) the cache.
    public var force: Bool
    /// Number of (method, task) evaluations actually run (cache misses), for callers and tests.
    public internal(set) var evaluationsRun = 0

    let test: [EvalTask]
    /// `--composite` tasks, scored by every row but the experts.
    let composite: [EvalTask]
    /// What each fused, routed or trained row is evaluated on: the suite's tasks, then the composite ones.
    var scored: [EvalTask] { test + composite }
    var adapterDigests: [String: String] = [:]
    /// Cache keys carry the model's content and the code that computed a row, so a number from
    /// another model file or an older build is never served.
    var modelDigest = ""
    var codeVersion = ""
    var unitsDone = 0, unitsTotal = 0
    var progressHandler: ((ReportProgress) -> Void)?

    func tick(_ n: Int, _ detail: String) {
        unitsDone += n
        progressHandler?(ReportProgress(done: min(unitsDone, unitsTotal), total: unitsTotal, detail: detail))
    }

    public init(model: LlamaModel, inputs: ReportInputs, settings: ReportSettings, methods: [ReportMethod],
                directory: String, force: Bool = false) throws {
        guard !inputs.test.isEmpty else { throw ReportError.noTasks }
        guard !inputs.adapters.isEmpty else { throw ReportError.noAdapters }
        var seen = Set<String>()
        for m in methods where !seen.insert(m.id).inserted { throw ReportError.duplicateMethod(m.id) }
        if let d = AdapterNames.duplicates(inputs.adapters.map(\.name)).first { throw ReportError.duplicateName(kind: "adapters", name: d) }
        if let d = AdapterNames.duplicates(inputs.test.map(\.name)).first { throw ReportError.duplicateName(kind: "test tasks", name: d) }
        // Results are cached per task name, so a composite task must not share a suite task's.
        if let d = AdapterNames.duplicates((inputs.test + inputs.composite).map(\.name)).first {
            throw ReportError.duplicateName(kind: "tasks of --test and --composite", name: d)
        }
        self.model = model
        self.inputs = inputs
        self.settings = settings
        self.methods = methods
        self.directory = directory
        self.force = force
        test = ReportInputs.firstExamples(inputs.test, settings.testPerTask)
        composite = inputs.composite
        for a in inputs.adapters { adapterDigests[a.name] = Digest.adapter(a) }
        for a in inputs.trained { adapterDigests[Self.trainedKey(a.name)] = Digest.adapter(a) }
        if let d = AdapterNames.duplicates(inputs.trained.map(\.name)).first { throw ReportError.duplicateName(kind: "trained adapters", name: d) }
        for m in methods where m.family == .trained && !inputs.trained.contains(where: { $0.name == m.method }) {
            throw ReportError.missingTrainedAdapter(row: m.id, name: m.method)
        }
        // The same file computed on its stored blocks or in Float32 gives other numbers.
        modelDigest = Digest.file(model.sourcePath) + (model.base.holdsQuantizedWeights ? "+stored" : "+f32")
        codeVersion = Digest.executable()
    }

    var taskNames: [String] { test.map(\.name) }
    var cacheDirectory: String { (directory as NSString).appendingPathComponent("cache") }

    // MARK: Plan

    /// Work units of the whole plan (for the progress bar), before looking at the cache.
    public var plannedUnits: Int {
        let examples = test.reduce(0) { $0 + $1.examples.count }
        let extra = composite.reduce(0) { $0 + $1.examples.count }
        var units = 0
        for m in methods {
            switch m.family {
            case .base, .static: units += examples + extra
            case .expert: units += test.filter { t in inputs.adapters.contains { $0.name == t.name } }.reduce(0) { $0 + $1.examples.count }
            case .learned:
                for k in shotCounts { units += examples + extra + fitUnits(m, shots: k) }
            case .icm:
                units += examples + extra + icmUnits(m)
            case .routed:
                units += routedUnits(m) + extra
            case .trained:
                units += examples + extra
            }
        }
        units += extra * inputs.adapters.count
        if settings.expertMatrix { units += examples * max(0, inputs.adapters.count - 1) }
        return units
    }

    // MARK: Run

    public func run(progress: ((ReportProgress) -> Void)? = nil) throws -> ReportResults {
        try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        unitsTotal = plannedUnits
        unitsDone = 0
        progressHandler = progress
        defer { progressHandler = nil }
        var rows: [ReportRow] = []
        var curves: [String: [ReportShotsPoint]] = [:]
        var warnings: [String] = []
        for m in methods {
            switch m.family {
            case .base:
                rows.append(try evaluateRow(m, cacheID: m.id, adapter: nil))
            case .expert:
                rows.append(try expertRow(m))
            case .static:
                rows.append(try staticRow(m))
            case .learned:
                let (row, curve) = try learnedRow(m)
                rows.append(row)
                if settings.shotsCurve.count > 0 { curves[m.id] = curve }
            case .icm:
                rows.append(try icmRow(m))
            case .routed:
                rows.append(try routedRow(m))
            case .trained:
                rows.append(try trainedRow(m))
            }
            warnings += rows.last!.warnings.map { "\(m.id): \($0)" }
        }
        let analysis = ReportAnalysis(AdapterAnalyzer.analyze(inputs.adapters, seed: settings.seed))
        warnings += analysis.warnings
        var matrix: [[Double?]]?
        if settings.expertMatrix {
            matrix = try expertMatrix(experts: rows.first { $0.method.family == .expert })
        }
        let iso = ISO8601DateFormatter()
        var results = ReportResults(generated: iso.string(from: Date()), settings: settings, tasks: taskNames,
                                    testExamples: Dictionary(uniqueKeysWithValues: scored.map { ($0.name, $0.examples.count) }),
                                    adapters: inputs.adapters.map(\.name), rows: rows, analysis: analysis,
                                    expertMatrix: matrix, shotsCurves: curves, warnings: warnings)
        if !composite.isEmpty {
            results.composite = composite.map(\.name)
            results.compositeExperts = try compositeExperts()
        }
        return results
    }

    // MARK: Rows

    func staticRow(_ m: ReportMethod) throws -> ReportRow {
        let key = cacheKey(m, adapters: inputs.adapters.map(\.name))
        var entry = try loadCache(m.id, key: key)
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        var fuseSeconds = entry.fuseSeconds
        var warnings = entry.warnings
        if !missing.isEmpty {
            let start = Date()
            let method = try FusionMethods.make(name: m.method, parameters: m.parameters ?? FusionParameters())
            let w = (m.weighting ?? .mean).weight(adapters: inputs.adapters.count)
            let (fused, report) = try Fuser.fuse(inputs.adapters, weights: Array(repeating: w, count: inputs.adapters.count),
                                                 method: method, seed: m.parameters?.seed ?? settings.seed, name: m.id)
            fuseSeconds = Date().timeIntervalSince(start)
            entry.fuseSeconds = fuseSeconds
            warnings = report.warnings
            entry.warnings = warnings
            try evaluate(fused, on: missing, entry: &entry, cacheID: m.id, label: m.id)
        }
        skipCached(except: missing, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, fuseSeconds: fuseSeconds,
                         evalSeconds: entry.evalSeconds, warnings: warnings).with(composite: entry.results(for: composite))
    }

    func expertRow(_ m: ReportMethod) throws -> ReportRow {
        let key = cacheKey(m, adapters: [])
        var entry = try loadCache(m.id, key: key)
        var results: [String: TaskEvalResult] = [:]
        for t in test {
            guard let a = inputs.adapters.first(where: { $0.name == t.name }) else { continue }
            let digest = Digest.task(t) + "/" + adapterDigests[a.name]!
            if entry.tasks[t.name]?.digest != digest {
                try evaluate(a, on: [t], entry: &entry, cacheID: m.id, label: "expert \(a.name)", digest: { _ in digest })
            } else {
                tick(t.examples.count, "experts \(t.name) (cached)")
            }
            results[t.name] = entry.tasks[t.name]!.result
        }
        return ReportRow(method: m, tasks: results, order: taskNames, evalSeconds: entry.evalSeconds)
    }

    /// Held-out examples per task whose answer rows count towards a rank-gated row's rank usage.
    static let rankUsageExamples = 16

    /// The digest key of a `--trained` adapter (its name may equal a task's).
    static func trainedKey(_ name: String) -> String { "trained/" + name }

    /// A `--trained` adapter on every task.
    func trainedRow(_ m: ReportMethod) throws -> ReportRow {
        let a = inputs.trained.first { $0.name == m.method }!
        var entry = try loadCache(m.id, key: cacheKey(m, adapters: [Self.trainedKey(a.name)]))
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        if !missing.isEmpty { try evaluate(a, on: missing, entry: &entry, cacheID: m.id, label: m.id) }
        if a.isRankGated && (!missing.isEmpty || entry.rankUsage == nil) {
            entry.rankUsage = try ReportRankUsage.measure(model: model, adapter: a, tasks: test, perTask: Self.rankUsageExamples)
            try saveCache(m.id, entry)
        }
        skipCached(except: missing, label: m.id)
        var row = ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, evalSeconds: entry.evalSeconds)
        row.rankUsage = entry.rankUsage
        return row.with(composite: entry.results(for: composite))
    }

    func evaluateRow(_ m: ReportMethod, cacheID: String, adapter: LoRAAdapter?) throws -> ReportRow {
        let key = cacheKey(m, adapters: adapter.map { [$0.name] } ?? [])
        var entry = try loadCache(cacheID, key: key)
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        if !missing.isEmpty {
            try evaluate(adapter, on: missing, entry: &entry, cacheID: cacheID, label: m.id)
        }
        skipCached(except: missing, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, evalSeconds: entry.evalSeconds)
            .with(composite: entry.results(for: composite))
    }

    /// Each adapter alone on the composite tasks (the best single expert is the composite
    /// table's reference: one adapter for the whole prompt, chosen knowing the answers).
    func compositeExperts() throws -> [String: [String: TaskEvalResult]] {
        let m = ReportMethod(id: "composite-expert", family: .expert, method: "composite-expert")
        var out: [String: [String: TaskEvalResult]] = [:]
        for a in inputs.adapters {
            let id = "composite-" + a.name
            var entry = try loadCache(id, key: cacheKey(m, adapters: [a.name]))
            let missing = composite.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
            if !missing.isEmpty { try evaluate(a, on: missing, entry: &entry, cacheID: id, label: "composite \(a.name)") }
            let cached = composite.filter { t in !missing.contains { $0.name == t.name } }.reduce(0) { $0 + $1.examples.count }
            if cached > 0 { tick(cached, "composite \(a.name) (cached)") }
            out[a.name] = entry.results(for: composite)
        }
        return out
    }

    /// Every adapter on every task, loss only; the diagonal comes from the experts row when there
    /// is one (the loss pass is the same with or without accuracy).
    func expertMatrix(experts: ReportRow?) throws -> [[Double?]] {
        let m = ReportMethod(id: "expert-matrix", family: .expert, method: "expert-matrix")
        var out: [[Double?]] = []
        for a in inputs.adapters {
            let id = "matrix-" + a.name
            var entry = try loadCache(id, key: cacheKey(m, adapters: [a.name], accuracy: false))
            var row: [Double?] = []
            let digest = { (t: EvalTask) in Digest.task(t) + "/" + self.adapterDigests[a.name]! }
            let missing = test.filter { t in
                !(t.name == a.name && experts?.tasks[t.name] != nil) && entry.tasks[t.name]?.digest != digest(t)
            }
            if !missing.isEmpty {
                try evaluate(a, on: missing, entry: &entry, cacheID: id, label: "matrix \(a.name)",
                             accuracy: false, digest: digest)
            }
            for t in test {
                if t.name == a.name, let e = experts?.tasks[t.name] {
                    row.append(e.loss)
                } else {
                    if !missing.contains(where: { $0.name == t.name }) { tick(t.examples.count, "matrix \(a.name) (cached)") }
                    row.append(entry.tasks[t.name]?.result.loss)
                }
            }
            out.append(row)
        }
        return out
    }

    /// Counts the tasks that came from the cache as done.
    func skipCached(except missing: [EvalTask], label: String) {
        let n = scored.filter { t in !missing.contains { $0.name == t.name } }.reduce(0) { $0 + $1.examples.count }
        if n > 0 { tick(n, "\(label) (cached)") }
    }

    /// Applies `adapter` (nil: base) merged into the weights and evaluates `tasks`, saving the cache
    /// after every task so an interrupted run loses at most one task.
    func evaluate(_ adapter: LoRAAdapter?, on tasks: [EvalTask], entry: inout CacheEntry, cacheID: String,
                          label: String, accuracy: Bool? = nil,
                          digest: ((EvalTask) -> String)? = nil) throws {
        // FlyLoRA / SMoRA adapters choose ranks per token: they have no merged form.
        let mode = adapter?.isRankGated == true ? .unmerged : LoRAMode(rawValue: settings.adapterMode) ?? .merged
        let adapters = try adapter.map { try model.prepare([($0, 1)], mode: mode) } ?? .none
        try evaluate(set: adapters, on: tasks, entry: &entry, cacheID: cacheID, label: label, accuracy: accuracy, digest: digest)
    }

    /// Evaluates `tasks` with a prepared adapter set (a routed model's, or one adapter's).
    func evaluate(set adapters: AdapterSet, on tasks: [EvalTask], entry: inout CacheEntry, cacheID: String,
                  label: String, accuracy: Bool? = nil, digest: ((EvalTask) -> String)? = nil) throws {
        let evaluator = Evaluator(model: model.with(adapters), options: EvalOptions(computeAccuracy: accuracy ?? settings.accuracy))
        for t in tasks {
            let start = Date()
            var last = 0
            let r = try evaluator.evaluate(t) { p in
                self.tick(p.taskDone - last, "\(label) · \(t.name) \(p.taskDone)/\(p.taskTotal)")
                last = p.taskDone
            }
            evaluationsRun += 1
            entry.evalSeconds += Date().timeIntervalSince(start)
            entry.tasks[t.name] = CachedTask(digest: digest?(t) ?? Digest.task(t), result: r)
            try saveCache(cacheID, entry)
        }
    }

    var fitReported = 0
}
