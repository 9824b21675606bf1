import Foundation
import XCTest
@testable import LoRAFuse

/// GenKnowSub (Routing/GenKnowSub.swift): the general adapters' mean subtracted from every expert
/// before routing, exactly or PEFT's factor-wise way, and redone when a routed folder is loaded.
final class GenKnowSubTests: XCTestCase {
    private func module(_ a: LoRAAdapter, _ l: Int, _ p: Projection) -> LoRAModule? {
        a.modules[ModuleAddress.projection(layer: l, p).peft]
    }

    func testExactSubtractionIsTheTaskMinusTheMeanDeltaW() throws {
        let m = QuantizedModelTests.twins().f32
        let task = RoutingTests.adapter(m, "task", seed: 1, rank: 3, projections: [.q, .v])
        // Different ranks, and one general adapter on a projection the task does not touch.
        let g1 = RoutingTests.adapter(m, "g1", seed: 2, rank: 2, projections: [.q, .v])
        let g2 = RoutingTests.adapter(m, "g2", seed: 3, rank: 5, projections: [.q, .v, .o])
        let out = try GenKnowSub.subtract([g1, g2], from: task, composition: .exact)
        XCTAssertEqual(out.name, "task")
        for l in 0..<m.config.numHiddenLayers {
            for p in [Projection.q, .v] {
                let got = module(out, l, p)!
                XCTAssertEqual(got.rank, 3 + 2 + 5)
                var want = module(task, l, p)!.delta()
                let mean = module(g1, l, p)!.delta().data.indices.map { (module(g1, l, p)!.delta().data[$0] + module(g2, l, p)!.delta().data[$0]) / 2 }
                for j in want.data.indices { want.data[j] -= mean[j] }
                XCTAssertLessThan(got.delta().maxAbsDifference(want), 1e-5, "layer \(l) \(p)")
            }
            // Only g2 touches o: the subtracted expert is −g2/2 there.
            var want = module(g2, l, .o)!.delta()
            want.scale(by: -0.5)
            XCTAssertLessThan(module(out, l, .o)!.delta().maxAbsDifference(want), 1e-5)
        }
    }

    func testFactorsSubtractionIsPEFTsAndRefusesUnequalRanks() throws {
        let m = QuantizedModelTests.twins().f32
        let task = RoutingTests.adapter(m, "task", seed: 1, rank: 3, projections: [.q])
        let g1 = RoutingTests.adapter(m, "g1", seed: 2, rank: 3, projections: [.q, .v])
        let g2 = RoutingTests.adapter(m, "g2", seed: 3, rank: 3, projections: [.q])
        let out = try GenKnowSub.subtract([g1, g2], from: task, composition: .factors)
        XCTAssertEqual(Set(out.modules.keys), Set(task.modules.keys), "factors touches only the task's modules")
        for l in 0..<m.config.numHiddenLayers {
            let t = module(task, l, .q)!, a = module(g1, l, .q)!, b = module(g2, l, .q)!, o = module(out, l, .q)!
            XCTAssertEqual(o.scale, t.scale)
            for j in 0..<t.A.count { XCTAssertEqual(o.A.data[j], t.A.data[j] - (a.A.data[j] + b.A.data[j]) / 2, accuracy: 1e-6) }
            for j in 0..<t.B.count { XCTAssertEqual(o.B.data[j], t.B.data[j] - (a.B.data[j] + b.B.data[j]) / 2, accuracy: 1e-6) }
            // Not the exact difference: the cross terms remain.
            let exact = try GenKnowSub.subtract([g1, g2], from: task, composition: .exact)
            XCTAssertGreaterThan(o.delta().maxAbsDifference(module(exact, l, .q)!.delta()), 1e-3)
        }
        let other = RoutingTests.adapter(m, "r2", seed: 4, rank: 2, projections: [.q])
        XCTAssertThrowsError(try GenKnowSub.subtract([other], from: task, composition: .factors)) { e in
            guard case let .rankMismatch(t, g, _, rt, rg)? = e as? GenKnowSubError else { return XCTFail("\(e)") }
            XCTAssertEqual([t, g], ["task", "r2"])
            XCTAssertEqual([rt, rg], [3, 2])
        }
        let elsewhere = RoutingTests.adapter(m, "vonly", seed: 5, rank: 3, projections: [.v])
        XCTAssertThrowsError(try GenKnowSub.subtract([elsewhere], from: task, composition: .factors)) {
            XCTAssertTrue("\($0)".contains("vonly") && "\($0)".contains("q_proj"), "\($0)")
        }
        XCTAssertNoThrow(try GenKnowSub.subtract([elsewhere], from: task, composition: .exact))
    }

    /// Arrow over subtracted experts: its prototypes come from the subtracted ΔW; the folder records
    /// the general adapters with their digests, loading redoes the subtraction, and a changed
    /// general adapter is named.
    func testArrowRoutesOverSubtractedExpertsAndTheFolderRedoesIt() throws {
        let m = QuantizedModelTests.twins().f32
        let dir = ModelFixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func written(_ a: LoRAAdapter, _ p: String) throws -> LoRAAdapter {
            try AdapterIO.write(a, to: p, format: .peft, dtype: .f32)
            var back = try AdapterIO.read(path: p)
            back.name = a.name
            back.sourcePath = p
            return back
        }
        let experts = try (0..<2).map { try written(RoutingTests.adapter(m, "task\($0)", seed: UInt64(80 + $0)), dir + "/adapters/task\($0)") }
        // The general adapter is named like an expert on purpose: it lives in its own folder.
        let general = try written(RoutingTests.adapter(m, "task0", seed: 90, rank: 2), dir + "/general/task0")
        var o = RouteOptions(method: .arrow)
        o.topK = 1
        let r = try RouterBuilder.build(model: m, adapters: experts, shots: [], options: o, general: [general])
        XCTAssertEqual(r.config.general?.composition, .exact)
        let id = LlamaWeights.linearID(layer: 0, .q)
        let nIn = m.base.linears[id].inFeatures
        let gate = r.gates[ModuleAddress.projection(layer: 0, .q).hf]!
        for i in 0..<2 {
            let sub = try GenKnowSub.subtract([general], from: experts[i], composition: .exact)
            let v = Array(try Linalg.svd(module(sub, 0, .q)!.delta()).Vt.row(0))
            let g = Array(gate.data[(i * nIn)..<((i + 1) * nIn)])
            XCTAssertGreaterThan(abs(zip(v, g).reduce(Float(0)) { $0 + $1.0 * $1.1 }), 0.9999, "expert \(i)")
            XCTAssertEqual(r.adapters[i].modules.values.first!.rank, 3 + 2)
        }
        // Not the gates of the unsubtracted experts.
        let plain = try RouterBuilder.build(model: m, adapters: experts, shots: [], options: o)
        XCTAssertGreaterThan(plain.gates[ModuleAddress.projection(layer: 0, .q).hf]!.maxAbsDifference(gate), 1e-2)

        let tokens = [3, 1, 4, 1, 5]
        let want = try m.logits(tokens: tokens, adapters: try m.prepare(routed: r))
        for copy in [false, true] {
            let out = dir + "/routed-\(copy)"
            try OutputGuard.buildDirectory(out, inputs: experts.map { $0.sourcePath! } + [general.sourcePath!], force: false) { tmp in
                try r.write(into: tmp, finalPath: out, sources: experts.map { $0.sourcePath! }, generalSources: [general.sourcePath!], copyAdapters: copy)
            }
            let back = try RoutedModel.load(directory: out)
            XCTAssertEqual(back.config.general?.adapters.map(\.path), [copy ? "general/task0" : "../general/task0"])
            XCTAssertEqual(back.config.general?.adapters.first?.sha256, try RoutedModel.digest(adapterAt: general.sourcePath!))
            // Loaded, the experts stay as stored and −mean(general) is applied once: the same logits
            // as routing over the subtracted experts, since the gate weights sum to 1.
            XCTAssertEqual(back.adapters[0].modules.values.first!.rank, 3)
            XCTAssertEqual(back.fixed?.modules.values.first?.rank, 2)
            XCTAssertLessThan(try m.logits(tokens: tokens, adapters: try m.prepare(routed: back)).maxAbsDifference(want), 1e-5)
        }
        // The user's adapters were not changed by the subtraction.
        XCTAssertEqual(try AdapterIO.read(path: experts[0].sourcePath!).modules.values.first!.rank, 3)
        try RoutingTests.corrupt(adapterAt: general.sourcePath!)
        XCTAssertThrowsError(try RoutedModel.load(directory: dir + "/routed-false")) { e in
            guard case let .adapterChanged(_, name, path, _, _)? = e as? RoutedModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(name, "task0")
            XCTAssertTrue(path.contains("general"), path)
        }
        XCTAssertNoThrow(try RoutedModel.load(directory: dir + "/routed-true"))
        // An expert given again as a general adapter is refused.
        XCTAssertThrowsError(try RouterBuilder.build(model: m, adapters: experts, shots: [], options: o, general: [experts[1]])) {
            XCTAssertTrue("\($0)".contains("both as an expert and as a general adapter"), "\($0)")
        }
    }
}
