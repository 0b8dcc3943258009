// The prefetch schedules' arithmetic (kernel/detail/prefetch.hpp): which bytes each step asks for.
// The prefetches themselves have no observable effect on results; a schedule that skipped or
// repeated lines would only show as lost speed, so its coverage is checked here.
#include "ttx/kernel/detail/prefetch.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace {

using ttx::Index;
using ttx::kernel::detail::kPrefetchLine;
using ttx::kernel::detail::LineShares;
using ttx::kernel::detail::SweepPrefetch;

TEST(PrefetchSchedule, LineSharesCoverTheRegionOnceInLineAlignedPieces) {
  for (Index len : {Index(0), Index(1), Index(63), Index(64), Index(100), Index(4096),
                    Index(256) << 10, (Index(256) << 10) + 17}) {
    for (Index parts : {Index(1), Index(2), Index(3), Index(7), Index(32), Index(128)}) {
      SCOPED_TRACE(testing::Message() << "len " << len << ", parts " << parts);
      const LineShares share(len, parts);
      EXPECT_EQ(share.begin(0), 0);
      EXPECT_EQ(share.end(parts - 1), len);
      Index covered = 0;  // bytes [0, covered) handed out so far, in address order
      for (Index k = 0; k < parts; ++k) {
        const Index b = share.begin(k), e = share.end(k);
        EXPECT_EQ(b % kPrefetchLine, 0) << "share " << k;
        if (e <= b) continue;  // an empty share (regions of fewer lines than parts)
        EXPECT_EQ(b, covered) << "share " << k << " leaves a gap or overlaps";
        EXPECT_LE(e, len);
        // As even as line granularity allows: no share (but the last) more than a line over.
        if (k + 1 < parts) {
          EXPECT_LE(e - b, share.per + kPrefetchLine) << "share " << k;
        }
        covered = e;
      }
      EXPECT_EQ(covered, len);
    }
  }
}

TEST(PrefetchSchedule, SweepCoversEachBlockWithinItsStepsAndStopsAtTheRangeEnd) {
  std::vector<char> w(1 << 16);
  for (Index block_bytes : {Index(64), Index(3 * 1024), Index(5 * 1024 + 40)}) {
    for (Index steps : {Index(1), Index(4), Index(96)}) {
      SCOPED_TRACE(testing::Message() << "block " << block_bytes << ", steps " << steps);
      const Index range_end = 2 * block_bytes + block_bytes / 2;  // the third block is partial
      SweepPrefetch pf(w.data(), range_end, block_bytes, steps);
      for (Index blk = 0; blk < 4; ++blk) {
        const Index start = blk * block_bytes;
        pf.start(start);
        const Index end = std::min(start + block_bytes, range_end);
        Index last = pf.pos;
        for (Index s = 0; s < steps; ++s) {
          pf.step();
          EXPECT_LE(pf.pos - last, pf.per_step_bytes);
          last = pf.pos;
        }
        if (start < range_end) {
          EXPECT_EQ(pf.pos, end) << "block " << blk << " not covered in " << steps << " steps";
        } else {
          EXPECT_EQ(pf.pos, start) << "block " << blk << " lies past the range: nothing to fetch";
        }
      }
    }
  }
}

}  // namespace
