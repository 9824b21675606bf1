import Foundation
import XCTest
@testable import LoRAFuse

final class SVGChartTests: XCTestCase {
    func testHeatmapColoursLabelsAndMissingCells() {
        let hm = SVGHeatmap(title: "T", rowLabels: ["r<0>", "r1"], columnLabels: ["c0", "c1"],
                            values: [[0, 1], [0.5, nil]], scale: .sequential(low: 0, high: 1), format: "%.2f", legend: "loss")
        // Ends of ColorBrewer Blues, and its middle stop.
        XCTAssertEqual(hm.color(0), "#f7fbff")
        XCTAssertEqual(hm.color(1), "#08306b")
        XCTAssertEqual(hm.color(0.5), "#6baed6")
        XCTAssertEqual(hm.color(7), "#08306b", "clamped")
        XCTAssertEqual(hm.textColor(1), "white")
        XCTAssertEqual(hm.textColor(0), "black")
        let svg = hm.render()
        XCTAssertTrue(svg.hasPrefix("<svg ") && svg.hasSuffix("</svg>\n"))
        XCTAssertTrue(svg.contains("<rect class=\"cell\" data-row=\"0\" data-col=\"1\" data-value=\"1.0\""))
        XCTAssertTrue(svg.contains("fill=\"#08306b\" stroke=\"white\"><title>r&lt;0&gt; × c1: 1.00</title>"))
        XCTAssertTrue(svg.contains("fill=\"white\">1.00</text>"), "the number is printed in white on the dark cell")
        XCTAssertTrue(svg.contains("data-row=\"1\" data-col=\"0\" data-value=\"0.5\""))
        XCTAssertTrue(svg.contains("<rect class=\"cell missing\" data-row=\"1\" data-col=\"1\""))
        XCTAssertEqual(svg.components(separatedBy: "<rect class=\"cell").count - 1, 4)
        XCTAssertEqual(svg.components(separatedBy: "class=\"cell missing\"").count - 1, 1)
        XCTAssertTrue(svg.contains(">r&lt;0&gt;</text>"))
        XCTAssertTrue(svg.contains(">loss</text>"))

        let div = SVGHeatmap(title: "", rowLabels: ["a"], columnLabels: ["b"], values: [[0]], scale: .diverging(center: 0, halfRange: 2))
        XCTAssertEqual(div.color(0), "#f7f7f7")
        XCTAssertEqual(div.color(2), "#b2182b")
        XCTAssertEqual(div.color(-2), "#2166ac")
        XCTAssertEqual(div.position(-1), -0.5)
        XCTAssertEqual(SVGHeatmap.autoScale([[0.2, -0.6], [nil, .nan]], divergingAround: 0), .diverging(center: 0, halfRange: 0.6))
        XCTAssertEqual(SVGHeatmap.autoScale([[0.2, 3], [nil, 1]]), .sequential(low: 0.2, high: 3))
    }

    func testBarChartBarsAndReferences() {
        let chart = SVGBarChart(title: "Mean loss", xLabel: "loss",
                                bars: [.init(label: "base", value: 2.0, color: "#777777"), .init(label: "a&b", value: 1.0, color: "#1f77b4"),
                                       .init(label: "none", value: nil, color: "#000000")],
                                references: [.init(label: "experts", value: 0.5, color: "#2ca02c")],
                                legend: [("#1f77b4", "static")], width: 600)
        let svg = chart.render()
        XCTAssertTrue(svg.contains("data-label=\"base\" data-value=\"2.0\""))
        XCTAssertTrue(svg.contains("data-label=\"a&amp;b\" data-value=\"1.0\""))
        XCTAssertTrue(svg.contains(">no value</text>"))
        XCTAssertTrue(svg.contains("class=\"reference\" data-value=\"0.5\""))
        // Bars start at 0 and their widths are proportional to the values (2 : 1).
        func width(_ label: String) -> Double {
            let r = svg.range(of: "data-label=\"\(label)\"")!
            let rest = svg[r.upperBound...]
            let w = rest.range(of: "width=\"")!
            return Double(rest[w.upperBound...].prefix { $0 != "\"" })!
        }
        XCTAssertEqual(width("base") / width("a&amp;b"), 2, accuracy: 0.01)
    }

    func testLineChartFixedTicksAndDashedSeries() {
        let svg = SVGLineChart(title: "shots", xLabel: "shots", yLabel: "loss",
                               series: [.init(name: "atlas", points: [(0, 2), (2, 1.5), (4, 1)], markers: true),
                                        .init(name: "best static", points: [(0, 1.8), (4, 1.8)], dashed: true)],
                               xTicks: [(0, "1"), (2, "4"), (4, "16")], legendWidth: 150).render()
        XCTAssertTrue(svg.contains(">16</text>") && svg.contains(">4</text>"))
        XCTAssertEqual(svg.components(separatedBy: "stroke-dasharray=\"6 4\"").count - 1, 2, "the dashed line and its legend swatch")
        XCTAssertEqual(svg.components(separatedBy: "<circle").count - 1, 3)
    }
}
