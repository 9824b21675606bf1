import Foundation

/// The learned-fusion rows of a report: fits at each shot count, the shots curve, progress.
extension ReportRunner {
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
    func learnedRow(_ m: ReportMethod) throws -> (ReportRow, [ReportShotsPoint]) {
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

    func learnedFit(_ m: ReportMethod, shots k: Int, accuracy: Bool) throws -> ReportRow {
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
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
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
            try evaluate(result.adapter, on: scored, entry: &entry, cacheID: id, label: "\(m.id) (\(k) shots)", accuracy: accuracy)
        } else {
            tick(fitUnits(m, shots: k), "\(m.id) (cached)")
        }
        skipCached(except: missing.isEmpty ? [] : scored, label: m.id)
        return ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, shots: k, fuseSeconds: entry.fuseSeconds,
                         evalSeconds: entry.evalSeconds, coefficients: entry.coefficients).with(composite: entry.results(for: composite))
    }


    func fitTick(units: Int, step: Int, total: Int, label: String) {
        let target = total > 0 ? units * min(step, total) / total : 0
        if target > fitReported {
            tick(target - fitReported, "\(label) step \(step)/\(total)")
            fitReported = target
        }
    }
}

/// Lets the learned fit's `@Sendable` progress callback reach the runner, which is only ever
/// used from the thread that runs it (the fit calls back synchronously).
private final class ProgressRelay: @unchecked Sendable {
    let body: (Int, Int) -> Void
    init(_ body: @escaping (Int, Int) -> Void) { self.body = body }
    func call(_ step: Int, _ total: Int) { body(step, total) }
}
