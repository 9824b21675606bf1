import ArgumentParser
import Foundation
import LoRAFuse

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe adapters and how their task vectors relate.",
        discussion: """
        Per adapter: modules, ranks, alpha, scaling, dtype, parameter count and ‖ΔW‖ per module.
        Across adapters: cosine similarity of the whole task vectors (exact, from the factors) and the
        rate of sign conflicts between their ΔW entries (exact for small modules, sampled for large).
        """
    )

    @Argument(help: "Adapter directories.")
    var adapters: [String]

    @Flag(name: .long, help: "Print JSON instead of tables.")
    var json = false

    @Flag(name: .long, help: "List every module, not only the per-adapter summary.")
    var modules = false

    @Option(name: .long, help: "Entries sampled per large module for the sign-conflict rate.")
    var samples: Int = 4096

    @Option(name: .long, help: "Seed of the sampling.")
    var seed: UInt64 = 0

    @OptionGroup var model: ModelHintOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("give at least one adapter directory") }
        if samples < 1 { throw ValidationError("--samples must be at least 1") }
    }

    func run() throws {
        compute.apply()
        let hints = try model.hints()
        // Same-named folders (run1/x, run2/x) get their parent paths in the name: tables and the
        // JSON `dtypes` map are keyed by name.
        let loaded = AdapterNames.disambiguated(try adapters.map { try AdapterIO.read(path: $0, hints: hints) })
        if let dims = hints.baseTensorDims {
            for a in loaded { try AdapterValidation.checkShapes(a, baseDims: dims, baseName: hints.source ?? "the base") }
        }
        var analysis = AdapterAnalyzer.analyze(loaded, samplesPerModule: samples, seed: seed)
        if json {
            struct Out: Encodable { var analysis: AdapterAnalysis; var dtypes: [String: String] }
            analysis.warnings += []
            try printJSON(Out(analysis: analysis, dtypes: Dictionary(loaded.map { ($0.name, $0.sourceDType.rawValue) }, uniquingKeysWith: { a, _ in a })))
            return
        }
        for a in loaded { print("\(a.name): dtype \(a.sourceDType.rawValue.lowercased()), \(a.sourcePath ?? "")") }
        print(AdapterAnalyzer.table(analysis))
        if modules {
            for s in analysis.adapters {
                print("\n\(s.name)")
                print(pad("module", 56) + pad("kind", 10) + pad("rank", 6) + pad("alpha", 8) + pad("scale", 9) + "‖ΔW‖")
                for m in s.modules {
                    print(pad(m.module, 56) + pad(m.kind.rawValue, 10) + pad(String(m.rank), 6)
                          + pad(String(format: "%g", m.alpha), 8) + pad(String(format: "%.4g", m.scale), 9)
                          + String(format: "%.4g", m.deltaNorm))
                }
            }
        }
    }
}

func pad(_ s: String, _ n: Int) -> String {
    s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count)
}
