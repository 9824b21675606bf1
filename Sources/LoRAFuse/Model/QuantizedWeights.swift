import CQuant
import Foundation

/// A weight matrix kept in the ggml type it was stored in: `rows` output features of `cols`
/// input features, row r at bytes r·rowBytes ..< (r+1)·rowBytes (ggml blocks along the input
/// dimension, so a row is whole blocks). Usually a slice of the GGUF file's mapping: loading
/// reads nothing and the pages are shared with the page cache.
public final class QuantizedMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let rowBytes: Int
    private let bytes: Data

    /// `bytes` must hold exactly rows · cols values of `type` (checked).
    public init(type: GGMLType, rows: Int, cols: Int, bytes: Data) {
        precondition(type.canDequantize && type.blockSize > 0 && cols % type.blockSize == 0,
                     "QuantizedMatrix: \(type) rows of \(cols) values")
        self.type = type
        self.rows = rows
        self.cols = cols
        self.rowBytes = type.byteCount(elements: cols)
        precondition(bytes.count == rows * rowBytes, "QuantizedMatrix: \(bytes.count) bytes for \(rows)×\(rowBytes)")
        self.bytes = bytes
    }

    /// Bytes of the stored weights (what a forward pass reads per token).
    public var byteCount: Int { rows * rowBytes }

    public func withBytes<R>(_ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { try body($0.baseAddress!) }
    }

    /// Rows `range` as Float into `dst` ((range.count, cols) row-major).
    public func dequantizeRows(_ range: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        withBytes { p in
            // The C loops first (identical floats; the Swift ones are for the K-quants and as the
            // tested reference, and are slow in debug builds).
            if cq_dequantize_rows(Int32(type.rawValue), p, rowBytes, Int32(cols), Int32(range.lowerBound),
                                  Int32(range.upperBound), dst) == 0 { return }
            for (k, r) in range.enumerated() {
                GGUFQuant.dequantize(type, src: p + r * rowBytes, count: cols, into: dst + k * cols)
            }
        }
    }

    /// The whole matrix as Float, (rows, cols) row-major, dequantized on the compute threads.
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        out.withUnsafeMutableBufferPointer { o in
            let dst = UnsafeSendableBuffer(base: o.baseAddress!)
            Parallel.forRanges(count: rows, workers: Parallel.computeThreads, granule: 16) { r in
                self.dequantizeRows(r, into: dst.base + r.lowerBound * self.cols)
            }
        }
        return out
    }

    /// The first row index holding a non-finite value (a corrupt scale), or nil.
    func firstNonFiniteRow() -> Int? {
        let found = UnsafeMutablePointer<Int>.allocate(capacity: max(Parallel.computeThreads, 1))
        defer { found.deallocate() }
        let workers = max(Parallel.computeThreads, 1)
        found.initialize(repeating: Int.max, count: workers)
        let slots = UnsafeSendableBuffer(base: found)
        let chunk = max(1, (rows + workers - 1) / workers)
        Parallel.forEach(count: workers, workers: workers) { w, _ in
            let lo = w * chunk, hi = min(self.rows, lo + chunk)
            guard lo < hi else { return }
            var row = [Float](repeating: 0, count: self.cols)
            row.withUnsafeMutableBufferPointer { buf in
                for r in lo..<hi {
                    self.dequantizeRows(r..<(r + 1), into: buf.baseAddress!)
                    for j in 0..<self.cols where !buf[j].isFinite { slots.base[w] = r; return }
                }
            }
        }
        let first = (0..<workers).map { found[$0] }.min()!
        return first == Int.max ? nil : first
    }

    /// llama.cpp's q/k row permutation undone (GGUF → HF row order) on whole stored rows, so the
    /// result is exact: the rows are moved, not requantized. Copies the bytes.
    func unpermutingRopeRows(heads: Int) throws -> QuantizedMatrix {
        // Permute row indices, then move each row's bytes.
        let order = try RopePermutation.apply((0..<rows).map(Float.init), rows: rows, cols: 1, heads: heads, toGGUF: false)
        var out = Data(count: rows * rowBytes)
        withBytes { src in
            out.withUnsafeMutableBytes { dst in
                for (r, from) in order.enumerated() {
                    (dst.baseAddress! + r * rowBytes).copyMemory(from: src + Int(from) * rowBytes, byteCount: rowBytes)
                }
            }
        }
        return QuantizedMatrix(type: type, rows: rows, cols: cols, bytes: out)
    }
}

/// How the engine computes with a model's weights.
public enum WeightCompute: String, Sendable, CaseIterable {
    /// Each weight in the type it is stored in (GGUF quantized types run on the quantized
    /// kernels); F32 files are F32 either way.
    case stored
    /// Everything dequantized to F32 at load: the reference path, 4–8× the memory.
    case f32
}

/// Scratch bytes that grow and never move during a call (quantized activations).
final class ByteBuffer {
    private(set) var pointer: UnsafeMutableRawPointer
    private(set) var capacity: Int
    init(_ count: Int = 64) {
        capacity = max(count, 64)
        pointer = .allocate(byteCount: capacity, alignment: 64)
    }
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if count > capacity {
            pointer.deallocate()
            capacity = count
            pointer = .allocate(byteCount: count, alignment: 64)
        }
        return pointer
    }
    deinit { pointer.deallocate() }
}
