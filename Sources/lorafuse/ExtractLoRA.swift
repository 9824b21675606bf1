import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse extract-lora`: a PEFT adapter from the difference of two checkpoints.
struct ExtractLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract-lora",
        abstract: "Extract a LoRA adapter from a fine-tuned checkpoint (truncated SVD of W_tuned − W_base).",
        discussion: """
        Per targeted 2-D weight: τ = W_tuned − W_base, τ ≈ U S Vh truncated, A = √S·Vh, B = U·√S
        (mergekit's convention); lora_alpha = r, so PEFT's scale is 1. Matrices whose smaller
        side exceeds 512 use a randomized SVD with power iterations.
        Example:  lorafuse extract-lora --base base --tuned tuned --rank 16 -o lora
                  lorafuse extract-lora --base base --tuned tuned --energy 0.9 -o lora --targets q_proj,v_proj
        """
    )

    @Option(name: .long, help: "Base checkpoint directory.")
    var base: String

    @Option(name: .long, help: "Fine-tuned checkpoint directory.")
    var tuned: String

    @Option(name: .long, help: "Rank of every module.")
    var rank: Int?

    @Option(name: .long, help: "Keep the smallest rank holding this fraction of ‖τ‖² per module, in (0, 1].")
    var energy: Double?

    @Option(name: .long, help: "Comma-separated module types (default: every *_proj inside the layers).")
    var targets: String?

    @Option(name: .long, help: "Element type of the adapter: f32, f16 or bf16 (default: the tuned model's).")
    var dtype: String?

    @Option(name: .long, help: "Seed of the randomized SVD.")
    var seed: UInt64 = 0

    @Option(name: [.short, .customLong("output")], help: "Output adapter (a directory for peft/mlx, a file for gguf).")
    var output: String

    @Flag(name: .long, help: "Print the report as JSON on stdout.")
    var json = false

    @OptionGroup var out: AdapterOutputOptions
    @OptionGroup var overwrite: OverwriteOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if (rank == nil) == (energy == nil) { throw ValidationError("give exactly one of --rank R or --energy E") }
        if let r = rank, r < 1 { throw ValidationError("--rank must be at least 1, got \(r)") }
        if let e = energy, !(e > 0 && e <= 1) { throw ValidationError("--energy must be in (0, 1], got \(e)") }
        if let d = dtype, DType(name: d) == nil { throw ValidationError("--dtype must be f32, f16 or bf16, got \(d)") }
    }

    struct Summary: Encodable {
        var output: String
        var modules: [ExtractedModuleReport]
        var skipped: [SkippedTensor]
        var seconds: Double
    }

    func run() throws {
        compute.apply()
        let rule: LoRAExtraction.RankRule = rank.map { .rank($0) } ?? .energy(energy!)
        let t = targets.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
        let bar = ProgressBar(total: 1, label: "extract-lora", enabled: !compute.quiet)
        let start = Date()
        let res = try LoRAExtraction.extract(base: base, tuned: tuned, output: output, format: out.format,
                                             dtype: dtype.flatMap { DType(name: $0) }, hints: try out.hints(),
                                             force: overwrite.force, options: .init(rule: rule, targets: t, seed: seed) { d, n in bar.update(d, total: n) })
        let summary = Summary(output: output, modules: res.modules, skipped: res.skipped, seconds: Date().timeIntervalSince(start))
        if json { try printJSON(summary); return }
        let w = min(max(res.modules.map(\.tensor.count).max() ?? 6, 6), 64)
        func pad(_ s: String) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
        print("\(pad("tensor"))  rank  energy    ‖τ‖_F      method")
        for m in res.modules {
            print("\(pad(m.tensor))  \(String(format: "%4d  %.4f  %9.4g  %@", m.rank, m.retainedEnergy, m.deltaNorm, m.method))")
        }
        for s in res.skipped { print("skipped \(s.name): \(s.reason) (\(s.detail))") }
        print(String(format: "%d modules in %.2fs; wrote %@", res.adapter.modules.count, summary.seconds, output))
    }
}
