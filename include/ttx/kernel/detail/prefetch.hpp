// Software prefetch into L2 of a region a kernel reads next, spread over the steps of the
// computation before it, in address order and whole 64-byte lines: requests go out during the
// whole computation rather than in one burst, and short streams need not wait for the hardware
// prefetcher to re-train. The decode kernels' score pass and head products and the FlashNorm
// GEMV's short-row sweeps schedule their prefetches this way (measured at each use).
#pragma once

#include <algorithm>

#include "ttx/core/types.hpp"

namespace ttx::kernel::detail {

inline constexpr Index kPrefetchLine = 64;

/// Prefetches bytes [from, to) of p into L2, one request per line (no pointer past p + to is
/// formed).
inline void prefetch_l2(const char* p, Index from, Index to) {
  for (Index x = from; x < to; x += kPrefetchLine) __builtin_prefetch(p + x, 0, 2);  // prefetcht1
}

/// Bytes per step, in whole lines, for `bytes` spread over `steps` steps (>= 1) so that `steps`
/// steps cover them: ceil(bytes / (64 steps)) lines.
inline Index spread_step_bytes(Index bytes, Index steps) {
  return ((bytes + kPrefetchLine - 1) / kPrefetchLine + steps - 1) / steps * kPrefetchLine;
}

/// `len` bytes cut into `parts` consecutive shares of whole lines in address order, as even as
/// line granularity allows: share k is [begin(k), end(k)); the last one runs to the end.
struct LineShares {
  Index len, parts, per;
  LineShares(Index len_, Index parts_)
      : len(len_), parts(parts_), per(parts_ > 0 ? (len_ + parts_ - 1) / parts_ : 0) {}
  Index begin(Index k) const { return k * per / kPrefetchLine * kPrefetchLine; }
  Index end(Index k) const {
    return k + 1 >= parts ? len : std::min(len, (k + 1) * per / kPrefetchLine * kPrefetchLine);
  }
};

/// A stream of blocks, each prefetched over `steps` steps: start(block) at a block's first byte
/// (an offset from base; blocks past range_end are not prefetched), then step() once per step,
/// ceil(lines / steps) lines a step, lines = ceil(block_bytes / 64) (a block that is not a whole
/// number of lines keeps its last part: when this lived in flashnorm.hpp it rounded down).
struct SweepPrefetch {
  const char* base;  // the region's first byte; positions are byte offsets
  Index range_end, block_bytes, per_step_bytes;
  SweepPrefetch(const void* w, Index range_end_, Index block_bytes_, Index steps)
      : base(static_cast<const char*>(w)),
        range_end(range_end_),
        block_bytes(block_bytes_),
        per_step_bytes(spread_step_bytes(block_bytes_, steps)) {}
  Index pos = 0, end = 0;
  void start(Index block) {
    pos = block;
    end = std::min(block + block_bytes, range_end);
  }
  void step() {
    const Index to = std::min(end, pos + per_step_bytes);
    prefetch_l2(base, pos, to);
    pos = std::max(pos, to);
  }
};

}  // namespace ttx::kernel::detail
