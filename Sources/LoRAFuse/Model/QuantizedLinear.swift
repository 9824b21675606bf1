import Foundation

/// The decode path of a linear on quantized weights, as ggml does it: the activation rows are
/// quantized per block (8 bits per 32 values, per 256 for K-quants), then integer dot products
/// per block on the stored weight blocks (`QuantKernels`, the CQuant target), the rows of W split
/// over the compute threads. Each stored block is read once for all activation rows, which is
/// what makes batched decoding of many sequences cheap.
enum QuantizedLinear {
    /// Up to this many activation rows go through the quantized kernels; more (prompts) through
    /// dequantized tiles and sgemm, whose dequantization is then shared by enough rows — unless
    /// the model's `promptPath` is `.kernels`.
    static let kernelRowLimit = 32

    static func hasKernel(_ type: GGMLType) -> Bool { QuantKernels.supports(type) }

    /// out (rows, w.rows) = x (rows, w.cols) · Wᵀ + beta · out.
    static func matmul(_ w: QuantizedMatrix, x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>,
                       ld: Int, beta: Float, activations: ByteBuffer, partial: FloatBuffer) {
        let nOut = w.rows, nIn = w.cols
        let act = activations.reserve(QuantKernels.activationBytes(type: w.type, cols: nIn, rows: rows))
        QuantKernels.quantizeActivations(type: w.type, x, rows: rows, cols: nIn, into: act)
        // The kernels write; with beta = 1 (residual adds, a bias already in `out`) they write a
        // partial result that is then added.
        let direct = beta == 0 && (rows == 1 || ld >= nOut)
        let target = direct ? out : partial.reserve(rows * nOut)
        let ldT = direct ? ld : nOut
        let workers = nOut * nIn * rows >= 1 << 16 ? Parallel.computeThreads : 1
        let dst = UnsafeSendableBuffer(base: target)
        w.withBytes { p in
            let weights = UnsafeSendableRaw(pointer: p), a = UnsafeSendableRaw(pointer: UnsafeRawPointer(act))
            Parallel.forRanges(count: nOut, workers: workers, granule: 16) { r in
                QuantKernels.matmul(type: w.type, weights: weights.pointer, rowBytes: w.rowBytes, outRows: nOut, cols: nIn,
                                    activations: a.pointer, batch: rows, out: dst.base, ldOut: ldT, rows: r)
            }
        }
        if direct { return }
        for b in 0..<rows {
            let o = out + b * ld, t = target + b * ldT
            if beta == 0 { o.update(from: t, count: nOut) } else { for j in 0..<nOut { o[j] += t[j] } }
        }
    }

    /// Several products of the same input in one pass: `outs[i]` (rows, ws[i].rows) = x · ws[i]ᵀ
    /// (written, not added) for weights of one type and width (q, k and v; gate and up). The input
    /// is quantized once and every weight's rows are split over the threads as one job, instead of
    /// one quantization and one job (with its two synchronisations) per weight. Each output value
    /// is bit for bit what `matmul` gives it (the kernels' results do not depend on the row split).
    static func matmulGroup(_ ws: [QuantizedMatrix], x: UnsafePointer<Float>, rows: Int,
                            outs: [UnsafeMutablePointer<Float>], lds: [Int], activations: ByteBuffer) {
        precondition(!ws.isEmpty && ws.count == outs.count && ws.count == lds.count)
        let type = ws[0].type, nIn = ws[0].cols
        precondition(ws.allSatisfy { $0.type == type && $0.cols == nIn }, "matmulGroup: weights of one type and width")
        precondition(rows == 1 || zip(ws, lds).allSatisfy { $1 >= $0.rows }, "matmulGroup: ld below the output width")
        let act = activations.reserve(QuantKernels.activationBytes(type: type, cols: nIn, rows: rows))
        QuantKernels.quantizeActivations(type: type, x, rows: rows, cols: nIn, into: act)
        // Row r of the concatenation is row r − starts[i] of weight i.
        var starts = [0]
        for w in ws { starts.append(starts.last! + w.rows) }
        let total = starts.last!
        let workers = total * nIn * rows >= 1 << 16 ? Parallel.computeThreads : 1
        let a = UnsafeSendableRaw(pointer: UnsafeRawPointer(act))
        let dsts = outs.map { UnsafeSendableBuffer(base: $0) }
        Parallel.forRanges(count: total, workers: workers, granule: 16) { r in
            for i in 0..<ws.count {
                let lo = max(r.lowerBound, starts[i]), hi = min(r.upperBound, starts[i + 1])
                if lo >= hi { continue }
                let w = ws[i]
                w.withBytes { p in
                    QuantKernels.matmul(type: type, weights: p, rowBytes: w.rowBytes, outRows: w.rows, cols: nIn,
                                        activations: a.pointer, batch: rows, out: dsts[i].base, ldOut: lds[i],
                                        rows: (lo - starts[i])..<(hi - starts[i]))
                }
            }
        }
    }
}

/// How a model on quantized (or F16/BF16) weights multiplies many rows at once (prompts, eval).
///
/// `sgemm`: tiles of the weights dequantized to Float32 and multiplied with the BLAS — the exact
/// dequantized model, and the faster path where the BLAS has a kernel for the CPU's vector units.
/// `kernels`: the decode kernels for every row count (activations rounded to 8 bits per block for
/// the block types, as llama.cpp does for prompts too; F16/BF16 exact in Float32). OpenBLAS
/// falls back to its generic SSE3 kernel ("Prescott") on CPUs it does not recognise (virtual
/// machines that hide the CPU model): measured on such a 2-core Xeon with AVX-512 VNNI,
/// 2026-12-07, a 512-token prompt took 1.9× (Q8_0), 1.4× (Q4_1) and 1.8× (F16) longer through
/// sgemm than through the kernels (Benchmarks/results/model-llamacpp*.md).
///
/// Training and anything else that records activations for a backward pass always use `sgemm`
/// (the backward differentiates the dequantized model), so the choice never changes gradients.
public enum QuantizedPromptPath: String, Sendable, CaseIterable {
    case kernels, sgemm

    /// The choice for this process: `LORAFUSE_QUANT_PROMPT=kernels|sgemm` if set (anything else is
    /// ignored), else `choose(blasCore:kernelSet:)` for this machine.
    public static let automatic: QuantizedPromptPath = {
        if let v = ProcessInfo.processInfo.environment["LORAFUSE_QUANT_PROMPT"], let p = QuantizedPromptPath(rawValue: v) { return p }
        return choose(blasCore: BLAS.coreName, kernelSet: QuantKernels.kernelName)
    }()

    /// `kernels` when the quantized kernels are the AVX-512 VNNI set and OpenBLAS runs a core
    /// without an AVX2/AVX-512 sgemm (measured above); `sgemm` otherwise: Accelerate, or OpenBLAS
    /// on a core it has fast kernels for, where sgemm was the measured default (642 tokens/s for a
    /// Q4_1 prompt on an AMD EPYC with the Cooperlake kernels, 2.4× llama.cpp; the kernels path
    /// was not timed there), and the AVX2 and NEON kernel sets, not timed against sgemm.
    public static func choose(blasCore: String, kernelSet: String) -> QuantizedPromptPath {
        guard kernelSet == "avx512" else { return .sgemm }
        let fast = ["haswell", "skylakex", "cooperlake", "sapphirerapids", "zen", "accelerate"]
        return fast.contains(blasCore.lowercased()) ? .sgemm : .kernels
    }
}

/// A read-only pointer handed to the compute threads.
struct UnsafeSendableRaw: @unchecked Sendable {
    let pointer: UnsafeRawPointer
}
