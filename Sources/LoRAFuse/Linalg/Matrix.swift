/// A dense row-major Float32 matrix. Storage is a Swift array, so copies are cheap until
/// written (copy-on-write) and the type is `Sendable`.
///
/// Element (i, j) lives at `data[i * cols + j]`. Shapes follow PyTorch's `[rows, cols]`
/// convention, so a PEFT `lora_A.weight` of shape `[r, in]` is a `Matrix(rows: r, cols: in)`.
public struct Matrix: Sendable, Equatable, CustomStringConvertible {
    public let rows: Int
    public let cols: Int
    public var data: [Float]

    public init(rows: Int, cols: Int, repeating value: Float = 0) {
        precondition(rows >= 0 && cols >= 0, "negative matrix shape \(rows)x\(cols)")
        self.rows = rows
        self.cols = cols
        self.data = [Float](repeating: value, count: rows * cols)
    }

    public init(rows: Int, cols: Int, data: [Float]) {
        precondition(data.count == rows * cols, "matrix \(rows)x\(cols) needs \(rows * cols) values, got \(data.count)")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    /// Builds a matrix from nested rows; convenient in tests.
    public init(_ nested: [[Float]]) {
        let r = nested.count
        let c = nested.first?.count ?? 0
        precondition(nested.allSatisfy { $0.count == c }, "ragged rows")
        self.init(rows: r, cols: c, data: nested.flatMap { $0 })
    }

    public static func zeros(_ rows: Int, _ cols: Int) -> Matrix { Matrix(rows: rows, cols: cols) }

    public static func identity(_ n: Int) -> Matrix {
        var m = Matrix(rows: n, cols: n)
        for i in 0..<n { m.data[i * n + i] = 1 }
        return m
    }

    /// Standard-normal entries times `std`, reproducible from `rng`.
    public static func randomNormal(_ rows: Int, _ cols: Int, std: Float = 1, rng: inout SeededRNG) -> Matrix {
        var m = Matrix(rows: rows, cols: cols)
        for k in 0..<m.data.count { m.data[k] = rng.nextNormal() * std }
        return m
    }

    public var shape: [Int] { [rows, cols] }
    public var count: Int { rows * cols }

    @inline(__always)
    public subscript(i: Int, j: Int) -> Float {
        get { data[i * cols + j] }
        set { data[i * cols + j] = newValue }
    }

    public func transposed() -> Matrix {
        var t = Matrix(rows: cols, cols: rows)
        data.withUnsafeBufferPointer { src in
            t.data.withUnsafeMutableBufferPointer { dst in
                // Blocked to stay cache friendly on the large (4096 x 11008) modules.
                let bs = 64
                var i0 = 0
                while i0 < rows {
                    let i1 = min(i0 + bs, rows)
                    var j0 = 0
                    while j0 < cols {
                        let j1 = min(j0 + bs, cols)
                        for i in i0..<i1 {
                            for j in j0..<j1 { dst[j * rows + i] = src[i * cols + j] }
                        }
                        j0 = j1
                    }
                    i0 = i1
                }
            }
        }
        return t
    }

    /// Rows `range` as a new matrix.
    public func rows(_ range: Range<Int>) -> Matrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows)
        return Matrix(rows: range.count, cols: cols, data: Array(data[(range.lowerBound * cols)..<(range.upperBound * cols)]))
    }

    /// Columns `range` as a new matrix.
    public func columns(_ range: Range<Int>) -> Matrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= cols)
        var out = Matrix(rows: rows, cols: range.count)
        for i in 0..<rows {
            for (jj, j) in range.enumerated() { out.data[i * range.count + jj] = data[i * cols + j] }
        }
        return out
    }

    public func row(_ i: Int) -> ArraySlice<Float> { data[(i * cols)..<((i + 1) * cols)] }

    public func column(_ j: Int) -> [Float] { (0..<rows).map { data[$0 * cols + j] } }

    /// Stacks matrices side by side: `[m, n1] | [m, n2] -> [m, n1 + n2]`.
    public static func hconcat(_ parts: [Matrix]) -> Matrix {
        guard let first = parts.first else { return Matrix(rows: 0, cols: 0) }
        precondition(parts.allSatisfy { $0.rows == first.rows }, "hconcat needs equal row counts")
        let total = parts.reduce(0) { $0 + $1.cols }
        var out = Matrix(rows: first.rows, cols: total)
        var off = 0
        for p in parts {
            for i in 0..<p.rows {
                for j in 0..<p.cols { out.data[i * total + off + j] = p.data[i * p.cols + j] }
            }
            off += p.cols
        }
        return out
    }

    /// Stacks matrices on top of each other: `[m1, n] / [m2, n] -> [m1 + m2, n]`.
    public static func vconcat(_ parts: [Matrix]) -> Matrix {
        guard let first = parts.first else { return Matrix(rows: 0, cols: 0) }
        precondition(parts.allSatisfy { $0.cols == first.cols }, "vconcat needs equal column counts")
        var data: [Float] = []
        data.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        for p in parts { data.append(contentsOf: p.data) }
        return Matrix(rows: data.count / max(first.cols, 1), cols: first.cols, data: first.cols == 0 ? [] : data)
    }

    /// Multiplies row i by `factors[i]`.
    public func scalingRows(by factors: [Float]) -> Matrix {
        precondition(factors.count == rows)
        var out = self
        for i in 0..<rows { for j in 0..<cols { out.data[i * cols + j] *= factors[i] } }
        return out
    }

    /// Multiplies column j by `factors[j]`.
    public func scalingColumns(by factors: [Float]) -> Matrix {
        precondition(factors.count == cols)
        var out = self
        for i in 0..<rows { for j in 0..<cols { out.data[i * cols + j] *= factors[j] } }
        return out
    }

    public func scaled(by s: Float) -> Matrix {
        var out = self
        out.scale(by: s)
        return out
    }

    public mutating func scale(by s: Float) {
        data.withUnsafeMutableBufferPointer { p in
            for k in 0..<p.count { p[k] *= s }
        }
    }

    /// self += s * other, through BLAS axpy.
    public mutating func add(_ other: Matrix, scaledBy s: Float = 1) {
        precondition(rows == other.rows && cols == other.cols, "shape mismatch \(shape) vs \(other.shape)")
        BLAS.axpy(count: count, alpha: s, x: other.data, y: &data)
    }

    public static func + (a: Matrix, b: Matrix) -> Matrix { var c = a; c.add(b); return c }
    public static func - (a: Matrix, b: Matrix) -> Matrix { var c = a; c.add(b, scaledBy: -1); return c }
    public static func * (s: Float, a: Matrix) -> Matrix { a.scaled(by: s) }

    /// Frobenius norm, accumulated in Double so large modules do not lose precision.
    public var frobeniusNorm: Double {
        var acc = 0.0
        for v in data { acc += Double(v) * Double(v) }
        return acc.squareRoot()
    }

    public var maxAbs: Float { data.reduce(0) { max($0, abs($1)) } }

    public var description: String {
        let shown = (0..<min(rows, 6)).map { i in
            (0..<min(cols, 8)).map { j in String(format: "%9.4f", Double(self[i, j])) }.joined(separator: " ")
        }
        return "Matrix(\(rows)x\(cols))\n" + shown.joined(separator: "\n")
    }

    /// Largest absolute elementwise difference; used by tests and cross-checks.
    public func maxAbsDifference(_ other: Matrix) -> Float {
        precondition(rows == other.rows && cols == other.cols, "shape mismatch \(shape) vs \(other.shape)")
        var m: Float = 0
        for k in 0..<data.count { m = max(m, abs(data[k] - other.data[k])) }
        return m
    }
}

/// Matrix product helpers: all go through `BLAS.gemm`.
extension Matrix {
    /// `op(self) * op(other)` where op is an optional transpose.
    public func matmul(_ other: Matrix, transposeSelf: Bool = false, transposeOther: Bool = false) -> Matrix {
        let m = transposeSelf ? cols : rows
        let k = transposeSelf ? rows : cols
        let k2 = transposeOther ? other.cols : other.rows
        let n = transposeOther ? other.rows : other.cols
        precondition(k == k2, "matmul inner dimensions differ: \(shape)\(transposeSelf ? "ᵀ" : "") x \(other.shape)\(transposeOther ? "ᵀ" : "")")
        var c = Matrix(rows: m, cols: n)
        BLAS.gemm(transA: transposeSelf, transB: transposeOther, m: m, n: n, k: k,
                  alpha: 1, a: data, lda: cols, b: other.data, ldb: other.cols, beta: 0, c: &c.data, ldc: n)
        return c
    }

    public static func * (a: Matrix, b: Matrix) -> Matrix { a.matmul(b) }
}

import Foundation
