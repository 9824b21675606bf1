/* Shared by the CQuant kernel files; not part of the public header. */
#ifndef CQ_INTERNAL_H
#define CQ_INTERNAL_H

#include "cquant.h"

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "CQuant reads GGUF blocks as little-endian host words"
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CQ_X86 1
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define CQ_NEON 1
#endif

/* At most this many activation rows share one pass over a weight row. */
#define CQ_TILE 4

/* out[k * ostride] = w . a_k for k < na (1 <= na <= CQ_TILE), a_k at a + k * astride. */
typedef void (*cq_dot_fn)(int n, const uint8_t *w, const uint8_t *a, size_t astride, int na,
                          float *out, size_t ostride);
/* The same for two weight rows, w and w + rowBytes: out[k * ostride + r] = w_r . a_k, each equal
 * bit for bit to what the set's cq_dot_fn gives that pair. Optional (NULL: dot row by row). */
typedef void (*cq_dot2_fn)(int n, const uint8_t *w, size_t rowBytes, const uint8_t *a, size_t astride,
                           int na, float *out, size_t ostride);
/* The same for four weight rows (w + r * rowBytes, r < 4): out[k * ostride + r]. Optional. */
typedef cq_dot2_fn cq_dot4_fn;
/* Wide batches: `rows` weight rows unpacked into dst (prepRowBytes(n) bytes each),
 * then four prepared rows (at prep, prepRowBytes apart) against up to CQ_TILE activation rows as
 * cq_dot4_fn; bit for bit the set's cq_dot_fn results. */
typedef struct {
    void (*prep)(int n, const uint8_t *w, size_t rowBytes, int rows, uint8_t *dst);
    void (*dot4)(int n, const uint8_t *prep, const uint8_t *a, size_t astride, int na, float *out,
                 size_t ostride);
} cq_prep_fns;
/* One activation row of n values into one form. */
typedef void (*cq_quant_fn)(const float *x, int n, uint8_t *out);

/* Kernel table of one set: indexed by ggml type id (0..CQ_MAX_TYPE); NULL = not in this set. */
#define CQ_MAX_TYPE 31
typedef struct {
    cq_dot_fn dot[CQ_MAX_TYPE];
    cq_dot2_fn dot2[CQ_MAX_TYPE];
    cq_dot4_fn dot4[CQ_MAX_TYPE];
    cq_prep_fns prep[CQ_MAX_TYPE];
    size_t (*prepRowBytes)(int n);
    cq_quant_fn quant[4]; /* by CQ_ACT_* form */
} cq_kernel_table;

extern const cq_kernel_table cq_table_reference;
#ifdef CQ_X86
extern const cq_kernel_table cq_table_avx2;
extern const cq_kernel_table cq_table_avx512;
#endif
#ifdef CQ_NEON
extern const cq_kernel_table cq_table_neon;
#endif

static inline size_t cq_a64(size_t x) { return (x + 63) & ~(size_t)63; }

/* Offsets inside an activation row (see cquant.h). */
static inline size_t cq_q8_d_off(int n) { return cq_a64((size_t)n); }
static inline size_t cq_q8_s_off(int n) { return cq_a64((size_t)n) + cq_a64((size_t)(n / 32) * 4); }
static inline size_t cq_q8k_bsum_off(int n) { return cq_a64((size_t)n) + cq_a64((size_t)(n / 256) * 4); }

/* The quantized values, block scales and block sums of na Q8_0/Q8_1 activation rows. */
typedef struct {
    const int8_t *y[CQ_TILE];
    const float *d[CQ_TILE], *s[CQ_TILE];
} cq_q8_rows;

static inline cq_q8_rows cq_q8_rows_at(const uint8_t *a, size_t astride, int na, int n) {
    cq_q8_rows r;
    for (int k = 0; k < na; k++) {
        const uint8_t *ar = a + (size_t)k * astride;
        r.y[k] = (const int8_t *)ar;
        r.d[k] = (const float *)(ar + cq_q8_d_off(n));
        r.s[k] = (const float *)(ar + cq_q8_s_off(n));
    }
    return r;
}

static inline uint16_t cq_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline uint32_t cq_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* IEEE half to float, exact (subnormals, inf and NaN included), without F16C. */
static inline float cq_half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            /* mant * 2^-24, normalised */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            mant &= 0x3FFu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float cq_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* The j-th (scale, min) pair of a Q4_K/Q5_K 12-byte scale field. */
static inline void cq_scale_min_k4(int j, const uint8_t *s, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

#endif
