import Foundation

// Elementwise kernels of the forward and backward passes (softmax, SwiGLU, RMSNorm, RoPE).
// Profiling a 512-token SmolLM2 prompt showed the scalar versions (libm `expf` one value at a
// time) at ~15 % of the CPU time next to BLAS; these bring that to a few percent.
//
// They are written as plain loops over branch-free scalar code, which LLVM's loop vectorizer turns
// into SSE code on baseline x86-64 (NEON on arm64). Swift's SIMD4/SIMD8 types were tried first
// and came out slower than libm: on baseline x86-64 their compare masks go through general
// registers, and `pointwiseMin`/`replacing(with:where:)` are lane-by-lane loops. Sums and maxima
// keep eight independent accumulators, which the SLP vectorizer packs into vector registers
// (a single accumulator is a strict serial chain in IEEE arithmetic and stays scalar).
//
// Each kernel has a scalar twin in `VectorKernels.Reference` written the obvious way with
// Foundation's `exp`; the tests compare the two.

enum VectorKernels {
    // exp(x) = 2ⁿ · e^r with n = round(x / ln 2), r = x − n ln 2 ∈ [−ln2/2, ln2/2] (Cody–Waite:
    // ln 2 in two parts so n·ln2Hi is exact), e^r by the Cephes expf polynomial, and 2ⁿ built from
    // exponent bits in two halves so that n down to −150 (subnormal results) and up to 128 stay
    // representable in each factor. No `fma` and no `rounded()`: on baseline x86-64 both are
    // libm calls.
    private static let log2e: Float = 1.44269504088896341
    private static let ln2Hi: Float = 0.693359375
    private static let ln2Lo: Float = -2.12194440e-4
    /// Above this exp overflows Float (e^88.7228394 > Float.greatestFiniteMagnitude).
    private static let maxArg: Float = 88.7228394
    /// Below this exp rounds to 0 even as a subnormal (e^−103.98 < 2^−150).
    private static let minArg: Float = -104
    /// 1.5·2²³: adding it rounds a Float of magnitude < 2²² to an integer (to nearest even) and
    /// leaves that integer in the low mantissa bits.
    private static let roundMagic: Float = 12_582_912

    /// e^x within 2 ulp of the correctly rounded value for normal results; 0 for x ≤ −104 and −∞,
    /// +∞ above 88.72, NaN for NaN. Branch-free so that loops calling it vectorise.
    @inline(__always)
    static func exp(_ x: Float) -> Float {
        var xc = x < minArg ? minArg : x                                 // −∞ → minArg → 0
        xc = xc > maxArg ? maxArg : xc
        let t = xc * log2e + roundMagic
        let n = t - roundMagic                                           // round(x / ln 2), as Float
        let ni = Int32(bitPattern: t.bitPattern) &- Int32(bitPattern: roundMagic.bitPattern)
        var r = xc - n * ln2Hi
        r = r - n * ln2Lo
        let r2 = r * r
        var p: Float = 1.9875691500e-4
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        p = p * r2 + r + 1
        let n1 = ni &>> 1, n2 = ni &- n1                                 // each in −75...64
        let s1 = Float(bitPattern: UInt32(bitPattern: (n1 &+ 127) &<< 23))
        let s2 = Float(bitPattern: UInt32(bitPattern: (n2 &+ 127) &<< 23))
        let y = x > maxArg ? Float.infinity : p * s1 * s2
        return x != x ? x : y                                            // NaN stays NaN
    }

    /// max of p[0..<count] (−∞ when empty).
    static func max(_ p: UnsafePointer<Float>, count: Int) -> Float {
        var m0 = -Float.infinity, m1 = m0, m2 = m0, m3 = m0, m4 = m0, m5 = m0, m6 = m0, m7 = m0
        var i = 0
        while i + 8 <= count {
            m0 = p[i] > m0 ? p[i] : m0; m1 = p[i + 1] > m1 ? p[i + 1] : m1
            m2 = p[i + 2] > m2 ? p[i + 2] : m2; m3 = p[i + 3] > m3 ? p[i + 3] : m3
            m4 = p[i + 4] > m4 ? p[i + 4] : m4; m5 = p[i + 5] > m5 ? p[i + 5] : m5
            m6 = p[i + 6] > m6 ? p[i + 6] : m6; m7 = p[i + 7] > m7 ? p[i + 7] : m7
            i += 8
        }
        var m = Swift.max(Swift.max(Swift.max(m0, m1), Swift.max(m2, m3)), Swift.max(Swift.max(m4, m5), Swift.max(m6, m7)))
        while i < count { m = p[i] > m ? p[i] : m; i += 1 }
        return m
    }

    /// Σ p[0..<count].
    static func sum(_ p: UnsafePointer<Float>, count: Int) -> Float {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0, s4: Float = 0, s5: Float = 0, s6: Float = 0, s7: Float = 0
        var i = 0
        while i + 8 <= count {
            s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]
            s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7]
            i += 8
        }
        var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
        while i < count { s += p[i]; i += 1 }
        return s
    }

    /// Σ a_i b_i c_i.
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>, count: Int) -> Float {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0, s4: Float = 0, s5: Float = 0, s6: Float = 0, s7: Float = 0
        var i = 0
        while i + 8 <= count {
            s0 += a[i] * b[i] * c[i]; s1 += a[i + 1] * b[i + 1] * c[i + 1]
            s2 += a[i + 2] * b[i + 2] * c[i + 2]; s3 += a[i + 3] * b[i + 3] * c[i + 3]
            s4 += a[i + 4] * b[i + 4] * c[i + 4]; s5 += a[i + 5] * b[i + 5] * c[i + 5]
            s6 += a[i + 6] * b[i + 6] * c[i + 6]; s7 += a[i + 7] * b[i + 7] * c[i + 7]
            i += 8
        }
        var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
        while i < count { s += a[i] * b[i] * c[i]; i += 1 }
        return s
    }

    /// Σ a_i b_i.
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var s0: Float = 0, s1: Float = 0, s2: Float = 0, s3: Float = 0, s4: Float = 0, s5: Float = 0, s6: Float = 0, s7: Float = 0
        var i = 0
        while i + 8 <= count {
            s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1]; s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3]
            s4 += a[i + 4] * b[i + 4]; s5 += a[i + 5] * b[i + 5]; s6 += a[i + 6] * b[i + 6]; s7 += a[i + 7] * b[i + 7]
            i += 8
        }
        var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
        while i < count { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// Softmax of row[0..<valid] in place, row[valid..<count] set to 0 (the causal mask).
    static func softmaxRow(_ row: UnsafeMutablePointer<Float>, valid: Int, count: Int) {
        let m = max(row, count: valid)
        for j in 0..<valid { row[j] = exp(row[j] - m) }
        scale(row, count: valid, by: 1 / sum(row, count: valid))
        if count > valid { (row + valid).update(repeating: 0, count: count - valid) }
    }

    /// p[0..<count] *= s.
    static func scale(_ p: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        for i in 0..<count { p[i] *= s }
    }

    /// Softmax backward of one row: dS_j = P_j (dP_j − Σ_k P_k dP_k) for j < valid, 0 after.
    static func softmaxBackwardRow(p: UnsafePointer<Float>, dp: UnsafeMutablePointer<Float>, valid: Int, count: Int) {
        let d = dot(p, dp, count: valid)
        for j in 0..<valid { dp[j] = p[j] * (dp[j] - d) }
        if count > valid { (dp + valid).update(repeating: 0, count: count - valid) }
    }

    /// out = silu(gate) ⊙ up, silu(g) = g / (1 + e^(−g)); `out` may be `gate`.
    static func swiglu(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        if UnsafePointer(out) == gate {
            // In place through one pointer: with two equal pointers the vectorizer's overlap check
            // would send the loop down its scalar path.
            for i in 0..<count { let g = out[i]; out[i] = g / (1 + exp(-g)) * up[i] }
        } else {
            for i in 0..<count { let g = gate[i]; out[i] = g / (1 + exp(-g)) * up[i] }
        }
    }

    /// SwiGLU backward: with s = σ(g), dUp = dAct · g s, dGate = dAct · u · s (1 + g (1 − s)).
    static func swigluBackward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dAct: UnsafePointer<Float>,
                               dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i], da = dAct[i], s = 1 / (1 + exp(-g))
            dUp[i] = da * (g * s)
            dGate[i] = da * up[i] * s * (1 + g * (1 - s))
        }
    }

    /// HF LlamaRMSNorm of each row: out = g ⊙ x · r, r = 1/√(mean(x²) + ε); r per row goes to
    /// `inv` when given.
    static func rmsNorm(_ x: UnsafePointer<Float>, g: UnsafePointer<Float>, eps: Float, rows: Int, cols: Int,
                        out: UnsafeMutablePointer<Float>, inv: UnsafeMutablePointer<Float>? = nil) {
        for t in 0..<rows {
            let xr = x + t * cols, o = out + t * cols
            let r = 1 / (dot(xr, xr, count: cols) / Float(cols) + eps).squareRoot()
            inv?[t] = r
            for j in 0..<cols { o[j] = g[j] * (xr[j] * r) }
        }
    }

    /// One row of RMSNorm backward added to dx: dx_j += r g_j dy_j − r³/C · x_j · Σ_k g_k dy_k x_k.
    static func rmsNormBackwardRow(x: UnsafePointer<Float>, g: UnsafePointer<Float>, inv r: Float,
                                   dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, cols: Int) {
        let k = r * r * r * dot(g, dy, x, count: cols) / Float(cols)
        for j in 0..<cols { dx[j] += r * g[j] * dy[j] - k * x[j] }
    }

    /// rotate_half RoPE on `heads` heads of `rows` rows, row t at table row `start + t`:
    /// (a, b) = (v[i], v[i + d/2]) → (a cos − b sin, b cos + a sin); `inverse` rotates back
    /// (sin negated: the transpose, i.e. RoPE's backward).
    static func rope(_ v: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim d: Int, start: Int,
                     cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false) {
        let half = d / 2
        let sign: Float = inverse ? -1 : 1
        for t in 0..<rows {
            let cs = cos + (start + t) * half, sn = sin + (start + t) * half
            for hh in 0..<heads {
                let p = v + (t * heads + hh) * d, q = p + half
                for i in 0..<half {
                    let a = p[i], b = q[i], c = cs[i], s = sign * sn[i]
                    p[i] = a * c - b * s
                    q[i] = b * c + a * s
                }
            }
        }
    }

    /// The obvious scalar versions (Foundation `exp`), kept as the tests' reference.
    enum Reference {
        static func softmaxRow(_ row: UnsafeMutablePointer<Float>, valid: Int, count: Int) {
            var m = -Float.infinity
            for j in 0..<valid where row[j] > m { m = row[j] }
            var sum: Float = 0
            for j in 0..<valid { let e = Foundation.exp(row[j] - m); row[j] = e; sum += e }
            for j in 0..<valid { row[j] /= sum }
            for j in valid..<count { row[j] = 0 }
        }

        static func softmaxBackwardRow(p: UnsafePointer<Float>, dp: UnsafeMutablePointer<Float>, valid: Int, count: Int) {
            var dot: Float = 0
            for j in 0..<valid { dot += p[j] * dp[j] }
            for j in 0..<valid { dp[j] = p[j] * (dp[j] - dot) }
            for j in valid..<count { dp[j] = 0 }
        }

        static func swiglu(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
            for i in 0..<count { let g = gate[i]; out[i] = g / (1 + Foundation.exp(-g)) * up[i] }
        }

        static func swigluBackward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dAct: UnsafePointer<Float>,
                                   dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
            for i in 0..<count {
                let g = gate[i], s = 1 / (1 + Foundation.exp(-g))
                dUp[i] = dAct[i] * g * s
                dGate[i] = dAct[i] * up[i] * s * (1 + g * (1 - s))
            }
        }

        static func rmsNorm(_ x: UnsafePointer<Float>, g: UnsafePointer<Float>, eps: Float, rows: Int, cols: Int,
                            out: UnsafeMutablePointer<Float>, inv: UnsafeMutablePointer<Float>? = nil) {
            for t in 0..<rows {
                var ss: Float = 0
                for j in 0..<cols { ss += x[t * cols + j] * x[t * cols + j] }
                let r = 1 / (ss / Float(cols) + eps).squareRoot()
                inv?[t] = r
                for j in 0..<cols { out[t * cols + j] = g[j] * (x[t * cols + j] * r) }
            }
        }

        static func rmsNormBackwardRow(x: UnsafePointer<Float>, g: UnsafePointer<Float>, inv r: Float,
                                       dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, cols: Int) {
            var dot: Float = 0
            for j in 0..<cols { dot += g[j] * dy[j] * x[j] }
            let k = r * r * r * dot / Float(cols)
            for j in 0..<cols { dx[j] += r * g[j] * dy[j] - k * x[j] }
        }

        static func rope(_ v: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim d: Int, start: Int,
                         cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false) {
            let half = d / 2
            for t in 0..<rows {
                for hh in 0..<heads {
                    let p = v + (t * heads + hh) * d
                    for i in 0..<half {
                        let c = cos[(start + t) * half + i], s = (inverse ? -1 : 1) * sin[(start + t) * half + i]
                        let a = p[i], b = p[i + half]
                        p[i] = a * c - b * s
                        p[i + half] = b * c + a * s
                    }
                }
            }
        }
    }
}
