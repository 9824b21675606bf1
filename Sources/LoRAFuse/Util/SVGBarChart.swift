import Foundation

/// A self-contained horizontal bar chart: one bar per labelled value (drawn in the given order, top
/// to bottom), its number printed at the bar's end, an x axis from 0 with nice ticks, optional
/// dashed vertical reference lines (e.g. "experts"), and a legend of the bar colours' meanings.
///
/// Bars carry `data-label` and `data-value` so tests can check what was drawn.
public struct SVGBarChart: Sendable {
    public struct Bar: Sendable {
        public var label: String
        public var value: Double?
        public var color: String
        public init(label: String, value: Double?, color: String) {
            self.label = label
            self.value = value
            self.color = color
        }
    }

    public struct Reference: Sendable {
        public var label: String
        public var value: Double
        public var color: String
        public init(label: String, value: Double, color: String) {
            self.label = label
            self.value = value
            self.color = color
        }
    }

    public var title: String
    public var xLabel: String
    public var bars: [Bar]
    public var references: [Reference]
    /// (colour, meaning) pairs shown under the title.
    public var legend: [(String, String)]
    public var format: String
    public var width: Double
    public var barHeight: Double

    public init(title: String, xLabel: String, bars: [Bar], references: [Reference] = [], legend: [(String, String)] = [],
                format: String = "%.3f", width: Double = 720, barHeight: Double = 20) {
        self.title = title
        self.xLabel = xLabel
        self.bars = bars
        self.references = references
        self.legend = legend
        self.format = format
        self.width = width
        self.barHeight = barHeight
    }

    public func render() -> String {
        let e = SVGLineChart.escape
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        let values = bars.compactMap(\.value).filter(\.isFinite) + references.map(\.value).filter(\.isFinite)
        let hiV = max(values.max() ?? 1, 0), loV = min(values.min() ?? 0, 0)
        let ticks = SVGLineChart.niceTicks(loV, hiV > loV ? hiV : loV + 1, count: 6)
        let x0 = ticks.first ?? 0, x1 = ticks.last ?? 1
        let left = (bars.map { SVGHeatmap.textWidth($0.label) }.max() ?? 0) + 16
        let right = 64.0
        let legendRows = legend.isEmpty ? 0.0 : 1.0
        let top = 34 + legendRows * 20 + Double(references.count) * 14 + 4
        let gap = 6.0
        let plotH = Double(bars.count) * (barHeight + gap)
        let height = top + plotH + 50
        let pw = width - left - right
        func px(_ v: Double) -> Double { left + (v - x0) / max(x1 - x0, 1e-300) * pw }

        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"barchart\" width=\"\(Int(width))\" height=\"\(Int(height.rounded(.up)))\" viewBox=\"0 0 \(Int(width)) \(Int(height.rounded(.up)))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"10\" y=\"20\" font-size=\"15\">\(e(title))</text>\n"
        var lx = 10.0
        for (color, meaning) in legend {
            s += "<rect x=\"\(f(lx))\" y=\"34\" width=\"12\" height=\"12\" fill=\"\(color)\"/>\n"
            s += "<text x=\"\(f(lx + 16))\" y=\"44\">\(e(meaning))</text>\n"
            lx += 16 + SVGHeatmap.textWidth(meaning) + 18
        }
        let xStep = ticks.count > 1 ? ticks[1] - ticks[0] : 1
        for t in ticks {
            let x = px(t)
            s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"#e5e5e5\"/>\n"
            s += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(SVGLineChart.format(t, step: xStep))</text>\n"
        }
        for (i, b) in bars.enumerated() {
            let y = top + Double(i) * (barHeight + gap) + gap / 2
            s += "<text class=\"bar-label\" x=\"\(f(left - 6))\" y=\"\(f(y + barHeight / 2 + 4))\" text-anchor=\"end\">\(e(b.label))</text>\n"
            if let v = b.value, v.isFinite {
                let xa = px(min(0, v)), xb = px(max(0, v))
                s += "<rect class=\"bar\" data-label=\"\(e(b.label))\" data-value=\"\(v)\" x=\"\(f(xa))\" y=\"\(f(y))\" width=\"\(f(max(xb - xa, 0.5)))\" height=\"\(f(barHeight))\" fill=\"\(b.color)\"><title>\(e(b.label)): \(e(String(format: format, v)))</title></rect>\n"
                s += "<text x=\"\(f(xb + 4))\" y=\"\(f(y + barHeight / 2 + 4))\" font-size=\"11\">\(e(String(format: format, v)))</text>\n"
            } else {
                s += "<text x=\"\(f(px(0) + 4))\" y=\"\(f(y + barHeight / 2 + 4))\" font-size=\"11\" fill=\"#888888\">no value</text>\n"
            }
        }
        for (k, r) in references.enumerated() where r.value.isFinite {
            let x = px(r.value)
            s += "<line class=\"reference\" data-value=\"\(r.value)\" x1=\"\(f(x))\" y1=\"\(f(top - 4 - Double(references.count - 1 - k) * 14))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"\(r.color)\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\"/>\n"
            // One label row per reference, so close values never overprint.
            s += "<text x=\"\(f(x + 3))\" y=\"\(f(top - 6 - Double(references.count - 1 - k) * 14))\" font-size=\"11\" fill=\"\(r.color)\">\(e(r.label))</text>\n"
        }
        s += "<line x1=\"\(f(px(0)))\" y1=\"\(f(top))\" x2=\"\(f(px(0)))\" y2=\"\(f(top + plotH))\" stroke=\"black\"/>\n"
        s += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(height - 12))\" text-anchor=\"middle\">\(e(xLabel))</text>\n"
        s += "</svg>\n"
        return s
    }
}
