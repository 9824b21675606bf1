import Foundation

public enum ReportError: Error, CustomStringConvertible, Equatable {
    case noTasks
    case noAdapters
    case duplicateMethod(String)
    case emptyShots(task: String, file: String?)
    case notAnAdapterDirectory(path: String)
    case noTaskFiles(path: String, suffix: String)
    case unknownTask(String, known: [String])
    case unknownLearnedMethod(String)
    case cacheUnreadable(file: String, detail: String)
    case unknownICMVariant(String)
    case missingAdapter(task: String)
    /// Two adapters (or two test tasks) with one name: rows, caches and tables are keyed by it.
    case duplicateName(kind: String, name: String)

    public var description: String {
        switch self {
        case .noTasks:
            return "report: no test tasks (give --test FILES or a directory holding NAME.test.jsonl files)"
        case .noAdapters:
            return "report: no adapters (give --adapters DIRS or a directory of adapter directories)"
        case let .duplicateMethod(m):
            return "report: method '\(m)' is listed twice"
        case let .emptyShots(task, file):
            return "report: task \(task) has no shots\(file.map { " in \($0)" } ?? "") (learned methods need at least one)"
        case let .notAnAdapterDirectory(path):
            return "report: \(path) is neither an adapter nor a directory of adapters (no adapter_config.json / adapters.safetensors / .gguf inside)"
        case let .noTaskFiles(path, suffix):
            return "report: directory \(path) holds no *\(suffix) files"
        case let .unknownTask(t, known):
            return "report: --tasks names '\(t)', which is not among the test tasks (\(known.joined(separator: ", ")))"
        case let .unknownLearnedMethod(m):
            return "report: unknown learned method '\(m)'; known: \(LearnedFusionMethod.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .unknownICMVariant(m):
            return "report: unknown ICM row '\(m)'; known: \(ICMVariant.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .missingAdapter(task):
            return "report: ICM-Fusion needs an adapter for every task, and none is named \(task)"
        case let .duplicateName(kind, name):
            return "report: two \(kind) are named '\(name)' (the report keys \(kind) by name); rename one of them"
        case let .cacheUnreadable(file, detail):
            return "report: cache file \(file) is unreadable (\(detail)); delete it or rerun with --force"
        }
    }
}

/// What the report compares: adapters named after their tasks, and per task its held-out test
/// examples, the pool its shots are drawn from (first lines first) and validation examples.
public struct ReportInputs: Sendable {
    public var adapters: [LoRAAdapter]
    public var test: [EvalTask]
    public var shots: [EvalTask]
    public var val: [EvalTask]

    public init(adapters: [LoRAAdapter], test: [EvalTask], shots: [EvalTask] = [], val: [EvalTask] = []) {
        self.adapters = adapters
        self.test = test
        self.shots = shots
        self.val = val
    }

    /// Keeps only the named tasks (and the adapters named after them), in the given order.
    public func restricted(to names: [String]) throws -> ReportInputs {
        let known = test.map(\.name)
        for n in names where !known.contains(n) { throw ReportError.unknownTask(n, known: known) }
        func pick(_ ts: [EvalTask]) -> [EvalTask] { names.compactMap { n in ts.first { $0.name == n } } }
        return ReportInputs(adapters: names.compactMap { n in adapters.first { $0.name == n } },
                            test: pick(test), shots: pick(shots), val: pick(val))
    }

    /// The first `k` examples of each task (all when it has fewer).
    public static func firstExamples(_ tasks: [EvalTask], _ k: Int?) -> [EvalTask] {
        guard let k else { return tasks }
        return tasks.map { EvalTask(name: $0.name, path: $0.path, examples: Array($0.examples.prefix(k))) }
    }

    /// Task files from paths that are files or directories; a directory contributes its
    /// `*<suffix>` files (e.g. `.test.jsonl`), sorted by name.
    public static func taskFiles(_ paths: [String], suffix: String) throws -> [String] {
        var out: [String] = []
        for p in paths {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []
                let files = names.filter { $0.hasSuffix(suffix) }.sorted()
                if files.isEmpty { throw ReportError.noTaskFiles(path: p, suffix: suffix) }
                out += files.map { (p as NSString).appendingPathComponent($0) }
            } else {
                out.append(p)
            }
        }
        return out
    }

    /// Adapter paths from paths that are adapters or directories of adapters (the coordinator's
    /// `adapters/` with one sub-directory per task); sub-directories that are not adapters, and
    /// files, are skipped in a directory of adapters.
    public static func adapterPaths(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        for p in paths {
            if isAdapter(p) { out.append(p); continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue else {
                out.append(p)                            // let the reader name the problem
                continue
            }
            let subs = ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted()
                .map { (p as NSString).appendingPathComponent($0) }.filter(isAdapter)
            if subs.isEmpty { throw ReportError.notAnAdapterDirectory(path: p) }
            out += subs
        }
        return out
    }

    static func isAdapter(_ p: String) -> Bool {
        let fm = FileManager.default
        if p.hasSuffix(".gguf") { return fm.fileExists(atPath: p) }
        return fm.fileExists(atPath: (p as NSString).appendingPathComponent("adapter_config.json"))
            || fm.fileExists(atPath: (p as NSString).appendingPathComponent("adapters.safetensors"))
    }
}

/// Progress of a report run over its whole plan, in work units (one unit ≈ one example scored).
public struct ReportProgress: Sendable {
    public var done: Int
    public var total: Int
    public var detail: String
}

/// Runs the report's plan: every method's adapter (base: none; experts: each task's own; static:
/// one fusion; learned: one fit per shots count), evaluated on every task's held-out examples, with
/// the results of each (method, task) cached as JSON under `<directory>/cache/` so a rerun, or a
/// crashed run, only computes what is missing. Cached entries are reused only when everything they
/// depend on is unchanged: the method's definition, the model, accuracy on/off, the digests of the
/// adapters and of the task's examples (and, for learned rows, of the shots and the step count).
public final class ReportRunner {
    public let model: LlamaModel
    public let inputs: ReportInputs
    public let settings: ReportSettings
    public let methods: [ReportMethod]
    public let directory: String
    /// Recompute everything, ignoring (and overwriting) the cache.
    public var force: Bool
    /// Number of (method, task) evaluations actually run (cache misses), for callers and tests.
    public private(set) var evaluationsRun = 0

    let test: [EvalTask]
    var adapterDigests: [String: String] = [:]
    /// Cache keys carry the model's content and the code that computed a row, so a number from
    /// another model file or an older build is never served.
    var modelDigest = ""
    var codeVersion = ""
    var unitsDone = 0, unitsTotal = 0
    private var progressHandler: ((ReportProgress) -> Void)?

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
        self.model = model
        self.inputs = inputs
        self.settings = settings
        self.methods = methods
        self.directory = directory
        self.force = force
        test = ReportInputs.firstExamples(inputs.test, settings.testPerTask)
        for a in inputs.adapters { adapterDigests[a.name] = Digest.adapter(a) }
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
        var units = 0
        for m in methods {
            switch m.family {
            case .base, .static: units += examples
            case .expert: units += test.filter { t in inputs.adapters.contains { $0.name == t.name } }.reduce(0) { $0 + $1.examples.count }
            case .learned:
                for k in shotCounts { units += examples + fitUnits(m, shots: k) }
            case .icm:
                units += examples + icmUnits(m)
            }
        }
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
        return ReportResults(generated: iso.string(from: Date()), settings: settings, tasks: taskNames,
                             testExamples: Dictionary(uniqueKeysWithValues: test.map { ($0.name, $0.examples.count) }),
                             adapters: inputs.adapters.map(\.name), rows: rows, analysis: analysis,
                             expertMatrix: matrix, shotsCurves: curves, warnings: warnings)
    }

    // MARK: Learned rows

    /// Shots per task of every learned fit: the main rows' count and the curve's.
    var shotCounts: [Int] { Array(Set([settings.shotsPerTask] + settings.shotsCurve)).sorted() }

    /// The learned-fusion options a row uses. `--steps` sets the optimizer steps of the gradient
    /// methods and LoraHub's budget of loss evaluations unless `--evaluations` sets that; LoraHub
    /// gets its paper's L1 weight 0.05 and a first step size σ equal to its start, 1/n.
    ///
    /// Every learned row starts from the mean of the adapters, coefficient 1/n — the static
    /// `linear` row — rather than the library's default 1 (their plain sum, n times too strong for
    /// any one task when n is 14): a learned row below `linear` is then the fit's own gain, and a
    /// short fit cannot be lost walking back from the sum. cat-learned gets softmax scale 1, the
    /// convex mixture of its paper (LoRA Soups), which also starts at 1/n.
    public func learnedOptions(_ m: ReportMethod, shots k: Int) throws -> (LearnedFusionMethod, LearnedFusionOptions) {
        guard let method = LearnedFusionMethod(rawValue: m.method) else { throw ReportError.unknownLearnedMethod(m.method) }
        var o = LearnedFusionOptions.defaults(for: method, adapters: inputs.adapters.count)
        o.seed = settings.seed
        o.shotsPerTask = k
        if let s = settings.steps {
            o.steps = s
            o.evaluations = max(2, s)
        }
        if let e = settings.evaluations { o.evaluations = max(2, e) }
        // LoraHub's L1 0.05 and σ = 1/n come with the library's defaults: around 1/n (0.07 for 14
        // adapters) σ = 0.5 made every first sample far worse than the start, and 40 evaluations
        // never got back (measured: the row stayed at `linear`).
        return (method, o)
    }

    /// The coefficient every learned row starts from (see `learnedOptions`).
    public static func learnedStart(adapters n: Int) -> Double { AtlasDefaults.start(adapters: n) }

    /// Work units of one fit, in scored-example equivalents (measured on SmolLM2: a gradient step
    /// costs about five scored examples per sequence of its batch, a LoraHub evaluation about one
    /// per shot).
    func fitUnits(_ m: ReportMethod, shots k: Int) -> Int {
        guard let (method, o) = try? learnedOptions(m, shots: k) else { return 0 }
        let shots = learnedShots(k).reduce(0) { $0 + $1.examples.count }
        switch method {
        case .lorahub: return o.evaluations * shots
        default: return o.steps * min(o.batchSize, max(shots, 1)) * 5
        }
    }

    /// The first k shots of each report task (tasks without a shots file have none).
    func learnedShots(_ k: Int) -> [EvalTask] {
        ReportInputs.firstExamples(taskNames.compactMap { n in inputs.shots.first { $0.name == n } }, k)
    }

    /// One fit per shots count; the row is the fit at `settings.shotsPerTask` (evaluated with
    /// accuracy when the report has it), the curve every fit's mean held-out loss.
    private func learnedRow(_ m: ReportMethod) throws -> (ReportRow, [ReportShotsPoint]) {
        var main: ReportRow?
        var curve: [ReportShotsPoint] = []
        for k in shotCounts {
            let isMain = k == settings.shotsPerTask
            if !isMain && !settings.shotsCurve.contains(k) { continue }
            let row = try learnedFit(m, shots: k, accuracy: isMain ? settings.accuracy : false)
            curve.append(ReportShotsPoint(shots: k, meanLoss: row.meanLoss, tasks: row.tasks.mapValues(\.loss)))
            if isMain { main = row }
        }
        return (main!, curve)
    }

    private func learnedFit(_ m: ReportMethod, shots k: Int, accuracy: Bool) throws -> ReportRow {
        let (method, options) = try learnedOptions(m, shots: k)
        let shots = learnedShots(k)
        for t in test where !shots.contains(where: { $0.name == t.name && !$0.examples.isEmpty }) {
            throw ReportError.emptyShots(task: t.name, file: inputs.shots.first { $0.name == t.name }?.path)
        }
        let val = taskNames.compactMap { n in inputs.val.first { $0.name == n } }
        let id = "\(m.id)@\(k)shots"
        var key = cacheKey(m, adapters: inputs.adapters.map(\.name), accuracy: accuracy)
        key.learned = ["shots": shots.map(Digest.task).joined(separator: ","), "val": val.map(Digest.task).joined(separator: ","),
                       "shotsPerTask": String(k), "steps": String(options.steps), "evaluations": String(options.evaluations),
                       "seed": String(options.seed), "l1": String(options.l1),
                       "start": String(options.initialCoefficient), "catScale": String(options.catScale ?? 0),
                       "sigma": String(options.lorahubSigma)]
        var entry = try loadCache(id, key: key)
        let missing = test.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        if !missing.isEmpty {
            // A partial entry cannot be finished without the fitted adapter, which is not cached
            // (a rank-Σr adapter per fit would dwarf the report): the fit is redone, seeded.
            let start = Date()
            let label = "\(m.id) fit (\(k) shots/task)"
            let units = fitUnits(m, shots: k)
            let relay = ProgressRelay { [unowned self] step, total in
                self.fitTick(units: units, step: step, total: total, label: label)
            }
            fitReported = 0
            let result = try LearnedFusion.fuse(method: method, adapters: inputs.adapters, model: model, shots: shots, val: val,
                                                options: options, progress: { step, total, _ in relay.call(step, total) })
            tick(units - fitReported, label)
            entry.fuseSeconds = Date().timeIntervalSince(start)
            entry.coefficients = ReportCoefficients(result.coefficients, layers: model.config.numHiddenLayers,
                                                    start: options.initialCoefficient)
            entry.tasks = [:]
            try evaluate(result.adapter, on: test, entry: &entry, cacheID: id, label: "\(m.id) (\(k) shots)", accuracy: accuracy)
        } else {
            tick(fitUnits(m, shots: k), "\(m.id) (cached)")
        }
        skipCached(except: missing.isEmpty ? [] : test, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, shots: k, fuseSeconds: entry.fuseSeconds,
                         evalSeconds: entry.evalSeconds, coefficients: entry.coefficients)
    }

    private var fitReported = 0

    private func fitTick(units: Int, step: Int, total: Int, label: String) {
        let target = total > 0 ? units * min(step, total) / total : 0
        if target > fitReported {
            tick(target - fitReported, "\(label) step \(step)/\(total)")
            fitReported = target
        }
    }

    // MARK: Rows

    private func staticRow(_ m: ReportMethod) throws -> ReportRow {
        let key = cacheKey(m, adapters: inputs.adapters.map(\.name))
        var entry = try loadCache(m.id, key: key)
        let missing = test.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
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
                         evalSeconds: entry.evalSeconds, warnings: warnings)
    }

    private func expertRow(_ m: ReportMethod) throws -> ReportRow {
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

    private func evaluateRow(_ m: ReportMethod, cacheID: String, adapter: LoRAAdapter?) throws -> ReportRow {
        let key = cacheKey(m, adapters: adapter.map { [$0.name] } ?? [])
        var entry = try loadCache(cacheID, key: key)
        let missing = test.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        if !missing.isEmpty {
            try evaluate(adapter, on: missing, entry: &entry, cacheID: cacheID, label: m.id)
        }
        skipCached(except: missing, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, evalSeconds: entry.evalSeconds)
    }

    /// Every adapter on every task, loss only; the diagonal comes from the experts row when there
    /// is one (the loss pass is the same with or without accuracy).
    private func expertMatrix(experts: ReportRow?) throws -> [[Double?]] {
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
        let n = test.filter { t in !missing.contains { $0.name == t.name } }.reduce(0) { $0 + $1.examples.count }
        if n > 0 { tick(n, "\(label) (cached)") }
    }

    /// Applies `adapter` (nil: base) merged into the weights and evaluates `tasks`, saving the cache
    /// after every task so an interrupted run loses at most one task.
    func evaluate(_ adapter: LoRAAdapter?, on tasks: [EvalTask], entry: inout CacheEntry, cacheID: String,
                          label: String, accuracy: Bool? = nil,
                          digest: ((EvalTask) -> String)? = nil) throws {
        let mode = LoRAMode(rawValue: settings.adapterMode) ?? .merged
        let adapters = try adapter.map { try model.prepare([($0, 1)], mode: mode) } ?? .none
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

    // MARK: Cache

    struct CacheKey: Codable, Equatable {
        var method: ReportMethod
        var adapters: [String: String]
        var model: String
        var accuracy: Bool
        var adapterMode: String
        /// `Digest.file` of the model and `Digest.executable` of the build that computed the row
        /// (absent in entries from before they were keyed: those never match).
        var modelDigest: String?
        var code: String?
        /// Learned rows: what the fit depends on besides the method and the adapters.
        var learned: [String: String]?
    }

    struct CachedTask: Codable, Equatable {
        var digest: String
        var result: TaskEvalResult
    }

    struct CacheEntry: Codable {
        var key: CacheKey
        var tasks: [String: CachedTask] = [:]
        var fuseSeconds: Double?
        var evalSeconds: Double = 0
        var warnings: [String] = []
        var coefficients: ReportCoefficients?
        var icm: ReportICMDetails?

        func results(for tasks: [EvalTask]) -> [String: TaskEvalResult] {
            var out: [String: TaskEvalResult] = [:]
            for t in tasks { out[t.name] = self.tasks[t.name]?.result }
            return out
        }
    }

    func cacheKey(_ m: ReportMethod, adapters: [String], accuracy: Bool? = nil) -> CacheKey {
        CacheKey(method: m, adapters: Dictionary(uniqueKeysWithValues: adapters.map { ($0, adapterDigests[$0]!) }),
                 model: settings.model, accuracy: accuracy ?? settings.accuracy, adapterMode: settings.adapterMode,
                 modelDigest: modelDigest, code: codeVersion)
    }

    /// Cache files are named after the row id with anything unsafe for a file name replaced.
    func cachePath(_ id: String) -> String {
        let safe = String(id.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || "-_.@".unicodeScalars.contains($0) ? Character($0) : "_" })
        let name = safe == id ? safe : safe + "-" + String(Digest.fnv(Array(id.utf8)), radix: 16)
        return (cacheDirectory as NSString).appendingPathComponent(name + ".json")
    }

    func loadCache(_ id: String, key: CacheKey) throws -> CacheEntry {
        let path = cachePath(id)
        guard !force, let data = FileManager.default.contents(atPath: path) else { return CacheEntry(key: key) }
        let entry: CacheEntry
        do {
            entry = try JSONDecoder().decode(CacheEntry.self, from: data)
        } catch {
            throw ReportError.cacheUnreadable(file: path, detail: "\(error)")
        }
        // A different key means the row itself changed: start it over.
        return entry.key == key ? entry : CacheEntry(key: key)
    }

    func saveCache(_ id: String, _ entry: CacheEntry) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = cachePath(id)
        let tmp = path + ".tmp"
        try enc.encode(entry).write(to: URL(fileURLWithPath: tmp))
        _ = try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: tmp, toPath: path)
    }
}

/// Lets the learned fit's `@Sendable` progress callback reach the runner, which is only ever
/// used from the thread that runs it (the fit calls back synchronously).
private final class ProgressRelay: @unchecked Sendable {
    let body: (Int, Int) -> Void
    init(_ body: @escaping (Int, Int) -> Void) { self.body = body }
    func call(_ step: Int, _ total: Int) { body(step, total) }
}

/// Content digests for the cache (FNV-1a 64, hex): equal inputs give equal digests.
enum Digest {
    static func fnv(_ bytes: [UInt8], _ h0: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
        var h = h0
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }

    static func fnv(floats: [Float], _ h0: UInt64) -> UInt64 {
        var h = h0
        for f in floats {
            var bits = f.bitPattern
            for _ in 0..<4 { h = (h ^ UInt64(bits & 0xFF)) &* 0x100_0000_01B3; bits >>= 8 }
        }
        return h
    }

    /// Every module's name, scale and factors.
    static func adapter(_ a: LoRAAdapter) -> String {
        var h = fnv(Array(a.name.utf8))
        for n in a.moduleNames {
            let m = a.modules[n]!
            h = fnv(Array(n.utf8), h)
            h = fnv(floats: [m.scale], h)
            h = fnv(floats: m.A.data, h)
            h = fnv(floats: m.B.data, h)
        }
        return String(h, radix: 16)
    }

    /// A content digest of a file that stays cheap for a model of any size: its size and 64
    /// blocks of 64 KiB spread evenly over it (the header, the end and everything between in
    /// steps), so a different model, quantization or fine-tune of the same size changes it.
    /// A folder (HF checkpoint) digests its safetensors and config files that way, by name.
    static func file(_ path: String) -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return "absent" }
        if isDir.boolValue {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
                .filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".json") }
            var h = fnv([])
            for n in names { h = fnv(Array((n + "=" + file((path as NSString).appendingPathComponent(n))).utf8), h) }
            return String(h, radix: 16)
        }
        guard let fh = FileHandle(forReadingAtPath: path) else { return "unreadable" }
        defer { try? fh.close() }
        let size = (try? fh.seekToEnd()) ?? 0
        var h = fnv(Array(String(size).utf8))
        let block: UInt64 = 1 << 16, blocks: UInt64 = 64
        let stride = size > block ? (size - block) / (blocks - 1) : 0
        for i in 0..<blocks {
            try? fh.seek(toOffset: min(i * stride, size))
            if let d = try? fh.read(upToCount: Int(block)) { h = fnv(Array(d), h) }
            if stride == 0 { break }
        }
        return String(h, radix: 16)
    }

    /// The running build: the executable's size and modification time, which every rebuild
    /// changes (a sampled digest could miss a one-constant change in a large binary).
    static func executable() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? Bundle.main.executablePath ?? CommandLine.arguments[0]
        var st = stat()
        guard stat(exe, &st) == 0 else { return "unknown" }
        return "\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    /// The examples (prompt and answer) in order.
    static func task(_ t: EvalTask) -> String {
        var h = fnv(Array(t.name.utf8))
        for e in t.examples {
            h = fnv(Array(e.prompt.utf8) + [0], h)
            h = fnv(Array(e.answer.utf8) + [1], h)
        }
        return String(h, radix: 16)
    }
}
