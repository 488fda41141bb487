/* The Qwen-Image family (fx-family.h): Qwen-Image, -Edit and fine-tunes
 * (QwenImageTransformer2DModel; nunchaku-qwenimage-zimage-format.md §2). */
#ifndef FX_QWEN_FAMILY_H
#define FX_QWEN_FAMILY_H

#include "fx-family.h"

extern const struct fx_family fx_family_qwenimage;
/* Its runner (fx-qwen-run.c). */
extern const struct fx_runner_ops fx_qwen_runner;

#endif
