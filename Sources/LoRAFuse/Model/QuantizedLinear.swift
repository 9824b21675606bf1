import Foundation

/// The decode path of a linear on quantized weights, as ggml does it: the activation rows are
/// quantized per block (8 bits per 32 values, per 256 for K-quants), then integer dot products
/// per block on the stored weight blocks (`QuantKernels`, the CQuant target), the rows of W split
/// over the compute threads. Each stored block is read once for all activation rows, which is
/// what makes batched decoding of many sequences cheap.
enum QuantizedLinear {
    /// Up to this many activation rows go through the quantized kernels; more (prompts) through
    /// dequantized tiles and sgemm, whose dequantization is then shared by enough rows.
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

/// A read-only pointer handed to the compute threads.
struct UnsafeSendableRaw: @unchecked Sendable {
    let pointer: UnsafeRawPointer
}
