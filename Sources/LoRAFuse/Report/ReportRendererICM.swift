import Foundation

// The report's ICM-Fusion section: its rows side by side (main, ablations, few-shot, long-tailed)
// against the best static method, the best learned one and the experts; what the generator was
// trained on; how well it reconstructs each expert; what it costs to store.

extension ReportRenderer {
    static func icmRows(_ r: ReportResults) -> [ReportRow] { r.rows.filter { $0.method.family == .icm } }

    static func mainICM(_ r: ReportResults) -> ReportRow? {
        icmRows(r).first { $0.method.id == ICMVariant.full.rawValue } ?? icmRows(r).first { $0.icm != nil }
    }

    static func bestLearned(_ r: ReportResults) -> ReportRow? {
        r.rows.filter { $0.method.family == .learned && $0.meanLoss != nil }.min { $0.meanLoss! < $1.meanLoss! }
    }

    static func icmTable(_ r: ReportResults) -> Table? {
        let rows = icmRows(r)
        guard !rows.isEmpty else { return nil }
        let main = mainICM(r)?.meanLoss
        let best = r.bestStatic?.meanLoss
        let experts = r.rows.first { $0.method.family == .expert }
        let expertTasks = experts.map { Array($0.tasks.keys).sorted() } ?? []
        var t = Table(header: ["row", "what it changes", "shots per task", "mean loss", "mean acc.", "Δ vs icm-fusion",
                               "Δ vs best static", "× experts", "fuse s"], rows: [])
        t.wrapColumns = [1]
        t.numericFrom = 3
        var values: [[Double?]] = []
        for row in rows {
            let v = ICMVariant(rawValue: row.method.method)
            var shots = "–"
            if let d = row.icm {
                let counts = Set(d.shots.values)
                shots = counts.count == 1 ? "\(counts.first!)"
                    : d.shots.sorted { $0.key < $1.key }.filter { $0.value != row.shots }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                    + ", others \(row.shots ?? 0)"
            }
            var ratio: Double?
            if let e = experts?.meanLoss(over: expertTasks), let m = row.meanLoss(over: expertTasks), e > 0 { ratio = m / e }
            t.rows.append([row.method.id, v?.summary ?? row.method.method, shots, num(row.meanLoss, 4), num(row.meanAccuracy),
                           row.method.id == ICMVariant.full.rawValue ? "–" : signed(row.meanLoss.flatMap { m in main.map { m - $0 } }),
                           signed(row.meanLoss.flatMap { m in best.map { m - $0 } }),
                           ratio.map { String(format: "%.2f×", $0) } ?? "–",
                           row.fuseSeconds.map { String(format: "%.1f", $0) } ?? "–"])
            values.append([row.meanLoss, row.meanAccuracy])
        }
        markBest(&t, values: values.map { [$0[0]] }, competing: rows.map { _ in true }, lowerIsBetter: true, fromColumn: 3)
        markBest(&t, values: values.map { [$0[1]] }, competing: rows.map { _ in true }, lowerIsBetter: false, fromColumn: 4)
        return t
    }

    static func icmParagraphs(_ r: ReportResults) -> [String] {
        guard let main = mainICM(r), let d = main.icm else { return [] }
        var out: [String] = []
        let g = r.settings.icm.generator
        out.append(String(format: "Generator: a conditional Fusion VAE over whole adapters — a fixed basis of the training samples' mean and %d principal directions (holding %.4f of their weighted variance), a latent of %d per adapter, hidden %d, β %g, a %@ prior, %d full-batch VAE steps, then %d first-order MAML steps (%d inner AdamW steps at %g on half of a task's shots, the outer gradient on the other half). It was trained on %d adapters: the %d finals and %d training checkpoints%@; %.0f s to train.",
                          g.basis, 1 - (d.basisResidual ?? 0), g.latent, g.hidden, Double(g.beta), g.conditionalPrior ? "conditional p(z|c)" : "standard normal",
                          g.steps, d.metaSteps, g.innerSteps, Double(g.innerLR),
                          d.samples, d.shots.count, d.checkpoints,
                          d.checkpoints == 0 ? " (no --trajectories given: finals only)" : " from \(r.settings.icm.trajectories ?? "the adapters' folders")",
                          d.generatorSeconds))
        let f = r.settings.icm.fusion
        out.append("Fusion: \(f.steps) Adam steps on the union of the shots (a fresh \(f.tokens)-token minibatch each; w = e^s·softmax(a), logit step \(ReportFormat.short(Double(f.learningRate))), scale, projection and gain step \(ReportFormat.short(Double(f.projectionLearningRate)))) learn one latent weight per task, a conflict projection per ordered task pair and gains of the A and B statistics; the decoded adapter then takes up to \(f.adaptSteps) AdamW steps (lr \(ReportFormat.short(Double(f.adaptLR)))) on the same shots, and the step kept is the one with the lowest loss, checked every \(f.selectEvery) steps, on the held-out \(Int((r.settings.icm.selectionFraction * 100).rounded()))% of each task's shots (\((d.selectionShots ?? [:]).values.reduce(0, +)) examples, never used to learn: here step \(d.adaptation?.stepKept ?? 0) of \(d.adaptation?.stepsRun ?? 0)). Learned weights: "
                   + zip(r.tasks, d.weights).map { "\($0) \(String(format: "%.3f", $1))" }.joined(separator: ", ")
                   + String(format: "; gains A %.3f, B %.3f.", d.gains.first ?? 1, d.gains.count > 1 ? d.gains[1] : 1))
        if let lt = icmRows(r).first(where: { $0.method.method == ICMVariant.longTail.rawValue }), let ld = lt.icm,
           let task = ld.shots.min(by: { $0.value < $1.value })?.key,
           let a = main.tasks[task]?.loss, let b = lt.tasks[task]?.loss, let ma = main.meanLoss, let mb = lt.meanLoss {
            out.append(String(format: "Long-tailed: with %@ cut to %d shots, its held-out loss goes %.4f → %.4f and the mean over the others %.4f → %.4f.",
                              task, ld.shots[task] ?? 0, a, b,
                              (ma * Double(r.tasks.count) - a) / Double(max(r.tasks.count - 1, 1)),
                              (mb * Double(r.tasks.count) - b) / Double(max(r.tasks.count - 1, 1))))
        }
        if let fs = icmRows(r).first(where: { $0.method.method == ICMVariant.fewShot.rawValue }), let m = fs.meanLoss {
            let learned4 = r.shotsCurves.compactMap { id, pts in pts.first { $0.shots == fs.shots }?.meanLoss.map { (id, $0) } }
                .sorted { $0.1 < $1.1 }
            var s = String(format: "Few-shot: with %d shots per task ICM-Fusion's mean held-out loss is %.4f", fs.shots ?? 0, m)
            if let b = learned4.first { s += String(format: "; the best learned method at the same shots, %@, %.4f", b.0, b.1) }
            out.append(s + ".")
        }
        if let mi = icmRows(r).first(where: { $0.method.method == ICMVariant.meanInit.rawValue }), let c = mi.meanLoss, let m = main.meanLoss {
            var s = String(format: "Control: the same adaptation (up to %d steps, the kept one chosen the same way: step %d) on the same shots, started from the factor-wise mean of the adapters instead of the decoded fusion, reaches %.4f", f.adaptSteps, mi.icm?.adaptation?.stepKept ?? 0, c)
            s += String(format: m < c ? " — the generator's start is worth %.4f of held-out loss." : " — the generator's start does not help here (%+.4f).", m < c ? c - m : m - c)
            if let na = icmRows(r).first(where: { $0.method.method == ICMVariant.noAdaptation.rawValue })?.meanLoss {
                s += String(format: " Without any adaptation the decoded fusion scores %.4f.", na)
            }
            out.append(s)
        }
        if !d.reconstruction.isEmpty {
            let rel = d.reconstruction.map(\.relative), dev = d.reconstruction.compactMap(\.deviation)
            var s = String(format: "Reconstruction: decoding each task's latent mean gives its adapter back with a relative error ‖θ̂−θ‖/‖θ‖ of %.3f on average (%.3f–%.3f over the tasks; table below)",
                           rel.reduce(0, +) / Double(rel.count), rel.min()!, rel.max()!)
            if let mx = dev.max() {
                s += String(format: "; on the part that differs from the mean adapter, ‖x̂−x‖/‖x−P‖, %.3f on average, at most %.3f (target ≤ 0.10: %@)",
                            dev.reduce(0, +) / Double(dev.count), mx, mx <= 0.10 ? "met" : "not met")
            }
            out.append(s + ".")
        }
        let mb = { (b: Int) in String(format: "%.2f MB", Double(b) / 1e6) }
        out.append("Storage: the generator takes \(mb(d.generatorBytes)) (network \(mb(d.generatorNetworkBytes)) F32, basis \(mb(d.generatorBasisBytes ?? 0)) — P in F32 and U in bf16 — and \(mb(d.generatorPerTaskBytes)) per task for its condition, statistics and latent mean and variance, F32) against \(mb(d.adaptersStoredBytes)) for the \(d.shots.count) adapters as stored (\(mb(d.adaptersF32Bytes)) as F32): "
                   + String(format: "%.2f× the stored adapters.", Double(d.generatorBytes) / Double(max(d.adaptersStoredBytes, 1))))
        return out
    }

    static func icmReconstructionTable(_ r: ReportResults) -> Table? {
        guard let d = mainICM(r)?.icm, !d.reconstruction.isEmpty else { return nil }
        var t = Table(header: ["task", "relative error ‖θ̂−θ‖/‖θ‖", "deviation error ‖x̂−x‖/‖x−P‖", "normalised MSE"], rows: [])
        t.numericFrom = 1
        for e in d.reconstruction { t.rows.append([e.task, num(e.relative), e.deviation.map { num($0) } ?? "–", num(e.normalisedMSE, 4)]) }
        return t
    }

    static func icmChart(_ r: ReportResults) -> Chart? {
        let rows = icmRows(r)
        guard !rows.isEmpty else { return nil }
        let bars = rows.map { SVGBarChart.Bar(label: $0.method.id, value: $0.meanLoss, color: familyColor[.icm]!) }
        var refs: [SVGBarChart.Reference] = []
        if let b = r.bestStatic, let v = b.meanLoss { refs.append(.init(label: "best static (\(b.method.id))", value: v, color: familyColor[.static]!)) }
        if let b = bestLearned(r), let v = b.meanLoss { refs.append(.init(label: "best learned (\(b.method.id))", value: v, color: familyColor[.learned]!)) }
        if let e = r.rows.first(where: { $0.method.family == .expert }), let v = e.meanLoss {
            refs.append(.init(label: "experts", value: v, color: familyColor[.expert]!))
            refs.append(.init(label: "experts + 10%", value: 1.1 * v, color: "#98df8a"))
        }
        return Chart(file: "icm.svg", caption: "ICM-Fusion rows: mean held-out loss (lower is better) against the targets",
                     svg: SVGBarChart(title: "ICM-Fusion, its ablations and settings", xLabel: "mean loss (nats per answer token)",
                                      bars: bars, references: refs, format: "%.3f", width: 900).render())
    }
}
