/* Copyright © 2023-2024 Apple Inc. */

#ifndef MLX_HALF_H
#define MLX_HALF_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC) || defined(__aarch64__)
#define HAS_FLOAT16
#include <arm_fp16.h>
typedef __fp16 float16_t;
#endif

#if defined(__ARM_FEATURE_BF16) || defined(__aarch64__)
#define HAS_BFLOAT16
#include <arm_bf16.h>
typedef __bf16 bfloat16_t;
#endif

/* Non-ARM targets (e.g. x86_64 Linux): expose the float16/bfloat16 accessors
 * with 16-bit storage types. Only pointers to them cross the C ABI, and
 * mlx::core::array::item/data do not check the dtype. Clang (bindgen) sees
 * __fp16 so bindgen emits the same `__BindgenFloat16` type as on ARM. */
#if !defined(HAS_FLOAT16)
#define HAS_FLOAT16
#if defined(__clang__) && !defined(__cplusplus)
typedef __fp16 float16_t;
#else
#include <stdint.h>
typedef uint16_t float16_t;
#endif
#endif

#if !defined(HAS_BFLOAT16)
#define HAS_BFLOAT16
#include <stdint.h>
typedef uint16_t bfloat16_t;
#endif

#ifdef __cplusplus
}
#endif

#endif
