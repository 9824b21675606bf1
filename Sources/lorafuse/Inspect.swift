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

    @Argument(help: "Adapters (PEFT or mlx-lm directories, GGUF LoRA files) or routed-model folders (inspected as their adapters).")
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
        // A routed model is inspected as its adapters (digests checked) plus a line on its gates.
        var routers: [RouterSummary] = []
        var read: [LoRAAdapter] = []
        for p in adapters {
            if RoutedModel.isRoutedDirectory(p) {
                let r = try RoutedModel.load(directory: p, hints: hints)
                routers.append(RouterSummary(path: p, method: r.config.method, top_k: r.config.topK, temperature: r.config.temperature,
                                             placement: r.config.placement.rawValue, gate: r.config.gate.rawValue,
                                             adapters: r.adapters.map(\.name), routed_projections: r.routedProjectionCount,
                                             genknowsub: r.config.general.map { GenKnowSubSummary(composition: $0.composition.rawValue, general: $0.adapters.map(\.name),
                                                                                   appliedOnce: r.fixed != nil) }))
                read += r.adapters
            } else {
                read.append(try AdapterIO.read(path: p, hints: hints))
            }
        }
        let loaded = AdapterNames.disambiguated(read)
        if let dims = hints.baseTensorDims {
            for a in loaded { try AdapterValidation.checkShapes(a, baseDims: dims, baseName: hints.source ?? "the base") }
        }
        let analysis = AdapterAnalyzer.analyze(loaded, samplesPerModule: samples, seed: seed)
        if json {
            struct Out: Encodable { var analysis: AdapterAnalysis; var dtypes: [String: String]; var routers: [RouterSummary] }
            try printJSON(Out(analysis: analysis, dtypes: Dictionary(loaded.map { ($0.name, $0.sourceDType.rawValue) }, uniquingKeysWith: { a, _ in a }),
                              routers: routers))
            return
        }
        for r in routers {
            let how = r.gate == GateKind.sequence.rawValue
                ? "one choice per request (classifier on the prompt's mean hidden state), top-\(r.top_k)"
                : r.gate == GateKind.xlora.rawValue
                ? "per-layer scalings from a classifier on the base model's last hidden state, top-\(r.top_k) of \(r.adapters.count), T=\(r.temperature), placement \(r.placement), \(r.routed_projections) routed projections"
                : "\(r.gate) gates, top-\(r.top_k), T=\(r.temperature), placement \(r.placement), \(r.routed_projections) routed projections"
            print("\(r.path): routed model, \(r.method) (\(how)) over \(r.adapters.count) adapters (digests match): \(r.adapters.joined(separator: ", "))")
            if let g = r.genknowsub {
                print("  GenKnowSub (\(g.composition)): the mean of \(g.general.joined(separator: ", ")) subtracted from each adapter"
                      + (g.appliedOnce ? " (applied once per routed projection; the rows below are the adapters as stored)" : " (the rows below are the subtracted adapters)"))
            }
        }
        for a in loaded { print("\(a.name): dtype \(a.sourceDType.rawValue.lowercased()), \(a.sourcePath ?? "")") }
        // A NOLA folder reads as the LoRA it stands for; say how little of it is stored.
        for p in adapters where NOLAVariant.isNOLADirectory(p) {
            let v = try NOLAVariant.open(directory: p)
            print("\(p): NOLA, \(v.parameters.count) coefficients stored in F32 (k_A \(v.config.basisA), k_B \(v.config.basisB), seed \(v.config.seed)); the LoRA below is materialised from them")
        }
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

/// A routed model's settings, as `inspect` prints them.
struct RouterSummary: Encodable {
    var path: String
    var method: String
    var top_k: Int
    var temperature: Float
    var placement: String
    var gate: String
    var adapters: [String]
    var routed_projections: Int
    var genknowsub: GenKnowSubSummary?
}

struct GenKnowSubSummary: Encodable {
    var composition: String
    var general: [String]
    var appliedOnce: Bool
}
