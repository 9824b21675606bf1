// The one place that talks to the platform's BLAS and LAPACK. Everything else in lorafuse
// calls `BLAS` and `LAPACK` below, so a port to another backend touches this file only.
#if canImport(Accelerate)
import Accelerate
#else
import CBLAS
import CLAPACKE
#endif

/// Thin wrappers over CBLAS. Arrays are row-major.
public enum BLAS {
    /// C = alpha * op(A) * op(B) + beta * C, with A, B, C row-major and leading dimensions
    /// as in CBLAS. `m, n, k` are the shapes after the optional transposes.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        if k == 0 {
            // BLAS leaves C untouched in that case only when beta == 1.
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } }
            return
        }
        // OpenBLAS splits products of this size over its own threads: the compute pool's spinning
        // helpers would take turns with them on the same cores.
        if m * n * k >= 1 << 20 { ComputePool.shared.park() }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: [Float], lda: Int, b: [Float], ldb: Int,
                            beta: Float, c: inout [Float], ldc: Int) {
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                         a: pa.baseAddress!, lda: lda, b: pb.baseAddress!, ldb: ldb,
                         beta: beta, c: pc.baseAddress!, ldc: ldc)
                }
            }
        }
    }

    /// y = alpha * op(A) * x + beta * y, A row-major m x n (before the optional transpose).
    /// For single-row products: OpenBLAS's sgemm packs the whole of B even when m = 1.
    public static func gemv(transA: Bool, m: Int, n: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                            x: UnsafePointer<Float>, incx: Int = 1, beta: Float,
                            y: UnsafeMutablePointer<Float>, incy: Int = 1) {
        if m == 0 || n == 0 { return }
        cblas_sgemv(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha, a, Int32(lda),
                    x, Int32(incx), beta, y, Int32(incy))
    }

    /// y += alpha * x
    public static func axpy(count: Int, alpha: Float, x: [Float], y: inout [Float]) {
        precondition(x.count >= count && y.count >= count)
        if count == 0 { return }
        x.withUnsafeBufferPointer { px in
            y.withUnsafeMutableBufferPointer { py in
                cblas_saxpy(Int32(count), alpha, px.baseAddress!, 1, py.baseAddress!, 1)
            }
        }
    }

    public static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count: Int) -> Float {
        count == 0 ? 0 : cblas_sdot(Int32(count), x, 1, y, 1)
    }

    /// Sets the number of threads BLAS may use (OpenBLAS only; Accelerate manages its own).
    public static func setThreadCount(_ n: Int) {
        #if !canImport(Accelerate)
        openblas_set_num_threads(Int32(max(1, n)))
        #endif
    }

    /// Runs `body` with the BLAS limited to `n` threads, then restores the previous count (for
    /// sections that run their own threads, each calling BLAS). Not for concurrent use.
    public static func withThreadCount<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        #if canImport(Accelerate)
        return try body()
        #else
        let old = threadCount
        if old == n { return try body() }
        setThreadCount(n)
        defer { setThreadCount(old) }
        return try body()
        #endif
    }

    /// The kernel family OpenBLAS picked for this CPU ("Haswell", "SkylakeX", …; the environment
    /// variable OPENBLAS_CORETYPE can force one), or "Accelerate". Benchmarks record it.
    public static var coreName: String {
        #if canImport(Accelerate)
        return "Accelerate"
        #else
        return openblas_get_corename().map { String(cString: $0) } ?? "unknown"
        #endif
    }

    /// Threads the BLAS uses (0: the platform decides, Accelerate).
    public static var threadCount: Int {
        #if canImport(Accelerate)
        return 0
        #else
        return Int(openblas_get_num_threads())
        #endif
    }
}

/// LAPACK drivers on column-major buffers. The row-major `Matrix` API in Decompositions.swift
/// maps onto these (a row-major m x n matrix is a column-major n x m one).
enum LAPACK {
    /// Thin SVD of the column-major m x n matrix `a` (overwritten). Returns the LAPACK `info`.
    /// u: m x k (ldu = m), vt: k x n (ldvt = k), s: k, with k = min(m, n).
    static func gesdd(m: Int, n: Int, a: UnsafeMutablePointer<Float>, s: UnsafeMutablePointer<Float>,
                      u: UnsafeMutablePointer<Float>, vt: UnsafeMutablePointer<Float>) -> Int {
        let k = min(m, n)
        #if canImport(Accelerate)
        var jobz: Int8 = Int8(UInt8(ascii: "S"))
        var mm = __CLPK_integer(m), nn = __CLPK_integer(n), lda = __CLPK_integer(max(1, m))
        var ldu = __CLPK_integer(max(1, m)), ldvt = __CLPK_integer(max(1, k)), info = __CLPK_integer(0)
        var lwork = __CLPK_integer(-1)
        var wq: Float = 0
        var iwork = [__CLPK_integer](repeating: 0, count: 8 * k)
        sgesdd_(&jobz, &mm, &nn, a, &lda, s, u, &ldu, vt, &ldvt, &wq, &lwork, &iwork, &info)
        lwork = __CLPK_integer(wq)
        var work = [Float](repeating: 0, count: Int(lwork))
        sgesdd_(&jobz, &mm, &nn, a, &lda, s, u, &ldu, vt, &ldvt, &work, &lwork, &iwork, &info)
        return Int(info)
        #else
        return Int(LAPACKE_sgesdd(LAPACK_COL_MAJOR, Int8(UInt8(ascii: "S")), Int32(m), Int32(n), a,
                                  Int32(max(1, m)), s, u, Int32(max(1, m)), vt, Int32(max(1, k))))
        #endif
    }

    /// Same contract as `gesdd`, through the slower but more robust QR-iteration driver.
    static func gesvd(m: Int, n: Int, a: UnsafeMutablePointer<Float>, s: UnsafeMutablePointer<Float>,
                      u: UnsafeMutablePointer<Float>, vt: UnsafeMutablePointer<Float>) -> Int {
        let k = min(m, n)
        #if canImport(Accelerate)
        var job: Int8 = Int8(UInt8(ascii: "S"))
        var job2 = job
        var mm = __CLPK_integer(m), nn = __CLPK_integer(n), lda = __CLPK_integer(max(1, m))
        var ldu = __CLPK_integer(max(1, m)), ldvt = __CLPK_integer(max(1, k)), info = __CLPK_integer(0)
        var lwork = __CLPK_integer(-1)
        var wq: Float = 0
        sgesvd_(&job, &job2, &mm, &nn, a, &lda, s, u, &ldu, vt, &ldvt, &wq, &lwork, &info)
        lwork = __CLPK_integer(wq)
        var work = [Float](repeating: 0, count: Int(lwork))
        sgesvd_(&job, &job2, &mm, &nn, a, &lda, s, u, &ldu, vt, &ldvt, &work, &lwork, &info)
        return Int(info)
        #else
        var superb = [Float](repeating: 0, count: max(1, k - 1))
        return Int(LAPACKE_sgesvd(LAPACK_COL_MAJOR, Int8(UInt8(ascii: "S")), Int8(UInt8(ascii: "S")),
                                  Int32(m), Int32(n), a, Int32(max(1, m)), s, u, Int32(max(1, m)),
                                  vt, Int32(max(1, k)), &superb))
        #endif
    }

    /// Eigen-decomposition of the symmetric n x n matrix `a` (Double; its upper triangle is read,
    /// overwritten by the orthonormal eigenvectors, column-major, one per column), eigenvalues in
    /// ascending order into `w`. Returns the LAPACK `info`.
    static func syev(n: Int, a: UnsafeMutablePointer<Double>, w: UnsafeMutablePointer<Double>) -> Int {
        #if canImport(Accelerate)
        var jobz: Int8 = Int8(UInt8(ascii: "V")), uplo: Int8 = Int8(UInt8(ascii: "U"))
        var nn = __CLPK_integer(n), lda = __CLPK_integer(max(1, n)), info = __CLPK_integer(0)
        var lwork = __CLPK_integer(-1)
        var wq: Double = 0
        dsyev_(&jobz, &uplo, &nn, a, &lda, w, &wq, &lwork, &info)
        lwork = __CLPK_integer(wq)
        var work = [Double](repeating: 0, count: max(1, Int(lwork)))
        dsyev_(&jobz, &uplo, &nn, a, &lda, w, &work, &lwork, &info)
        return Int(info)
        #else
        return Int(LAPACKE_dsyev(LAPACK_COL_MAJOR, Int8(UInt8(ascii: "V")), Int8(UInt8(ascii: "U")), Int32(n), a,
                                 Int32(max(1, n)), w))
        #endif
    }

    /// Householder QR of the column-major m x n matrix `a` (overwritten), then the explicit
    /// thin Q (m x k, k = min(m, n)) written back into the first k columns of `a`.
    /// R (k x n, upper triangular) is copied out first into `r` (column-major, ldr = k).
    static func qr(m: Int, n: Int, a: UnsafeMutablePointer<Float>, r: UnsafeMutablePointer<Float>) -> Int {
        let k = min(m, n)
        var tau = [Float](repeating: 0, count: max(1, k))
        #if canImport(Accelerate)
        var mm = __CLPK_integer(m), nn = __CLPK_integer(n), kk = __CLPK_integer(k)
        var lda = __CLPK_integer(max(1, m)), info = __CLPK_integer(0), lwork = __CLPK_integer(-1)
        var wq: Float = 0
        sgeqrf_(&mm, &nn, a, &lda, &tau, &wq, &lwork, &info)
        lwork = __CLPK_integer(wq)
        var work = [Float](repeating: 0, count: max(1, Int(lwork)))
        sgeqrf_(&mm, &nn, a, &lda, &tau, &work, &lwork, &info)
        if info != 0 { return Int(info) }
        #else
        var info = Int(LAPACKE_sgeqrf(LAPACK_COL_MAJOR, Int32(m), Int32(n), a, Int32(max(1, m)), &tau))
        if info != 0 { return info }
        #endif
        for j in 0..<n {
            for i in 0..<k { r[j * k + i] = i <= j ? a[j * m + i] : 0 }
        }
        #if canImport(Accelerate)
        lwork = -1
        sorgqr_(&mm, &kk, &kk, a, &lda, &tau, &wq, &lwork, &info)
        lwork = __CLPK_integer(wq)
        work = [Float](repeating: 0, count: max(1, Int(lwork)))
        sorgqr_(&mm, &kk, &kk, a, &lda, &tau, &work, &lwork, &info)
        return Int(info)
        #else
        info = Int(LAPACKE_sorgqr(LAPACK_COL_MAJOR, Int32(m), Int32(k), Int32(k), a, Int32(max(1, m)), &tau))
        return info
        #endif
    }
}
