/* Kernel choice, sizes, argument checks and the matrix driver. */
#include "cq_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ---- Types ------------------------------------------------------------------------------- */

typedef struct {
    int values;   /* per block */
    size_t bytes; /* per block */
    int form;     /* activation form */
} cq_type_info;

static int type_info(int type, cq_type_info *ti) {
    switch (type) {
    case CQ_TYPE_F32: *ti = (cq_type_info){1, 4, CQ_ACT_F32}; return 1;
    case CQ_TYPE_F16: *ti = (cq_type_info){1, 2, CQ_ACT_F32}; return 1;
    case CQ_TYPE_BF16: *ti = (cq_type_info){1, 2, CQ_ACT_F32}; return 1;
    case CQ_TYPE_Q4_0: *ti = (cq_type_info){32, 18, CQ_ACT_Q8_1}; return 1;
    case CQ_TYPE_Q4_1: *ti = (cq_type_info){32, 20, CQ_ACT_Q8_1}; return 1;
    case CQ_TYPE_Q5_0: *ti = (cq_type_info){32, 22, CQ_ACT_Q8_1}; return 1;
    case CQ_TYPE_Q5_1: *ti = (cq_type_info){32, 24, CQ_ACT_Q8_1}; return 1;
    case CQ_TYPE_Q8_0: *ti = (cq_type_info){32, 34, CQ_ACT_Q8_0}; return 1;
    case CQ_TYPE_Q4_K: *ti = (cq_type_info){256, 144, CQ_ACT_Q8_K}; return 1;
    case CQ_TYPE_Q5_K: *ti = (cq_type_info){256, 176, CQ_ACT_Q8_K}; return 1;
    case CQ_TYPE_Q6_K: *ti = (cq_type_info){256, 210, CQ_ACT_Q8_K}; return 1;
    default: return 0;
    }
}

int cq_type_supported(int type) {
    cq_type_info ti;
    return type_info(type, &ti);
}

int cq_block_values(int type) {
    cq_type_info ti;
    return type_info(type, &ti) ? ti.values : 0;
}

size_t cq_block_bytes(int type) {
    cq_type_info ti;
    return type_info(type, &ti) ? ti.bytes : 0;
}

int cq_act_form(int type) {
    cq_type_info ti;
    return type_info(type, &ti) ? ti.form : CQ_ACT_NONE;
}

static int form_block(int form) {
    switch (form) {
    case CQ_ACT_F32: return 1;
    case CQ_ACT_Q8_0:
    case CQ_ACT_Q8_1: return 32;
    case CQ_ACT_Q8_K: return 256;
    default: return 0;
    }
}

static size_t form_row_bytes(int form, int n) {
    size_t un = (size_t)n;
    switch (form) {
    case CQ_ACT_F32: return cq_a64(un * 4);
    case CQ_ACT_Q8_0: return cq_a64(un) + cq_a64(un / 32 * 4);
    case CQ_ACT_Q8_1: return cq_a64(un) + 2 * cq_a64(un / 32 * 4);
    case CQ_ACT_Q8_K: return cq_a64(un) + cq_a64(un / 256 * 4) + cq_a64(un / 256 * 32);
    default: return 0;
    }
}

static int valid_n(int type, int nIn, cq_type_info *ti) {
    return type_info(type, ti) && nIn > 0 && nIn % ti->values == 0;
}

size_t cq_row_bytes(int type, int nIn) {
    cq_type_info ti;
    return valid_n(type, nIn, &ti) ? (size_t)(nIn / ti.values) * ti.bytes : 0;
}

size_t cq_act_row_bytes(int type, int nIn) {
    cq_type_info ti;
    return valid_n(type, nIn, &ti) ? form_row_bytes(ti.form, nIn) : 0;
}

size_t cq_act_bytes(int type, int nIn, int B) {
    return B > 0 ? (size_t)B * cq_act_row_bytes(type, nIn) : 0;
}

/* ---- Kernel choice ----------------------------------------------------------------------- */

static const cq_kernel_table *table_of(int kernel) {
    switch (kernel) {
    case CQ_KERNEL_REFERENCE: return &cq_table_reference;
#ifdef CQ_X86
    case CQ_KERNEL_AVX2: return &cq_table_avx2;
    case CQ_KERNEL_AVX512: return &cq_table_avx512;
#endif
#ifdef CQ_NEON
    case CQ_KERNEL_NEON: return &cq_table_neon;
#endif
    default: return NULL;
    }
}

int cq_kernel_available(int kernel) {
    switch (kernel) {
    case CQ_KERNEL_REFERENCE: return 1;
#ifdef CQ_X86
    case CQ_KERNEL_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    case CQ_KERNEL_AVX512:
        __builtin_cpu_init();
        return cq_kernel_available(CQ_KERNEL_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
#endif
#ifdef CQ_NEON
    case CQ_KERNEL_NEON: return 1;
#endif
    default: return 0;
    }
}

/* The next set down: what a set uses for a type it has no kernel for, or when the CPU lacks it. */
static int fallback(int kernel) {
    switch (kernel) {
    case CQ_KERNEL_AVX512: return CQ_KERNEL_AVX2;
    case CQ_KERNEL_AVX2:
    case CQ_KERNEL_NEON: return CQ_KERNEL_REFERENCE;
    default: return -1;
    }
}

/* avx512 first where the CPU has VNNI. On the one AVX-512 CPU measured (AMD EPYC, Zen 4, whose
 * 512-bit operations are double-pumped) an early version of these kernels took 1.3-1.7x avx2's
 * time for one activation row (2026-12-06 morning), and avx2 led the order; with today's kernels,
 * alternating runs of `lorafuse-bench model --skip-peer` (2026-12-07, 2-3 runs each) gave avx512
 * decode 160-166 tok/s against avx2's 138-153 on Q8_0 and 8-row batches 274-309 against 257-264,
 * and the same within noise on Q4_1 (decode 160-181 against 159-180) and for 32 rows. */
static int best_available(void) {
    static const int order[] = {CQ_KERNEL_AVX512, CQ_KERNEL_AVX2, CQ_KERNEL_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (cq_kernel_available(order[i])) return order[i];
    return CQ_KERNEL_REFERENCE;
}

static const char *const kernel_names[CQ_KERNEL_COUNT] = {"reference", "avx2", "avx512", "neon"};

static _Atomic int selected = -2;

int cq_selected_kernel(void) {
    int k = atomic_load_explicit(&selected, memory_order_relaxed);
    if (k >= 0) return k;
    k = best_available();
    const char *env = getenv("LORAFUSE_QUANT_KERNEL");
    if (env != NULL && *env != 0) {
        for (int i = 0; i < CQ_KERNEL_COUNT; i++) {
            if (strcmp(env, kernel_names[i]) == 0) {
                int want = i;
                while (want >= 0 && !cq_kernel_available(want)) want = fallback(want);
                if (want >= 0) k = want;
                break;
            }
        }
    }
    atomic_store_explicit(&selected, k, memory_order_relaxed);
    return k;
}

static int resolve(int kernel) {
    if (kernel == CQ_KERNEL_AUTO) return cq_selected_kernel();
    if (kernel < 0 || kernel >= CQ_KERNEL_COUNT) return -1;
    while (kernel >= 0 && !cq_kernel_available(kernel)) kernel = fallback(kernel);
    return kernel;
}

const char *cq_kernel_name(int kernel) {
    if (kernel == CQ_KERNEL_AUTO) kernel = cq_selected_kernel();
    return (kernel >= 0 && kernel < CQ_KERNEL_COUNT) ? kernel_names[kernel] : NULL;
}

int cq_effective_kernel(int kernel, int type) {
    if (!cq_type_supported(type)) return -1;
    int k = resolve(kernel);
    while (k >= 0) {
        const cq_kernel_table *t = table_of(k);
        if (t != NULL && t->dot[type] != NULL) return k;
        k = fallback(k);
    }
    return -1;
}

static cq_quant_fn quant_fn(int kernel, int form) {
    int k = resolve(kernel);
    while (k >= 0) {
        const cq_kernel_table *t = table_of(k);
        if (t != NULL && t->quant[form] != NULL) return t->quant[form];
        k = fallback(k);
    }
    return NULL;
}

/* ---- Activations ------------------------------------------------------------------------- */

int cq_quantize_row(int kernel, int form, const float *x, int n, void *out) {
    int blk = form_block(form);
    if (blk == 0 || n <= 0 || n % blk != 0 || x == NULL || out == NULL) return CQ_ERR_ARGS;
    cq_quant_fn f = quant_fn(kernel, form);
    if (f == NULL) return CQ_ERR_ARGS;
    /* Zero the padding so buffers compare equal byte for byte. */
    size_t rb = form_row_bytes(form, n);
    memset(out, 0, rb);
    f(x, n, (uint8_t *)out);
    return CQ_OK;
}

int cq_quantize_activations_ex(int kernel, int type, const float *x, size_t ldx, int B, int nIn,
                               void *Aq) {
    cq_type_info ti;
    if (!valid_n(type, nIn, &ti) || B <= 0 || ldx < (size_t)nIn || x == NULL || Aq == NULL)
        return CQ_ERR_ARGS;
    size_t rb = form_row_bytes(ti.form, nIn);
    for (int b = 0; b < B; b++) {
        int rc = cq_quantize_row(kernel, ti.form, x + (size_t)b * ldx, nIn, (uint8_t *)Aq + (size_t)b * rb);
        if (rc != CQ_OK) return rc;
    }
    return CQ_OK;
}

int cq_quantize_activations(int type, const float *x, int B, int nIn, void *Aq) {
    return cq_quantize_activations_ex(CQ_KERNEL_AUTO, type, x, (size_t)nIn, B, nIn, Aq);
}

/* ---- Products ---------------------------------------------------------------------------- */

/* Weight rows per chunk: the chunk (at most this many bytes) stays in L1 while every group of
 * activation rows passes over it. */
#define CQ_CHUNK_BYTES 16384
#define CQ_ACT_BLOCK_BYTES (256 * 1024)

/* Batches at least this wide unpack each chunk of weight rows once (the set's prep) and reuse it
 * for every group of activation rows; narrower ones read the stored blocks directly. Alternating
 * runs of batched decode (2026-12-07, Xeon with VNNI): unpacking from 8 rows is +5% on Q8_0 and
 * even on Q4_1; at 4 rows it is -12% on Q4_1. */
#define CQ_PREP_MIN_ROWS 8
/* Per-thread scratch for the unpacked chunk: small enough to stay in L1 beside a tile's rows. */
#define CQ_PREP_BYTES 32768
static _Thread_local uint8_t prep_scratch[CQ_PREP_BYTES] __attribute__((aligned(64)));

int cq_matmul_ex(int kernel, int type, const void *W, size_t rowBytes, int nOut, int nIn,
                 const void *Aq, int B, float *out, int ldOut, int rowBegin, int rowEnd) {
    cq_type_info ti;
    if (!valid_n(type, nIn, &ti) || W == NULL || Aq == NULL || out == NULL || nOut <= 0 || B <= 0)
        return CQ_ERR_ARGS;
    size_t need = (size_t)(nIn / ti.values) * ti.bytes;
    if (rowBytes < need || rowBegin < 0 || rowEnd > nOut || rowBegin > rowEnd) return CQ_ERR_ARGS;
    if (ldOut < nOut && B > 1) return CQ_ERR_ARGS;
    int k = cq_effective_kernel(kernel, type);
    if (k < 0) return CQ_ERR_ARGS;
    const cq_kernel_table *t = table_of(k);
    cq_dot_fn f = t->dot[type];
    /* Groups of four (then two) weight rows share each activation load once a tile has more
     * than one row; every width gives the one-row kernel's numbers. */
    cq_dot2_fn f2 = B > 1 ? t->dot2[type] : NULL;
    cq_dot4_fn f4 = B > 1 ? t->dot4[type] : NULL;
    size_t ab = form_row_bytes(ti.form, nIn);
    const uint8_t *w = (const uint8_t *)W;
    const uint8_t *a = (const uint8_t *)Aq;
    int chunk = (int)(CQ_CHUNK_BYTES / rowBytes);
    cq_prep_fns pf = t->prep[type];
    size_t pr = pf.prep != NULL ? t->prepRowBytes(nIn) : 0;
    int prepped = B >= CQ_PREP_MIN_ROWS && pf.prep != NULL && pr * 4 <= CQ_PREP_BYTES;
    if (prepped) chunk = (int)(CQ_PREP_BYTES / pr);
    if (chunk >= 8) chunk &= ~3; /* whole groups of four */
    if (chunk < 1) chunk = 1;
    /* Float activations in blocks that stay in L2 while every chunk of weight rows passes over
     * them: a 512-row prompt's, 1.2 MB for SmolLM2, otherwise streamed from memory once per
     * chunk (F16 prompt +8-10% in alternating runs, 2026-12-08). The 8-bit forms are a quarter of
     * that; blocking them re-unpacks the weights per block and measured -2% (Q8_0) to +5% (Q4_1). */
    int ablock = ti.form == CQ_ACT_F32 ? (int)(CQ_ACT_BLOCK_BYTES / ab) & ~(CQ_TILE - 1) : B;
    if (ablock < CQ_TILE) ablock = CQ_TILE;
    for (int a0 = 0; a0 < B; a0 += ablock) {
        int a1 = a0 + ablock < B ? a0 + ablock : B;
        for (int r0 = rowBegin; r0 < rowEnd; r0 += chunk) {
            int r1 = r0 + chunk < rowEnd ? r0 + chunk : rowEnd;
            int r4 = r0 + (r1 - r0) / 4 * 4; /* end of the groups of four */
            if (prepped && r4 > r0) pf.prep(nIn, w + (size_t)r0 * rowBytes, rowBytes, r4 - r0, prep_scratch);
            for (int b0 = a0; b0 < a1; b0 += CQ_TILE) {
                int na = a1 - b0 < CQ_TILE ? a1 - b0 : CQ_TILE;
                const uint8_t *ak = a + (size_t)b0 * ab;
                float *ok = out + (size_t)b0 * (size_t)ldOut;
                int r = r0;
                if (prepped)
                    for (; r < r4; r += 4) pf.dot4(nIn, prep_scratch + (size_t)(r - r0) * pr, ak, ab, na, ok + r, (size_t)ldOut);
                if (f4 != NULL && na > 1)
                    for (; r + 4 <= r1; r += 4) f4(nIn, w + (size_t)r * rowBytes, rowBytes, ak, ab, na, ok + r, (size_t)ldOut);
                if (f2 != NULL && na > 1)
                    for (; r + 2 <= r1; r += 2) f2(nIn, w + (size_t)r * rowBytes, rowBytes, ak, ab, na, ok + r, (size_t)ldOut);
                for (; r < r1; r++) f(nIn, w + (size_t)r * rowBytes, ak, ab, na, ok + r, (size_t)ldOut);
            }
        }
    }
    return CQ_OK;
}

int cq_matmul(int type, const void *W, size_t rowBytes, int nOut, int nIn, const void *Aq, int B,
              float *out, int ldOut, int rowBegin, int rowEnd) {
    return cq_matmul_ex(CQ_KERNEL_AUTO, type, W, rowBytes, nOut, nIn, Aq, B, out, ldOut, rowBegin,
                        rowEnd);
}

float cq_dot(int kernel, int type, int nIn, const void *w, const void *a) {
    float r = NAN;
    size_t rb = cq_row_bytes(type, nIn);
    if (rb == 0 || cq_matmul_ex(kernel, type, w, rb, 1, nIn, a, 1, &r, 1, 0, 1) != CQ_OK) return NAN;
    return r;
}
