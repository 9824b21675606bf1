import Foundation
import XCTest
@testable import LoRAFuse

final class AdapterAnalysisTests: XCTestCase {
    /// Dense reference: cosine over concatenated task vectors, conflict counts over all entries.
    private func denseStats(_ a: LoRAAdapter, _ b: LoRAAdapter) -> (cosine: Double, conflicts: Double, both: Double) {
        var ip = 0.0, na = 0.0, nb = 0.0, conflicts = 0.0, both = 0.0
        for (name, m) in a.modules {
            let da = FusionFixture.denseDelta(m)
            for x in da.data { na += Double(x) * Double(x) }
            guard let mb = b.modules[name] else { continue }
            let db = FusionFixture.denseDelta(mb)
            for e in 0..<da.data.count {
                let x = da.data[e], y = db.data[e]
                ip += Double(x) * Double(y)
                if x != 0 && y != 0 {
                    both += 1
                    if (x > 0) != (y > 0) { conflicts += 1 }
                }
            }
        }
        for m in b.modules.values { for x in FusionFixture.denseDelta(m).data { nb += Double(x) * Double(x) } }
        return (ip / (na * nb).squareRoot(), conflicts, both)
    }

    private func adapters(largeModule: Bool) -> [LoRAAdapter] {
        var rng = SeededRNG(seed: 77)
        var out: [LoRAAdapter] = []
        let base = FusionFixture.module(out: 10, in: 8, rank: 2, alpha: 4, rng: &rng)
        for (i, name) in ["math", "code", "chat"].enumerated() {
            var modules: [String: LoRAModule] = [:]
            // Correlated shared module: a common part plus noise, so cosines are not ~0.
            let own = FusionFixture.module(out: 10, in: 8, rank: 2, alpha: 4, rng: &rng)
            modules["layers.0.q_proj"] = LoRAModule(A: Matrix.vconcat([base.A, own.A]), B: Matrix.hconcat([base.B, own.B]),
                                                    scale: Float(i + 1))
            if i != 1 {  // "code" lacks v_proj: it adds 0 to inner products but norm to "math"/"chat"
                modules["layers.0.v_proj"] = FusionFixture.module(out: 6, in: 8, rank: 3, alpha: 3, rsLoRA: true, rng: &rng)
            }
            if largeModule {
                modules["layers.0.mlp"] = FusionFixture.module(out: 320, in: 256, rank: 2, alpha: 2, rng: &rng)
            }
            var meta = AdapterMetadata()
            meta.useRSLoRA = i == 2
            out.append(LoRAAdapter(name: name, modules: modules, metadata: meta))
        }
        return out
    }

    func testPerModuleSummary() {
        let a = adapters(largeModule: false)
        let s = AdapterAnalyzer.summarize(a[0])
        XCTAssertEqual(s.moduleCount, 2)
        let q = s.modules[0]
        XCTAssertEqual(q.module, "layers.0.q_proj")
        XCTAssertEqual(q.rank, 4)
        XCTAssertEqual(q.scale, 1)
        XCTAssertEqual(q.alpha, 4)                   // scale · r
        XCTAssertEqual(q.shapeA, [4, 8])
        XCTAssertEqual(q.shapeB, [10, 4])
        XCTAssertEqual(q.deltaShape, [10, 8])
        XCTAssertEqual(q.parameters, 72)
        let dn = FusionFixture.denseDelta(a[0].modules["layers.0.q_proj"]!).frobeniusNorm
        XCTAssertEqual(q.deltaNorm, dn, accuracy: 1e-4 * dn)
        let rs = AdapterAnalyzer.summarize(a[2]).modules[1]   // rsLoRA: alpha = scale · √r
        XCTAssertEqual(rs.alpha, Double(Float(3) / Float(3).squareRoot()) * Double(3).squareRoot(), accuracy: 1e-5)
        XCTAssertEqual(s.parameters, a[0].parameterCount)
    }

    func testCosineAndExactConflictRateMatchDense() throws {
        let a = adapters(largeModule: false)
        let r = AdapterAnalyzer.analyze(a, samplesPerModule: 100, seed: 3)
        XCTAssertEqual(r.pairs.count, 3)
        XCTAssertEqual(r.pairs.map { "\($0.adapterA)-\($0.adapterB)" }, ["math-code", "math-chat", "code-chat"])
        for p in r.pairs {
            let x = a.first { $0.name == p.adapterA }!, y = a.first { $0.name == p.adapterB }!
            let d = denseStats(x, y)
            XCTAssertEqual(p.cosine ?? .nan, d.cosine, accuracy: 1e-4)
            XCTAssertEqual(p.signConflictRate ?? .nan, d.conflicts / d.both, accuracy: 1.01 / d.both)  // one rounding flip at most
            XCTAssertEqual(p.sampledModules, 0)
            XCTAssertEqual(p.evaluatedEntries, p.exactModules == 2 ? 128 : 80)
        }
        XCTAssertEqual(r.pairs[0].sharedModules, 1)
        XCTAssertEqual(r.pairs[1].sharedModules, 2)
        XCTAssertGreaterThan(r.pairs[1].cosine ?? 0, 0.1)   // the shared component shows
        // Codable for `inspect --json`, and a table mentioning the sampling.
        let json = try JSONEncoder().encode(r)
        XCTAssertEqual(try JSONDecoder().decode(AdapterAnalysis.self, from: json), r)
        let table = AdapterAnalyzer.table(r)
        XCTAssertTrue(table.contains("math") && table.contains("sign conflict") && table.contains("layers.0.v_proj"))
    }

    func testLargeModulesAreSampledAndCloseToDense() {
        let a = adapters(largeModule: true)
        let r = AdapterAnalyzer.analyze([a[0], a[2]], samplesPerModule: 4096, seed: 11)
        let p = r.pairs[0]
        XCTAssertEqual(p.exactModules, 2)
        XCTAssertEqual(p.sampledModules, 1)
        XCTAssertEqual(p.evaluatedEntries, 80 + 48 + 4096)
        let d = denseStats(a[0], a[2])
        XCTAssertEqual(p.cosine ?? .nan, d.cosine, accuracy: 1e-4)
        // Standard error of a 4096-sample proportion is ≤ 0.008.
        XCTAssertEqual(p.signConflictRate ?? .nan, d.conflicts / d.both, accuracy: 0.04)
        // Same seed, same estimate.
        XCTAssertEqual(AdapterAnalyzer.analyze([a[0], a[2]], samplesPerModule: 4096, seed: 11).pairs[0], p)
    }

    func testMismatchedShapesAreWarnedAndSkipped() {
        var rng = SeededRNG(seed: 1)
        let x = LoRAAdapter(name: "x", modules: ["m": FusionFixture.module(out: 4, in: 3, rank: 1, alpha: 1, rng: &rng)])
        let y = LoRAAdapter(name: "y", modules: ["m": FusionFixture.module(out: 5, in: 3, rank: 1, alpha: 1, rng: &rng)])
        let r = AdapterAnalyzer.analyze([x, y])
        XCTAssertEqual(r.pairs[0].sharedModules, 0)
        XCTAssertEqual(r.pairs[0].cosine, 0)
        XCTAssertNil(r.pairs[0].signConflictRate)
        XCTAssertEqual(r.warnings.count, 1)
        XCTAssertTrue(r.warnings[0].contains("module m"))
    }
}
