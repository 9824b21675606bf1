#include "cquant_dequant.h"
#include "cq_internal.h"
#include <stdint.h>

/* Separate multiply and add, as the Swift dequantizer does: identical floats on both paths. */
#pragma STDC FP_CONTRACT OFF

static void rows_q4_0(const uint8_t *row, int nIn, float *y) {
    for (int b = 0; b < nIn / 32; b++) {
        const uint8_t *blk = row + (size_t)b * 18;
        float d = cq_half(cq_u16(blk));
        float *o = y + b * 32;
        for (int j = 0; j < 16; j++) {
            uint8_t q = blk[2 + j];
            o[j] = (float)((int)(q & 0x0F) - 8) * d;
            o[j + 16] = (float)((int)(q >> 4) - 8) * d;
        }
    }
}

static void rows_q4_1(const uint8_t *row, int nIn, float *y) {
    for (int b = 0; b < nIn / 32; b++) {
        const uint8_t *blk = row + (size_t)b * 20;
        float d = cq_half(cq_u16(blk)), m = cq_half(cq_u16(blk + 2));
        float *o = y + b * 32;
        for (int j = 0; j < 16; j++) {
            uint8_t q = blk[4 + j];
            float lo = (float)(q & 0x0F) * d, hi = (float)(q >> 4) * d;
            o[j] = lo + m;
            o[j + 16] = hi + m;
        }
    }
}

static void rows_q8_0(const uint8_t *row, int nIn, float *y) {
    for (int b = 0; b < nIn / 32; b++) {
        const uint8_t *blk = row + (size_t)b * 34;
        float d = cq_half(cq_u16(blk));
        float *o = y + b * 32;
        for (int j = 0; j < 32; j++) o[j] = (float)(int8_t)blk[2 + j] * d;
    }
}

int cq_dequantize_rows(int type, const void *W, size_t rowBytes, int nIn, int r0, int r1, float *out) {
    if (type != 2 && type != 3 && type != 8 && type != 1 && type != 30) return -1;
    if (nIn <= 0 || r1 < r0 || ((type == 2 || type == 3 || type == 8) && nIn % 32 != 0)) return -1;
    const uint8_t *base = (const uint8_t *)W;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * rowBytes;
        float *y = out + (size_t)(r - r0) * (size_t)nIn;
        switch (type) {
        case 2: rows_q4_0(row, nIn, y); break;
        case 3: rows_q4_1(row, nIn, y); break;
        case 8: rows_q8_0(row, nIn, y); break;
        case 1: for (int j = 0; j < nIn; j++) y[j] = cq_half(cq_u16(row + 2 * j)); break;
        default: for (int j = 0; j < nIn; j++) y[j] = cq_bf16(cq_u16(row + 2 * j)); break;
        }
    }
    return 0;
}
