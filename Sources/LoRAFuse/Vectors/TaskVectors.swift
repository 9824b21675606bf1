import Foundation

/// A tensor left out of (or passed through) a checkpoint operation, and why.
public struct SkippedTensor: Codable, Sendable, Equatable {
    /// `missing-in-<role>`, `shape-mismatch` or `non-float`.
    public var name: String
    public var reason: String
    public var detail: String

    public init(name: String, reason: String, detail: String) {
        self.name = name
        self.reason = reason
        self.detail = detail
    }
}

/// What a streamed checkpoint operation did.
public struct CheckpointOpReport: Codable, Sendable {
    public var operation: String
    /// Tensors computed from both inputs.
    public var combined: Int
    /// Tensors written unchanged from the base (apply / merge-into-base).
    public var copied: Int
    public var skipped: [SkippedTensor]
    public var bytesRead: Int
    public var bytesWritten: Int
    public var outputFiles: [String]
    public var seconds: Double

    /// A fixed-width table of the skipped tensors (empty string when none).
    public func skippedTable() -> String {
        guard !skipped.isEmpty else { return "" }
        let w0 = min(max(skipped.map(\.name.count).max() ?? 0, 6), 72)
        let w1 = max(skipped.map(\.reason.count).max() ?? 0, 6)
        func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s : s + String(repeating: " ", count: w - s.count) }
        var lines = ["\(pad("tensor", w0))  \(pad("reason", w1))  detail"]
        for s in skipped { lines.append("\(pad(s.name, w0))  \(pad(s.reason, w1))  \(s.detail)") }
        return lines.joined(separator: "\n")
    }
}

/// Full-model task vectors ("reasoning vectors"): τ = θ_from − θ_minus, and θ = θ_base + α·τ
/// (Ilharco et al. 2023, "Editing models with task arithmetic"; α < 0 subtracts a behaviour).
///
/// Both operations stream tensor by tensor and, within a tensor, chunk by chunk (`chunkElements`):
/// each chunk is read with pread, computed in Float32, encoded and appended through
/// `StreamingShardedWriter`, so peak memory is a few chunk buffers, never a tensor or a model.
/// Inputs are Hugging Face safetensors checkpoints in F32/F16/BF16 (single file or sharded).
public enum TaskVectors {
    public static let vectorConfigFile = "vector_config.json"

    public struct Options: Sendable {
        /// Output element type for float tensors; nil keeps each tensor's input dtype.
        public var dtype: DType?
        public var maxShardBytes: Int
        /// Elements per streamed chunk: elementwise work never holds more than this many values
        /// of a tensor (4 Mi elements: 16 MB of Float32 per input).
        public var chunkElements: Int
        public var progress: (@Sendable (Int, Int) -> Void)?
        /// Replace an existing output folder (never an input).
        public var force: Bool

        public init(dtype: DType? = nil, maxShardBytes: Int = 2_000_000_000, chunkElements: Int = 1 << 22,
                    force: Bool = false, progress: (@Sendable (Int, Int) -> Void)? = nil) {
            self.force = force
            self.dtype = dtype
            self.maxShardBytes = maxShardBytes
            self.chunkElements = max(chunkElements, 1)
            self.progress = progress
        }
    }

    /// Calls `body` on consecutive element ranges of `t` (at least once, so empty tensors are written).
    static func forChunks(of t: PlannedTensor, chunk: Int, writer: StreamingShardedWriter,
                          _ body: (Range<Int>) throws -> Void) throws {
        let n = t.shape.reduce(1, *)
        var off = 0
        repeat {
            let end = min(off + chunk, n)
            try body(off..<end)
            off = end
        } while off < n
    }

    /// τ = θ_from − θ_minus for every tensor present in both with the same shape and a float
    /// dtype; the others are listed in the report's `skipped`. Writes the vector as a checkpoint
    /// in `output` with `config.json` copied from `from` and a `vector_config.json`.
    @discardableResult
    public static func extract(from fromPath: String, minus minusPath: String, output: String,
                               options: Options = Options()) throws -> CheckpointOpReport {
        try OutputGuard.buildDirectory(output, inputs: [fromPath, minusPath], force: options.force) { dir in
            try extractUnguarded(from: fromPath, minus: minusPath, output: dir, options: options)
        }
    }

    static func extractUnguarded(from fromPath: String, minus minusPath: String, output: String,
                                 options: Options) throws -> CheckpointOpReport {
        let start = Date()
        let a = try HFCheckpoint(path: fromPath)
        let b = try HFCheckpoint(path: minusPath)
        var plan: [PlannedTensor] = []
        var skipped: [SkippedTensor] = []
        for n in a.names {
            let ia = a.infos[n]!
            guard let ib = b.infos[n] else {
                skipped.append(SkippedTensor(name: n, reason: "missing-in-minus", detail: "only in \(fromPath)"))
                continue
            }
            guard let dt = ia.floatType, ib.floatType != nil else {
                skipped.append(SkippedTensor(name: n, reason: "non-float", detail: "dtypes \(ia.dtype) and \(ib.dtype); only F32/F16/BF16 subtract"))
                continue
            }
            guard ia.shape == ib.shape else {
                skipped.append(SkippedTensor(name: n, reason: "shape-mismatch", detail: "\(ia.shape) in from, \(ib.shape) in minus"))
                continue
            }
            plan.append(PlannedTensor(name: n, shape: ia.shape, dtype: (options.dtype ?? dt).rawValue))
        }
        for n in b.names where !a.contains(n) {
            skipped.append(SkippedTensor(name: n, reason: "missing-in-from", detail: "only in \(minusPath)"))
        }
        guard !plan.isEmpty else {
            throw CheckpointError.nothingMatched(first: fromPath, second: minusPath, firstCount: a.names.count, secondCount: b.names.count)
        }
        let writer = try StreamingShardedWriter(directory: URL(fileURLWithPath: output), plan: plan,
                                                maxShardBytes: options.maxShardBytes)
        var va: [Float] = [], vb: [Float] = [], scratch: [UInt8] = [], out: [UInt8] = []
        var read = 0
        for (k, t) in plan.enumerated() {
            let outType = DType(rawValue: t.dtype)!
            try forChunks(of: t, chunk: options.chunkElements, writer: writer) { r in
                try a.readFloats(t.name, elements: r, into: &va, scratch: &scratch)
                try b.readFloats(t.name, elements: r, into: &vb, scratch: &scratch)
                subtract(&va, vb)   // va = a − b
                TensorCodec.encode(va, dtype: outType, into: &out)
                try writer.append(name: t.name, bytes: out)
            }
            read += a.infos[t.name]!.byteRange.count + b.infos[t.name]!.byteRange.count
            options.progress?(k + 1, plan.count)
        }
        var files = try writer.finish()
        files += try a.copyCompanionFiles(to: output, only: ["config.json"])
        let dtypes = Set(plan.map(\.dtype)).sorted()
        let cfg = JSONValue.object([
            ("format", .string("lorafuse-task-vector")),
            ("version", .int(1)),
            ("from", .string(a.displayName)),
            ("minus", .string(b.displayName)),
            ("from_path", .string(fromPath)),
            ("minus_path", .string(minusPath)),
            ("dtype", .string(options.dtype?.rawValue ?? (dtypes.count == 1 ? dtypes[0] : "mixed"))),
            ("dtypes", .array(dtypes.map { .string($0) })),
            ("tensors", .int(plan.count)),
            ("skipped", .int(skipped.count)),
        ])
        try writeJSON(cfg, to: (output as NSString).appendingPathComponent(vectorConfigFile))
        files.append(vectorConfigFile)
        return CheckpointOpReport(operation: "vector-extract", combined: plan.count, copied: 0, skipped: skipped,
                                  bytesRead: read, bytesWritten: writer.bytesWritten, outputFiles: files,
                                  seconds: Date().timeIntervalSince(start))
    }

    /// θ = θ_base + α·τ. Every tensor of the base is written: those the vector has (same shape,
    /// float) get α·τ added, the rest are copied unchanged and listed in `skipped` with the reason
    /// (vector tensors the base lacks are listed too). Throws when no tensor matches at all.
    @discardableResult
    public static func apply(vector vectorPath: String, to basePath: String, scale alpha: Float, output: String,
                             options: Options = Options()) throws -> CheckpointOpReport {
        try OutputGuard.buildDirectory(output, inputs: [vectorPath, basePath], force: options.force) { dir in
            try applyUnguarded(vector: vectorPath, to: basePath, scale: alpha, output: dir, options: options)
        }
    }

    static func applyUnguarded(vector vectorPath: String, to basePath: String, scale alpha: Float, output: String,
                               options: Options) throws -> CheckpointOpReport {
        let start = Date()
        let v = try HFCheckpoint(path: vectorPath)
        let c = try HFCheckpoint(path: basePath)
        var plan: [PlannedTensor] = []
        var combine = Set<String>()
        var skipped: [SkippedTensor] = []
        for n in c.names {
            let ic = c.infos[n]!
            let outType = ic.floatType.map { (options.dtype ?? $0).rawValue } ?? ic.dtype
            plan.append(PlannedTensor(name: n, shape: ic.shape, dtype: outType))
            guard let iv = v.infos[n] else {
                skipped.append(SkippedTensor(name: n, reason: "missing-in-vector", detail: "base value kept"))
                continue
            }
            guard ic.floatType != nil, iv.floatType != nil else {
                skipped.append(SkippedTensor(name: n, reason: "non-float", detail: "dtypes \(ic.dtype) (base), \(iv.dtype) (vector); base value kept"))
                continue
            }
            guard ic.shape == iv.shape else {
                skipped.append(SkippedTensor(name: n, reason: "shape-mismatch", detail: "\(ic.shape) in base, \(iv.shape) in vector; base value kept"))
                continue
            }
            combine.insert(n)
        }
        for n in v.names where !c.contains(n) {
            skipped.append(SkippedTensor(name: n, reason: "missing-in-base", detail: "only in the vector; not written"))
        }
        guard !combine.isEmpty else {
            throw CheckpointError.nothingMatched(first: vectorPath, second: basePath, firstCount: v.names.count, secondCount: c.names.count)
        }
        let writer = try StreamingShardedWriter(directory: URL(fileURLWithPath: output), plan: plan,
                                                maxShardBytes: options.maxShardBytes)
        var vc: [Float] = [], vv: [Float] = [], scratch: [UInt8] = [], out: [UInt8] = []
        var read = 0
        for (k, t) in plan.enumerated() {
            let ic = c.infos[t.name]!
            read += ic.byteRange.count
            if combine.contains(t.name) {
                let outType = DType(rawValue: t.dtype)!
                try forChunks(of: t, chunk: options.chunkElements, writer: writer) { r in
                    try c.readFloats(t.name, elements: r, into: &vc, scratch: &scratch)
                    if alpha != 0 {
                        try v.readFloats(t.name, elements: r, into: &vv, scratch: &scratch)
                        addScaled(&vc, vv, alpha)
                    }
                    TensorCodec.encode(vc, dtype: outType, into: &out)
                    try writer.append(name: t.name, bytes: out)
                }
                read += v.infos[t.name]!.byteRange.count
            } else if t.dtype != ic.dtype, ic.floatType != nil {
                let outType = DType(rawValue: t.dtype)!
                try forChunks(of: t, chunk: options.chunkElements, writer: writer) { r in
                    try c.readFloats(t.name, elements: r, into: &vc, scratch: &scratch)
                    TensorCodec.encode(vc, dtype: outType, into: &out)
                    try writer.append(name: t.name, bytes: out)
                }
            } else {
                // Copied as stored, in chunks of bytes.
                let total = ic.byteRange.count, step = max(options.chunkElements * 4, 1)
                var off = 0
                repeat {
                    let end = min(off + step, total)
                    try c.readRaw(t.name, bytes: off..<end, into: &out)
                    try writer.append(name: t.name, bytes: out)
                    off = end
                } while off < total
            }
            options.progress?(k + 1, plan.count)
        }
        var files = try writer.finish()
        files += try c.copyCompanionFiles(to: output)
        return CheckpointOpReport(operation: "vector-apply", combined: combine.count, copied: plan.count - combine.count,
                                  skipped: skipped, bytesRead: read, bytesWritten: writer.bytesWritten,
                                  outputFiles: files, seconds: Date().timeIntervalSince(start))
    }
}

/// y −= x. Elementwise loops rather than BLAS axpy: OpenBLAS threads an axpy this long and its
/// idle threads spin in sched_yield between calls, which cost a third of the run time in profiles.
@inline(__always)
func subtract(_ y: inout [Float], _ x: [Float]) {
    let n = min(y.count, x.count)
    y.withUnsafeMutableBufferPointer { py in x.withUnsafeBufferPointer { px in for k in 0..<n { py[k] -= px[k] } } }
}

/// y += a·x.
@inline(__always)
func addScaled(_ y: inout [Float], _ x: [Float], _ a: Float) {
    let n = min(y.count, x.count)
    y.withUnsafeMutableBufferPointer { py in x.withUnsafeBufferPointer { px in for k in 0..<n { py[k] += a * px[k] } } }
}

func writeJSON(_ value: JSONValue, to path: String) throws {
    let text = value.serialized(indent: 2) + "\n"
    do { try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
        throw CheckpointError.io(path: path, reason: "cannot write: \(error)")
    }
}
