import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse merge-into-base`: bake adapters into the base weights.
struct MergeIntoBaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge-into-base",
        abstract: "Bake LoRA adapters into a base model: W' = W + Σ w·s·B·A.",
        discussion: """
        HF base (directory of safetensors) → HF safetensors, streamed, config/tokenizer copied.
        GGUF base → GGUF with all metadata, norms F32, other tensors f32/f16/bf16/q8_0 (llama q/k
        updates get llama.cpp's row permutation); --format hf writes a GGUF base out as HF safetensors.
        Without --model the default model is used:
          ${LORAFUSE_HOME:-~/.cache/lorafuse}/models/SmolLM2-135M-Instruct.Q4_1.gguf
        Example:  lorafuse merge-into-base --adapter math:1 --adapter code:0.5 -o merged.gguf --dtype q8_0
        """
    )

    @Option(name: .long, help: "Base model: HF checkpoint directory or GGUF file (default: the default model).")
    var model: String?

    @Option(name: .long, help: "Adapter as PATH[:WEIGHT] (repeatable).", transform: AdapterSpec.parse)
    var adapter: [AdapterSpec] = []

    @Option(name: .long, help: "Output format: hf or gguf (default: the base's).")
    var format: String?

    @Option(name: .long, help: "f32, f16, bf16, or q8_0 (GGUF only). Default: base dtype (HF), f16 (GGUF), f32 (GGUF→HF).")
    var dtype: String?

    @Option(name: .customLong("max-shard-size"), help: "Largest HF shard, e.g. 2GB.")
    var maxShardSize: String = "2GB"

    @Option(name: [.short, .customLong("output")], help: "Output: directory (HF) or .gguf file / directory (GGUF).")
    var output: String

    @Flag(name: .long, help: "Print the report as JSON on stdout.")
    var json = false

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if adapter.isEmpty { throw ValidationError("give at least one --adapter PATH[:WEIGHT]") }
        if let f = format, MergeIntoBase.Format(rawValue: f) == nil { throw ValidationError("--format must be hf or gguf, got \(f)") }
        if let d = dtype, !["f32", "f16", "bf16", "q8_0"].contains(d.lowercased()) {
            throw ValidationError("--dtype must be f32, f16, bf16 or q8_0, got \(d)")
        }
        if parseByteSize(maxShardSize) == nil { throw ValidationError("--max-shard-size must be a size like 2GB, got \(maxShardSize)") }
    }

    func run() throws {
        compute.apply()
        let base = model ?? ModelLocator.defaultModelPath()
        guard FileManager.default.fileExists(atPath: base) else {
            throw CheckpointError.notACheckpoint(path: base, reason: model == nil ? "the default model is missing; run scripts/setup.sh or pass --model" : "does not exist")
        }
        // The base's head counts let GGUF LoRAs made by llama.cpp (which record none) be read.
        let hints = (try? ModelHints.load(path: base)) ?? ModelHints()
        let loaded = try adapter.map { (adapter: try AdapterIO.read(path: $0.path, hints: hints), weight: $0.weight) }
        let bar = ProgressBar(total: 1, label: "merge-into-base", enabled: !compute.quiet)
        let report = try MergeIntoBase.merge(base: base, adapters: loaded, output: output,
                                             options: .init(format: format.flatMap { MergeIntoBase.Format(rawValue: $0) }, dtype: dtype,
                                                            maxShardBytes: parseByteSize(maxShardSize)!, force: overwrite.force) { d, t in bar.update(d, total: t) })
        if json { try printJSON(report); return }
        print("merged \(report.merged.count) tensors (\(report.copied) unchanged) into \(report.output) [\(report.format), \(report.dtype)]")
        for m in report.merged.prefix(12) { print(String(format: "  %@  ‖ΔW‖=%.4g  (%d adapters)", m.tensor, m.deltaNorm, m.sources.count)) }
        if report.merged.count > 12 { print("  … \(report.merged.count - 12) more") }
        print(String(format: "wrote %.1f MB in %.2fs", Double(report.bytesWritten) / 1e6, report.seconds))
    }
}
