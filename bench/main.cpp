// ttx_bench: measures the roofline once, records it in the JSON context, then runs every
// registered benchmark.
#include <benchmark/benchmark.h>

#include <string>

#include "roofline.hpp"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const auto& r = ttx::bench::roofline();
  benchmark::AddCustomContext("ttx_read_gbps_1t", std::to_string(r.read_gbps_1t));
  benchmark::AddCustomContext("ttx_read_gbps", std::to_string(r.read_gbps));
  benchmark::AddCustomContext("ttx_peak_gflops_1t", std::to_string(r.peak_gflops_1t));
  benchmark::AddCustomContext("ttx_peak_gflops", std::to_string(r.peak_gflops));
  benchmark::AddCustomContext("ttx_fma_gflops_1t", std::to_string(r.fma_gflops_1t));
  benchmark::AddCustomContext("ttx_fma_gflops", std::to_string(r.fma_gflops));
  benchmark::AddCustomContext("ttx_threads", std::to_string(r.threads));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
