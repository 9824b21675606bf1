import Foundation

/// A small self-contained SVG line chart: axes with "nice" ticks (1, 2, 5 × 10ⁿ), tick labels,
/// axis labels, a title, one polyline per series (optionally with point markers) and a legend.
/// Non-finite points are skipped. For loss curves and reports; no external dependencies.
public struct SVGLineChart: Sendable {
    public struct Series: Sendable {
        public var name: String
        public var points: [(Double, Double)]
        /// Colour (any SVG colour); nil picks from a fixed palette by position.
        public var color: String?
        public var markers: Bool
        /// Drawn dashed: reference levels (a baseline, the experts) beside measured curves.
        public var dashed: Bool

        public init(name: String, points: [(Double, Double)], color: String? = nil, markers: Bool = false,
                    dashed: Bool = false) {
            self.name = name
            self.points = points
            self.color = color
            self.markers = markers
            self.dashed = dashed
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 720.0
    public var height = 420.0
    /// Fixed x ticks (value, label) instead of the automatic ones, e.g. shots 1, 4, 16 drawn at
    /// log2 positions. The x range is then the ticks' range.
    public var xTicks: [(Double, String)]?
    /// Legend width in pixels, kept free on the right of the plot so lines never run under it.
    public var legendWidth = 0.0

    public static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

    public init(title: String, xLabel: String, yLabel: String, series: [Series], width: Double = 720, height: Double = 420,
                xTicks: [(Double, String)]? = nil, legendWidth: Double = 0) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
        self.width = width
        self.height = height
        self.xTicks = xTicks
        self.legendWidth = legendWidth
    }

    /// Tick values covering [lo, hi] with about `count` steps of 1, 2 or 5 × 10ⁿ.
    public static func niceTicks(_ lo: Double, _ hi: Double, count: Int = 6) -> [Double] {
        guard lo.isFinite, hi.isFinite else { return [] }
        var (a, b) = (lo, hi)
        if b - a < 1e-12 * max(1, abs(a)) { a -= 0.5; b += 0.5 }
        let raw = (b - a) / Double(max(count, 1))
        let mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        var ticks: [Double] = []
        var t = floor(a / step) * step
        while t <= b + step * 1e-9 {
            ticks.append(abs(t) < step * 1e-9 ? 0 : t)
            t += step
        }
        if let last = ticks.last, last < b { ticks.append(last + step) }
        return ticks
    }

    static func format(_ v: Double, step: Double) -> String {
        let decimals = max(0, min(6, Int(-floor(log10(step)))))
        return String(format: "%.\(decimals)f", v)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    public func render() -> String {
        let pts = series.flatMap(\.points).filter { $0.0.isFinite && $0.1.isFinite }
        let xs = pts.map(\.0), ys = pts.map(\.1)
        let fixed = xTicks.map { $0.sorted { $0.0 < $1.0 } }
        let xt = fixed?.map(\.0) ?? Self.niceTicks(xs.min() ?? 0, xs.max() ?? 1)
        let yt = Self.niceTicks(ys.min() ?? 0, ys.max() ?? 1)
        let (x0, x1) = (xt.first ?? 0, xt.last ?? 1), (y0, y1) = (yt.first ?? 0, yt.last ?? 1)
        let left = 70.0, right = 20.0 + legendWidth, top = 40.0, bottom = 55.0
        let pw = width - left - right, ph = height - top - bottom
        func px(_ x: Double) -> Double { left + (x - x0) / max(x1 - x0, 1e-300) * pw }
        func py(_ y: Double) -> Double { top + ph - (y - y0) / max(y1 - y0, 1e-300) * ph }
        func f(_ v: Double) -> String { String(format: "%.2f", v) }

        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(f(width / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">\(Self.escape(title))</text>\n"
        let xStep = xt.count > 1 ? xt[1] - xt[0] : 1, yStep = yt.count > 1 ? yt[1] - yt[0] : 1
        for t in yt {
            let y = py(t)
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + pw))\" y2=\"\(f(y))\" stroke=\"#e5e5e5\"/>\n"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(Self.format(t, step: yStep))</text>\n"
        }
        for (k, t) in xt.enumerated() {
            let x = px(t)
            let label = fixed.map { Self.escape($0[k].1) } ?? Self.format(t, step: xStep)
            s += "<line x1=\"\(f(x))\" y1=\"\(f(top + ph))\" x2=\"\(f(x))\" y2=\"\(f(top + ph + 5))\" stroke=\"black\"/>\n"
            s += "<text x=\"\(f(x))\" y=\"\(f(top + ph + 19))\" text-anchor=\"middle\">\(label)</text>\n"
        }
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(f(left))\" y1=\"\(f(top + ph))\" x2=\"\(f(left + pw))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        s += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(height - 12))\" text-anchor=\"middle\">\(Self.escape(xLabel))</text>\n"
        s += "<text x=\"16\" y=\"\(f(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(f(top + ph / 2)))\">\(Self.escape(yLabel))</text>\n"
        for (i, se) in series.enumerated() {
            let color = se.color ?? Self.palette[i % Self.palette.count]
            let p = se.points.filter { $0.0.isFinite && $0.1.isFinite }
            if p.count > 1 {
                let list = p.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
                let dash = se.dashed ? " stroke-dasharray=\"6 4\"" : ""
                s += "<polyline class=\"series\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.6\"\(dash) points=\"\(list)\"/>\n"
            }
            if se.markers || p.count == 1 {
                for q in p { s += "<circle cx=\"\(f(px(q.0)))\" cy=\"\(f(py(q.1)))\" r=\"3\" fill=\"\(color)\"/>\n" }
            }
            // Legend, top right (in the reserved margin when there is one).
            let ly = top + 8 + Double(i) * 18, lx = legendWidth > 0 ? left + pw + 12 : left + pw - 150
            let ldash = se.dashed ? " stroke-dasharray=\"6 4\"" : ""
            s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"2\"\(ldash)/>\n"
            s += "<text x=\"\(f(lx + 30))\" y=\"\(f(ly + 4))\">\(Self.escape(se.name))</text>\n"
        }
        s += "</svg>\n"
        return s
    }
}
