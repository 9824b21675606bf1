import Foundation

/// What the gates of a routed row did on the held-out answers of each task whose adapter is among
/// the routed ones: the share of (answer row, routed projection) pairs whose top-1 expert is the
/// task's own adapter, and the mean gate weight on that adapter per layer.
public struct ReportRouting: Codable, Sendable, Equatable {
    public var topK: Int
    public var temperature: Float
    public var ownTopOne: [String: Double]
    /// Task → per layer, mean weight on the task's own adapter (0 where no projection is routed).
    public var ownWeightByLayer: [String: [Double]]
}

extension ReportMethods {
    public static var routedNames: [String] { RouteMethod.allCases.map { "route-" + $0.rawValue } + ["route-" + arrowGKS] }

    /// Arrow after GenKnowSub with the routed adapters' own mean as the general knowledge: the
    /// report has no general adapter, and this is the variant measured best on the suite (README,
    /// "Routing"). Training-free like route-arrow.
    public static let arrowGKS = "arrow-gks"

    /// Routed rows that fit nothing on the shots.
    public static func routedNeedsShots(_ id: String) -> Bool { id != "route-arrow" && id != "route-" + arrowGKS }

    public static func routed(_ id: String) -> ReportMethod {
        ReportMethod(id: id, family: .routed, method: String(id.dropFirst("route-".count)))
    }

    static let routedSummary: [String: String] = [
        "meteora": "per-token top-2 gates, MeteoRA: LM loss through the routed model + 50 × supervised gate loss, on the shots",
        "arrow": "per-token top-2 gates, Arrow prototypes (training-free)",
        "arrow-gks": "per-token top-2 gates, Arrow prototypes after GenKnowSub: the mean of the routed adapters subtracted from each, once per routed projection (training-free)",
        "hidden": "per-token top-2 gates, mean hidden state per task (mergekit-moe, training-free)",
        "sequence": "one adapter per request, classifier on the prompt's mean hidden state",
        "xlora": "per-token, per-layer scalings of every adapter from a classifier on the base model's last hidden state (X-LoRA), LM loss on the shots",
    ]
}

extension ReportRunner {
    /// Work units of a routed row: evaluation, the gate trace over the test answers, the fit.
    func routedUnits(_ m: ReportMethod) -> Int {
        let examples = test.reduce(0) { $0 + $1.examples.count }
        let n = inputs.adapters.count
        switch RouteMethod(rawValue: m.method) {
        case .meteora?: return examples * 2 + RouteOptions(method: .meteora).steps * n * 2
        case .xlora?: return examples * 2 + n * settings.shotsPerTask + RouteOptions(method: .xlora).steps * n * 2
        case .hidden?: return examples * 2 + n * settings.shotsPerTask
        default: return examples * 2
        }
    }

    /// The router's shots: adapter i's task is the shots task with its name.
    func routedShots(_ method: RouteMethod) throws -> [EvalTask] {
        guard method.needsShots else { return [] }
        let pool = learnedShots(settings.shotsPerTask)
        return try inputs.adapters.map { a in
            guard let t = pool.first(where: { $0.name == a.name }), !t.examples.isEmpty else {
                throw ReportError.emptyShots(task: a.name, file: inputs.shots.first { $0.name == a.name }?.path)
            }
            return t
        }
    }

    func routedRow(_ m: ReportMethod) throws -> ReportRow {
        let gks = m.method == ReportMethods.arrowGKS
        guard let method = gks ? .arrow : RouteMethod(rawValue: m.method) else { throw ReportError.unknownLearnedMethod(m.method) }
        var options = RouteOptions(method: method)
        options.seed = settings.seed
        options.shotsPerTask = settings.shotsPerTask
        let shots = try routedShots(method)
        var key = cacheKey(m, adapters: inputs.adapters.map(\.name))
        key.learned = ["shots": shots.map(Digest.task).joined(separator: ","), "shotsPerTask": String(options.shotsPerTask),
                       "steps": String(options.steps), "lr": String(options.learningRate), "topK": String(options.topK),
                       "temperature": String(options.temperature), "supervise": options.supervise.rawValue,
                       "lmWeight": String(options.lmWeight), "gateWeight": String(options.gateWeight), "balance": String(options.balance),
                       "entropy": String(options.entropy)]
        if gks { key.learned?["general"] = "mean of the routed adapters, " + options.genKnowSub.rawValue }
        var entry = try loadCache(m.id, key: key)
        let missing = scored.filter { entry.tasks[$0.name]?.digest != Digest.task($0) }
        if !missing.isEmpty || entry.routing == nil {
            let start = Date()
            var fitDone = 0
            // GenKnowSub's general adapters are the routed ones themselves (copies: the builder
            // refuses an adapter given as both, by path).
            let general = gks ? inputs.adapters.map { a -> LoRAAdapter in var g = a; g.sourcePath = nil; return g } : []
            var routed = try RouterBuilder.build(model: model, adapters: inputs.adapters, shots: shots, options: options,
                                                 general: general) { done, total in
                let units = self.routedUnits(m) - self.test.reduce(0) { $0 + $1.examples.count } * 2
                let now = total > 0 ? units * done / total : 0
                self.tick(now - fitDone, "\(m.id) · fitting gates \(done)/\(total)")
                fitDone = now
            }
            if gks {
                // Routed as a saved folder is loaded: the experts as they are and −mean once per
                // routed projection (the gate weights sum to 1), not the mean's ranks in every expert.
                routed.adapters = inputs.adapters
                routed.fixed = try GenKnowSub.negatedMean(general)
            }
            entry.fuseSeconds = Date().timeIntervalSince(start)
            let set = try model.prepare(routed: routed)
            try evaluate(set: set, on: missing, entry: &entry, cacheID: m.id, label: m.id)
            skipCached(except: missing, label: m.id)
            // The gates on every task that has its own adapter among the routed ones.
            let own = test.compactMap { t in inputs.adapters.firstIndex { $0.name == t.name }.map { (t, $0) } }
            let traces = try RoutingSummary.traceByTask(model: model, set: set, tasks: own.map(\.0), shotsPerTask: Int.max)
            var top: [String: Double] = [:], byLayer: [String: [Double]] = [:]
            for ((t, i), trace) in zip(own, traces) {
                top[t.name] = trace.topOneFraction(of: i)
                if method != .sequence {   // a per-request choice has no per-layer weights
                    byLayer[t.name] = trace.meanWeightPerLayer(layers: model.config.numHiddenLayers).map { $0[i] }
                }
                tick(t.examples.count, "\(m.id) · gate trace \(t.name)")
            }
            entry.routing = ReportRouting(topK: routed.config.topK, temperature: options.temperature, ownTopOne: top, ownWeightByLayer: byLayer)
            try saveCache(m.id, entry)
        } else {
            tick(routedUnits(m), "\(m.id) (cached)")
        }
        var row = ReportRow(method: m, tasks: entry.results(for: test), order: taskNames, shots: method.needsShots ? options.shotsPerTask : nil,
                            fuseSeconds: entry.fuseSeconds, evalSeconds: entry.evalSeconds, warnings: entry.warnings)
        row.routing = entry.routing
        return row.with(composite: entry.results(for: composite))
    }
}

extension ReportRenderer {
    static let routingParagraph = "Own top-1: of the answer rows of a task's held-out examples and all routed projections, the share whose largest gate weight is on the task's own adapter (1/N is chance); for route-sequence, the share of the task's prompts sent to its own adapter. The heatmaps show, per task and layer, the mean gate weight on the task's own adapter."

    /// Routed rows: mean loss against the best fused row and the experts, and own top-1 per task.
    static func routingTable(_ r: ReportResults) -> Table? {
        let routed = r.rows.filter { $0.method.family == .routed }
        guard !routed.isEmpty else { return nil }
        let fused = r.rows.filter { [.static, .learned, .icm].contains($0.method.family) && $0.meanLoss != nil }
            .min { $0.meanLoss! < $1.meanLoss! }
        let experts = r.rows.first { $0.method.family == .expert }
        var t = Table(header: ["method", "mean loss", "Δ vs best fused" + (fused.map { " (\($0.method.id))" } ?? ""),
                               "Δ vs experts", "own top-1 (mean)"] + r.tasks, rows: [])
        t.numericFrom = 1
        for row in routed {
            let own = row.routing?.ownTopOne ?? [:]
            let mean = own.isEmpty ? nil : own.values.reduce(0, +) / Double(own.count)
            let dF = row.meanLoss.flatMap { m in fused?.meanLoss.map { m - $0 } }
            var dE: Double?
            if let e = experts, let m = row.meanLoss(over: Array(e.tasks.keys)), let em = e.meanLoss { dE = m - em }
            t.rows.append([row.method.id, num(row.meanLoss, 4), signed(dF), signed(dE), num(mean, 2)] + r.tasks.map { num(own[$0], 2) })
        }
        return t
    }

    static let trainedParagraph = "Each row is one adapter trained on the union of the tasks' training data (given with --trained: multi-task LoRA, or a mixture such as FlyLoRA, SMoRA or LoRAMoE), scored on the same held-out examples as every other row. It is the answer when the data of every task is at hand; fusion and routing are the answers when only the adapters are."

    /// `--trained` rows against the experts, the best fused row and the best routed row.
    static func trainedTable(_ r: ReportResults) -> Table? {
        let trained = r.rows.filter { $0.method.family == .trained }
        guard !trained.isEmpty else { return nil }
        func best(_ families: [ReportFamily]) -> ReportRow? {
            r.rows.filter { families.contains($0.method.family) && $0.meanLoss != nil }.min { $0.meanLoss! < $1.meanLoss! }
        }
        let fused = best([.static, .learned, .icm]), routed = best([.routed])
        let experts = r.rows.first { $0.method.family == .expert }
        var t = Table(header: ["method", "mean loss", "mean acc.", "Δ vs experts", "Δ vs best fused" + (fused.map { " (\($0.method.id))" } ?? ""),
                               "Δ vs best routed" + (routed.map { " (\($0.method.id))" } ?? "")] + r.tasks, rows: [])
        t.numericFrom = 1
        for row in trained {
            var dE: Double?
            if let e = experts, let m = row.meanLoss(over: Array(e.tasks.keys)), let em = e.meanLoss { dE = m - em }
            let dF = row.meanLoss.flatMap { m in fused?.meanLoss.map { m - $0 } }
            let dR = row.meanLoss.flatMap { m in routed?.meanLoss.map { m - $0 } }
            t.rows.append([row.method.id, num(row.meanLoss, 4), num(row.meanAccuracy, 3), signed(dE), signed(dF), signed(dR)]
                          + r.tasks.map { num(row.tasks[$0]?.loss, 3) })
        }
        return t
    }

    static let compositeParagraph = "Composite prompts ask two or more of the suite's tasks in one prompt (\"1) … 2) …\", made by lorafuse tasks composite from held-out examples), the answers joined by newlines: a routed model has to switch adapters inside one answer, a fused adapter has to hold every skill at once. Loss is over the joined answer; accuracy needs every line right. The best single expert is the adapter with the lowest mean loss on them, chosen knowing the answers (the best one adapter per request can do). These tasks are not part of any mean above."

    /// Every row scored on the composite tasks (`--composite`), with the best single adapter.
    static func compositeTable(_ r: ReportResults) -> Table? {
        guard let names = r.composite, !names.isEmpty else { return nil }
        func mean(_ res: [String: TaskEvalResult]) -> Double? {
            let v = names.compactMap { res[$0]?.loss }
            return v.count == names.count ? v.reduce(0, +) / Double(v.count) : nil
        }
        var header = ["method", "family"]
        for n in names { header += ["\(n) loss", "\(n) acc."] }
        header += names.count > 1 ? ["mean loss", "Δ vs base"] : ["Δ vs base"]
        var t = Table(header: header, rows: [])
        t.numericFrom = 2
        let base = r.rows.first { $0.method.family == .base }?.composite.flatMap(mean)
        func line(_ id: String, _ family: String, _ res: [String: TaskEvalResult]) {
            var cells = [id, family]
            for n in names { cells += [num(res[n]?.loss, 3), num(res[n]?.accuracy, 2)] }
            let m = mean(res)
            if names.count > 1 { cells.append(num(m, 3)) }
            cells.append(signed(m.flatMap { x in base.map { x - $0 } }))
            t.rows.append(cells)
        }
        for row in r.rows { if let c = row.composite { line(row.method.id, row.method.family.rawValue, c) } }
        let experts = (r.compositeExperts ?? [:]).compactMap { k, v in mean(v).map { (k, $0) } }
        if let best = experts.min(by: { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }) {
            line("best single expert (\(best.0))", "expert", r.compositeExperts![best.0]!)
            t.muted.insert(t.rows.count - 1)
        }
        return t
    }

    static func routingCharts(_ r: ReportResults) -> [Chart] {
        var out: [Chart] = []
        for row in r.rows where row.method.family == .routed {
            guard let g = row.routing, !g.ownWeightByLayer.isEmpty else { continue }
            let tasks = r.tasks.filter { g.ownWeightByLayer[$0] != nil }
            let layers = g.ownWeightByLayer[tasks[0]]!.count
            let values: [[Double?]] = tasks.map { g.ownWeightByLayer[$0]!.map { Optional($0) } }
            let hm = SVGHeatmap(title: "\(row.method.id): mean gate weight on the task's own adapter, per layer",
                                rowLabels: tasks, columnLabels: (0..<layers).map { "L\($0)" }, values: values,
                                scale: SVGHeatmap.autoScale(values), format: "%.2f",
                                legend: "mean gate weight (own adapter)", cellWidth: layers > 16 ? 30 : 40, cellHeight: 22)
            out.append(Chart(file: "gates-\(fileSafe(row.method.id)).svg",
                             caption: "\(row.method.id): gate weight on each task's own adapter per layer", svg: hm.render()))
        }
        return out
    }
}
