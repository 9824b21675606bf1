import Foundation

// ICM-Fusion in the report: the main row, its ablations, a few-shot and a long-tailed setting.
// Every row is one fused adapter decoded by a Fusion VAE (docs/icm-fusion.md) and evaluated like
// every other row; the generator behind it (expensive: the VAE and its meta-learning) is cached
// as a state file under cache/ and shared by the rows that train the same one.

/// The ICM rows the report knows, as data (`ReportMethod.method` of an `.icm` row).
public enum ICMVariant: String, CaseIterable, Codable, Sendable {
    case full = "icm-fusion"
    case noMeta = "icm-fusion/no-meta"
    case noOrientation = "icm-fusion/no-orientation"
    case noCondition = "icm-fusion/no-condition"
    case noAdaptation = "icm-fusion/no-adaptation"
    case fewShot = "icm-fusion/few-shot"
    case longTail = "icm-fusion/long-tail"
    /// Not ICM-Fusion: the same in-context adaptation started from the factor-wise mean of the
    /// adapters (the point the decoder's position offset starts from), to show what the
    /// generator adds over the adaptation alone.
    case meanInit = "icm-fusion/mean-init"

    public var summary: String {
        switch self {
        case .full: return "Fusion VAE + meta-learning + conflict projections + in-context adaptation"
        case .noMeta: return "ablation: no meta-learning (VAE trained on reconstruction only)"
        case .noOrientation: return "ablation: no conflict projections (latents combined by learned weights only)"
        case .noCondition: return "ablation: no task condition (zeros instead of the mean hidden states)"
        case .noAdaptation: return "ablation: decoded fusion only, no in-context adaptation steps"
        case .fewShot: return "few-shot setting"
        case .longTail: return "long-tailed setting"
        case .meanInit: return "control, no generator: the same in-context adaptation started from the factor-wise mean of the adapters (same rank)"
        }
    }

    /// Rows that train a generator of their own; no-orientation and no-adaptation change only the
    /// fusion and find the main row's in the cache, mean-init uses none (progress estimate only:
    /// the sharing itself follows from the cache key).
    var trainsGenerator: Bool { ![.noOrientation, .noAdaptation, .meanInit].contains(self) }

    func generatorOptions(_ base: ICMGeneratorOptions) -> ICMGeneratorOptions {
        var g = base
        if self == .noMeta { g.metaSteps = 0 }
        if self == .noCondition { g.useCondition = false }
        return g
    }

    func fusionOptions(_ base: ICMFusionOptions) -> ICMFusionOptions {
        var f = base
        if self == .noOrientation { f.orientation = false }
        if self == .noAdaptation { f.adaptSteps = 0 }
        return f
    }
}

/// Settings of the ICM rows.
public struct ReportICMSettings: Codable, Sendable, Equatable {
    public var generator: ICMGeneratorOptions
    public var fusion: ICMFusionOptions
    /// Shots per task of the few-shot row.
    public var fewShots: Int
    /// The long-tailed row: this task gets `longTailShots`, the others the report's shots per task
    /// (nil: the task with the smallest shots pool, the suite's long-tailed one).
    public var longTailTask: String?
    public var longTailShots: Int
    /// Directory with `<task>/checkpoint-<step>/` training checkpoints (`lorafuse train
    /// --checkpoint-dir`, `make adapters`): the VAE's extra samples. Nil: final adapters only.
    public var trajectories: String?
    /// Checkpoints per task, the last ones.
    public var maxCheckpoints: Int
    /// Part of each task's shots held out of the generator and the fusion, used only to choose
    /// how many in-context adaptation steps to keep (`ICMPipeline.selectionSplit`).
    public var selectionFraction: Double

    /// `generator.metaSteps` nil runs the generator's default (`ICMGeneratorOptions.defaultMetaSteps`).
    public init(generator: ICMGeneratorOptions = ICMGeneratorOptions(), fusion: ICMFusionOptions = ICMFusionOptions(),
                fewShots: Int = 4, longTailTask: String? = nil, longTailShots: Int = 2, trajectories: String? = nil,
                maxCheckpoints: Int = ICMPipelineOptions().maxCheckpoints,
                selectionFraction: Double = ICMPipelineOptions().selectionFraction) {
        self.selectionFraction = selectionFraction
        self.generator = generator; self.fusion = fusion; self.fewShots = fewShots; self.longTailTask = longTailTask
        self.longTailShots = longTailShots; self.trajectories = trajectories; self.maxCheckpoints = maxCheckpoints
    }

    /// The pipeline options of variant `v`'s row over `tasks` tasks: the variant's generator and
    /// fusion options, the meta-learning steps resolved (so the cache key names the number run)
    /// and one seed.
    public func pipelineOptions(_ v: ICMVariant, tasks: Int, seed: UInt64) -> ICMPipelineOptions {
        var g = v.generatorOptions(generator)
        g.metaSteps = g.metaSteps(tasks: tasks)
        var o = ICMPipelineOptions(generator: g, fusion: v.fusionOptions(fusion), maxCheckpoints: maxCheckpoints,
                                   selectionFraction: selectionFraction)
        o.seed = seed
        return o
    }
}

/// What an ICM row records besides its scores.
public struct ReportICMDetails: Codable, Sendable, Equatable {
    public struct Reconstruction: Codable, Sendable, Equatable {
        public var task: String
        /// ‖θ̂ − θ‖/‖θ‖ over the adapter's A and B, θ̂ decoded from the task's latent mean.
        public var relative: Double
        /// MSE of the z-scored chunks (what the VAE is trained on).
        public var normalisedMSE: Double
        /// ‖x̂ − x‖/‖x − P‖ in the z-scored space: the error on what differs from the mean adapter.
        public var deviation: Double?
    }

    /// Shots per task of the row, in all: the generator and the fusion learn from them minus
    /// `selectionShots`, which only choose the number of adaptation steps.
    public var shots: [String: Int]
    /// Optional so cache entries written before they existed still decode (their keys differ, so
    /// the row is recomputed rather than the cache refused).
    public var selectionShots: [String: Int]?
    public var adaptation: ICMAdaptation?
    /// Adapters the VAE was trained on: finals + trajectory checkpoints.
    public var samples: Int
    public var checkpoints: Int
    public var metaSteps: Int
    public var weights: [Double]
    public var gains: [Double]
    /// Last lines of the generator training (VAE and meta steps) and of the fusion.
    public var log: [String]
    public var reconstruction: [Reconstruction]
    /// Bytes of the generator: network (F32), its fixed basis (P F32, U bf16), and per known task
    /// (condition, statistics, latents; F32).
    public var generatorNetworkBytes: Int
    public var generatorBasisBytes: Int?
    public var generatorPerTaskBytes: Int
    /// 1 − the weighted variance of the training samples the basis holds.
    public var basisResidual: Double?
    /// The adapters it stands for: as F32, and as the files hold them.
    public var adaptersF32Bytes: Int
    public var adaptersStoredBytes: Int
    public var generatorSeconds: Double

    public var generatorBytes: Int { generatorNetworkBytes + (generatorBasisBytes ?? 0) + generatorPerTaskBytes * shots.count }
}

extension ReportMethods {
    public static var icmNames: [String] { ICMVariant.allCases.map(\.rawValue) }

    public static func icm(_ name: String) -> ReportMethod {
        ReportMethod(id: name, family: .icm, method: name)
    }
}

extension ReportRunner {
    /// The long-tailed row's task: as set, else the one with the smallest shots pool.
    func longTailTask() -> String? {
        if let t = settings.icm.longTailTask { return t }
        let pools = taskNames.compactMap { n in inputs.shots.first { $0.name == n } }
        return pools.min { $0.examples.count < $1.examples.count }?.name
    }

    /// Shots per task of a variant.
    func icmShots(_ v: ICMVariant) -> [String: Int] {
        var out: [String: Int] = [:]
        for n in taskNames { out[n] = v == .fewShot ? settings.icm.fewShots : settings.shotsPerTask }
        if v == .longTail, let t = longTailTask() { out[t] = settings.icm.longTailShots }
        return out
    }

    func icmUnits(_ m: ReportMethod) -> Int {
        // Scored-example equivalents (a gradient step on ~512 tokens ≈ 40 scored examples on
        // SmolLM2; the VAE's steps ≈ 100): measured loosely, only for the progress bar.
        guard let v = ICMVariant(rawValue: m.method) else { return 0 }
        let o = settings.icm.pipelineOptions(v, tasks: taskNames.count, seed: settings.seed)
        let g = o.generator, f = o.fusion
        let gen = !v.trainsGenerator ? 0 : 100 + g.metaSteps(tasks: taskNames.count) * (g.innerSteps + 2) * 20
        return gen + (f.steps + f.adaptSteps) * 40
    }

    /// The tasks of variant `v`'s row as `ICMPipeline` takes them: each task's adapter and the
    /// first shots of its pool (`icmShots`; the pipeline holds the selection part out itself).
    func icmTasks(_ v: ICMVariant) throws -> [ICMPipeline.TaskInput] {
        if v == .longTail, let t = settings.icm.longTailTask, !taskNames.contains(t) {
            throw ReportError.unknownTask(t, known: taskNames)
        }
        let shotCount = icmShots(v)
        return try taskNames.map { n in
            guard let pool = inputs.shots.first(where: { $0.name == n }), !pool.examples.isEmpty else {
                throw ReportError.emptyShots(task: n, file: inputs.shots.first { $0.name == n }?.path)
            }
            guard let a = inputs.adapters.first(where: { $0.name == n }) else { throw ReportError.missingAdapter(task: n) }
            return ICMPipeline.TaskInput(name: n, adapterPath: n, shots: ReportInputs.firstExamples([pool], shotCount[n]!)[0], adapter: a,
                                         trajectoryDir: settings.icm.trajectories.map { ($0 as NSString).appendingPathComponent(n) })
        }
    }

    /// Variant `v`'s fused adapter and what its row records. ICM-Fusion is `ICMPipeline.fuse`
    /// with the variant's options and the generator from cache/ (trained there on a miss); the
    /// mean-init control replaces the generator's decoded start by the adapters' factor-wise mean.
    func icmFused(_ v: ICMVariant, label: String, say: @escaping (String) -> Void) throws -> (adapter: LoRAAdapter, details: ReportICMDetails) {
        let tasks = try icmTasks(v)
        let options = settings.icm.pipelineOptions(v, tasks: tasks.count, seed: settings.seed)
        let (learn, selection) = ICMPipeline.learningTasks(tasks, options: options)
        let adapters = tasks.map { $0.adapter! }
        let units = icmUnits(ReportMethods.icm(v.rawValue))
        var details = ReportICMDetails(
            shots: icmShots(v), selectionShots: Self.counts(selection), adaptation: nil, samples: 0, checkpoints: 0, metaSteps: 0,
            weights: [], gains: [], log: [], reconstruction: [], generatorNetworkBytes: 0, generatorBasisBytes: nil, generatorPerTaskBytes: 0, basisResidual: nil,
            adaptersF32Bytes: adapters.reduce(0) { $0 + $1.parameterCount * 4 },
            adaptersStoredBytes: adapters.reduce(0) { $0 + $1.parameterCount * $1.sourceDType.byteSize }, generatorSeconds: 0)
        if v == .meanInit {
            // θ = (mean A_i, mean B_i) at the adapters' rank and layout. (LoraHub's factor
            // composition computes the same sums, but over its concatenated problem, whose
            // parameters carry the concatenation's rank and no α: fine for its engine, not
            // for an adapter to write.)
            let support = try learn.flatMap { try TrainingData.sequences($0.shots, model: model) }
            let held = try selection.flatMap { try TrainingData.sequences($0, model: model) }
            let ps = try adapters.map { try LoRAParameters(adapter: $0, config: model.config) }
            var mean = ps[0]
            for i in mean.modules.indices {
                for k in mean.modules[i].A.indices { mean.modules[i].A[k] = ps.reduce(0) { $0 + $1.modules[i].A[k] } / Float(ps.count) }
                for k in mean.modules[i].B.indices { mean.modules[i].B[k] = ps.reduce(0) { $0 + $1.modules[i].B[k] } / Float(ps.count) }
            }
            let (adapted, line, a) = ICMGenerator.adaptOnSupport(mean, support: support, selection: held,
                                                                 engine: LlamaTrainingEngine(model: model), options: options.fusion)
            say(line)
            details.adaptation = a
            details.log = [line]
            return (adapted.adapter(name: label, baseModel: model.sourcePath), details)
        }
        var genSeconds = 0.0, genLog: [String] = []
        let genKey = icmGeneratorKey(options: options.generator, tasks: learn)
        let r = try ICMPipeline.fuse(model: model, tasks: tasks, options: options, generator: .provided { learn in
            let (g, seconds, log) = try self.icmGenerator(key: genKey, options: options.generator, inputs: learn, say: say)
            genSeconds = seconds; genLog = log
            self.tick(units / 2, "\(label): generator ready")
            return g
        }, adapterName: label, progress: say)
        let gen = r.generator
        for (i, a) in adapters.enumerated() {
            let e = gen.reconstructionError(task: i, parameters: try LoRAParameters(adapter: a, config: model.config))
            details.reconstruction.append(.init(task: taskNames[i], relative: e.relative, normalisedMSE: e.normalisedMSE, deviation: e.deviation))
        }
        details.checkpoints = learn.map { $0.samplePaths(maxCheckpoints: options.maxCheckpoints).count - 1 }.reduce(0, +)
        details.samples = taskNames.count + details.checkpoints
        details.metaSteps = options.generator.metaSteps(tasks: tasks.count)
        details.adaptation = r.result.adaptation
        details.weights = r.result.fusion.weights.map(Double.init)
        details.gains = r.result.fusion.logGain.map { Double(exp($0)) }
        details.log = Array(genLog.suffix(12)) + r.result.log.suffix(6)
        (details.generatorNetworkBytes, details.generatorBasisBytes, details.generatorPerTaskBytes) = gen.storageBytes
        details.basisResidual = gen.basisResidual
        details.generatorSeconds = genSeconds
        return (r.adapter, details)
    }

    /// One ICM row: the variant's fused adapter (`icmFused`), evaluated like every other row; the
    /// row's cache key holds the generator's key, the fusion options, the shots and the selection shots.
    func icmRow(_ m: ReportMethod) throws -> ReportRow {
        guard let v = ICMVariant(rawValue: m.method) else {
            throw ReportError.unknownICMVariant(m.method)
        }
        let tasks = try icmTasks(v)
        let options = settings.icm.pipelineOptions(v, tasks: tasks.count, seed: settings.seed)
        let (learn, selection) = ICMPipeline.learningTasks(tasks, options: options)
        let genKey = v == .meanInit ? "none" : icmGeneratorKey(options: options.generator, tasks: learn)

        var key = cacheKey(m, adapters: taskNames)
        key.learned = ["generator": genKey, "fusion": Self.json(options.fusion), "shots": learn.map { Digest.task($0.shots) }.joined(separator: ","),
                       "selection": selection.map(Digest.task).joined(separator: ",")]
        var entry = try loadCache(m.id, key: key)
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        let units = icmUnits(m)
        if !missing.isEmpty {
            let start = Date()
            let say: (String) -> Void = { [unowned self] line in self.tick(0, "\(m.id): \(line)") }
            let (fused, details) = try icmFused(v, label: m.id, say: say)
            tick(units - (v == .meanInit ? 0 : units / 2), "\(m.id): fused")
            entry.fuseSeconds = Date().timeIntervalSince(start)
            entry.icm = details
            entry.tasks = [:]
            try evaluate(fused, on: scored, entry: &entry, cacheID: m.id, label: m.id)
        } else {
            tick(units, "\(m.id) (cached)")
        }
        skipCached(except: missing.isEmpty ? [] : scored, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, shots: v == .fewShot ? settings.icm.fewShots : settings.shotsPerTask,
                         fuseSeconds: entry.fuseSeconds, evalSeconds: entry.evalSeconds, icm: entry.icm).with(composite: entry.results(for: composite))
    }

    static func counts(_ tasks: [EvalTask]) -> [String: Int] {
        Dictionary(uniqueKeysWithValues: tasks.map { ($0.name, $0.examples.count) })
    }

    static func json<T: Encodable>(_ v: T) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return (try? String(decoding: enc.encode(v), as: UTF8.self)) ?? ""
    }

    /// Digest of everything a generator depends on: options, model, adapters, shots and the
    /// trajectory checkpoints it will read (`TaskInput.samplePaths`, by path, size and modification
    /// time: reading every checkpoint to hash it would cost more than the check is worth).
    func icmGeneratorKey(options: ICMGeneratorOptions, tasks: [ICMPipeline.TaskInput]) -> String {
        var parts = [Self.json(options), settings.model, String(settings.icm.maxCheckpoints)]
        parts += taskNames.map { adapterDigests[$0] ?? "" }
        parts += tasks.map { Digest.task($0.shots) }
        let fm = FileManager.default
        for c in tasks.flatMap({ $0.samplePaths(maxCheckpoints: settings.icm.maxCheckpoints).compactMap { $0 } }) {
            for f in ((try? fm.contentsOfDirectory(atPath: c)) ?? []).sorted() {
                let a = (try? fm.attributesOfItem(atPath: (c as NSString).appendingPathComponent(f))) ?? [:]
                parts.append("\(c)/\(f):\((a[.size] as? NSNumber)?.intValue ?? 0):\((a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)")
            }
        }
        return String(Digest.fnv(Array(parts.joined(separator: "\n").utf8)), radix: 16)
    }

    /// What the cache keeps beside a generator: its training time and log.
    struct GeneratorRecord: Codable {
        var seconds: Double
        var log: [String]
    }

    /// The generator for `key`: from cache/icm-generator-<key>.safetensors (with its record in
    /// the .json beside it), or trained and saved there.
    func icmGenerator(key: String, options: ICMGeneratorOptions, inputs: [ICMPipeline.TaskInput],
                      say: @escaping (String) -> Void) throws -> (ICMGenerator, Double, [String]) {
        let path = (cacheDirectory as NSString).appendingPathComponent("icm-generator-\(key).safetensors")
        let recordPath = (cacheDirectory as NSString).appendingPathComponent("icm-generator-\(key).json")
        if !force, FileManager.default.fileExists(atPath: path) {
            let g = try ICMGenerator.load(path: path)
            let rec = FileManager.default.contents(atPath: recordPath).flatMap { try? JSONDecoder().decode(GeneratorRecord.self, from: $0) }
            say("generator loaded from \(path)")
            return (g, rec?.seconds ?? 0, rec?.log ?? [])
        }
        let start = Date()
        var log: [String] = []
        let g = try ICMPipeline.trainGenerator(model: model, tasks: inputs, maxCheckpoints: settings.icm.maxCheckpoints,
                                               options: options, progress: { line in log.append(line); say(line) })
        let seconds = Date().timeIntervalSince(start)
        try g.save(to: path)
        try JSONEncoder().encode(GeneratorRecord(seconds: seconds, log: log)).write(to: URL(fileURLWithPath: recordPath))
        return (g, seconds, log)
    }
}
