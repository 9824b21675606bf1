/* NEON kernels (arm64). Q4_0/Q5_0 subtract their offset in int8 (values fit), so they read the
 * Q8_1 form's s only for Q4_1/Q5_1. Integer dots use vdotq_s32 where the compiler targets the
 * dot-product extension, else vmull_s8/vmlal_s8 (int16 pair sums of at most 2 * 128 * 127) and
 * pairwise widening adds. K-quants use the reference kernels. */
#pragma STDC FP_CONTRACT OFF

#include "cq_internal.h"

#ifdef CQ_NEON

#include <arm_neon.h>

#define NEON_INLINE static inline __attribute__((always_inline))

/* ---- Activation quantization ------------------------------------------------------------- */

/* 32 values times id -> q (round half to even, clamp to +-127); returns the int32 lanes of q
 * summed by fours (each lane i of sum16[g] holds values 16 g + 4 i .. for the Q8_K sums). */
NEON_INLINE int32x4_t quant32(const float *x, float id, int8_t *q, int32x4_t *s16lo, int32x4_t *s16hi) {
    int32x4_t v[8];
    const int32x4_t lim = vdupq_n_s32(127), nlim = vdupq_n_s32(-127);
    for (int i = 0; i < 8; i++) {
        v[i] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * i), id));
        v[i] = vmaxq_s32(vminq_s32(v[i], lim), nlim);
    }
    for (int i = 0; i < 4; i++) {
        int16x8_t h = vcombine_s16(vqmovn_s32(v[2 * i]), vqmovn_s32(v[2 * i + 1]));
        vst1_s8(q + 8 * i, vqmovn_s16(h));
    }
    int32x4_t lo = vaddq_s32(vaddq_s32(v[0], v[1]), vaddq_s32(v[2], v[3]));
    int32x4_t hi = vaddq_s32(vaddq_s32(v[4], v[5]), vaddq_s32(v[6], v[7]));
    if (s16lo) *s16lo = lo;
    if (s16hi) *s16hi = hi;
    return vaddq_s32(lo, hi);
}

NEON_INLINE float absmax(const float *x, int len) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int i = 4; i < len; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    return vmaxvq_f32(m);
}

NEON_INLINE void quant_q8_32(const float *x, int n, uint8_t *out, int with_s) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    float *s = (float *)(out + cq_q8_s_off(n));
    for (int b = 0; b < n / 32; b++) {
        float amax = absmax(x + 32 * b, 32);
        float db = amax / 127.0f;
        float id = amax != 0.0f ? 1.0f / db : 0.0f;
        int32x4_t sum = quant32(x + 32 * b, id, q + 32 * b, NULL, NULL);
        d[b] = db;
        if (with_s) s[b] = db * (float)vaddvq_s32(sum);
    }
}

static void neon_quant_q8_0(const float *x, int n, uint8_t *out) { quant_q8_32(x, n, out, 0); }
static void neon_quant_q8_1(const float *x, int n, uint8_t *out) { quant_q8_32(x, n, out, 1); }

static void neon_quant_q8_K(const float *x, int n, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    int16_t *bsum = (int16_t *)(out + cq_q8k_bsum_off(n));
    for (int b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        float amax = absmax(xb, 256);
        float db = amax / 127.0f;
        float id = amax != 0.0f ? 1.0f / db : 0.0f;
        for (int g = 0; g < 8; g++) {
            int32x4_t lo, hi;
            quant32(xb + 32 * g, id, q + 256 * b + 32 * g, &lo, &hi);
            bsum[16 * b + 2 * g] = (int16_t)vaddvq_s32(lo);
            bsum[16 * b + 2 * g + 1] = (int16_t)vaddvq_s32(hi);
        }
        d[b] = db;
    }
}

/* ---- Float weights ----------------------------------------------------------------------- */

enum { F_F32, F_F16, F_BF16 };

NEON_INLINE float32x4_t load_w4(const uint8_t *w, size_t i, const int F) {
    if (F == F_F32) return vld1q_f32((const float *)(w + 4 * i));
    uint16x4_t h = vld1_u16((const uint16_t *)(w + 2 * i));
    if (F == F_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

NEON_INLINE float load_w1(const uint8_t *w, size_t i, const int F) {
    if (F == F_F32) {
        float f;
        memcpy(&f, w + 4 * i, 4);
        return f;
    }
    if (F == F_F16) return cq_half(cq_u16(w + 2 * i));
    return cq_bf16(cq_u16(w + 2 * i));
}

NEON_INLINE void float_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                            float *out, size_t ostride, const int F) {
    const int U = 4;
    float32x4_t acc[4][CQ_TILE];
    const float *x[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        x[k] = (const float *)(a + (size_t)k * astride);
        for (int u = 0; u < U; u++) acc[u][k] = vdupq_n_f32(0.0f);
    }
    int i = 0;
    for (; i + 4 * U <= n; i += 4 * U) {
        for (int u = 0; u < U; u++) {
            float32x4_t wv = load_w4(w, (size_t)(i + 4 * u), F);
            for (int k = 0; k < NA; k++) acc[u][k] = vfmaq_f32(acc[u][k], wv, vld1q_f32(x[k] + i + 4 * u));
        }
    }
    for (; i + 4 <= n; i += 4) {
        float32x4_t wv = load_w4(w, (size_t)i, F);
        for (int k = 0; k < NA; k++) acc[0][k] = vfmaq_f32(acc[0][k], wv, vld1q_f32(x[k] + i));
    }
    for (int k = 0; k < NA; k++) {
        float32x4_t t = vaddq_f32(vaddq_f32(acc[0][k], acc[1][k]), vaddq_f32(acc[2][k], acc[3][k]));
        float s = vaddvq_f32(t);
        for (int j = i; j < n; j++) s += load_w1(w, (size_t)j, F) * x[k][j];
        out[(size_t)k * ostride] = s;
    }
}

/* ---- 32-value blocks --------------------------------------------------------------------- */

NEON_INLINE size_t blk_bytes(const int T) {
    return T == CQ_TYPE_Q4_0 ? 18 : T == CQ_TYPE_Q4_1 ? 20 : T == CQ_TYPE_Q5_0 ? 22 : T == CQ_TYPE_Q5_1 ? 24 : 34;
}

/* 0x10 in byte i where bit i of the 16-bit value is set. */
NEON_INLINE uint8x16_t fifth16(uint32_t bits) {
    static const uint8_t pat[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)(bits & 0xFF)), vdup_n_u8((uint8_t)((bits >> 8) & 0xFF)));
    return vandq_u8(vtstq_u8(v, vld1q_u8(pat)), vdupq_n_u8(0x10));
}

/* The block's signed values (offset already subtracted for Q4_0/Q5_0), scale and c. */
NEON_INLINE void unpack32(const uint8_t *blk, const int T, int8x16_t *lo, int8x16_t *hi, float *d, float *c) {
    *d = cq_half(cq_u16(blk));
    *c = 0.0f;
    if (T == CQ_TYPE_Q8_0) {
        *lo = vld1q_s8((const int8_t *)(blk + 2));
        *hi = vld1q_s8((const int8_t *)(blk + 18));
        return;
    }
    size_t qo = T == CQ_TYPE_Q4_0 ? 2 : T == CQ_TYPE_Q4_1 ? 4 : T == CQ_TYPE_Q5_0 ? 6 : 8;
    uint8x16_t raw = vld1q_u8(blk + qo);
    uint8x16_t l = vandq_u8(raw, vdupq_n_u8(0x0F));
    uint8x16_t h = vshrq_n_u8(raw, 4);
    if (T == CQ_TYPE_Q5_0 || T == CQ_TYPE_Q5_1) {
        uint32_t qh = cq_u32(blk + (T == CQ_TYPE_Q5_0 ? 2 : 4));
        l = vorrq_u8(l, fifth16(qh));
        h = vorrq_u8(h, fifth16(qh >> 16));
    }
    int8x16_t sl = vreinterpretq_s8_u8(l), sh = vreinterpretq_s8_u8(h);
    if (T == CQ_TYPE_Q4_0) sl = vsubq_s8(sl, vdupq_n_s8(8)), sh = vsubq_s8(sh, vdupq_n_s8(8));
    if (T == CQ_TYPE_Q5_0) sl = vsubq_s8(sl, vdupq_n_s8(16)), sh = vsubq_s8(sh, vdupq_n_s8(16));
    if (T == CQ_TYPE_Q4_1 || T == CQ_TYPE_Q5_1) *c = cq_half(cq_u16(blk + 2));
    *lo = sl;
    *hi = sh;
}

NEON_INLINE int32x4_t dot32(int8x16_t lo, int8x16_t hi, const int8_t *y) {
    int8x16_t y0 = vld1q_s8(y), y1 = vld1q_s8(y + 16);
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, y0), hi, y1);
#else
    int16x8_t t0 = vmull_s8(vget_low_s8(lo), vget_low_s8(y0));
    t0 = vmlal_s8(t0, vget_high_s8(lo), vget_high_s8(y0));
    int16x8_t t1 = vmull_s8(vget_low_s8(hi), vget_low_s8(y1));
    t1 = vmlal_s8(t1, vget_high_s8(hi), vget_high_s8(y1));
    return vaddq_s32(vpaddlq_s16(t0), vpaddlq_s16(t1));
#endif
}

NEON_INLINE void k32_tile(int n, const uint8_t *w, const uint8_t *a, size_t astride, const int NA,
                          float *out, size_t ostride, const int T) {
    const int nb = n / 32;
    const size_t bb = blk_bytes(T);
    const int hasS = T == CQ_TYPE_Q4_1 || T == CQ_TYPE_Q5_1;
    float32x4_t acc[2][CQ_TILE];
    float accs[CQ_TILE];
    const int8_t *y[CQ_TILE];
    const float *ad[CQ_TILE], *as[CQ_TILE];
    for (int k = 0; k < NA; k++) {
        const uint8_t *ar = a + (size_t)k * astride;
        y[k] = (const int8_t *)ar;
        ad[k] = (const float *)(ar + cq_q8_d_off(n));
        as[k] = (const float *)(ar + cq_q8_s_off(n));
        acc[0][k] = acc[1][k] = vdupq_n_f32(0.0f);
        accs[k] = 0.0f;
    }
    for (int ib = 0; ib < nb; ib++) {
        int8x16_t lo, hi;
        float d, c;
        unpack32(w + bb * (size_t)ib, T, &lo, &hi, &d, &c);
        for (int k = 0; k < NA; k++) {
            float32x4_t p = vcvtq_f32_s32(dot32(lo, hi, y[k] + 32 * ib));
            acc[ib & 1][k] = vfmaq_n_f32(acc[ib & 1][k], p, d * ad[k][ib]);
            if (hasS) accs[k] += c * as[k][ib];
        }
    }
    for (int k = 0; k < NA; k++) out[(size_t)k * ostride] = vaddvq_f32(vaddq_f32(acc[0][k], acc[1][k])) + accs[k];
}

#define TILED(name, call)                                                                       \
    static void name(int n, const uint8_t *w, const uint8_t *a, size_t astride, int na,         \
                     float *out, size_t ostride) {                                             \
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

TILED(neon_dot_f32, F32_)
TILED(neon_dot_f16, F16_)
TILED(neon_dot_bf16, BF16_)
TILED(neon_dot_q4_0, Q4_0_)
TILED(neon_dot_q4_1, Q4_1_)
TILED(neon_dot_q5_0, Q5_0_)
TILED(neon_dot_q5_1, Q5_1_)
TILED(neon_dot_q8_0, Q8_0_)

const cq_kernel_table cq_table_neon = {
    .dot =
        {
            [CQ_TYPE_F32] = neon_dot_f32,
            [CQ_TYPE_F16] = neon_dot_f16,
            [CQ_TYPE_BF16] = neon_dot_bf16,
            [CQ_TYPE_Q4_0] = neon_dot_q4_0,
            [CQ_TYPE_Q4_1] = neon_dot_q4_1,
            [CQ_TYPE_Q5_0] = neon_dot_q5_0,
            [CQ_TYPE_Q5_1] = neon_dot_q5_1,
            [CQ_TYPE_Q8_0] = neon_dot_q8_0,
        },
    .quant =
        {
            [CQ_ACT_Q8_0] = neon_quant_q8_0,
            [CQ_ACT_Q8_1] = neon_quant_q8_1,
            [CQ_ACT_Q8_K] = neon_quant_q8_K,
        },
};

#endif /* CQ_NEON */
