/// A thin SVD `A ≈ U · diag(S) · Vt`, singular values in descending order.
public struct SVDResult: Sendable {
    public var U: Matrix      // (m, k)
    public var S: [Float]     // (k)
    public var Vt: Matrix     // (k, n)

    public var rank: Int { S.count }

    /// The leading `r` triplets.
    public func truncated(to r: Int) -> SVDResult {
        let r = max(0, min(r, S.count))
        return SVDResult(U: U.columns(0..<r), S: Array(S[0..<r]), Vt: Vt.rows(0..<r))
    }

    /// Fraction of the squared Frobenius norm held by the leading `r` singular values.
    public func retainedEnergy(rank r: Int) -> Double {
        let total = S.reduce(0.0) { $0 + Double($1) * Double($1) }
        if total == 0 { return 1 }
        let kept = S.prefix(max(0, r)).reduce(0.0) { $0 + Double($1) * Double($1) }
        return kept / total
    }

    /// Smallest rank whose retained energy reaches `fraction` (in (0, 1]).
    public func rank(forEnergy fraction: Double) -> Int {
        let total = S.reduce(0.0) { $0 + Double($1) * Double($1) }
        if total == 0 { return 0 }
        var acc = 0.0
        for (i, s) in S.enumerated() {
            acc += Double(s) * Double(s)
            if acc / total >= fraction - 1e-12 { return i + 1 }
        }
        return S.count
    }

    /// U · diag(S) · Vt as a dense matrix.
    public func reconstruct() -> Matrix { U.scalingColumns(by: S).matmul(Vt) }
}

public enum LinalgError: Error, CustomStringConvertible {
    case lapack(routine: String, info: Int, shape: [Int])
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .lapack(routine, info, shape):
            return "LAPACK \(routine) failed with info = \(info) on a \(shape.map(String.init).joined(separator: "x")) matrix"
        case let .invalidArgument(s):
            return s
        }
    }
}

public enum Linalg {
    /// Thin SVD through `sgesdd` (divide and conquer), falling back to `sgesvd` when it does
    /// not converge (info > 0), which happens on some rank-deficient inputs.
    public static func svd(_ a: Matrix) throws -> SVDResult {
        let m = a.rows, n = a.cols, k = min(m, n)
        if k == 0 { return SVDResult(U: Matrix(rows: m, cols: 0), S: [], Vt: Matrix(rows: 0, cols: n)) }
        if a.data.contains(where: { !$0.isFinite }) {
            throw LinalgError.invalidArgument("SVD input of shape \(m)x\(n) contains NaN or infinity")
        }
        // The row-major m x n buffer is the column-major n x m matrix Aᵀ = U' S V'ᵀ, so
        // A = V' S U'ᵀ: LAPACK's vt buffer is our U (row-major m x k) and its u buffer our Vt.
        func run(_ driver: (Int, Int, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>,
                            UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Int) -> (Int, SVDResult) {
            var work = a.data
            var s = [Float](repeating: 0, count: k)
            var uBuf = [Float](repeating: 0, count: n * k)   // col-major n x k  -> our Vt (k x n)
            var vtBuf = [Float](repeating: 0, count: k * m)  // col-major k x m  -> our U (m x k)
            let info = work.withUnsafeMutableBufferPointer { pa in
                s.withUnsafeMutableBufferPointer { ps in
                    uBuf.withUnsafeMutableBufferPointer { pu in
                        vtBuf.withUnsafeMutableBufferPointer { pv in
                            driver(n, m, pa.baseAddress!, ps.baseAddress!, pu.baseAddress!, pv.baseAddress!)
                        }
                    }
                }
            }
            return (info, SVDResult(U: Matrix(rows: m, cols: k, data: vtBuf), S: s, Vt: Matrix(rows: k, cols: n, data: uBuf)))
        }
        let (info, result) = run { LAPACK.gesdd(m: $0, n: $1, a: $2, s: $3, u: $4, vt: $5) }
        if info == 0 { return result }
        if info < 0 { throw LinalgError.lapack(routine: "sgesdd", info: info, shape: [m, n]) }
        let (info2, result2) = run { LAPACK.gesvd(m: $0, n: $1, a: $2, s: $3, u: $4, vt: $5) }
        if info2 != 0 { throw LinalgError.lapack(routine: "sgesvd", info: info2, shape: [m, n]) }
        return result2
    }

    /// Eigen-decomposition of a symmetric n x n matrix (row-major, Double) through `dsyev`:
    /// a = V diag(values) Vᵀ, values ascending, `vectors` row-major n x n with the eigenvectors as
    /// its columns. For the small (rank x rank) Gram matrices of LoRA-Pro's gradient adjustment.
    public static func symmetricEigen(_ a: [Double], n: Int) throws -> (values: [Double], vectors: [Double]) {
        precondition(a.count == n * n, "symmetricEigen: \(a.count) values for a \(n)x\(n) matrix")
        if n == 0 { return ([], []) }
        if a.contains(where: { !$0.isFinite }) {
            throw LinalgError.invalidArgument("eigen-decomposition input of shape \(n)x\(n) contains NaN or infinity")
        }
        var buf = a            // symmetric: row-major and column-major are the same matrix
        var w = [Double](repeating: 0, count: n)
        let info = buf.withUnsafeMutableBufferPointer { pa in
            w.withUnsafeMutableBufferPointer { pw in LAPACK.syev(n: n, a: pa.baseAddress!, w: pw.baseAddress!) }
        }
        if info != 0 { throw LinalgError.lapack(routine: "dsyev", info: info, shape: [n, n]) }
        // Column-major eigenvectors: buf[j·n + i] is component i of vector j, i.e. V[i][j].
        var v = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { v[i * n + j] = buf[j * n + i] } }
        return (w, v)
    }

    /// Thin QR: A (m x n) = Q (m x k) · R (k x n), k = min(m, n), through sgeqrf + sorgqr.
    public static func qr(_ a: Matrix) throws -> (Q: Matrix, R: Matrix) {
        let m = a.rows, n = a.cols, k = min(m, n)
        if k == 0 { return (Matrix(rows: m, cols: 0), Matrix(rows: 0, cols: n)) }
        var colMajor = a.transposed().data  // column-major m x n
        var rBuf = [Float](repeating: 0, count: k * n)
        let info = colMajor.withUnsafeMutableBufferPointer { pa in
            rBuf.withUnsafeMutableBufferPointer { pr in LAPACK.qr(m: m, n: n, a: pa.baseAddress!, r: pr.baseAddress!) }
        }
        if info != 0 { throw LinalgError.lapack(routine: "sgeqrf/sorgqr", info: info, shape: [m, n]) }
        // First k columns, column-major m x k == row-major k x m of Qᵀ.
        let qT = Matrix(rows: k, cols: m, data: Array(colMajor[0..<(m * k)]))
        let rT = Matrix(rows: n, cols: k, data: rBuf)
        return (qT.transposed(), rT.transposed())
    }

    /// Truncated SVD of the product `left · right` (m x R times R x n) without forming the
    /// m x n matrix: QR of both factors, SVD of the small R x R core. Cost O((m + n)R²).
    /// Exact up to rounding: this is how lorafuse's `svd` fusion avoids PEFT's dense SVD.
    public static func productSVD(left: Matrix, right: Matrix) throws -> SVDResult {
        precondition(left.cols == right.rows, "productSVD inner dimensions differ: \(left.shape) x \(right.shape)")
        let (qb, rb) = try qr(left)                  // (m, p), (p, R)
        let (qa, ra) = try qr(right.transposed())    // (n, q), (q, R)
        let core = rb.matmul(ra, transposeOther: true)  // (p, q)
        let c = try svd(core)
        return SVDResult(U: qb.matmul(c.U), S: c.S, Vt: c.Vt.matmul(qa, transposeOther: true))
    }

    /// Randomized truncated SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4 with re-orthonormalised
    /// power iterations). Near-optimal for matrices whose spectrum decays; `powerIterations`
    /// trades time for accuracy on flat spectra.
    public static func randomizedSVD(_ a: Matrix, rank: Int, oversample: Int = 10, powerIterations: Int = 2,
                                     rng: inout SeededRNG) throws -> SVDResult {
        let m = a.rows, n = a.cols
        let l = min(rank + oversample, min(m, n))
        if l >= min(m, n) / 2 || l == 0 {
            // A sketch this wide saves nothing; the exact SVD is as cheap.
            return try svd(a).truncated(to: rank)
        }
        let omega = Matrix.randomNormal(n, l, rng: &rng)
        var q = try qr(a.matmul(omega)).Q                          // (m, l)
        for _ in 0..<powerIterations {
            let z = try qr(a.matmul(q, transposeSelf: true)).Q     // (n, l)
            q = try qr(a.matmul(z)).Q                               // (m, l)
        }
        let small = q.matmul(a, transposeSelf: true)               // (l, n)
        let s = try svd(small)
        return SVDResult(U: q.matmul(s.U), S: s.S, Vt: s.Vt).truncated(to: rank)
    }
}
