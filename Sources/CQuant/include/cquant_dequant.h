#ifndef CQUANT_DEQUANT_H
#define CQUANT_DEQUANT_H
#include <stddef.h>

/* Rows r0..r1 of a weight matrix stored as GGUF blocks (row r at W + r * rowBytes, nIn values)
 * dequantized to float into out ((r1 - r0) rows of nIn). The prompt path of the engine
 * dequantizes tiles of weights with it before sgemm. Same arithmetic, in the same order and
 * without contraction into FMA, as lorafuse's Swift dequantizer (GGUFQuant.swift), so both give
 * identical floats. Types: Q4_0 (2), Q4_1 (3), Q8_0 (8), F16 (1), BF16 (30); returns 0, or -1
 * for another type (the caller then uses the Swift dequantizer). */
int cq_dequantize_rows(int type, const void *W, size_t rowBytes, int nIn, int r0, int r1, float *out);

#endif
