// ttx: exact rewrites of transformer inference. This umbrella header includes every public header.
#pragma once

// core
#include "ttx/core/activation.hpp"
#include "ttx/core/error.hpp"
#include "ttx/core/norm.hpp"
#include "ttx/core/rope.hpp"
#include "ttx/core/shapes.hpp"
#include "ttx/core/softmax.hpp"
#include "ttx/core/types.hpp"
#include "ttx/core/weights.hpp"

// reference (the oracle)
#include "ttx/reference/attention.hpp"
#include "ttx/reference/block.hpp"
#include "ttx/reference/ffn.hpp"
#include "ttx/reference/linear.hpp"
#include "ttx/reference/model.hpp"
#include "ttx/reference/norm.hpp"
#include "ttx/reference/rope.hpp"

// core (numerics)
#include "ttx/core/linalg.hpp"

// caches
#include "ttx/cache/kv_cache.hpp"
#include "ttx/cache/row_cache.hpp"

// kernels
#include "ttx/kernel/decode.hpp"

// FlashNorm: offline folds and the deferred-normalization runtime
#include "ttx/kernel/flashnorm.hpp"
#include "ttx/kernel/flashnorm_ffn.hpp"
#include "ttx/kernel/rope_tables.hpp"
#include "ttx/rewrite/flashnorm.hpp"

// Slim attention: K-, V- and X-caches, the offline rewrite and the layer runtime
#include "ttx/cache/k_cache.hpp"
#include "ttx/cache/v_cache.hpp"
#include "ttx/cache/x_cache.hpp"
#include "ttx/kernel/slim_attention.hpp"
#include "ttx/rewrite/slim.hpp"

// First-layer precompute: per-vocabulary tables, the lookup runtime and the cost model
#include "ttx/kernel/first_layer.hpp"
#include "ttx/rewrite/first_layer.hpp"

// Skipless transformers: Q/K/V + P removal (offline) and the skipless-model runtime
#include "ttx/kernel/skipless_model.hpp"
#include "ttx/rewrite/skipless.hpp"

// Encoder–decoder slim attention: shared encoder cache, cross K-only cache, hybrid; the decoder
// runtime and its reference
#include "ttx/cache/e_cache.hpp"
#include "ttx/core/encdec_weights.hpp"
#include "ttx/kernel/encdec.hpp"
#include "ttx/reference/encdec_model.hpp"
#include "ttx/rewrite/encdec.hpp"

// Precision planner and certificates: which cache form and storage type to trust, measured
#include "ttx/rewrite/precision.hpp"

// Cleanup: greedy decoding loop, key storage enum.
#include "ttx/core/greedy.hpp"
#include "ttx/core/key_storage.hpp"
