import Foundation

/// Turns `ReportResults` into the report's files: `index.html` (self-contained: inline CSS and
/// SVGs), `report.md` (the same tables; charts as `.svg` files beside it), `results.json` (every
/// number) and the `.svg` charts.
public enum ReportRenderer {
    /// A chart: its file name (in the output directory), caption and SVG text.
    public struct Chart: Sendable {
        public var file: String
        public var caption: String
        public var svg: String
    }

    static let familyColor: [ReportFamily: String] = [.base: "#7f7f7f", .expert: "#2ca02c", .static: "#1f77b4", .learned: "#d62728",
                                                      .icm: "#9467bd", .routed: "#ff7f0e", .trained: "#8c564b"]
    /// Learned curves avoid the blue and green of the static and expert reference lines.
    static let learnedPalette = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    static let familyName: [ReportFamily: String] = [.base: "base", .expert: "experts", .static: "static", .learned: "learned",
                                                     .icm: "ICM", .routed: "routed", .trained: "trained on all tasks"]

    /// Writes every file into `directory` (created if needed); returns the paths written.
    @discardableResult
    public static func write(_ r: ReportResults, to directory: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func path(_ f: String) -> String { (directory as NSString).appendingPathComponent(f) }
        var written: [String] = []
        for c in charts(r) {
            try c.svg.write(toFile: path(c.file), atomically: true, encoding: .utf8)
            written.append(path(c.file))
        }
        try html(r).write(toFile: path("index.html"), atomically: true, encoding: .utf8)
        try markdown(r).write(toFile: path("report.md"), atomically: true, encoding: .utf8)
        try json(r).write(to: URL(fileURLWithPath: path("results.json")))
        written += [path("index.html"), path("report.md"), path("results.json")]
        return written
    }

    public static func json(_ r: ReportResults) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try enc.encode(r)
    }

    // MARK: Escaping

    public static func escapeHTML(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&#39;"
            default: o.append(c)
            }
        }
        return o
    }

    /// Text for a Markdown table cell: Markdown's punctuation backslash-escaped, HTML's special
    /// characters as entities (renderers pass raw HTML through), line breaks as spaces.
    public static func escapeMarkdown(_ s: String) -> String {
        var o = ""
        for c in s {
            switch c {
            case "\\", "|", "*", "_", "`", "[", "]", "#", "~": o += "\\" + String(c)
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "&": o += "&amp;"
            case "\n", "\r": o += " "
            default: o.append(c)
            }
        }
        return o
    }

    // MARK: Tables as data

    /// One table: header, rows of cells, and which cells are the best of their column.
    struct Table {
        var header: [String]
        var rows: [[String]]
        var best: Set<[Int]> = []           // [row, column]
        var muted: Set<Int> = []            // reference rows (experts)
        var numericFrom = 1                 // columns from here on are right-aligned
        var wrapColumns: Set<Int> = []      // long text that may wrap
    }

    static func num(_ v: Double?, _ digits: Int = 3) -> String {
        guard let v else { return "–" }
        return v.isFinite ? String(format: "%.\(digits)f", v) : "inf"
    }

    /// Marks the best value of each column among rows that compete (not the experts).
    static func markBest(_ t: inout Table, values: [[Double?]], competing: [Bool], lowerIsBetter: Bool, fromColumn: Int) {
        guard let width = values.first?.count else { return }
        for j in 0..<width {
            var best: Double?
            var worst: Double?
            for (i, row) in values.enumerated() where competing[i] {
                guard let v = row[j], v.isFinite else { continue }
                if best == nil || (lowerIsBetter ? v < best! : v > best!) { best = v }
                if worst == nil || (lowerIsBetter ? v > worst! : v < worst!) { worst = v }
            }
            // A column where every row ties (e.g. accuracy 0 everywhere) has no best to point at.
            guard let b = best, let w = worst, abs(w - b) > 5e-4 * max(1, abs(b)) else { continue }
            for (i, row) in values.enumerated() where competing[i] {
                // Ties at the printed precision are all best.
                if let v = row[j], abs(v - b) <= 5e-4 * max(1, abs(b)) { t.best.insert([i, j + fromColumn]) }
            }
        }
    }

    static func summaryTable(_ r: ReportResults) -> Table {
        let best = r.bestStatic
        let experts = r.rows.first { $0.method.family == .expert }
        var t = Table(header: ["method", "family", "settings", "mean loss", "mean acc.", "Δ vs best static",
                               "Δ vs experts", "fuse s", "eval s"], rows: [])
        t.wrapColumns = [2]
        t.numericFrom = 3
        var values: [[Double?]] = []
        let expertTasks = experts.map { Array($0.tasks.keys).sorted() } ?? []
        for row in r.rows {
            let dBest = row.meanLoss.flatMap { m in best?.meanLoss.map { m - $0 } }
            var dExp: Double?
            if row.method.family != .expert, let e = experts?.meanLoss(over: expertTasks), let m = row.meanLoss(over: expertTasks) { dExp = m - e }
            let budget: String? = row.method.method == LearnedFusionMethod.lorahub.rawValue
                ? (r.settings.evaluations ?? r.settings.steps).map { ", \($0) loss evaluations" }
                : r.settings.steps.map { ", \($0) steps" }
            // --steps and --evaluations are the learned rows' budget; the ICM rows have their own
            // (in the ICM-Fusion section).
            let shots = row.shots.map { " on \($0) shots/task" + (row.method.family == .learned ? budget ?? "" : "") } ?? ""
            // A row that covers only some tasks (experts without an adapter for each) says so:
            // its mean is over fewer tasks than the others'.
            let coverage = row.tasks.count < r.tasks.count ? " (\(row.tasks.count) of \(r.tasks.count) tasks)" : ""
            t.rows.append([row.method.id, familyName[row.method.family]!, row.method.settingsText + shots + coverage,
                           num(row.meanLoss, 4), num(row.meanAccuracy), signed(dBest), signed(dExp),
                           row.fuseSeconds.map { String(format: "%.1f", $0) } ?? "–", String(format: "%.1f", row.evalSeconds)])
            values.append([row.meanLoss, row.meanAccuracy])
        }
        let competing = r.rows.map { $0.method.family != .expert }
        markBest(&t, values: values.map { [$0[0]] }, competing: competing, lowerIsBetter: true, fromColumn: 3)
        markBest(&t, values: values.map { [$0[1]] }, competing: competing, lowerIsBetter: false, fromColumn: 4)
        t.muted = Set(r.rows.indices.filter { !competing[$0] })
        return t
    }

    static func signed(_ v: Double?) -> String {
        guard let v, v.isFinite else { return "–" }
        return String(format: "%+.4f", v)
    }

    /// Methods × tasks (+ mean) of loss or accuracy.
    static func perTaskTable(_ r: ReportResults, accuracy: Bool) -> Table {
        var t = Table(header: ["method"] + r.tasks + ["mean"], rows: [])
        var values: [[Double?]] = []
        for row in r.rows {
            let v = r.tasks.map { accuracy ? row.tasks[$0]?.accuracy : row.tasks[$0]?.loss } + [accuracy ? row.meanAccuracy : row.meanLoss]
            values.append(v)
            t.rows.append([row.method.id] + v.map { num($0) })
        }
        let competing = r.rows.map { $0.method.family != .expert }
        markBest(&t, values: values, competing: competing, lowerIsBetter: !accuracy, fromColumn: 1)
        t.muted = Set(r.rows.indices.filter { !competing[$0] })
        return t
    }

    static func shotsTable(_ r: ReportResults) -> Table? {
        guard !r.shotsCurves.isEmpty else { return nil }
        let shots = Array(Set(r.shotsCurves.values.flatMap { $0.map(\.shots) })).sorted()
        var t = Table(header: ["learned method"] + shots.map { "\($0) shots/task" }, rows: [])
        var values: [[Double?]] = []
        for id in r.rows.filter({ $0.method.family == .learned }).map(\.method.id) {
            let pts = r.shotsCurves[id] ?? []
            let v = shots.map { k in pts.first { $0.shots == k }?.meanLoss }
            values.append(v)
            t.rows.append([id] + v.map { num($0, 4) })
        }
        markBest(&t, values: values, competing: values.map { _ in true }, lowerIsBetter: true, fromColumn: 1)
        return t
    }

    // MARK: Words

    /// The targets section as sentences (plain text; callers escape).
    public static func targetSentences(_ r: ReportResults) -> [String] {
        var out: [String] = []
        let experts = r.rows.first { $0.method.family == .expert }
        let best = r.bestStatic
        if r.targets.isEmpty {
            out.append("No learned method was run in this report, so the target — each learned method below the best static method on mean held-out loss — is not assessed here.")
        }
        for t in r.targets {
            guard let m = t.meanLoss else {
                out.append("\(t.method): no held-out loss was computed; the target is not assessed.")
                continue
            }
            var s: String
            if let b = t.bestStaticLoss, let name = t.bestStatic {
                let met = m < b
                s = String(format: "%@: mean held-out loss %.4f against %.4f for the best static method (%@): target %@ (%@ by %.4f).",
                           t.method, m, b, name, met ? "met" : "MISSED", met ? "lower" : "higher", abs(m - b))
            } else {
                s = String(format: "%@: mean held-out loss %.4f; no static method was run, so the target is not assessed.", t.method, m)
            }
            if let g = t.gapToExperts {
                s += String(format: " Gap to the experts: %+.4f (over the %d tasks that have an expert).", g, t.expertTasks)
            }
            if t.expertsTarget, let q = t.ratioToExperts {
                s += String(format: " Second target, within 10%% of the experts' own-task loss: %.2f× theirs — %@.", q, q <= 1.1 ? "met" : "MISSED")
            }
            out.append(s)
        }
        if let b = best, let bl = b.meanLoss, let e = experts {
            let tasks = Array(e.tasks.keys).sorted()
            if let el = e.meanLoss(over: tasks), let bt = b.meanLoss(over: tasks) {
                out.append(String(format: "The best static method, %@, has mean held-out loss %.4f; the experts (each task's own adapter) %.4f on their %d tasks: a gap of %+.4f.",
                                  b.method.id, bl, el, tasks.count, bt - el))
            }
        }
        if let base = r.rows.first(where: { $0.method.family == .base }), let bl = base.meanLoss {
            out.append(String(format: "The base model without any adapter has mean held-out loss %.4f.", bl))
        }
        return out
    }

    static func howToRead(_ r: ReportResults) -> [String] {
        let n = r.testExamples.values
        let per = n.min() == n.max() ? "\(n.first ?? 0)" : "\(n.min() ?? 0)–\(n.max() ?? 0)"
        var s = [
            "Loss is the mean cross-entropy in nats per answer token on each task's held-out test examples (\(per) per task); lower is better. Accuracy is the fraction of examples whose greedy answer equals the reference exactly after trimming; higher is better. Means are unweighted over tasks.",
            "Rows: base = the model alone; experts = each task's own adapter evaluated on its own task only (a reference, not a fusion: no single adapter does this); static = one adapter fused from all \(r.adapters.count) task adapters by a fixed rule; learned = one fused adapter whose coefficients were fitted on a few examples (shots) per task.",
            "In every table the best value of each column among base, static, learned and ICM rows is highlighted; the experts row is shown in grey and does not compete.",
            "Static defaults: w = 1/n for methods that add their inputs (so they average the task vectors) and w = 1 for TIES-style methods, which already take a disjoint mean; truncating methods keep rank \(r.settings.rank). Each row's settings are listed in the summary table.",
            "Task-vector heatmaps compare the adapters' updates ΔW = s·B·A over all modules: cosine near 0 means the tasks touch near-orthogonal directions; the sign-conflict rate is the fraction of weights, changed by both adapters, that they push in opposite directions (0.5 is what unrelated random updates give).",
        ]
        if r.rows.contains(where: { $0.method.family == .learned }) {
            s.append("Learned rows are fitted on the first \(r.settings.shotsPerTask) examples per task of the shots files (never the test examples); the shots curve refits them with fewer or more. Their coefficients are shown per adapter and layer, averaged over the layer's projections; every learned row starts from the mean of the adapters (coefficient 1/n, the static linear row), so red means the fit turned an adapter up there and blue down.")
        }
        if r.rows.contains(where: { $0.method.family == .icm }) {
            s.append("ICM rows: ICM-Fusion (docs/icm-fusion.md) trains a conditional Fusion VAE with one latent per whole adapter, over a fixed basis (the samples' mean and principal directions) of the adapters and their training checkpoints, meta-learns it so decoded adapters adapt well, combines the tasks' latents with learned weights and conflict projections on the union of the shots, decodes one adapter and adapts it a few steps on the same shots. Its ablations each remove one part; the few-shot row gives it fewer shots per task, the long-tailed row starves one task. The ICM-Fusion section has the details.")
        }
        if r.expertMatrix != nil {
            s.append("The expert × task matrix shows every adapter's held-out loss on every task (loss only): the diagonal is the experts row; a bright off-diagonal cell means that adapter hurts that task.")
        }
        return s
    }

    // MARK: Charts

    public static func charts(_ r: ReportResults) -> [Chart] {
        var out: [Chart] = []
        let bars = r.rows.map { row in
            SVGBarChart.Bar(label: row.method.id + (row.tasks.count < r.tasks.count ? " (\(row.tasks.count)/\(r.tasks.count) tasks)" : ""),
                            value: row.meanLoss, color: familyColor[row.method.family]!)
        }
        var refs: [SVGBarChart.Reference] = []
        if let b = r.bestStatic, let v = b.meanLoss { refs.append(.init(label: "best static (\(b.method.id))", value: v, color: familyColor[.static]!)) }
        if let e = r.rows.first(where: { $0.method.family == .expert }), let v = e.meanLoss {
            refs.append(.init(label: "experts", value: v, color: familyColor[.expert]!))
        }
        let families = ReportFamily.allCases.filter { f in r.rows.contains { $0.method.family == f } }
        out.append(Chart(file: "mean-loss.svg", caption: "Mean held-out loss per method (lower is better)",
                         svg: SVGBarChart(title: "Mean held-out loss over \(r.tasks.count) tasks", xLabel: "mean loss (nats per answer token)",
                                          bars: bars, references: refs,
                                          legend: families.map { (familyColor[$0]!, familyName[$0]!) }, format: "%.3f", width: 900).render()))
        if let c = icmChart(r) { out.append(c) }
        out += routingCharts(r)
        out += rankUsageCharts(r)
        if !r.shotsCurves.isEmpty {
            let shots = Array(Set(r.shotsCurves.values.flatMap { $0.map(\.shots) })).sorted()
            var series: [SVGLineChart.Series] = []
            for (i, row) in r.rows.filter({ $0.method.family == .learned }).enumerated() {
                let pts = (r.shotsCurves[row.method.id] ?? []).compactMap { p in p.meanLoss.map { (log2(Double(p.shots)), $0) } }
                series.append(.init(name: row.method.id, points: pts, color: learnedPalette[i % learnedPalette.count], markers: true))
            }
            let xr = (log2(Double(shots.first ?? 1)), log2(Double(shots.last ?? 1)))
            if let b = r.bestStatic, let v = b.meanLoss {
                series.append(.init(name: "best static (\(b.method.id))", points: [(xr.0, v), (xr.1, v)], color: familyColor[.static], dashed: true))
            }
            if let e = r.rows.first(where: { $0.method.family == .expert }), let v = e.meanLoss {
                series.append(.init(name: "experts", points: [(xr.0, v), (xr.1, v)], color: familyColor[.expert], dashed: true))
            }
            out.append(Chart(file: "shots-curve.svg", caption: "Mean held-out loss against shots per task, learned methods",
                             svg: SVGLineChart(title: "Mean held-out loss against shots per task", xLabel: "shots per task (log scale)",
                                               yLabel: "mean held-out loss", series: series, width: 760, height: 380,
                                               xTicks: shots.map { (log2(Double($0)), String($0)) }, legendWidth: 190).render()))
        }
        for row in r.rows where row.method.family == .learned {
            guard let c = row.coefficients, !c.layers.isEmpty else { continue }
            // Centred on the coefficient the fit started from: red cells were turned up by the
            // fit, blue ones down.
            let hm = SVGHeatmap(title: "\(row.method.id): learned coefficient per layer (mean over modules)",
                                rowLabels: c.adapters, columnLabels: c.layers.map { "L\($0)" }, values: c.values,
                                scale: SVGHeatmap.autoScale(c.values, divergingAround: c.start), format: "%.2f",
                                legend: "coefficient (white = start, \(ReportFormat.short(c.start)))",
                                cellWidth: c.layers.count > 16 ? 30 : 40, cellHeight: 22)
            out.append(Chart(file: "coefficients-\(fileSafe(row.method.id)).svg",
                             caption: "\(row.method.id): learned coefficients per adapter and layer", svg: hm.render()))
        }
        if let a = r.analysis, a.adapters.count > 1 {
            out.append(Chart(file: "cosine.svg", caption: "Cosine similarity of the task vectors",
                             svg: SVGHeatmap(title: "Task-vector cosine similarity", rowLabels: a.adapters, columnLabels: a.adapters,
                                             values: a.cosine, scale: SVGHeatmap.autoScale(offDiagonal(a.cosine), divergingAround: 0),
                                             format: "%.2f", legend: "cosine").render()))
            out.append(Chart(file: "sign-conflicts.svg", caption: "Sign-conflict rate of the task vectors",
                             svg: SVGHeatmap(title: "Sign conflicts (fraction of shared entries with opposite signs)",
                                             rowLabels: a.adapters, columnLabels: a.adapters, values: a.signConflict,
                                             scale: .sequential(low: 0, high: max(0.5, a.signConflict.joined().compactMap { $0 }.max() ?? 0.5)),
                                             format: "%.2f", legend: "conflict rate").render()))
        }
        if let m = r.expertMatrix {
            out.append(Chart(file: "expert-matrix.svg", caption: "Every adapter's held-out loss on every task",
                             svg: SVGHeatmap(title: "Held-out loss: adapter (row) on task (column)", rowLabels: r.adapters,
                                             columnLabels: r.tasks, values: m, scale: SVGHeatmap.autoScale(m), format: "%.2f",
                                             legend: "loss").render()))
        }
        return out
    }

    /// The diagonal of a similarity matrix (1 by definition) would stretch the colour scale.
    static func offDiagonal(_ m: [[Double?]]) -> [[Double?]] {
        m.enumerated().map { i, row in row.enumerated().map { j, v in i == j ? nil : v } }
    }

    static func fileSafe(_ s: String) -> String {
        String(s.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
    }

    // MARK: HTML

    static let css = """
    :root { --fg: #1d2430; --muted: #6b7380; --line: #dde1e7; --best: #fff2b3; --accent: #1f5fa8; }
    * { box-sizing: border-box; }
    body { margin: 0; color: var(--fg); background: #f6f7f9; font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
    main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 60px; background: white; }
    h1 { font-size: 28px; margin: 0 0 4px; }
    h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
    p.meta { color: var(--muted); margin: 0 0 18px; font-size: 14px; }
    ul { padding-left: 22px; } li { margin: 4px 0; }
    .targets li.met::marker { content: "✔ "; color: #2a8a3a; }
    .targets li.missed::marker { content: "✘ "; color: #c0392b; }
    .targets li.missed { color: #8b1d12; }
    .scroll { overflow-x: auto; margin: 8px 0 4px; border: 1px solid var(--line); border-radius: 6px; }
    table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; width: max-content; min-width: 100%; }
    th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); white-space: nowrap; }
    th { background: #eef1f5; text-align: left; font-weight: 600; position: sticky; top: 0; }
    td.num, th.num { text-align: right; }
    td.wrap { white-space: normal; min-width: 220px; max-width: 340px; }
    td:first-child, th:first-child { position: sticky; left: 0; background: white; font-weight: 600; border-right: 1px solid var(--line); }
    th:first-child { background: #eef1f5; }
    table.wide th.rot { vertical-align: bottom; padding: 8px 4px; }
    table.wide th.rot span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; display: inline-block; }
    table.wide td { padding: 5px 6px; }
    tr.muted td { color: var(--muted); font-style: italic; background: #fafafa; }
    td.best { background: var(--best); font-weight: 700; }
    tr.fam-static td:first-child { box-shadow: inset 4px 0 #1f77b4; }
    tr.fam-learned td:first-child { box-shadow: inset 4px 0 #d62728; }
    tr.fam-icm td:first-child { box-shadow: inset 4px 0 #9467bd; }
    tr.fam-base td:first-child { box-shadow: inset 4px 0 #7f7f7f; }
    tr.fam-expert td:first-child { box-shadow: inset 4px 0 #2ca02c; }
    figure { margin: 14px 0 22px; } figure svg { max-width: 100%; height: auto; }
    figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
    .note { color: var(--muted); font-size: 13px; }
    .grid2 { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
    .grid2 figure { flex: 1 1 520px; }
    code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
    """

    static func htmlTable(_ t: Table, rowClasses: [String] = []) -> String {
        // Many task columns would not fit the page side by side: their headers stand upright.
        let rotate = t.header.count > 9
        var s = "<div class=\"scroll\"><table\(rotate ? " class=\"wide\"" : "")>\n<thead><tr>"
        for (j, h) in t.header.enumerated() {
            if rotate && j >= t.numericFrom {
                s += "<th class=\"num rot\"><span>\(escapeHTML(h))</span></th>"
            } else {
                s += "<th\(j >= t.numericFrom ? " class=\"num\"" : "")>\(escapeHTML(h))</th>"
            }
        }
        s += "</tr></thead>\n<tbody>\n"
        for (i, row) in t.rows.enumerated() {
            var cls: [String] = []
            if i < rowClasses.count { cls.append(rowClasses[i]) }
            if t.muted.contains(i) { cls.append("muted") }
            s += "<tr\(cls.isEmpty ? "" : " class=\"\(cls.joined(separator: " "))\"")>"
            for (j, c) in row.enumerated() {
                var cc: [String] = []
                if j >= t.numericFrom { cc.append("num") }
                if t.wrapColumns.contains(j) { cc.append("wrap") }
                if t.best.contains([i, j]) { cc.append("best") }
                s += "<td\(cc.isEmpty ? "" : " class=\"\(cc.joined(separator: " "))\"")>\(escapeHTML(c))</td>"
            }
            s += "</tr>\n"
        }
        return s + "</tbody></table></div>\n"
    }

    public static func html(_ r: ReportResults) -> String {
        let classes = r.rows.map { "fam-" + $0.method.family.rawValue }
        let charts = Dictionary(uniqueKeysWithValues: charts(r).map { ($0.file, $0) })
        func figure(_ file: String) -> String {
            guard let c = charts[file] else { return "" }
            return "<figure>\n\(c.svg)<figcaption>\(escapeHTML(c.caption)) · <code>\(escapeHTML(c.file))</code></figcaption></figure>\n"
        }
        var s = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        s += "<title>lorafuse report</title>\n<style>\n\(css)\n</style>\n</head>\n<body>\n<main>\n"
        s += "<h1>lorafuse report</h1>\n<p class=\"meta\">\(escapeHTML(metaLine(r)))</p>\n"

        s += "<h2 id=\"targets\">Targets</h2>\n<ul class=\"targets\">\n"
        for (t, sentence) in zip(targetMarks(r), targetSentences(r)) {
            s += "<li\(t.map { " class=\"\($0 ? "met" : "missed")\"" } ?? "")>\(escapeHTML(sentence))</li>\n"
        }
        s += "</ul>\n"

        s += "<h2 id=\"how-to-read\">How to read this</h2>\n<ul>\n"
        for h in howToRead(r) { s += "<li>\(escapeHTML(h))</li>\n" }
        s += "</ul>\n"

        s += "<h2 id=\"summary\">Summary</h2>\n" + figure("mean-loss.svg") + htmlTable(summaryTable(r), rowClasses: classes)
        s += "<h2 id=\"loss\">Held-out loss per task</h2>\n" + htmlTable(perTaskTable(r, accuracy: false), rowClasses: classes)
        if r.settings.accuracy {
            s += "<h2 id=\"accuracy\">Held-out accuracy per task</h2>\n" + htmlTable(perTaskTable(r, accuracy: true), rowClasses: classes)
        }
        if let st = shotsTable(r) {
            s += "<h2 id=\"shots\">Learned methods: loss against shots</h2>\n" + figure("shots-curve.svg") + htmlTable(st)
        }
        let coefficientFiles = charts.keys.filter { $0.hasPrefix("coefficients-") }.sorted()
        if !coefficientFiles.isEmpty {
            s += "<h2 id=\"coefficients\">Learned coefficients per layer</h2>\n"
            for f in coefficientFiles { s += figure(f) }
        }
        if charts["cosine.svg"] != nil {
            s += "<h2 id=\"task-vectors\">Task vectors</h2>\n<div class=\"grid2\">\n" + figure("cosine.svg") + figure("sign-conflicts.svg") + "</div>\n"
            if let a = r.analysis {
                s += "<p class=\"note\">Sign conflicts are exact for modules with at most \(a.exactEntryLimit) entries and estimated from \(a.samplesPerModule) seeded samples per larger module.</p>\n"
            }
        }
        if charts["expert-matrix.svg"] != nil { s += "<h2 id=\"expert-matrix\">Expert × task matrix</h2>\n" + figure("expert-matrix.svg") }
        if let icm = icmTable(r) {
            s += "<h2 id=\"icm\">ICM-Fusion</h2>\n" + figure("icm.svg") + htmlTable(icm)
            for p in icmParagraphs(r) { s += "<p>\(escapeHTML(p))</p>\n" }
            if let rt = icmReconstructionTable(r) { s += htmlTable(rt) }
        }
        if let tt = trainedTable(r) {
            s += "<h2 id=\"trained\">Trained as multi-task</h2>\n" + htmlTable(tt) + "<p>\(escapeHTML(trainedParagraph))</p>\n"
            for p in expertGroupParagraphs(r) { s += "<p>\(escapeHTML(p))</p>\n" }
            for f in charts.keys.filter({ $0.hasPrefix("ranks-") }).sorted() { s += figure(f) }
        }
        if let rt = routingTable(r) {
            s += "<h2 id=\"routing\">Routing</h2>\n" + htmlTable(rt) + "<p>\(escapeHTML(routingParagraph))</p>\n"
            for f in charts.keys.filter({ $0.hasPrefix("gates-") }).sorted() { s += figure(f) }
        }
        if let ct = compositeTable(r) {
            s += "<h2 id=\"composite\">Composite prompts</h2>\n" + htmlTable(ct)
                + "<p>\(escapeHTML(compositeParagraph))</p>\n"
        }
        if !r.warnings.isEmpty {
            s += "<h2 id=\"warnings\">Warnings</h2>\n<ul>\n" + r.warnings.map { "<li>\(escapeHTML($0))</li>\n" }.joined() + "</ul>\n"
        }
        s += "<p class=\"note\">All numbers: <code>results.json</code>. Markdown twin: <code>report.md</code>.</p>\n"
        s += "</main>\n</body>\n</html>\n"
        return s
    }

    /// Per target sentence: met (true), missed (false) or not a target (nil).
    static func targetMarks(_ r: ReportResults) -> [Bool?] {
        let sentences = targetSentences(r)
        var marks: [Bool?] = r.targets.isEmpty ? [nil] : r.targets.map { t in
            t.expertsTarget ? t.beatsBestStatic.map { $0 && (t.ratioToExperts ?? .infinity) <= 1.1 } : t.beatsBestStatic
        }
        while marks.count < sentences.count { marks.append(nil) }
        return marks
    }

    static func metaLine(_ r: ReportResults) -> String {
        let n = r.testExamples.values
        var parts = ["generated \(r.generated)", "model \((r.settings.model as NSString).lastPathComponent)",
                     "\(r.tasks.count) tasks", "\(r.adapters.count) adapters",
                     n.min() == n.max() ? "\(n.first ?? 0) test examples per task" : "\(n.min() ?? 0)–\(n.max() ?? 0) test examples per task",
                     "adapters applied \(r.settings.adapterMode)"]
        if r.rows.contains(where: { $0.method.family == .learned }) {
            parts.append("learned rows: \(r.settings.shotsPerTask) shots per task" + (r.settings.steps.map { ", \($0) steps" } ?? ""))
        }
        return parts.joined(separator: " · ")
    }

    // MARK: Markdown

    static func markdownTable(_ t: Table) -> String {
        var s = "| " + t.header.map(escapeMarkdown).joined(separator: " | ") + " |\n"
        s += "|" + t.header.indices.map { $0 >= t.numericFrom ? "---:|" : "---|" }.joined() + "\n"
        for (i, row) in t.rows.enumerated() {
            let cells = row.enumerated().map { j, c -> String in
                var x = escapeMarkdown(c)
                if t.best.contains([i, j]) { x = "**\(x)**" }
                if t.muted.contains(i) { x = "*\(x)*" }
                return x
            }
            s += "| " + cells.joined(separator: " | ") + " |\n"
        }
        return s
    }

    public static func markdown(_ r: ReportResults) -> String {
        let charts = Dictionary(uniqueKeysWithValues: charts(r).map { ($0.file, $0) })
        func image(_ file: String) -> String {
            guard let c = charts[file] else { return "" }
            return "![\(escapeMarkdown(c.caption))](\(file))\n\n"
        }
        var s = "# lorafuse report\n\n\(escapeMarkdown(metaLine(r)))\n\n## Targets\n\n"
        for (mark, sentence) in zip(targetMarks(r), targetSentences(r)) {
            let prefix = mark.map { $0 ? "✔ " : "✘ " } ?? ""
            s += "- \(prefix)\(escapeMarkdown(sentence))\n"
        }
        s += "\n## How to read this\n\n" + howToRead(r).map { "- \(escapeMarkdown($0))\n" }.joined()
        s += "\n## Summary\n\n" + image("mean-loss.svg") + markdownTable(summaryTable(r))
        s += "\nBold: best of the column among base, static, learned and ICM rows; italic: the experts (reference).\n"
        s += "\n## Held-out loss per task\n\n" + markdownTable(perTaskTable(r, accuracy: false))
        if r.settings.accuracy { s += "\n## Held-out accuracy per task\n\n" + markdownTable(perTaskTable(r, accuracy: true)) }
        if let st = shotsTable(r) { s += "\n## Learned methods: loss against shots\n\n" + image("shots-curve.svg") + markdownTable(st) }
        let coefficientFiles = charts.keys.filter { $0.hasPrefix("coefficients-") }.sorted()
        if !coefficientFiles.isEmpty {
            s += "\n## Learned coefficients per layer\n\n" + coefficientFiles.map(image).joined()
        }
        if charts["cosine.svg"] != nil {
            s += "\n## Task vectors\n\n" + image("cosine.svg") + image("sign-conflicts.svg")
        }
        if charts["expert-matrix.svg"] != nil { s += "\n## Expert × task matrix\n\n" + image("expert-matrix.svg") }
        if let icm = icmTable(r) {
            s += "\n## ICM-Fusion\n\n" + image("icm.svg") + markdownTable(icm) + "\n"
            for p in icmParagraphs(r) { s += escapeMarkdown(p) + "\n\n" }
            if let rt = icmReconstructionTable(r) { s += markdownTable(rt) }
        }
        if let tt = trainedTable(r) {
            s += "\n## Trained as multi-task\n\n" + markdownTable(tt) + "\n" + escapeMarkdown(trainedParagraph) + "\n\n"
            for p in expertGroupParagraphs(r) { s += escapeMarkdown(p) + "\n\n" }
            s += charts.keys.filter { $0.hasPrefix("ranks-") }.sorted().map(image).joined()
        }
        if let rt = routingTable(r) {
            s += "\n## Routing\n\n" + markdownTable(rt) + "\n" + escapeMarkdown(routingParagraph) + "\n\n"
            s += charts.keys.filter { $0.hasPrefix("gates-") }.sorted().map(image).joined()
        }
        if let ct = compositeTable(r) {
            s += "\n## Composite prompts\n\n" + markdownTable(ct) + "\n" + escapeMarkdown(compositeParagraph) + "\n\n"
        }
        if !r.warnings.isEmpty { s += "\n## Warnings\n\n" + r.warnings.map { "- \(escapeMarkdown($0))\n" }.joined() }
        s += "\nAll numbers: `results.json`.\n"
        return s
    }
}
