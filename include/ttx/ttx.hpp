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
