import CQuant

/// Matrix–vector products on GGUF weights as stored (the C target `CQuant`, see its `cquant.h`).
///
/// The activation rows are quantized first (`quantizeActivations`, into a buffer of
/// `activationBytes` bytes, at least 4-byte aligned, best 64), in the form the weight type's kernels read:
/// 8-bit per 32 values for Q4_0 … Q8_0, per 256 for the K-quants, plain Float for F32/F16/BF16.
/// `matmul` then computes `out[b * ldOut + r] = W[r] · a_b` for the rows `r` in a range, so
/// threads can split the rows of one product and share `out`.
///
/// The kernel set (reference, avx2, avx512, neon) is chosen once from the CPU;
/// `LORAFUSE_QUANT_KERNEL=reference|avx2|avx512|neon` forces one (falling back to what the CPU
/// has). Every function takes an optional explicit `kernel`, which the tests use to compare sets.
///
/// Sizes are checked: a type the kernels lack, a column count that is not a whole number of
/// blocks, a row range outside `0..<outRows` or short buffers are programming errors and stop
/// with a message (`supports` tells beforehand whether a type runs here).
public enum QuantKernels {
    /// A kernel set of `CQuant`.
    public enum Kernel: Int32, CaseIterable, Sendable, CustomStringConvertible {
        case reference = 0, avx2 = 1, avx512 = 2, neon = 3

        public var name: String { String(cString: cq_kernel_name(rawValue)!) }
        public var description: String { name }
        /// Whether this build and CPU can run the set.
        public var isAvailable: Bool { cq_kernel_available(rawValue) != 0 }
    }

    /// The weight types the kernels take.
    public static let types: [GGMLType] = [
        .f32, .f16, .bf16, .q4_0, .q4_1, GGMLType(rawValue: 6), GGMLType(rawValue: 7), .q8_0, .q4_K, .q5_K, .q6_K,
    ]

    /// The set this process uses.
    public static var selected: Kernel { Kernel(rawValue: cq_selected_kernel())! }

    /// Name of the set this process uses ("reference", "avx2", "avx512" or "neon").
    public static var kernelName: String { selected.name }

    /// Whether `matmul` takes weights of `type`.
    public static func supports(_ type: GGMLType) -> Bool { cq_type_supported(Int32(type.rawValue)) != 0 }

    /// The set whose kernel runs for `type` when `kernel` (default: the selected set) is asked for:
    /// a set without a kernel for the type uses the next one down (avx512 → avx2 → reference).
    public static func effectiveKernel(_ kernel: Kernel? = nil, for type: GGMLType) -> Kernel? {
        Kernel(rawValue: cq_effective_kernel(kernel?.rawValue ?? -1, Int32(type.rawValue)))
    }

    /// Bytes of one quantized activation row of `cols` values for weights of `type`.
    public static func activationRowBytes(type: GGMLType, cols: Int) -> Int {
        let n = cq_act_row_bytes(Int32(type.rawValue), checkedCols(type, cols))
        return n
    }

    /// Bytes of `rows` quantized activation rows of `cols` values for weights of `type`.
    public static func activationBytes(type: GGMLType, cols: Int, rows: Int) -> Int {
        precondition(rows >= 0, "QuantKernels: negative row count \(rows)")
        return rows * activationRowBytes(type: type, cols: cols)
    }

    /// Quantizes `rows` rows of `cols` floats (row `b` at `x + b * ldx`) into `into`, which holds
    /// `activationBytes(type:cols:rows:)` bytes.
    public static func quantizeActivations(type: GGMLType, _ x: UnsafePointer<Float>, rows: Int, cols: Int,
                                           ldx: Int? = nil, into: UnsafeMutableRawPointer, kernel: Kernel? = nil) {
        let n = checkedCols(type, cols)
        precondition(rows > 0, "QuantKernels.quantizeActivations: rows must be positive, got \(rows)")
        let ld = ldx ?? cols
        precondition(ld >= cols, "QuantKernels.quantizeActivations: ldx \(ld) < cols \(cols)")
        precondition(Int(bitPattern: into) % 4 == 0, "QuantKernels.quantizeActivations: the buffer must be 4-byte aligned")
        let rc = cq_quantize_activations_ex(kernel?.rawValue ?? -1, Int32(type.rawValue), x, ld, Int32(rows), n, into)
        precondition(rc == 0, "QuantKernels.quantizeActivations(\(type), rows: \(rows), cols: \(cols)) failed")
    }

    /// `out[b * ldOut + r] = W[r] · a_b` for `b` in `0..<batch`, `r` in `rows`: row `r` of the
    /// weights is `cols` values of `type` at `weights + r * rowBytes` (GGUF block bytes), `a_b`
    /// row `b` of `activations` as `quantizeActivations` wrote it. Only those entries of `out`
    /// are written. One pass over each weight row serves up to four activation rows (4 rows cost
    /// about 3 single-row calls on Zen 4 with avx2; see cquant.h).
    public static func matmul(type: GGMLType, weights: UnsafeRawPointer, rowBytes: Int, outRows: Int, cols: Int,
                              activations: UnsafeRawPointer, batch: Int, out: UnsafeMutablePointer<Float>, ldOut: Int,
                              rows: Range<Int>? = nil, kernel: Kernel? = nil) {
        let n = checkedCols(type, cols)
        let range = rows ?? 0..<outRows
        precondition(outRows > 0 && batch > 0, "QuantKernels.matmul: outRows \(outRows) and batch \(batch) must be positive")
        precondition(rowBytes >= type.byteCount(elements: cols),
                     "QuantKernels.matmul: rowBytes \(rowBytes) < \(type.byteCount(elements: cols)) for \(cols) \(type) values")
        precondition(range.lowerBound >= 0 && range.upperBound <= outRows,
                     "QuantKernels.matmul: rows \(range) outside 0..<\(outRows)")
        precondition(batch == 1 || ldOut >= outRows, "QuantKernels.matmul: ldOut \(ldOut) < outRows \(outRows)")
        precondition(Int(bitPattern: activations) % 4 == 0, "QuantKernels.matmul: activations must be 4-byte aligned")
        let rc = cq_matmul_ex(kernel?.rawValue ?? -1, Int32(type.rawValue), weights, rowBytes, Int32(outRows), n,
                              activations, Int32(batch), out, Int32(ldOut), Int32(range.lowerBound), Int32(range.upperBound))
        precondition(rc == 0, "QuantKernels.matmul(\(type), \(outRows)×\(cols), batch \(batch)) failed")
    }

    /// One weight row (`cols` values of `type`) with one quantized activation row.
    public static func dot(type: GGMLType, weights: UnsafeRawPointer, cols: Int, activation: UnsafeRawPointer,
                           kernel: Kernel? = nil) -> Float {
        var r: Float = 0
        matmul(type: type, weights: weights, rowBytes: type.byteCount(elements: cols), outRows: 1, cols: cols,
               activations: activation, batch: 1, out: &r, ldOut: 1, kernel: kernel)
        return r
    }

    private static func checkedCols(_ type: GGMLType, _ cols: Int) -> Int32 {
        precondition(supports(type), "QuantKernels: no kernel for \(type)")
        let blk = Int(cq_block_values(Int32(type.rawValue)))
        precondition(cols > 0 && cols % blk == 0 && cols <= Int(Int32.max),
                     "QuantKernels: \(cols) columns is not a positive multiple of \(type)'s block of \(blk)")
        return Int32(cols)
    }
}
