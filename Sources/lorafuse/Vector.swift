import ArgumentParser
import Foundation
import LoRAFuse

/// `lorafuse vector extract|apply`: full-model task vectors, streamed tensor by tensor.
struct Vector: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Full-model task vectors: τ = A − B, and C + α·τ.",
        discussion: """
        Checkpoints are Hugging Face directories (config.json + model.safetensors or a sharded
        model.safetensors.index.json) in F32/F16/BF16. Work is streamed tensor by tensor, so
        memory stays at a few tensors whatever the model size.
        Example:  lorafuse vector extract --from tuned --minus base -o reasoning-vec
                  lorafuse vector apply reasoning-vec --to other-base --scale 0.8 -o merged
        """,
        subcommands: [Extract.self, Apply.self]
    )

    struct Extract: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "τ = A − B, written as a checkpoint directory.")

        @Option(name: .long, help: "The checkpoint with the behaviour (A).")
        var from: String

        @Option(name: .long, help: "The checkpoint it was tuned from (B).")
        var minus: String

        @OptionGroup var out: CheckpointOutputOptions

        func validate() throws { try out.check() }

        func run() throws {
            let bar = ProgressBar(total: 1, label: "vector extract", enabled: !out.quiet)
            let report = try TaskVectors.extract(from: from, minus: minus, output: out.output,
                                                 options: .init(dtype: out.dtypeValue, maxShardBytes: out.shardBytes, force: out.force) { d, t in bar.update(d, total: t) })
            try out.print(report)
        }
    }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "C + α·τ: add a task vector to a checkpoint (α < 0 subtracts).")

        @Argument(help: "Task vector directory (from `vector extract`).")
        var vector: String

        @Option(name: .long, help: "The checkpoint to add the vector to (C).")
        var to: String

        @Option(name: .long, help: "α: scale of the vector; negative subtracts.")
        var scale: Float = 1

        @OptionGroup var out: CheckpointOutputOptions

        func validate() throws {
            try out.check()
            guard scale.isFinite else { throw ValidationError("--scale must be finite") }
        }

        func run() throws {
            let bar = ProgressBar(total: 1, label: "vector apply", enabled: !out.quiet)
            let report = try TaskVectors.apply(vector: vector, to: to, scale: scale, output: out.output,
                                               options: .init(dtype: out.dtypeValue, maxShardBytes: out.shardBytes, force: out.force) { d, t in bar.update(d, total: t) })
            try out.print(report)
        }
    }
}

/// Output options of the commands that write a checkpoint.
struct CheckpointOutputOptions: ParsableArguments {
    @Option(name: [.short, .customLong("output")], help: "Output directory (created; must be empty if it exists, unless --force).")
    var output: String

    @Flag(name: .long, help: "Replace an existing output folder as a whole. Inputs are never replaced.")
    var force = false

    @Option(name: .long, help: "Element type of float tensors: f32, f16 or bf16 (default: the input's).")
    var dtype: String?

    @Option(name: .customLong("max-shard-size"), help: "Largest shard, e.g. 2GB, 500MB (default 2GB).")
    var maxShardSize: String = "2GB"

    @Flag(name: .long, help: "Print the report as JSON on stdout.")
    var json = false

    @Flag(name: .long, help: "Print no progress bar.")
    var quiet = false

    var dtypeValue: DType? { dtype.flatMap { DType(name: $0) } }
    var shardBytes: Int { parseByteSize(maxShardSize) ?? 2_000_000_000 }

    func check() throws {
        if let d = dtype, DType(name: d) == nil { throw ValidationError("--dtype must be f32, f16 or bf16, got \(d)") }
        if parseByteSize(maxShardSize) == nil { throw ValidationError("--max-shard-size must be a size like 2GB or 500MB, got \(maxShardSize)") }
    }

    func print(_ r: CheckpointOpReport) throws {
        if json { try printJSON(r); return }
        Swift.print("\(r.operation): \(r.combined) tensors computed, \(r.copied) copied unchanged, \(r.skipped.count) listed below")
        if !r.skipped.isEmpty { Swift.print(r.skippedTable()) }
        Swift.print(String(format: "read %.1f MB, wrote %.1f MB in %.2fs", Double(r.bytesRead) / 1e6, Double(r.bytesWritten) / 1e6, r.seconds))
        Swift.print("wrote \(output): \(r.outputFiles.joined(separator: ", "))")
    }
}
