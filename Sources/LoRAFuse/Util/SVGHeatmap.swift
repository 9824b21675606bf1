import Foundation

/// A self-contained SVG heatmap: one coloured cell per (row, column) value with its number printed
/// in it, row labels on the left, column labels rotated above, a colour bar on the right and a
/// `<title>` tooltip per cell. Missing values (nil or non-finite) are drawn hatched grey with "–".
///
/// Every cell carries `data-row`, `data-col` and `data-value` attributes so tests (and readers of
/// the SVG) can check exactly which value produced which colour.
public struct SVGHeatmap: Sendable {
    /// How values map to colours.
    public enum Scale: Sendable, Equatable {
        /// Light (at `low`) to dark blue (at `high`); values outside are clamped.
        case sequential(low: Double, high: Double)
        /// Blue below `center`, white at it, red above; ±`halfRange` is full saturation.
        case diverging(center: Double, halfRange: Double)
    }

    public var title: String
    public var rowLabels: [String]
    public var columnLabels: [String]
    /// `values[row][column]`.
    public var values: [[Double?]]
    public var scale: Scale
    /// printf format of the numbers in the cells and the colour bar.
    public var format: String
    /// Label of the colour bar.
    public var legend: String
    public var cellWidth: Double
    public var cellHeight: Double

    public init(title: String, rowLabels: [String], columnLabels: [String], values: [[Double?]], scale: Scale,
                format: String = "%.2f", legend: String = "", cellWidth: Double = 46, cellHeight: Double = 26) {
        precondition(values.count == rowLabels.count && values.allSatisfy { $0.count == columnLabels.count },
                     "heatmap values must be rows × columns")
        self.title = title
        self.rowLabels = rowLabels
        self.columnLabels = columnLabels
        self.values = values
        self.scale = scale
        self.format = format
        self.legend = legend
        self.cellWidth = cellWidth
        self.cellHeight = cellHeight
    }

    /// A scale spanning the finite values: sequential from their min to max, or diverging around
    /// `center` with the largest distance from it as the half range.
    public static func autoScale(_ values: [[Double?]], divergingAround center: Double? = nil) -> Scale {
        let v = values.joined().compactMap { $0 }.filter(\.isFinite)
        if let c = center {
            let h = v.map { abs($0 - c) }.max() ?? 1
            return .diverging(center: c, halfRange: h > 0 ? h : 1)
        }
        let lo = v.min() ?? 0, hi = v.max() ?? 1
        return .sequential(low: lo, high: hi > lo ? hi : lo + 1)
    }

    /// Position of `v` on the scale in [0, 1] (sequential) or [−1, 1] (diverging), clamped.
    public func position(_ v: Double) -> Double {
        switch scale {
        case let .sequential(lo, hi):
            return min(1, max(0, (v - lo) / (hi - lo)))
        case let .diverging(c, h):
            return min(1, max(-1, (v - c) / h))
        }
    }

    // Colour stops (RGB 0–255): ColorBrewer's Blues for sequential, RdBu reversed for diverging.
    static let blues: [(Double, Double, Double)] = [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]
    static let negative: [(Double, Double, Double)] = [(247, 247, 247), (146, 197, 222), (33, 102, 172)]
    static let positive: [(Double, Double, Double)] = [(247, 247, 247), (244, 165, 130), (178, 24, 43)]

    static func interpolate(_ stops: [(Double, Double, Double)], _ t: Double) -> (Double, Double, Double) {
        let x = min(1, max(0, t)) * Double(stops.count - 1)
        let i = min(Int(x), stops.count - 2)
        let f = x - Double(i)
        let a = stops[i], b = stops[i + 1]
        return (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f, a.2 + (b.2 - a.2) * f)
    }

    static func hex(_ c: (Double, Double, Double)) -> String {
        String(format: "#%02x%02x%02x", Int(c.0.rounded()), Int(c.1.rounded()), Int(c.2.rounded()))
    }

    func rgb(_ v: Double) -> (Double, Double, Double) {
        let p = position(v)
        switch scale {
        case .sequential: return Self.interpolate(Self.blues, p)
        case .diverging: return p < 0 ? Self.interpolate(Self.negative, -p) : Self.interpolate(Self.positive, p)
        }
    }

    /// The fill colour of a value, `#rrggbb`.
    public func color(_ v: Double) -> String { Self.hex(rgb(v)) }

    /// Black or white, whichever reads better on the value's fill (relative luminance threshold).
    public func textColor(_ v: Double) -> String {
        let c = rgb(v)
        let lum = (0.2126 * c.0 + 0.7152 * c.1 + 0.0722 * c.2) / 255
        return lum < 0.5 ? "white" : "black"
    }

    /// Label width estimate for 12 px sans-serif: the layout needs no font metrics to be readable.
    static func textWidth(_ s: String, size: Double = 12) -> Double { Double(s.count) * size * 0.6 }

    public func render() -> String {
        let e = SVGLineChart.escape
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        let rowW = (rowLabels.map { Self.textWidth($0) }.max() ?? 0) + 12
        // Column labels are rotated −45°, so they need height ≈ width·sin 45° above the grid.
        let colH = (columnLabels.map { Self.textWidth($0) }.max() ?? 0) * 0.72 + 12
        let left = max(rowW, 20), top = 34 + colH
        let gridW = Double(columnLabels.count) * cellWidth, gridH = Double(rowLabels.count) * cellHeight
        let barX = left + gridW + 24, barW = 14.0, barH = max(gridH, 120)
        let legendTextW = max(Self.textWidth(legend), 60)
        // The last rotated column label leans right of the grid.
        let width = max(barX + barW + 10 + legendTextW + 10, left + gridW + colH, Self.textWidth(title, size: 15) + 20)
        let height = top + max(gridH, barH) + (legend.isEmpty ? 16 : 34)

        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heatmap\" width=\"\(Int(width.rounded(.up)))\" height=\"\(Int(height.rounded(.up)))\" viewBox=\"0 0 \(Int(width.rounded(.up))) \(Int(height.rounded(.up)))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<defs><pattern id=\"missing\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\"><rect width=\"6\" height=\"6\" fill=\"#eeeeee\"/><path d=\"M0,6 L6,0\" stroke=\"#cccccc\"/></pattern></defs>\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"10\" y=\"20\" font-size=\"15\">\(e(title))</text>\n"
        for (j, label) in columnLabels.enumerated() {
            let x = left + (Double(j) + 0.5) * cellWidth, y = top - 6
            s += "<text class=\"col-label\" x=\"\(f(x))\" y=\"\(f(y))\" transform=\"rotate(-45 \(f(x)) \(f(y)))\">\(e(label))</text>\n"
        }
        for (i, label) in rowLabels.enumerated() {
            let y = top + (Double(i) + 0.5) * cellHeight + 4
            s += "<text class=\"row-label\" x=\"\(f(left - 6))\" y=\"\(f(y))\" text-anchor=\"end\">\(e(label))</text>\n"
        }
        for (i, row) in values.enumerated() {
            for (j, v) in row.enumerated() {
                let x = left + Double(j) * cellWidth, y = top + Double(i) * cellHeight
                let tip = "\(rowLabels[i]) × \(columnLabels[j]): "
                if let v, v.isFinite {
                    let text = String(format: format, v)
                    s += "<rect class=\"cell\" data-row=\"\(i)\" data-col=\"\(j)\" data-value=\"\(v)\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(cellWidth))\" height=\"\(f(cellHeight))\" fill=\"\(color(v))\" stroke=\"white\"><title>\(e(tip + text))</title></rect>\n"
                    s += "<text class=\"cell-label\" x=\"\(f(x + cellWidth / 2))\" y=\"\(f(y + cellHeight / 2 + 4))\" text-anchor=\"middle\" font-size=\"11\" fill=\"\(textColor(v))\">\(e(text))</text>\n"
                } else {
                    s += "<rect class=\"cell missing\" data-row=\"\(i)\" data-col=\"\(j)\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(cellWidth))\" height=\"\(f(cellHeight))\" fill=\"url(#missing)\" stroke=\"white\"><title>\(e(tip + "no value"))</title></rect>\n"
                    s += "<text class=\"cell-label\" x=\"\(f(x + cellWidth / 2))\" y=\"\(f(y + cellHeight / 2 + 4))\" text-anchor=\"middle\" font-size=\"11\" fill=\"#888888\">–</text>\n"
                }
            }
        }
        // Colour bar: top = the high end.
        let (lo, hi): (Double, Double)
        switch scale {
        case let .sequential(l, h): (lo, hi) = (l, h)
        case let .diverging(c, h): (lo, hi) = (c - h, c + h)
        }
        let steps = 24
        for k in 0..<steps {
            let v = hi - (hi - lo) * (Double(k) + 0.5) / Double(steps)
            let y = top + barH * Double(k) / Double(steps)
            s += "<rect x=\"\(f(barX))\" y=\"\(f(y))\" width=\"\(f(barW))\" height=\"\(f(barH / Double(steps) + 0.5))\" fill=\"\(color(v))\"/>\n"
        }
        s += "<rect x=\"\(f(barX))\" y=\"\(f(top))\" width=\"\(f(barW))\" height=\"\(f(barH))\" fill=\"none\" stroke=\"#999999\"/>\n"
        for (v, y) in [(hi, top + 4), ((lo + hi) / 2, top + barH / 2 + 4), (lo, top + barH)] {
            s += "<text x=\"\(f(barX + barW + 5))\" y=\"\(f(y))\" font-size=\"11\">\(e(String(format: format, v)))</text>\n"
        }
        if !legend.isEmpty {
            s += "<text x=\"\(f(barX))\" y=\"\(f(top + barH + 22))\" font-size=\"11\">\(e(legend))</text>\n"
        }
        s += "</svg>\n"
        return s
    }
}
