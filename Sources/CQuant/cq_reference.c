/* Reference kernels: plain scalar C, written for clarity. The fast kernels are tested against
 * these; every float operation here is a separate rounding (no contraction into fma). */
#pragma STDC FP_CONTRACT OFF

#include "cq_internal.h"

#include <math.h>

/* ---- Activation quantization ------------------------------------------------------------- */

/* One block of `len` values: returns d, writes q, and adds the block's sum of q to *qsum. */
static float quant_block(const float *x, int len, int8_t *q, int *qsum) {
    float amax = 0.0f;
    for (int i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a;
    }
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < len; i++) {
        long v = lrintf(x[i] * id); /* round half to even in the default rounding mode */
        if (v > 127) v = 127;
        if (v < -127) v = -127;
        q[i] = (int8_t)v;
        sum += (int)v;
    }
    *qsum = sum;
    return d;
}

static void ref_quant_f32(const float *x, int n, uint8_t *out) { memcpy(out, x, (size_t)n * 4); }

static void ref_quant_q8_0(const float *x, int n, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    for (int b = 0; b < n / 32; b++) {
        int s;
        d[b] = quant_block(x + 32 * b, 32, q + 32 * b, &s);
    }
}

static void ref_quant_q8_1(const float *x, int n, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    float *s = (float *)(out + cq_q8_s_off(n));
    for (int b = 0; b < n / 32; b++) {
        int sum;
        d[b] = quant_block(x + 32 * b, 32, q + 32 * b, &sum);
        s[b] = d[b] * (float)sum;
    }
}

static void ref_quant_q8_K(const float *x, int n, uint8_t *out) {
    int8_t *q = (int8_t *)out;
    float *d = (float *)(out + cq_q8_d_off(n));
    int16_t *bsum = (int16_t *)(out + cq_q8k_bsum_off(n));
    for (int b = 0; b < n / 256; b++) {
        int s;
        d[b] = quant_block(x + 256 * b, 256, q + 256 * b, &s);
        for (int g = 0; g < 16; g++) {
            int t = 0;
            for (int i = 0; i < 16; i++) t += q[256 * b + 16 * g + i];
            bsum[16 * b + g] = (int16_t)t;
        }
    }
}

/* ---- Float weights --------------------------------------------------------------------- */

/* Each kernel is a function of one weight row and one activation row; TILED makes the
 * table's entry (several activation rows) from it. */
#define TILED(name, row)                                                                        \
    static void name(int n, const uint8_t *w, const uint8_t *a, size_t astride, int na,         \
                     float *out, size_t ostride) {                                             \
        for (int k = 0; k < na; k++) out[(size_t)k * ostride] = row(n, w, a + (size_t)k * astride); \
    }

static float row_f32(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const float *x = (const float *)arow;
    for (int i = 0; i < n; i++) {
        float wi;
        memcpy(&wi, w + 4 * (size_t)i, 4);
        sum += wi * x[i];
    }
    return sum;
}
TILED(ref_dot_f32, row_f32)

static float row_f16(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const float *x = (const float *)arow;
    for (int i = 0; i < n; i++) sum += cq_half(cq_u16(w + 2 * (size_t)i)) * x[i];
    return sum;
}
TILED(ref_dot_f16, row_f16)

static float row_bf16(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const float *x = (const float *)arow;
    for (int i = 0; i < n; i++) sum += cq_bf16(cq_u16(w + 2 * (size_t)i)) * x[i];
    return sum;
}
TILED(ref_dot_bf16, row_bf16)

/* ---- 32-value blocks ------------------------------------------------------------------- */

/* Q4_0 (18 B): f16 d, 16 B nibbles; value j: lo(qs[j]) - 8, value j + 16: hi(qs[j]) - 8. */
static float row_q4_0(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + 18 * (size_t)b;
        const uint8_t *qs = blk + 2;
        const int8_t *yb = y + 32 * b;
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += ((qs[j] & 0x0F) - 8) * yb[j];
            sumi += ((qs[j] >> 4) - 8) * yb[j + 16];
        }
        sum += (cq_half(cq_u16(blk)) * ad[b]) * (float)sumi;
    }
    return sum;
}
TILED(ref_dot_q4_0, row_q4_0)

/* Q4_1 (20 B): f16 d, f16 m, 16 B nibbles; w = d q + m. */
static float row_q4_1(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    const float *as = (const float *)(arow + cq_q8_s_off(n));
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + 20 * (size_t)b;
        const uint8_t *qs = blk + 4;
        const int8_t *yb = y + 32 * b;
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (qs[j] & 0x0F) * yb[j];
            sumi += (qs[j] >> 4) * yb[j + 16];
        }
        sum += (cq_half(cq_u16(blk)) * ad[b]) * (float)sumi + cq_half(cq_u16(blk + 2)) * as[b];
    }
    return sum;
}
TILED(ref_dot_q4_1, row_q4_1)

/* Q5_0 (22 B): f16 d, u32 qh, 16 B nibbles; value j has bit j of qh as its fifth bit; w = d (q - 16). */
static float row_q5_0(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + 22 * (size_t)b;
        uint32_t qh = cq_u32(blk + 2);
        const uint8_t *qs = blk + 6;
        const int8_t *yb = y + 32 * b;
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            sumi += (lo - 16) * yb[j];
            sumi += (hi - 16) * yb[j + 16];
        }
        sum += (cq_half(cq_u16(blk)) * ad[b]) * (float)sumi;
    }
    return sum;
}
TILED(ref_dot_q5_0, row_q5_0)

/* Q5_1 (24 B): f16 d, f16 m, u32 qh, 16 B nibbles; w = d q + m. */
static float row_q5_1(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    const float *as = (const float *)(arow + cq_q8_s_off(n));
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + 24 * (size_t)b;
        uint32_t qh = cq_u32(blk + 4);
        const uint8_t *qs = blk + 8;
        const int8_t *yb = y + 32 * b;
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            sumi += lo * yb[j];
            sumi += hi * yb[j + 16];
        }
        sum += (cq_half(cq_u16(blk)) * ad[b]) * (float)sumi + cq_half(cq_u16(blk + 2)) * as[b];
    }
    return sum;
}
TILED(ref_dot_q5_1, row_q5_1)

/* Q8_0 (34 B): f16 d, 32 x i8. */
static float row_q8_0(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    for (int b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + 34 * (size_t)b;
        const int8_t *qs = (const int8_t *)(blk + 2);
        const int8_t *yb = y + 32 * b;
        int sumi = 0;
        for (int j = 0; j < 32; j++) sumi += qs[j] * yb[j];
        sum += (cq_half(cq_u16(blk)) * ad[b]) * (float)sumi;
    }
    return sum;
}
TILED(ref_dot_q8_0, row_q8_0)

/* ---- K-quants (256-value super-blocks) ------------------------------------------------------
 * Each super-block becomes one exact integer (two for Q4_K/Q5_K: scaled dots and mins), then
 * sum += (d da) isum - (dmin da) imin. The avx2 kernels do the same operations in the same order. */

/* Q4_K (144 B): f16 d, f16 dmin, 12 B scales, 128 B nibbles. Sub-block j (32 values) is the low
 * (j even) or high (j odd) nibbles of qs[32 (j / 2) ..< 32 (j / 2) + 32]; w = d sc_j q - dmin m_j. */
static float row_q4_K(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    const int16_t *bs = (const int16_t *)(arow + cq_q8k_bsum_off(n));
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *blk = w + 144 * (size_t)i;
        const uint8_t *qs = blk + 16;
        const int8_t *yb = y + 256 * i;
        int isum = 0, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            cq_scale_min_k4(j, blk + 4, &sc, &m);
            const uint8_t *q = qs + 32 * (j / 2);
            int dot = 0;
            for (int l = 0; l < 32; l++) {
                int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0F);
                dot += v * yb[32 * j + l];
            }
            isum += sc * dot;
            imin += m * (bs[16 * i + 2 * j] + bs[16 * i + 2 * j + 1]);
        }
        float dd = cq_half(cq_u16(blk)) * ad[i];
        float dm = cq_half(cq_u16(blk + 2)) * ad[i];
        sum += dd * (float)isum - dm * (float)imin;
    }
    return sum;
}
TILED(ref_dot_q4_K, row_q4_K)

/* Q5_K (176 B): as Q4_K with 32 B qh after the scales; value l of sub-block j gets bit j of qh[l]. */
static float row_q5_K(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    const int16_t *bs = (const int16_t *)(arow + cq_q8k_bsum_off(n));
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *blk = w + 176 * (size_t)i;
        const uint8_t *qh = blk + 16;
        const uint8_t *qs = blk + 48;
        const int8_t *yb = y + 256 * i;
        int isum = 0, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            cq_scale_min_k4(j, blk + 4, &sc, &m);
            const uint8_t *q = qs + 32 * (j / 2);
            int dot = 0;
            for (int l = 0; l < 32; l++) {
                int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0F);
                v |= ((qh[l] >> j) & 1) << 4;
                dot += v * yb[32 * j + l];
            }
            isum += sc * dot;
            imin += m * (bs[16 * i + 2 * j] + bs[16 * i + 2 * j + 1]);
        }
        float dd = cq_half(cq_u16(blk)) * ad[i];
        float dm = cq_half(cq_u16(blk + 2)) * ad[i];
        sum += dd * (float)isum - dm * (float)imin;
    }
    return sum;
}
TILED(ref_dot_q5_K, row_q5_K)

/* Q6_K (210 B): 128 B ql, 64 B qh, 16 x i8 scales, f16 d. Value p = 128 h + 32 c + l (h < 2,
 * c < 4, l < 32): the low (c < 2) or high nibble of ql[64 h + 32 (c & 1) + l], bits 2c, 2c+1 of
 * qh[32 h + l] on top, minus 32; sub-block p / 16 has scale scales[p / 16]. */
static float row_q6_K(int n, const uint8_t *w, const uint8_t *arow) {
    float sum = 0.0f;
    const int8_t *y = (const int8_t *)arow;
    const float *ad = (const float *)(arow + cq_q8_d_off(n));
    const int16_t *bs = (const int16_t *)(arow + cq_q8k_bsum_off(n));
    for (int i = 0; i < n / 256; i++) {
        const uint8_t *blk = w + 210 * (size_t)i;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const int8_t *yb = y + 256 * i;
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int dot = 0;
            for (int t = 0; t < 16; t++) {
                int p = 16 * j + t;
                int h = p / 128, c = (p % 128) / 32, l = p % 32;
                uint8_t qlb = blk[64 * h + 32 * (c & 1) + l];
                int v = (c < 2) ? (qlb & 0x0F) : (qlb >> 4);
                v |= ((blk[128 + 32 * h + l] >> (2 * c)) & 3) << 4;
                dot += v * yb[p];
            }
            isum += sc[j] * (dot - 32 * bs[16 * i + j]);
        }
        float dd = cq_half(cq_u16(blk + 208)) * ad[i];
        sum += dd * (float)isum;
    }
    return sum;
}
TILED(ref_dot_q6_K, row_q6_K)

const cq_kernel_table cq_table_reference = {
    .dot =
        {
            [CQ_TYPE_F32] = ref_dot_f32,
            [CQ_TYPE_F16] = ref_dot_f16,
            [CQ_TYPE_BF16] = ref_dot_bf16,
            [CQ_TYPE_Q4_0] = ref_dot_q4_0,
            [CQ_TYPE_Q4_1] = ref_dot_q4_1,
            [CQ_TYPE_Q5_0] = ref_dot_q5_0,
            [CQ_TYPE_Q5_1] = ref_dot_q5_1,
            [CQ_TYPE_Q8_0] = ref_dot_q8_0,
            [CQ_TYPE_Q4_K] = ref_dot_q4_K,
            [CQ_TYPE_Q5_K] = ref_dot_q5_K,
            [CQ_TYPE_Q6_K] = ref_dot_q6_K,
        },
    .quant =
        {
            [CQ_ACT_F32] = ref_quant_f32,
            [CQ_ACT_Q8_0] = ref_quant_q8_0,
            [CQ_ACT_Q8_1] = ref_quant_q8_1,
            [CQ_ACT_Q8_K] = ref_quant_q8_K,
        },
};
