/*
 * CQuant: matrix-vector products on GGUF weights as they are stored, with quantized activations.
 *
 * The scheme is ggml's CPU mat-vec: the activation row is quantized per block to 8 bits, each
 * weight block is dotted with the matching activation block in integers, and the two scales are
 * applied per block in float. Weights are the GGUF block bytes exactly as in the file (any
 * alignment); nothing is repacked in memory (for batches of 16 rows or more the avx512 set
 * unpacks a chunk of rows at a time into per-thread scratch, 32 KB, and reuses it for every
 * group of activation rows).
 *
 * Kernel sets. Every type has a plain scalar reference kernel; fast kernels exist per set:
 *   type      reference  avx2  avx512 (VNNI)  neon
 *   F32, F16, BF16    x    x     x             x
 *   Q4_0, Q4_1        x    x     x             x
 *   Q5_0, Q5_1        x    x     x             x
 *   Q8_0              x    x     x             x
 *   Q4_K, Q5_K, Q6_K  x    x     (avx2)        (reference)
 * A set without a kernel for a type uses the next one down (avx512 -> avx2 -> reference;
 * neon -> reference); cq_effective_kernel says which. The set is chosen once, at the first call,
 * from the CPU (__builtin_cpu_supports on x86: avx2 needs avx2, fma and f16c; avx512 needs
 * avx512f, avx512bw, avx512vl and avx512vnni; NEON is always there on arm64): avx512 on x86 CPUs
 * with VNNI, else avx2, NEON on arm64 (measurements in best_available, cq_dispatch.c). The environment
 * variable LORAFUSE_QUANT_KERNEL=reference|avx2|avx512|neon forces a set; a set the CPU lacks
 * falls back along avx512 -> avx2 -> reference (neon -> reference), an unknown value is ignored,
 * and cq_kernel_name(CQ_KERNEL_AUTO) tells what was chosen. Every entry point also
 * has an _ex form taking an explicit set (CQ_KERNEL_AUTO for the chosen one), which the tests use
 * to compare sets within one process.
 *
 * Activation forms. cq_quantize_activations writes B rows, each cq_act_row_bytes(type, nIn)
 * bytes (a multiple of 64), back to back. Which form a row has depends on the weight type
 * (cq_act_form). With nb = nIn / 32, nk = nIn / 256 and A64(x) = x rounded up to a multiple of 64:
 *   CQ_ACT_F32  (F32, F16, BF16 weights): float x[nIn]; the row copied.
 *   CQ_ACT_Q8_0 (Q8_0 weights):           int8 q[nIn] at 0; float d[nb] at A64(nIn).
 *   CQ_ACT_Q8_1 (Q4_0, Q4_1, Q5_0, Q5_1): as Q8_0, plus float s[nb] at A64(nIn) + A64(4 nb),
 *                                         s[b] = d[b] * (sum of the 32 q of block b), which folds
 *                                         the weight block's minimum (Q4_1, Q5_1) or offset
 *                                         (-8, -16 for Q4_0, Q5_0) into one multiply.
 *   CQ_ACT_Q8_K (Q4_K, Q5_K, Q6_K):       int8 q[nIn] at 0; float d[nk] at A64(nIn);
 *                                         int16 bsum[16 nk] at A64(nIn) + A64(4 nk), the sums
 *                                         of q over each 16 consecutive values.
 * The values of a row are q[i] * d[i / 32] (i / 256 for Q8_K). Quantization of one block:
 * amax = max |x|, d = amax / 127, q = round-half-even(x * (1 / d)) (0 when amax = 0), so
 * q is in [-127, 127] (never -128, which the sign tricks of the kernels rely on). Every kernel set
 * writes the same bytes (tested). Scales are float, not f16: the activation is only a scratch
 * buffer, and float keeps the error of the scheme at the int8 rounding alone. Non-finite inputs
 * give unspecified (but memory-safe) results. Aq must be 4-byte aligned (its floats
 * are read as floats); 64-byte alignment is best. Weight rows may have any alignment.
 *
 * Sizes: nIn must be a positive multiple of 32 (Q4_0 .. Q8_0), of 256 (K-quants), or any
 * positive number (F32, F16, BF16). Functions returning int return 0 on success and
 * CQ_ERR_ARGS for an unsupported type, a bad size or a bad range; they never abort.
 *
 * Results. Kernels of one set are deterministic. Across sets the integer part of each block is
 * the same; how the per-block float terms are summed differs between sets for the 32-value
 * types and the float types (vector lanes), so those agree to float rounding; the K-quant kernels
 * reduce each 256-value super-block to one exact integer and then sum in the same order as the
 * reference, so avx2 and reference agree bit for bit there. Within one set, a result does not
 * depend on B, on the row range, or on which other activation rows share its pass: batched
 * decode gives each sequence bit for bit what it would get alone. (With more than one activation
 * row the avx512 set passes over four, then two, weight rows at once for the 32-value types,
 * from unpacked rows for 16 activation rows or more; each result takes the same float operations
 * as the one-row kernel's.)
 *
 * Threading: no global state besides the kernel choice (set once); every function may be called
 * from many threads at once on disjoint outputs.
 */
#ifndef CQUANT_H
#define CQUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ggml type ids (as in GGUF files and GGMLType). */
enum {
    CQ_TYPE_F32 = 0,
    CQ_TYPE_F16 = 1,
    CQ_TYPE_Q4_0 = 2,
    CQ_TYPE_Q4_1 = 3,
    CQ_TYPE_Q5_0 = 6,
    CQ_TYPE_Q5_1 = 7,
    CQ_TYPE_Q8_0 = 8,
    CQ_TYPE_Q4_K = 12,
    CQ_TYPE_Q5_K = 13,
    CQ_TYPE_Q6_K = 14,
    CQ_TYPE_BF16 = 30,
};

/* Kernel sets. */
enum {
    CQ_KERNEL_AUTO = -1,
    CQ_KERNEL_REFERENCE = 0,
    CQ_KERNEL_AVX2 = 1,
    CQ_KERNEL_AVX512 = 2,
    CQ_KERNEL_NEON = 3,
    CQ_KERNEL_COUNT = 4,
};

/* Activation forms. */
enum {
    CQ_ACT_NONE = -1,
    CQ_ACT_F32 = 0,
    CQ_ACT_Q8_0 = 1,
    CQ_ACT_Q8_1 = 2,
    CQ_ACT_Q8_K = 3,
};

enum { CQ_OK = 0, CQ_ERR_ARGS = -1 };

/* --- Spinning -------------------------------------------------------------------------------- */

/* A hint for busy-wait loops (x86 PAUSE, arm64 YIELD): the compute pool's workers spin between
 * the many short jobs of one decode step instead of sleeping and paying a wake-up each time. */
static inline void cq_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* --- Kernel choice ------------------------------------------------------------------------ */

/* The set chosen for this process (never CQ_KERNEL_AUTO). */
int cq_selected_kernel(void);
/* "reference", "avx2", "avx512", "neon"; CQ_KERNEL_AUTO names the chosen set. NULL for others. */
const char *cq_kernel_name(int kernel);
/* 1 if this build and CPU can run the set, else 0. */
int cq_kernel_available(int kernel);
/* The set whose kernel actually runs for `type` when `kernel` is asked for (after the fallback
 * described above, and the CPU check); -1 for an unsupported type. */
int cq_effective_kernel(int kernel, int type);

/* --- Types and sizes ---------------------------------------------------------------------- */

/* 1 for the types listed above, else 0. */
int cq_type_supported(int type);
/* Values per block (1 for F32/F16/BF16), 0 if unsupported. */
int cq_block_values(int type);
/* Bytes per block, 0 if unsupported. */
size_t cq_block_bytes(int type);
/* Bytes of one weight row of nIn values (0 if the type or nIn is unsupported). */
size_t cq_row_bytes(int type, int nIn);
/* The activation form the type's kernels read, CQ_ACT_NONE if unsupported. */
int cq_act_form(int type);
/* Bytes of one quantized activation row for weights of `type` (0 if unsupported). */
size_t cq_act_row_bytes(int type, int nIn);
/* Bytes of B rows: B * cq_act_row_bytes(type, nIn) (0 if unsupported). */
size_t cq_act_bytes(int type, int nIn, int B);

/* --- Activation quantization -------------------------------------------------------------- */

/* Quantizes the B rows x[b * ldx + 0 ..< nIn] into Aq (cq_act_bytes(type, nIn, B) bytes) in the
 * form `type`'s kernels read. */
int cq_quantize_activations(int type, const float *x, int B, int nIn, void *Aq);
int cq_quantize_activations_ex(int kernel, int type, const float *x, size_t ldx, int B, int nIn,
                               void *Aq);

/* One row into one form (the building blocks of the above; `out` holds one row of the form). */
int cq_quantize_row(int kernel, int form, const float *x, int n, void *out);

/* --- Products ----------------------------------------------------------------------------- */

/* out[b * ldOut + r] = W[r] . a_b for b in [0, B) and r in [rowBegin, rowEnd), where W[r] is the
 * row at W + r * rowBytes (rowBytes >= cq_row_bytes(type, nIn); rows may be padded) and a_b is
 * row b of Aq as cq_quantize_activations wrote it. Nothing else of `out` is written, so threads
 * may split [0, nOut) and share `out`. Each weight row is unpacked once per group of up to four
 * activation rows, and the rows are walked in chunks that stay in L1 while every group of
 * activations passes over them. Measured on Zen 4 (avx2, 1536x576 Q4_1/Q8_0, 2026-12-06): 4 rows
 * cost 2.9-3.3 single-row calls, 8 rows 5.0-6.5: the unpacking is shared, the per-row integer
 * and float work is not. */
int cq_matmul(int type, const void *W, size_t rowBytes, int nOut, int nIn, const void *Aq, int B,
              float *out, int ldOut, int rowBegin, int rowEnd);
int cq_matmul_ex(int kernel, int type, const void *W, size_t rowBytes, int nOut, int nIn,
                 const void *Aq, int B, float *out, int ldOut, int rowBegin, int rowEnd);

/* One dot product: weight row w (nIn values of `type`) with one activation row a. NaN on bad
 * arguments. */
float cq_dot(int kernel, int type, int nIn, const void *w, const void *a);

#ifdef __cplusplus
}
#endif

#endif /* CQUANT_H */
