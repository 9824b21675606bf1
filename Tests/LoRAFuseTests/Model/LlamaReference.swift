import Foundation
@testable import LoRAFuse

/// A deliberately naive forward pass of the same architecture: plain loops, Double accumulation,
/// no KV cache, no BLAS, the whole sequence recomputed. It reads the model's effective weights
/// (base, or base + the merged adapters of `adapters`), so it checks the engine's GEMM wiring, strides, RoPE,
/// grouped-query indexing, causal mask and LoRA application independently of the engine.
enum LlamaReference {
    static func logits(_ model: LlamaModel, tokens: [Int], adapters: AdapterSet = .none) -> Matrix {
        let c = model.config
        let T = tokens.count, C = c.hiddenSize, H = c.numAttentionHeads, Hkv = c.numKeyValueHeads
        let d = c.headDim, V = c.vocabSize
        let w = model.base

        func weight(_ id: Int) -> [Float] { adapters.mergedLinear[id] ?? w.linears[id].weight }
        func lin(_ x: [[Double]], _ id: Int) -> [[Double]] {
            let lw = w.linears[id], W = weight(id)
            return x.map { row in
                (0..<lw.outFeatures).map { o in
                    var s = Double(lw.bias?[o] ?? 0)
                    for i in 0..<lw.inFeatures { s += Double(W[o * lw.inFeatures + i]) * row[i] }
                    return s
                }
            }
        }
        func norm(_ x: [[Double]], _ g: [Float]) -> [[Double]] {
            x.map { row in
                let ms = row.reduce(0) { $0 + $1 * $1 } / Double(row.count)
                let inv = 1 / (ms + Double(c.rmsNormEps)).squareRoot()
                return row.enumerated().map { Double(g[$0.offset]) * $0.element * inv }
            }
        }
        func rope(_ x: inout [[Double]], heads: Int) {
            for t in 0..<T {
                for h in 0..<heads {
                    for i in 0..<d / 2 {
                        let invFreq = 1 / pow(c.ropeTheta, Double(2 * i) / Double(d))
                        let ang = Double(t) / Double(c.ropePositionScale) * invFreq
                        let a = x[t][h * d + i], b = x[t][h * d + i + d / 2]
                        x[t][h * d + i] = a * cos(ang) - b * sin(ang)
                        x[t][h * d + i + d / 2] = b * cos(ang) + a * sin(ang)
                    }
                }
            }
        }

        let E = adapters.mergedEmbed ?? w.embed
        var x: [[Double]] = tokens.map { tok in (0..<C).map { Double(E[tok * C + $0]) } }
        for f in adapters.embedFactors {
            for (t, tok) in tokens.enumerated() {
                for cc in 0..<C {
                    var s = 0.0
                    for j in 0..<f.rank { s += Double(f.B[cc * f.rank + j]) * Double(f.A[j * V + tok]) }
                    x[t][cc] += Double(f.coef) * s
                }
            }
        }
        for l in 0..<c.numHiddenLayers {
            let id = { (s: Projection) in LlamaWeights.linearID(layer: l, s) }
            let h = norm(x, w.attnNorms[l])
            var q = lin(h, id(.q)), k = lin(h, id(.k))
            let v = lin(h, id(.v))
            rope(&q, heads: H)
            rope(&k, heads: Hkv)
            var o = [[Double]](repeating: [Double](repeating: 0, count: H * d), count: T)
            for hh in 0..<H {
                let g = hh / (H / Hkv)
                for t in 0..<T {
                    var s = [Double](repeating: 0, count: t + 1)
                    for j in 0...t {
                        for i in 0..<d { s[j] += q[t][hh * d + i] * k[j][g * d + i] }
                        s[j] /= Double(d).squareRoot()
                    }
                    let m = s.max()!
                    let e = s.map { exp($0 - m) }
                    let z = e.reduce(0, +)
                    for j in 0...t { for i in 0..<d { o[t][hh * d + i] += e[j] / z * v[j][g * d + i] } }
                }
            }
            let ao = lin(o, id(.o))
            for t in 0..<T { for i in 0..<C { x[t][i] += ao[t][i] } }
            let h2 = norm(x, w.ffnNorms[l])
            let g = lin(h2, id(.gate)), u = lin(h2, id(.up))
            var a = g
            for t in 0..<T {
                for j in 0..<g[t].count {
                    let gv: Double = g[t][j]
                    a[t][j] = gv / (1 + exp(-gv)) * u[t][j]
                }
            }
            let dn = lin(a, id(.down))
            for t in 0..<T { for i in 0..<C { x[t][i] += dn[t][i] } }
        }
        let logits = lin(norm(x, w.finalNorm), LlamaWeights.lmHeadID(layers: c.numHiddenLayers))
        return Matrix(rows: T, cols: V, data: logits.flatMap { $0.map(Float.init) })
    }
}
