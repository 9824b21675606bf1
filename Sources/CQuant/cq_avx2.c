/* AVX2 + FMA + F16C kernels. Compiled per function (target attributes), called only after
 * cq_kernel_available(CQ_KERNEL_AVX2) said yes.
 *
 * Integer dots: weights are unsigned bytes (nibbles, 5-bit values, 6-bit values, or |w| for
 * Q8_0 with the activation's sign flipped to match), activations signed, so one
 * _mm256_maddubs_epi16 multiplies and adds pairs without saturation (largest pair sum:
 * 2 * 128 * 127 = 32512 for Q8_0's |-128|, less elsewhere), and _mm256_madd_epi16 widens to
 * int32. The offsets of Q4_0/Q5_0 (-8, -16) and the minima of Q4_1/Q5_1 are added as
 * c * s (s = d_a * sum q_a from the Q8_1 form). */
#pragma STDC FP_CONTRACT OFF

#include "cq_internal.h"

#ifdef CQ_X86

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

AVX2_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2_INLINE int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

AVX2_INLINE float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2_INLINE float half_f16c(const uint8_t *p) { return _cvtsh_ss(cq_u16(p)); }

/* ---- Activation quantization ------------------------------------------------------------- */

AVX2_INLINE __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* 32 values with inverse scale id into q[0..<32]; returns their int32 lanes summed pairwise
 * (for sums of q). Same operations as the reference: x * id, round half to even (MXCSR
 * default), clamp to [-127, 127]. */
AVX2_INLINE __m256i quant32(const float *x, __m256 vid, int8_t *q, __m256i *sum_lo16, __m256i *sum_hi16) {
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), vid));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), vid));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), vid));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), vid));
    i0 = _mm256_max_epi32(_mm256_min_epi32(i0, lim), nlim);
    i1 = _mm256_max_epi32(_mm256_min_epi32(i1, lim), nlim);
    i2 = _mm256_max_epi32(_mm256_min_epi32(i2, lim), nlim);
    i3 = _mm256_max_epi32(_mm256_min_epi32(i3, lim), nlim);
    if (sum_lo16) *sum_lo16 = _mm256_add_epi32(i0, i1);
    if (sum_hi16) *sum_hi16 = _mm256_add_epi32(i2, i3);
    /* packs work within 128-bit lanes; the permute puts the 4-byte groups back in order. */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    return _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
}

AVX2_INLINE float absmax(const float *x, int len) {
    __m256 m = abs_ps(_mm256_loadu_ps(x));
    for (int i = 8; i < len; i += 8) m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(x + i)));
    return hmax_ps(m);
}

AVX2_INLINE void quant_q8_32(const float *x, int n, uint8_t *out, int with_s) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    float *s = (float *)(out + cq_q8_s_off(n));
    for (int b = 0; b < n / 32; b++) {
        float amax = absmax(x + 32 * b, 32);
        float db = amax / 127.0f;
        float id = amax != 0.0f ? 1.0f / db : 0.0f;
        __m256i sum = quant32(x + 32 * b, _mm256_set1_ps(id), q + 32 * b, NULL, NULL);
        d[b] = db;
        if (with_s) s[b] = db * (float)hsum_epi32(sum);
    }
}

AVX2 static void avx2_quant_q8_0(const float *x, int n, uint8_t *out) { quant_q8_32(x, n, out, 0); }
AVX2 static void avx2_quant_q8_1(const float *x, int n, uint8_t *out) { quant_q8_32(x, n, out, 1); }

AVX2 static void avx2_quant_q8_K(const float *x, int n, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    int16_t *bsum = (int16_t *)(out + cq_q8k_bsum_off(n));
    for (int b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        float amax = absmax(xb, 256);
        float db = amax / 127.0f;
        float id = amax != 0.0f ? 1.0f / db : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        for (int g = 0; g < 8; g++) {
            __m256i lo, hi;
            quant32(xb + 32 * g, vid, q + 256 * b + 32 * g, &lo, &hi);
            bsum[16 * b + 2 * g] = (int16_t)hsum_epi32(lo);
            bsum[16 * b + 2 * g + 1] = (int16_t)hsum_epi32(hi);
        }
        d[b] = db;
    }
}

/* ---- Float weights ----------------------------------------------------------------------- */

enum { F_F32, F_F16, F_BF16 };

AVX2_INLINE __m256 load_w8(const uint8_t *w, size_t i, const int F) {
    if (F == F_F32) return _mm256_loadu_ps((const float *)(w + 4 * i));
    __m128i h = _mm_loadu_si128((const __m128i *)(w + 2 * i));
    if (F == F_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2_INLINE float load_w1(const uint8_t *w, size_t i, const int F) {
    if (F == F_F32) {
        float f;
        memcpy(&f, w + 4 * i, 4);
        return f;
    }
    if (F == F_F16) return cq_half(cq_u16(w + 2 * i));
    return cq_bf16(cq_u16(w + 2 * i));
}

/* Two accumulators per activation row so the fma chains overlap; the same for every tile width. */
AVX2_INLINE void float_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                            float *out, size_t ostride, const int F) {
    const int U = 2;
    __m256 acc[2][CQ_TILE];
    const float *x[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        x[k] = (const float *)(a + (size_t)k * astride);
        for (int u = 0; u < U; u++) acc[u][k] = _mm256_setzero_ps();
    }
    int i = 0;
    for (; i + 8 * U <= n; i += 8 * U) {
        for (int u = 0; u < U; u++) {
            __m256 wv = load_w8(w, (size_t)(i + 8 * u), F);
            for (int k = 0; k < NA; k++)
                acc[u][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[k] + i + 8 * u), acc[u][k]);
        }
    }
    for (; i + 8 <= n; i += 8) {
        __m256 wv = load_w8(w, (size_t)i, F);
        for (int k = 0; k < NA; k++) acc[0][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[k] + i), acc[0][k]);
    }
    for (int k = 0; k < NA; k++) {
        __m256 t = acc[0][k];
        for (int u = 1; u < U; u++) t = _mm256_add_ps(t, acc[u][k]);
        float s = hsum_ps(t);
        for (int j = i; j < n; j++) s += load_w1(w, (size_t)j, F) * x[k][j];
        out[(size_t)k * ostride] = s;
    }
}

/* ---- 32-value blocks --------------------------------------------------------------------- */

/* 16 bytes of nibbles -> 32 bytes in value order (low nibbles, then high nibbles). */
AVX2_INLINE __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

/* Bit j of qh -> 0x10 in byte j. */
AVX2_INLINE __m256i fifth_bits(uint32_t qh) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2,
                                          2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* Block bytes per type and where its parts are. */
AVX2_INLINE size_t blk_bytes(const int T) {
    return T == CQ_TYPE_Q4_0 ? 18 : T == CQ_TYPE_Q4_1 ? 20 : T == CQ_TYPE_Q5_0 ? 22 : T == CQ_TYPE_Q5_1 ? 24 : 34;
}

/* The block's unsigned values, scale d and the coefficient c of s (block term = d d_a sum q y + c s). */
AVX2_INLINE __m256i unpack32(const uint8_t *blk, const int T, float *d, float *c) {
    *d = half_f16c(blk);
    switch (T) {
    case CQ_TYPE_Q4_0: *c = -8.0f * *d; return unpack_nibbles(blk + 2);
    case CQ_TYPE_Q4_1: *c = half_f16c(blk + 2); return unpack_nibbles(blk + 4);
    case CQ_TYPE_Q5_0: *c = -16.0f * *d; return _mm256_or_si256(unpack_nibbles(blk + 6), fifth_bits(cq_u32(blk + 2)));
    case CQ_TYPE_Q5_1: *c = half_f16c(blk + 2); return _mm256_or_si256(unpack_nibbles(blk + 8), fifth_bits(cq_u32(blk + 4)));
    default: *c = 0.0f; return _mm256_loadu_si256((const __m256i *)(blk + 2)); /* Q8_0: signed */
    }
}

/* int32 lanes of sum q y for one block (q from unpack32, y the activation block). */
AVX2_INLINE __m256i block_dot(__m256i q, __m256i qabs, __m256i y, const int T) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (T == CQ_TYPE_Q8_0) y = _mm256_sign_epi8(y, q), q = qabs;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
}

/* Blocks go in pairs: block 2p into acc0, 2p + 1 into acc1 (an odd last block into acc0), the
 * c s terms into the two lanes of accs. The same structure for every tile width, so a row's
 * result does not depend on how many activation rows share the pass (tested bit for bit). */
AVX2_INLINE void k32_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                          float *out, size_t ostride, const int T) {
    const int nb = n / 32;
    const size_t bb = blk_bytes(T);
    const int hasS = T != CQ_TYPE_Q8_0;
    __m256 acc0[CQ_TILE], acc1[CQ_TILE];
    __m128 accs[CQ_TILE];
    const cq_q8_rows rows = cq_q8_rows_at(a, astride, NA, n);
    const int8_t *const *y = rows.y;
    const float *const *ad = rows.d, *const *as = rows.s;
    for (int k = 0; k < NA; k++) {
        acc0[k] = acc1[k] = _mm256_setzero_ps();
        accs[k] = _mm_setzero_ps();
    }
    for (int ib = 0; ib < nb; ib += 2) {
        const int two = ib + 1 < nb;
        float d0, c0, d1 = 0.0f, c1 = 0.0f;
        __m256i q = unpack32(w + bb * (size_t)ib, T, &d0, &c0);
        __m256i qa = T == CQ_TYPE_Q8_0 ? _mm256_abs_epi8(q) : q;
        for (int k = 0; k < NA; k++) {
            __m256i yv = _mm256_loadu_si256((const __m256i *)(y[k] + 32 * ib));
            __m256 p = _mm256_cvtepi32_ps(block_dot(q, qa, yv, T));
            acc0[k] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ad[k][ib]), p, acc0[k]);
        }
        if (two) {
            q = unpack32(w + bb * (size_t)(ib + 1), T, &d1, &c1);
            qa = T == CQ_TYPE_Q8_0 ? _mm256_abs_epi8(q) : q;
            for (int k = 0; k < NA; k++) {
                __m256i yv = _mm256_loadu_si256((const __m256i *)(y[k] + 32 * (ib + 1)));
                __m256 p = _mm256_cvtepi32_ps(block_dot(q, qa, yv, T));
                acc1[k] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * ad[k][ib + 1]), p, acc1[k]);
            }
        }
        if (hasS) {
            __m128 cv = _mm_setr_ps(c0, c1, 0.0f, 0.0f);
            for (int k = 0; k < NA; k++) {
                __m128 sv = two ? _mm_castpd_ps(_mm_load_sd((const double *)(as[k] + ib))) : _mm_load_ss(as[k] + ib);
                accs[k] = _mm_fmadd_ps(cv, sv, accs[k]);
            }
        }
    }
    for (int k = 0; k < NA; k++) {
        float r = hsum_ps(_mm256_add_ps(acc0[k], acc1[k]));
        if (hasS) r += _mm_cvtss_f32(accs[k]) + _mm_cvtss_f32(_mm_movehdup_ps(accs[k]));
        out[(size_t)k * ostride] = r;
    }
}

/* ---- K-quants -----------------------------------------------------------------------------
 * One exact int32 per super-block (and one for the minima), then the reference's float steps. */

AVX2_INLINE void q4k_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                          float *out, size_t ostride, const int FIVE) {
    const size_t bb = FIVE ? 176 : 144;
    const __m256i m4 = _mm256_set1_epi8(0x0F), b4 = _mm256_set1_epi8(0x10);
    float sum[CQ_TILE];
    const int8_t *y[CQ_TILE];
    const float *ad[CQ_TILE];
    const int16_t *bs[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        const uint8_t *ar = a + (size_t)k * astride;
        y[k] = (const int8_t *)ar;
        ad[k] = (const float *)(ar + cq_q8_d_off(n));
        bs[k] = (const int16_t *)(ar + cq_q8k_bsum_off(n));
        sum[k] = 0.0f;
    }
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *blk = w + bb * (size_t)i;
        const uint8_t *qs = blk + (FIVE ? 48 : 16);
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) cq_scale_min_k4(j, blk + 4, &sc[j], &mn[j]);
        __m256i hv = FIVE ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        __m256i sumi[CQ_TILE];
        for (int k = 0; k < NA; k++) sumi[k] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(raw, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if (FIVE) { /* hv holds qh >> 2j: bit 0 -> fifth bit of lo, bit 1 -> of hi */
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hv, 4), b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hv, 3), b4));
                hv = _mm256_srli_epi16(hv, 2);
            }
            __m256i s1 = _mm256_set1_epi16(sc[2 * j]), s2 = _mm256_set1_epi16(sc[2 * j + 1]);
            for (int k = 0; k < NA; k++) {
                const int8_t *yb = y[k] + 256 * i + 64 * j;
                __m256i y1 = _mm256_loadu_si256((const __m256i *)yb);
                __m256i y2 = _mm256_loadu_si256((const __m256i *)(yb + 32));
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y1), s1));
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y2), s2));
            }
        }
        float d = half_f16c(blk), dmin = half_f16c(blk + 2);
        for (int k = 0; k < NA; k++) {
            int isum = hsum_epi32(sumi[k]);
            const int16_t *b = bs[k] + 16 * i;
            int imin = 0;
            for (int j = 0; j < 8; j++) imin += mn[j] * (b[2 * j] + b[2 * j + 1]);
            float dd = d * ad[k][i];
            float dm = dmin * ad[k][i];
            sum[k] += dd * (float)isum - dm * (float)imin;
        }
    }
    for (int k = 0; k < NA; k++) out[(size_t)k * ostride] = sum[k];
}

AVX2_INLINE void q6k_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                          float *out, size_t ostride) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    float sum[CQ_TILE];
    const int8_t *y[CQ_TILE];
    const float *ad[CQ_TILE];
    const int16_t *bs[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        const uint8_t *ar = a + (size_t)k * astride;
        y[k] = (const int8_t *)ar;
        ad[k] = (const float *)(ar + cq_q8_d_off(n));
        bs[k] = (const int16_t *)(ar + cq_q8k_bsum_off(n));
        sum[k] = 0.0f;
    }
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *blk = w + 210 * (size_t)i;
        const int8_t *sc = (const int8_t *)(blk + 192);
        __m256i sumi[CQ_TILE];
        for (int k = 0; k < NA; k++) sumi[k] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i ql0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
            __m256i ql1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            for (int c = 0; c < 4; c++) {
                /* int16 lanes 0-7 are values 0-15 (sub-block 8h + 2c), lanes 8-15 the next 16. */
                __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[8 * h + 2 * c + 1]), _mm_set1_epi16(sc[8 * h + 2 * c]));
                for (int k = 0; k < NA; k++) {
                    __m256i yv = _mm256_loadu_si256((const __m256i *)(y[k] + 256 * i + 128 * h + 32 * c));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], yv), scv));
                }
            }
        }
        /* the -32 offset: 32 sum_j sc_j bsum_j */
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        float d = half_f16c(blk + 208);
        for (int k = 0; k < NA; k++) {
            __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(bs[k] + 16 * i)), sc16);
            int isum = hsum_epi32(_mm256_sub_epi32(sumi[k], _mm256_slli_epi32(off, 5)));
            float dd = d * ad[k][i];
            sum[k] += dd * (float)isum;
        }
    }
    for (int k = 0; k < NA; k++) out[(size_t)k * ostride] = sum[k];
}

/* ---- Entry points: na is 1..4; each case is the tile specialised for it. ---------------- */

#define TILED(name, call)                                                                       \
    AVX2 static void name(int n, const uint8_t *w, const uint8_t *a, size_t astride, int na,    \
                          float *out, size_t ostride) {                                        \
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
#define Q4_K_(NA_) q4k_tile(n, w, a, astride, NA_, out, ostride, 0)
#define Q5_K_(NA_) q4k_tile(n, w, a, astride, NA_, out, ostride, 1)
#define Q6_K_(NA_) q6k_tile(n, w, a, astride, NA_, out, ostride)

TILED(avx2_dot_f32, F32_)
TILED(avx2_dot_f16, F16_)
TILED(avx2_dot_bf16, BF16_)
TILED(avx2_dot_q4_0, Q4_0_)
TILED(avx2_dot_q4_1, Q4_1_)
TILED(avx2_dot_q5_0, Q5_0_)
TILED(avx2_dot_q5_1, Q5_1_)
TILED(avx2_dot_q8_0, Q8_0_)
TILED(avx2_dot_q4_K, Q4_K_)
TILED(avx2_dot_q5_K, Q5_K_)
TILED(avx2_dot_q6_K, Q6_K_)

const cq_kernel_table cq_table_avx2 = {
    .dot =
        {
            [CQ_TYPE_F32] = avx2_dot_f32,
            [CQ_TYPE_F16] = avx2_dot_f16,
            [CQ_TYPE_BF16] = avx2_dot_bf16,
            [CQ_TYPE_Q4_0] = avx2_dot_q4_0,
            [CQ_TYPE_Q4_1] = avx2_dot_q4_1,
            [CQ_TYPE_Q5_0] = avx2_dot_q5_0,
            [CQ_TYPE_Q5_1] = avx2_dot_q5_1,
            [CQ_TYPE_Q8_0] = avx2_dot_q8_0,
            [CQ_TYPE_Q4_K] = avx2_dot_q4_K,
            [CQ_TYPE_Q5_K] = avx2_dot_q5_K,
            [CQ_TYPE_Q6_K] = avx2_dot_q6_K,
        },
    .quant =
        {
            [CQ_ACT_Q8_0] = avx2_quant_q8_0,
            [CQ_ACT_Q8_1] = avx2_quant_q8_1,
            [CQ_ACT_Q8_K] = avx2_quant_q8_K,
        },
};

#endif /* CQ_X86 */
