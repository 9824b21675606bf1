import ArgumentParser
import Foundation
import LoRAFuse

/// What a GGUF LoRA needs to know about its base model: the architecture and the attention head
/// counts (llama.cpp permutes the q/k rows of llama models for its RoPE). Used to read GGUF LoRAs
/// made by llama.cpp's converter, which records no head counts, and to write GGUF LoRAs.
struct ModelHintOptions: ParsableArguments {
    @Option(name: .long, help: "Base model (a .gguf file, or a Hugging Face config.json or its directory): architecture and head counts; a GGUF base also gets llama.cpp's shape checks.")
    var base: String?

    @Option(name: .long, help: "Attention heads (for the q/k RoPE permutation of GGUF LoRAs), if no --base.")
    var heads: Int?

    @Option(name: .customLong("kv-heads"), help: "Key/value heads (default: --heads).")
    var kvHeads: Int?

    @Option(name: .long, help: "llama.cpp architecture name written to a GGUF LoRA (default: the base's, else llama).")
    var arch: String?

    func validate() throws {
        if let h = heads, h < 1 { throw ValidationError("--heads must be at least 1, got \(h)") }
        if let k = kvHeads, k < 1 { throw ValidationError("--kv-heads must be at least 1, got \(k)") }
        if kvHeads != nil && heads == nil { throw ValidationError("--kv-heads needs --heads") }
        if base != nil && heads != nil { throw ValidationError("give either --base or --heads/--kv-heads, not both") }
    }

    func hints() throws -> ModelHints {
        var h = ModelHints()
        if let b = base { h = try ModelHints.load(path: b) }
        if let n = heads { h.heads = AttentionHeads(heads: n, kvHeads: kvHeads ?? n) }
        if let a = arch { h.architecture = a }
        return h
    }
}

/// Options of every command that writes an adapter: the output format and what the GGUF writer
/// needs to know about the base model.
struct AdapterOutputOptions: ParsableArguments {
    @Option(name: .long, help: "Output format: peft (directory), gguf (llama.cpp LoRA file) or mlx (mlx-lm directory).")
    var format: AdapterFormat = .peft

    @OptionGroup var model: ModelHintOptions

    func hints() throws -> ModelHints { try model.hints() }
}

extension AdapterFormat: ExpressibleByArgument {
    // Only the formats adapters can be written in are output choices.
    public init?(argument: String) {
        guard let f = AdapterFormat(rawValue: argument), AdapterFormat.writable.contains(f) else { return nil }
        self = f
    }
    public static var allValueStrings: [String] { writable.map(\.rawValue) }
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert an adapter between PEFT, GGUF (llama.cpp) and MLX (mlx-lm).",
        discussion: """
        The input format is detected from the files. ΔW is preserved exactly (up to the output
        dtype): per-module scales that the target format cannot express are folded into B.
        GGUF LoRAs of llama models need the attention head counts for q/k (from --base or
        --heads/--kv-heads, or recorded in a GGUF input).
        Example:  lorafuse convert my-peft-adapter --format gguf --base SmolLM2.gguf -o my.gguf
        """
    )

    @Argument(help: "Input adapter: PEFT directory, MLX directory or GGUF LoRA file.")
    var adapter: String

    @Option(name: [.short, .customLong("output")], help: "Output path (a directory for peft/mlx, a file for gguf).")
    var output: String

    @Option(name: .long, help: "Element type of the output: f32, f16 or bf16 (default: the input's).")
    var dtype: String?

    @Flag(name: .long, help: "Print a machine-readable summary on stdout.")
    var json = false

    @OptionGroup var out: AdapterOutputOptions
    @OptionGroup var overwrite: OverwriteOptions

    func validate() throws {
        if let d = dtype, DType(name: d) == nil { throw ValidationError("--dtype must be f32, f16 or bf16, got \(d)") }
    }

    func run() throws {
        let s = try AdapterIO.convert(input: adapter, output: output, format: out.format,
                                      dtype: dtype.flatMap { DType(name: $0) }, hints: try out.hints(), force: overwrite.force)
        if json {
            try printJSON(s)
        } else {
            print("converted   \(s.input) (\(s.inputFormat.rawValue)) → \(s.output) (\(s.outputFormat.rawValue), \(s.dtype))")
            print("modules     \(s.modules), \(s.parameters) parameters")
            if let b = s.validatedAgainstBase { print("checked     llama.cpp adapter shape checks against \(b): ok") }
        }
    }
}
