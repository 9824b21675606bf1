/* AVX-512 (F, BW, VL, VNNI) kernels. Compiled per function, called only after
 * cq_kernel_available(CQ_KERNEL_AVX512) said yes. Types without a kernel here (K-quants) and the
 * activation quantizers use the avx2 set.
 *
 * 32-value blocks go two at a time through one zmm: bytes 0-31 are block b's 32 values in
 * order, bytes 32-63 block b + 1's, which is also how two consecutive activation blocks lie in
 * the q array, so one 64-byte load fetches the matching activations. _mm512_dpbusd_epi32
 * multiplies unsigned weight bytes with signed activation bytes and sums each four into int32
 * (lanes 0-7 block b, 8-15 block b + 1). Q8_0 weights are signed: |w| with the activation
 * negated where w < 0 (exact, since activations are never -128). */
#pragma STDC FP_CONTRACT OFF

#include "cq_internal.h"

#ifdef CQ_X86

#include <immintrin.h>

#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX512_INLINE \
    static inline __attribute__((always_inline, target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

AVX512_INLINE float half_f16c(const uint8_t *p) { return _cvtsh_ss(cq_u16(p)); }

/* ---- Float weights ----------------------------------------------------------------------- */

enum { F_F32, F_F16, F_BF16 };

AVX512_INLINE __m512 load_w16(const uint8_t *w, size_t i, const int F, __mmask16 m) {
    if (F == F_F32) return _mm512_maskz_loadu_ps(m, (const float *)(w + 4 * i));
    __m256i h = _mm256_maskz_loadu_epi16(m, (const void *)(w + 2 * i));
    if (F == F_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512_INLINE void float_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                              float *out, size_t ostride, const int F) {
    const int U = 4; /* accumulators per activation row, the same for every tile width */
    __m512 acc[4][CQ_TILE];
    const float *x[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        x[k] = (const float *)(a + (size_t)k * astride);
        for (int u = 0; u < U; u++) acc[u][k] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + 16 * U <= n; i += 16 * U) {
        for (int u = 0; u < U; u++) {
            __m512 wv = load_w16(w, (size_t)(i + 16 * u), F, 0xFFFF);
            for (int k = 0; k < NA; k++)
                acc[u][k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[k] + i + 16 * u), acc[u][k]);
        }
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 wv = load_w16(w, (size_t)i, F, m);
        for (int k = 0; k < NA; k++) acc[0][k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[k] + i), acc[0][k]);
    }
    for (int k = 0; k < NA; k++) {
        __m512 t = acc[0][k];
        for (int u = 1; u < U; u++) t = _mm512_add_ps(t, acc[u][k]);
        out[(size_t)k * ostride] = _mm512_reduce_add_ps(t);
    }
}

/* ---- 32-value blocks, two per step ------------------------------------------------------- */

AVX512_INLINE size_t blk_bytes(const int T) {
    return T == CQ_TYPE_Q4_0 ? 18 : T == CQ_TYPE_Q4_1 ? 20 : T == CQ_TYPE_Q5_0 ? 22 : T == CQ_TYPE_Q5_1 ? 24 : 34;
}

/* Nibbles of two blocks (16 bytes each, the second absent when !two) -> 64 value bytes. */
AVX512_INLINE __m512i nibbles2(const uint8_t *qs0, const uint8_t *qs1, int two) {
    __m256i b0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs0));
    __m256i b1 = two ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs1)) : _mm256_setzero_si256();
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(b0), b1, 1);
    /* 128-bit lanes 1 and 3 take the high nibbles */
    const __m512i sh = _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                         0x0004000400040004LL, 0x0004000400040004LL);
    return _mm512_and_si512(_mm512_srlv_epi16(z, sh), _mm512_set1_epi8(0x0F));
}

/* Scales d and c coefficients (the value is d q + c) of blocks b and b + 1 (the second 0 when
 * !two). One definition for the tiles' block loops and tile4's separate c loop, so both see the
 * same floats. */
AVX512_INLINE void scales2(const uint8_t *b0, const uint8_t *b1, int two, const int T, float *d, float *c) {
    d[0] = half_f16c(b0);
    d[1] = two ? half_f16c(b1) : 0.0f;
    switch (T) {
    case CQ_TYPE_Q4_0: c[0] = -8.0f * d[0], c[1] = -8.0f * d[1]; break;
    case CQ_TYPE_Q5_0: c[0] = -16.0f * d[0], c[1] = -16.0f * d[1]; break;
    case CQ_TYPE_Q4_1:
    case CQ_TYPE_Q5_1: c[0] = half_f16c(b0 + 2), c[1] = two ? half_f16c(b1 + 2) : 0.0f; break;
    default: c[0] = c[1] = 0.0f; break;
    }
}

/* Unsigned values (Q8_0: signed) of blocks b and b + 1, their scales and c coefficients. */
AVX512_INLINE __m512i unpack2(const uint8_t *b0, const uint8_t *b1, int two, const int T, float *d, float *c) {
    scales2(b0, b1, two, T, d, c);
    switch (T) {
    case CQ_TYPE_Q4_0: return nibbles2(b0 + 2, b1 + 2, two);
    case CQ_TYPE_Q4_1: return nibbles2(b0 + 4, b1 + 4, two);
    case CQ_TYPE_Q5_0: {
        uint64_t qh = cq_u32(b0 + 2) | (two ? (uint64_t)cq_u32(b1 + 2) << 32 : 0);
        __m512i q = nibbles2(b0 + 6, b1 + 6, two);
        return _mm512_mask_add_epi8(q, (__mmask64)qh, q, _mm512_set1_epi8(0x10));
    }
    case CQ_TYPE_Q5_1: {
        uint64_t qh = cq_u32(b0 + 4) | (two ? (uint64_t)cq_u32(b1 + 4) << 32 : 0);
        __m512i q = nibbles2(b0 + 8, b1 + 8, two);
        return _mm512_mask_add_epi8(q, (__mmask64)qh, q, _mm512_set1_epi8(0x10));
    }
    default: {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + 2));
        __m256i w1 = two ? _mm256_loadu_si256((const __m256i *)(b1 + 2)) : _mm256_setzero_si256();
        return _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
    }
    }
}

AVX512_INLINE void k32_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                            float *out, size_t ostride, const int T) {
    const int U = 2; /* pairs per step, each with its own accumulators, for every tile width */
    const int nb = n / 32;
    const size_t bb = blk_bytes(T);
    const int hasS = T != CQ_TYPE_Q8_0;
    const __m512i expand = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[2][CQ_TILE];
    __m128 accs[2][CQ_TILE];
    const cq_q8_rows rows = cq_q8_rows_at(a, astride, NA, n);
    const int8_t *const *y = rows.y;
    const float *const *ad = rows.d, *const *as = rows.s;
    for (int k = 0; k < NA; k++)
        for (int u = 0; u < 2; u++) acc[u][k] = _mm512_setzero_ps(), accs[u][k] = _mm_setzero_ps();
    for (int ib = 0; ib < nb; ib += 2 * U) {
        for (int u = 0; u < U; u++) {
            int b = ib + 2 * u;
            if (b >= nb) break;
            int two = b + 1 < nb;
            float d[2], c[2];
            const uint8_t *blk = w + bb * (size_t)b;
            __m512i q = unpack2(blk, blk + bb, two, T, d, c);
            __mmask64 neg = 0;
            if (T == CQ_TYPE_Q8_0) neg = _mm512_movepi8_mask(q), q = _mm512_abs_epi8(q);
            __m128 dv = _mm_setr_ps(d[0], d[1], 0.0f, 0.0f);
            __m128 cv = _mm_setr_ps(c[0], c[1], 0.0f, 0.0f);
            __mmask64 ym = two ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
            __mmask8 pm = two ? 3 : 1;
            for (int k = 0; k < NA; k++) {
                __m512i yv = _mm512_maskz_loadu_epi8(ym, y[k] + 32 * b);
                if (T == CQ_TYPE_Q8_0) yv = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
                __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, yv));
                __m128 sc = _mm_mul_ps(dv, _mm_maskz_loadu_ps(pm, ad[k] + b));
                __m512 sv = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(sc));
                acc[u][k] = _mm512_fmadd_ps(sv, p, acc[u][k]);
                if (hasS) accs[u][k] = _mm_fmadd_ps(cv, _mm_maskz_loadu_ps(pm, as[k] + b), accs[u][k]);
            }
        }
    }
    for (int k = 0; k < NA; k++) {
        __m512 t = _mm512_add_ps(acc[0][k], acc[1][k]);
        float r = _mm512_reduce_add_ps(t);
        if (hasS) {
            __m128 s = _mm_add_ps(accs[0][k], accs[1][k]);
            r += _mm_cvtss_f32(s) + _mm_cvtss_f32(_mm_movehdup_ps(s));
        }
        out[(size_t)k * ostride] = r;
    }
}

/* Two weight rows against the same activation rows: each activation block is loaded, and its
 * scale expanded, once for both rows. Every (weight row, activation row) result takes exactly the
 * float operations of k32_tile (same products, same two accumulators, same order), so it equals
 * k32_tile's bit for bit: a sequence's numbers do not depend on which rows share its pass.
 * Q8_0: signed weights against unsigned activations instead of k32_tile's sign trick:
 * dpbusd(-128 sum(w), y + 128, w) = sum(y w), the same integer; -128 sum(w) is per weight block,
 * so the per-pair work drops to one dpbusd. */
AVX512_INLINE void k32_tile2(int n, const uint8_t *w, size_t rowBytes, const uint8_t *a, size_t astride,
                             const int NA, float *out, size_t ostride, const int T) {
    const int U = 2;
    const int nb = n / 32;
    const size_t bb = blk_bytes(T);
    const int hasS = T != CQ_TYPE_Q8_0;
    const int Q8 = T == CQ_TYPE_Q8_0;
    const __m512i expand = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512 acc[2][2][CQ_TILE];
    __m128 accs[2][2][CQ_TILE];
    const cq_q8_rows rows = cq_q8_rows_at(a, astride, NA, n);
    const int8_t *const *y = rows.y;
    const float *const *ad = rows.d, *const *as = rows.s;
    for (int k = 0; k < NA; k++)
        for (int u = 0; u < 2; u++)
            for (int r = 0; r < 2; r++) acc[u][r][k] = _mm512_setzero_ps(), accs[u][r][k] = _mm_setzero_ps();
    for (int ib = 0; ib < nb; ib += 2 * U) {
        for (int u = 0; u < U; u++) {
            int b = ib + 2 * u;
            if (b >= nb) break;
            int two = b + 1 < nb;
            __mmask64 ym = two ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
            __mmask8 pm = two ? 3 : 1;
            __m512i q[2], p0[2];
            __m512 dw[2];
            __m128 cv[2];
            for (int r = 0; r < 2; r++) {
                float d[2], c[2];
                const uint8_t *blk = w + (size_t)r * rowBytes + bb * (size_t)b;
                q[r] = unpack2(blk, blk + bb, two, T, d, c);
                p0[r] = Q8 ? _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, q[r]))
                           : _mm512_setzero_si512();
                dw[r] = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_setr_ps(d[0], d[1], 0.0f, 0.0f)));
                cv[r] = _mm_setr_ps(c[0], c[1], 0.0f, 0.0f);
            }
            for (int k = 0; k < NA; k++) {
                __m512i yv = _mm512_maskz_loadu_epi8(ym, y[k] + 32 * b);
                if (Q8) yv = _mm512_xor_si512(yv, bias);
                __m512 da = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_maskz_loadu_ps(pm, ad[k] + b)));
                __m128 sa = hasS ? _mm_maskz_loadu_ps(pm, as[k] + b) : _mm_setzero_ps();
                for (int r = 0; r < 2; r++) {
                    __m512i pi = Q8 ? _mm512_dpbusd_epi32(p0[r], yv, q[r]) : _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[r], yv);
                    acc[u][r][k] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), _mm512_cvtepi32_ps(pi), acc[u][r][k]);
                    if (hasS) accs[u][r][k] = _mm_fmadd_ps(cv[r], sa, accs[u][r][k]);
                }
            }
        }
    }
    for (int r = 0; r < 2; r++)
        for (int k = 0; k < NA; k++) {
            __m512 t = _mm512_add_ps(acc[0][r][k], acc[1][r][k]);
            float res = _mm512_reduce_add_ps(t);
            if (hasS) {
                __m128 s = _mm_add_ps(accs[0][r][k], accs[1][r][k]);
                res += _mm_cvtss_f32(s) + _mm_cvtss_f32(_mm_movehdup_ps(s));
            }
            out[(size_t)k * ostride + (size_t)r] = res;
        }
}

/* ---- Unpacked weight rows for wide batches ------------------------------------------------
 * A prompt passes every group of four activation rows over the same weight rows; unpacking a
 * block pair (nibbles to bytes, Q8_0's signs to a mask, the two f16 scales to an expanded
 * vector) costs about as much as multiplying it with four activation rows, so for wide batches
 * the driver unpacks a chunk of rows once into per-thread scratch (k32_prep) and k32_tile4 reads
 * that for every activation group. Per weight row and block pair p, at row + 128 p: the 64
 * value bytes as unpack2 returns them (Q8_0: |w|), then the 16 floats of the expanded scales;
 * at row + 128 np + 8 p the Q8_0 sign mask; at row + 136 np + 8 p the two c coefficients. The
 * values are exactly those the other kernels compute in their loops, so results stay bit for
 * bit those of k32_tile. */
static size_t prep_row_bytes(int n) {
    size_t np = (size_t)(n / 32 + 1) / 2;
    return cq_a64(np * 144);
}

AVX512_INLINE void k32_prep(int n, const uint8_t *w, size_t rowBytes, int rows, uint8_t *dst, const int T) {
    const int nb = n / 32, np = (nb + 1) / 2;
    const size_t bb = blk_bytes(T), pr = prep_row_bytes(n);
    const __m512i expand = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = dst + (size_t)r * pr;
        const uint8_t *wr = w + (size_t)r * rowBytes;
        for (int p = 0; p < np; p++) {
            int b = 2 * p, two = b + 1 < nb;
            float d[2], c[2];
            const uint8_t *blk = wr + bb * (size_t)b;
            __m512i q = unpack2(blk, blk + bb, two, T, d, c);
            uint64_t neg = 0;
            if (T == CQ_TYPE_Q8_0) neg = (uint64_t)_mm512_movepi8_mask(q), q = _mm512_abs_epi8(q);
            _mm512_store_si512((void *)(row + 128 * (size_t)p), q);
            _mm512_store_ps((void *)(row + 128 * (size_t)p + 64),
                            _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_setr_ps(d[0], d[1], 0.0f, 0.0f))));
            memcpy(row + 128 * (size_t)np + 8 * (size_t)p, &neg, 8);
            memcpy(row + 136 * (size_t)np + 8 * (size_t)p, c, 8);
        }
    }
}

/* Four weight rows against up to four activation rows, for prompts and wide batches: sixteen
 * (weight row, activation row) accumulators stay in registers (k32_tile2 keeps 2 x 2 x 4 of them
 * plus the c sums, which spill to the stack on every block). Rows come from the stored blocks (PREP 0:
 * row r at src + r * stride) or from k32_prep's unpacked chunk (PREP 1: stride prep_row_bytes).
 * Bit for bit k32_tile's results, by doing its float operations per pair in the same order:
 * k32_tile's two accumulators take alternate block pairs (u = 0: blocks 0-1, 4-5, ...; u = 1:
 * blocks 2-3, 6-7, ...) and each is an independent chain, so one pass per u with one register
 * per pair gives the same values; the c sums (minimum or offset term) likewise run in their own
 * loop with k32_tile's two-lane FMAs. Q8_0 uses k32_tile's sign trick (|w| with the activation
 * negated where w < 0) with the signs in mask registers, leaving the zmm registers to the
 * accumulators. */
AVX512_INLINE void k32_tile4(int n, const uint8_t *src, size_t stride, const uint8_t *a, size_t astride,
                             const int NA, float *out, size_t ostride, const int T, const int PREP) {
    enum { RM = 4 };
    const int nb = n / 32, np = (nb + 1) / 2;
    const size_t bb = blk_bytes(T);
    const int hasS = T != CQ_TYPE_Q8_0;
    const int Q8 = T == CQ_TYPE_Q8_0;
    const __m512i expand = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const cq_q8_rows rows = cq_q8_rows_at(a, astride, NA, n);
    const int8_t *const *y = rows.y;
    const float *const *ad = rows.d, *const *as = rows.s;
    float res[RM][CQ_TILE];
    __m512 keep[RM][CQ_TILE];
    for (int u = 0; u < 2; u++) {
        __m512 acc[RM][CQ_TILE];
        for (int r = 0; r < RM; r++)
            for (int k = 0; k < NA; k++) acc[r][k] = _mm512_setzero_ps();
        for (int b = 2 * u; b < nb; b += 4) {
            int two = b + 1 < nb, p = b / 2;
            __mmask64 ym = two ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
            __mmask8 pm = two ? 3 : 1;
            __m512i q[RM];
            __mmask64 neg[RM];
            __m512 dw[RM];
            for (int r = 0; r < RM; r++) {
                const uint8_t *row = src + (size_t)r * stride;
                neg[r] = 0;
                if (PREP) {
                    q[r] = _mm512_load_si512((const void *)(row + 128 * (size_t)p));
                    dw[r] = _mm512_load_ps((const void *)(row + 128 * (size_t)p + 64));
                    if (Q8) {
                        uint64_t m;
                        memcpy(&m, row + 128 * (size_t)np + 8 * (size_t)p, 8);
                        neg[r] = (__mmask64)m;
                    }
                } else {
                    float d[2], c[2];
                    const uint8_t *blk = row + bb * (size_t)b;
                    q[r] = unpack2(blk, blk + bb, two, T, d, c);
                    if (Q8) neg[r] = _mm512_movepi8_mask(q[r]), q[r] = _mm512_abs_epi8(q[r]);
                    dw[r] = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_setr_ps(d[0], d[1], 0.0f, 0.0f)));
                }
            }
            for (int k = 0; k < NA; k++) {
                __m512i yv = _mm512_maskz_loadu_epi8(ym, y[k] + 32 * b);
                __m512 da = _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_maskz_loadu_ps(pm, ad[k] + b)));
                for (int r = 0; r < RM; r++) {
                    __m512i ys = Q8 ? _mm512_mask_sub_epi8(yv, neg[r], _mm512_setzero_si512(), yv) : yv;
                    __m512 pf = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q[r], ys));
                    acc[r][k] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), pf, acc[r][k]);
                }
            }
        }
        for (int r = 0; r < RM; r++)
            for (int k = 0; k < NA; k++) {
                if (u == 0) keep[r][k] = acc[r][k];
                else res[r][k] = _mm512_reduce_add_ps(_mm512_add_ps(keep[r][k], acc[r][k]));
            }
    }
    if (hasS) {
        for (int r = 0; r < RM; r++) {
            __m128 accs[CQ_TILE][2];
            for (int k = 0; k < NA; k++) accs[k][0] = accs[k][1] = _mm_setzero_ps();
            const uint8_t *row = src + (size_t)r * stride;
            for (int b = 0; b < nb; b += 2) {
                int two = b + 1 < nb, u = (b >> 1) & 1;
                __mmask8 pm = two ? 3 : 1;
                __m128 cv;
                if (PREP) {
                    cv = _mm_maskz_loadu_ps(3, (const float *)(row + 136 * (size_t)np) + b);
                } else {
                    float d[2], c[2];
                    scales2(row + bb * (size_t)b, row + bb * (size_t)(b + 1), two, T, d, c);
                    cv = _mm_setr_ps(c[0], c[1], 0.0f, 0.0f);
                }
                for (int k = 0; k < NA; k++) accs[k][u] = _mm_fmadd_ps(cv, _mm_maskz_loadu_ps(pm, as[k] + b), accs[k][u]);
            }
            for (int k = 0; k < NA; k++) {
                __m128 s = _mm_add_ps(accs[k][0], accs[k][1]);
                res[r][k] += _mm_cvtss_f32(s) + _mm_cvtss_f32(_mm_movehdup_ps(s));
            }
        }
    }
    for (int r = 0; r < RM; r++)
        for (int k = 0; k < NA; k++) out[(size_t)k * ostride + (size_t)r] = res[r][k];
}

#define TILED(name, call)                                                                       \
    AVX512 static void name(int n, const uint8_t *w, const uint8_t *a, size_t astride, int na,  \
                            float *out, size_t ostride) {                                      \
        switch (na) {                                                                          \
        case 1: call(1); break;                                                                \
        case 2: call(2); break;                                                                \
        case 3: call(3); break;                                                                \
        default: call(4); break;                                                               \
        }                                                                                      \
    }

#define F32_(NA_) float_tile(n, w, a, astride, NA_, out, ostride, F_F32)
#define F16_(NA_) float_tile(n, w, a, astride, NA_, out, ostride, F_F16)
#define BF16_(NA_) float_tile(n, w, a, astride, NA_, out, ostride, F_BF16)
#define Q4_0_(NA_) k32_tile(n, w, a, astride, NA_, out, ostride, CQ_TYPE_Q4_0)
#define Q4_1_(NA_) k32_tile(n, w, a, astride, NA_, out, ostride, CQ_TYPE_Q4_1)
#define Q5_0_(NA_) k32_tile(n, w, a, astride, NA_, out, ostride, CQ_TYPE_Q5_0)
#define Q5_1_(NA_) k32_tile(n, w, a, astride, NA_, out, ostride, CQ_TYPE_Q5_1)
#define Q8_0_(NA_) k32_tile(n, w, a, astride, NA_, out, ostride, CQ_TYPE_Q8_0)

#define TILED2(name, T_)                                                                        \
    AVX512 static void name(int n, const uint8_t *w, size_t rowBytes, const uint8_t *a, size_t astride, \
                            int na, float *out, size_t ostride) {                              \
        switch (na) {                                                                          \
        case 1: k32_tile2(n, w, rowBytes, a, astride, 1, out, ostride, T_); break;             \
        case 2: k32_tile2(n, w, rowBytes, a, astride, 2, out, ostride, T_); break;             \
        case 3: k32_tile2(n, w, rowBytes, a, astride, 3, out, ostride, T_); break;             \
        default: k32_tile2(n, w, rowBytes, a, astride, 4, out, ostride, T_); break;            \
        }                                                                                      \
    }

#define TILED4(name, T_)                                                                        \
    AVX512 static void name(int n, const uint8_t *w, size_t rowBytes, const uint8_t *a, size_t astride, \
                            int na, float *out, size_t ostride) {                              \
        switch (na) {                                                                          \
        case 1: k32_tile4(n, w, rowBytes, a, astride, 1, out, ostride, T_, 0); break;          \
        case 2: k32_tile4(n, w, rowBytes, a, astride, 2, out, ostride, T_, 0); break;          \
        case 3: k32_tile4(n, w, rowBytes, a, astride, 3, out, ostride, T_, 0); break;          \
        default: k32_tile4(n, w, rowBytes, a, astride, 4, out, ostride, T_, 0); break;         \
        }                                                                                      \
    }

TILED4(avx512_dot4_q4_0, CQ_TYPE_Q4_0)
TILED4(avx512_dot4_q4_1, CQ_TYPE_Q4_1)
TILED4(avx512_dot4_q5_0, CQ_TYPE_Q5_0)
TILED4(avx512_dot4_q5_1, CQ_TYPE_Q5_1)
TILED4(avx512_dot4_q8_0, CQ_TYPE_Q8_0)

#define PREPPED(T_, prepName, dotName)                                                          \
    AVX512 static void prepName(int n, const uint8_t *w, size_t rowBytes, int rows, uint8_t *dst) { \
        k32_prep(n, w, rowBytes, rows, dst, T_);                                               \
    }                                                                                          \
    AVX512 static void dotName(int n, const uint8_t *prep, const uint8_t *a, size_t astride, int na, \
                               float *out, size_t ostride) {                                   \
        switch (na) {                                                                          \
        case 1: k32_tile4(n, prep, prep_row_bytes(n), a, astride, 1, out, ostride, T_, 1); break; \
        case 2: k32_tile4(n, prep, prep_row_bytes(n), a, astride, 2, out, ostride, T_, 1); break; \
        case 3: k32_tile4(n, prep, prep_row_bytes(n), a, astride, 3, out, ostride, T_, 1); break; \
        default: k32_tile4(n, prep, prep_row_bytes(n), a, astride, 4, out, ostride, T_, 1); break; \
        }                                                                                      \
    }

PREPPED(CQ_TYPE_Q4_0, avx512_prep_q4_0, avx512_dot4p_q4_0)
PREPPED(CQ_TYPE_Q4_1, avx512_prep_q4_1, avx512_dot4p_q4_1)
PREPPED(CQ_TYPE_Q5_0, avx512_prep_q5_0, avx512_dot4p_q5_0)
PREPPED(CQ_TYPE_Q5_1, avx512_prep_q5_1, avx512_dot4p_q5_1)
PREPPED(CQ_TYPE_Q8_0, avx512_prep_q8_0, avx512_dot4p_q8_0)

TILED2(avx512_dot2_q4_0, CQ_TYPE_Q4_0)
TILED2(avx512_dot2_q4_1, CQ_TYPE_Q4_1)
TILED2(avx512_dot2_q5_0, CQ_TYPE_Q5_0)
TILED2(avx512_dot2_q5_1, CQ_TYPE_Q5_1)
TILED2(avx512_dot2_q8_0, CQ_TYPE_Q8_0)

TILED(avx512_dot_f32, F32_)
TILED(avx512_dot_f16, F16_)
TILED(avx512_dot_bf16, BF16_)
TILED(avx512_dot_q4_0, Q4_0_)
TILED(avx512_dot_q4_1, Q4_1_)
TILED(avx512_dot_q5_0, Q5_0_)
TILED(avx512_dot_q5_1, Q5_1_)
TILED(avx512_dot_q8_0, Q8_0_)

const cq_kernel_table cq_table_avx512 = {
    .dot =
        {
            [CQ_TYPE_F32] = avx512_dot_f32,
            [CQ_TYPE_F16] = avx512_dot_f16,
            [CQ_TYPE_BF16] = avx512_dot_bf16,
            [CQ_TYPE_Q4_0] = avx512_dot_q4_0,
            [CQ_TYPE_Q4_1] = avx512_dot_q4_1,
            [CQ_TYPE_Q5_0] = avx512_dot_q5_0,
            [CQ_TYPE_Q5_1] = avx512_dot_q5_1,
            [CQ_TYPE_Q8_0] = avx512_dot_q8_0,
        },
    .dot2 =
        {
            [CQ_TYPE_Q4_0] = avx512_dot2_q4_0,
            [CQ_TYPE_Q4_1] = avx512_dot2_q4_1,
            [CQ_TYPE_Q5_0] = avx512_dot2_q5_0,
            [CQ_TYPE_Q5_1] = avx512_dot2_q5_1,
            [CQ_TYPE_Q8_0] = avx512_dot2_q8_0,
        },
    .dot4 =
        {
            [CQ_TYPE_Q4_0] = avx512_dot4_q4_0,
            [CQ_TYPE_Q4_1] = avx512_dot4_q4_1,
            [CQ_TYPE_Q5_0] = avx512_dot4_q5_0,
            [CQ_TYPE_Q5_1] = avx512_dot4_q5_1,
            [CQ_TYPE_Q8_0] = avx512_dot4_q8_0,
        },
    .prep =
        {
            [CQ_TYPE_Q4_0] = {avx512_prep_q4_0, avx512_dot4p_q4_0},
            [CQ_TYPE_Q4_1] = {avx512_prep_q4_1, avx512_dot4p_q4_1},
            [CQ_TYPE_Q5_0] = {avx512_prep_q5_0, avx512_dot4p_q5_0},
            [CQ_TYPE_Q5_1] = {avx512_prep_q5_1, avx512_dot4p_q5_1},
            [CQ_TYPE_Q8_0] = {avx512_prep_q8_0, avx512_dot4p_q8_0},
        },
    .prepRowBytes = prep_row_bytes,
};

#endif /* CQ_X86 */
