import Foundation

/// How a rank-gated adapter (FlyLoRA, SMoRA) trained on every task spreads each task's tokens over
/// its ranks — the "router load per expert per task" of a mixture. Counted on the answer rows of
/// the held-out examples (the rows whose next token is scored), at every gated module.
///
/// - `loadProfile[task]`: per module the share of the task's kept ranks that went to each rank,
///   sorted from most to least used, averaged over modules (rank j of one module is unrelated to
///   rank j of another, so only the sorted profile averages): flat at 1/r is perfectly balanced,
///   a steep head means a few ranks carry the task.
/// - `overlap[a][b]`: cosine similarity of two tasks' usage vectors (every module's r counts,
///   concatenated): 1 when they use the same ranks in the same proportions, lower the more the
///   mixture keeps them apart (FlyLoRA's "task decoupling").
public struct ReportRankUsage: Codable, Sendable, Equatable {
    public var tasks: [String]
    public var topK: Int
    public var ranks: Int
    public var loadProfile: [[Double]]
    public var overlap: [[Double]]
    /// LoRAMoE (a dense router): per task, the share of its router weight that went to the first
    /// half of the experts, the world-knowledge group of the balancing constraint (0.5: no lean).
    public var firstHalfShare: [Double]? = nil
    /// MixLoRA: the counts are of whole-FFN experts chosen per token at each layer's router
    /// (a "module" above is then a layer).
    public var ffnExperts: Bool? = nil

    /// Counts on the first `perTask` held-out examples of each task.
    static func measure(model: LlamaModel, adapter: LoRAAdapter, tasks: [EvalTask], perTask: Int) throws -> ReportRankUsage? {
        let set = try model.prepare([(adapter, 1)])
        if !set.mixtures.isEmpty { return try measureMixture(model: model, set: set, tasks: tasks, perTask: perTask) }
        let gated = set.linearFactors.compactMap { id, fs in fs.count == 1 && fs[0].gate != nil ? (id, fs[0]) : nil }.sorted { $0.0 < $1.0 }
        guard let first = gated.first?.1.gate else { return nil }
        // One usage entry per expert: a rank for FlyLoRA and SMoRA (tokens that kept it), an
        // expert of ranksPerExpert ranks for LoRAMoE (its softmax weight summed over tokens, since
        // a dense router keeps every expert for every token).
        let r = gated.map { $0.1.gate!.experts }.max()!
        let byID = Dictionary(uniqueKeysWithValues: gated)
        // u = x Aᵀ is recomputed here rather than taken from the forward: the observer sees only the
        // module's input, and this runs on 16 short examples per task, so buffers reused suffice.
        var u = [Float](), w = [Float]()
        var usage: [[Double]] = []
        for t in tasks {
            let seqs = try TrainingData.sequences(EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(perTask))), model: model)
            var counts = [Int: [Double]]()
            for (id, f) in gated { counts[id] = [Double](repeating: 0, count: f.gate!.experts) }
            let session = try model.makeLlamaSession(maxTokens: max(seqs.map(\.tokens.count).max() ?? 1, 1), adapters: set)
            var from = 0
            session.linearInputObserver = { id, x, rows in
                guard let f = byID[id], rows > from else { return }
                let n = rows - from, nIn = f.A.count / f.rank
                if u.count < n * f.rank { u = [Float](repeating: 0, count: n * f.rank); w = u }
                let g = f.gate!, gs = g.ranksPerExpert
                f.A.withUnsafeBufferPointer { a in
                    u.withUnsafeMutableBufferPointer { up in
                        BLAS.gemm(transA: false, transB: true, m: n, n: f.rank, k: nIn, alpha: 1, a: x + from * nIn, lda: nIn,
                                  b: a.baseAddress!, ldb: nIn, beta: 0, c: up.baseAddress!, ldc: f.rank)
                        w.withUnsafeMutableBufferPointer { wp in
                            g.select(up.baseAddress!, x: x + from * nIn, rows: n, weights: wp.baseAddress!)
                        }
                    }
                }
                for t in 0..<n {
                    for i in 0..<g.experts {
                        let wi = w[t * f.rank + i * gs]
                        counts[id]![i] += g.isDense ? Double(wi) : (wi > 0 ? 1 : 0)
                    }
                }
            }
            for s in seqs {
                session.reset()
                from = s.targets.firstIndex { $0 >= 0 } ?? s.tokens.count
                _ = try session.feed(s.tokens, lastOnly: true)
            }
            usage.append(gated.flatMap { id, _ in counts[id]! })
        }
        // Sorted load profile, averaged over modules.
        var profiles: [[Double]] = []
        for u in usage {
            var sum = [Double](repeating: 0, count: r)
            var off = 0, modules = 0
            for (_, f) in gated {
                let e = f.gate!.experts
                let c = Array(u[off..<(off + e)]); off += e
                let total = c.reduce(0, +)
                guard total > 0 else { continue }
                for (j, v) in c.sorted(by: >).enumerated() { sum[j] += v / total }
                modules += 1
            }
            profiles.append(sum.map { $0 / Double(max(modules, 1)) })
        }
        var share: [Double]?
        if first.isDense {
            share = usage.map { u in
                var off = 0, head = 0.0, total = 0.0
                for (_, f) in gated {
                    let e = f.gate!.experts
                    for i in 0..<e { total += u[off + i]; if i < e / 2 { head += u[off + i] } }
                    off += e
                }
                return total > 0 ? head / total : 0
            }
        }
        return ReportRankUsage(tasks: tasks.map(\.name), topK: first.topK, ranks: r, loadProfile: profiles,
                               overlap: usage.map { a in usage.map { Self.cosine(a, $0) } }, firstHalfShare: share)
    }

    static func cosine(_ a: [Double], _ b: [Double]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in a.indices { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i] }
        return aa > 0 && bb > 0 ? ab / (aa * bb).squareRoot() : 0
    }

    /// MixLoRA: per layer, the tokens each whole-FFN expert was chosen for, read from the layer's
    /// router on the FFN input (the gate projection's input, which the observer sees).
    static func measureMixture(model: LlamaModel, set: AdapterSet, tasks: [EvalTask], perTask: Int) throws -> ReportRankUsage {
        let layers = set.mixtures.keys.sorted()
        let byGateID = Dictionary(uniqueKeysWithValues: layers.map { (LlamaWeights.linearID(layer: $0, .gate), $0) })
        let first = set.mixtures[layers[0]]!, E = first.experts, k = first.topK, C = model.config.hiddenSize
        var usage: [[Double]] = []
        var logits = [Float](), w = [Float](repeating: 0, count: k), chosen = [Int](repeating: 0, count: k)
        for t in tasks {
            let seqs = try TrainingData.sequences(EvalTask(name: t.name, path: t.path, examples: Array(t.examples.prefix(perTask))), model: model)
            var counts = [Int: [Double]]()
            for l in layers { counts[l] = [Double](repeating: 0, count: E) }
            let session = try model.makeLlamaSession(maxTokens: max(seqs.map(\.tokens.count).max() ?? 1, 1), adapters: set)
            var from = 0
            session.linearInputObserver = { id, x, rows in
                guard let l = byGateID[id], rows > from, let mix = set.mixtures[l] else { return }
                let n = rows - from
                if logits.count < n * E { logits = [Float](repeating: 0, count: n * E) }
                logits.withUnsafeMutableBufferPointer { lp in
                    mix.router.withUnsafeBufferPointer { wr in
                        BLAS.gemm(transA: false, transB: true, m: n, n: E, k: C, alpha: 1, a: x + from * C, lda: C,
                                  b: wr.baseAddress!, ldb: C, beta: 0, c: lp.baseAddress!, ldc: E)
                    }
                    for r in 0..<n {
                        chosen.withUnsafeMutableBufferPointer { ch in
                            w.withUnsafeMutableBufferPointer { MixtureFFN.route(lp.baseAddress! + r * E, experts: E, topK: k, chosen: ch.baseAddress!, weights: $0.baseAddress!) }
                        }
                        for e in chosen { counts[l]![e] += 1 }
                    }
                }
            }
            for s in seqs {
                session.reset()
                from = s.targets.firstIndex { $0 >= 0 } ?? s.tokens.count
                _ = try session.feed(s.tokens, lastOnly: true)
            }
            usage.append(layers.flatMap { counts[$0]! })
        }
        let profiles: [[Double]] = usage.map { u in
            var sum = [Double](repeating: 0, count: E), n = 0
            for i in layers.indices {
                let c = Array(u[(i * E)..<((i + 1) * E)]), total = c.reduce(0, +)
                guard total > 0 else { continue }
                for (j, v) in c.sorted(by: >).enumerated() { sum[j] += v / total }
                n += 1
            }
            return sum.map { $0 / Double(max(n, 1)) }
        }
        var r = ReportRankUsage(tasks: tasks.map(\.name), topK: k, ranks: E, loadProfile: profiles,
                                overlap: usage.map { a in usage.map { cosine(a, $0) } })
        r.ffnExperts = true
        return r
    }
}

extension ReportRenderer {
    /// Two heatmaps per rank-gated `--trained` row: the sorted load per task and the overlap of
    /// rank use between tasks.
    static func rankUsageCharts(_ r: ReportResults) -> [Chart] {
        var out: [Chart] = []
        for row in r.rows where row.method.family == .trained {
            guard let u = row.rankUsage else { continue }
            let load: [[Double?]] = u.loadProfile.map { $0.map { Optional($0) } }
            // LoRAMoE keeps every expert (topK = experts): its load is the router's weight per expert.
            let dense = u.topK == u.ranks && u.ffnExperts != true, ffn = u.ffnExperts == true
            let unit = dense || ffn ? "expert" : "rank"
            let how = ffn ? "expert choices per whole-FFN expert, \(u.topK) of \(u.ranks) experts per token at each layer"
                : dense ? "router weight per expert, every one of the \(u.ranks) experts weighted per token" : "rank choices per rank, \(u.topK) of \(u.ranks) ranks kept per token"
            out.append(Chart(file: "ranks-load-\(fileSafe(row.method.id)).svg",
                             caption: "\(row.method.id): share of each task's \(how), most used first (mean over \(ffn ? "layers" : "modules"); an even load is 1/\(u.ranks) = \(ReportFormat.short(1 / Double(u.ranks))) per \(unit))",
                             svg: SVGHeatmap(title: "\(row.method.id): load per \(unit), sorted (mean over modules)", rowLabels: u.tasks,
                                             columnLabels: (1...u.ranks).map { "#\($0)" }, values: load, scale: SVGHeatmap.autoScale(load),
                                             format: "%.2f", legend: dense ? "share of router weight" : ffn ? "share of expert choices" : "share of kept ranks", cellWidth: u.ranks > 16 ? 30 : 40, cellHeight: 22).render()))
            let ov: [[Double?]] = u.overlap.map { $0.map { Optional($0) } }
            out.append(Chart(file: "ranks-overlap-\(fileSafe(row.method.id)).svg",
                             caption: "\(row.method.id): cosine similarity of two tasks' \(unit) use over every module (1: the same \(unit)s in the same proportions)",
                             svg: SVGHeatmap(title: "\(row.method.id): overlap of \(unit) use between tasks", rowLabels: u.tasks,
                                             columnLabels: u.tasks, values: offDiagonal(ov), scale: SVGHeatmap.autoScale(offDiagonal(ov)),
                                             format: "%.2f", legend: "cosine of \(unit)-use vectors", cellWidth: 40, cellHeight: 22).render()))
        }
        return out
    }
}

extension ReportRenderer {
    /// One sentence per LoRAMoE `--trained` row: how much of each task's router weight the
    /// world-knowledge half of the experts took.
    static func expertGroupParagraphs(_ r: ReportResults) -> [String] {
        r.rows.filter { $0.method.family == .trained }.compactMap { row in
            guard let u = row.rankUsage, let share = u.firstHalfShare else { return nil }
            let parts = zip(u.tasks, share).map { "\($0) \(String(format: "%.2f", $1))" }.joined(separator: ", ")
            return "\(row.method.id) (LoRAMoE, \(u.ranks) experts): share of each task's router weight on the first \(u.ranks / 2) experts, the world-knowledge group of its balancing constraint (0.50: no lean): \(parts)."
        }
    }
}
