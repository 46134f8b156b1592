// Runs the generated normalize kernel (compiled for the host with cuda_host_emu.h) over a batch:
//   jit_kernel_driver IN OUT COUNTERS n f_in f_out n_counters grid counted
// IN: n * f_in float32; writes OUT (n * f_out float32) and COUNTERS (n_counters int64). Blocks
// run one after another, each as 256 threads; `grid` blocks walk the tiles as on the GPU
// (persistent grid). Output and shared memory start filled with a garbage pattern, so an
// element the kernel does not write, or shared memory it reads before writing, shows.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

extern "C" void mls_jit_normalize(const float* in, long long n, float* out,
                                  unsigned long long* counters);
extern "C" void mls_jit_normalize_counted(const float* in, long long n, float* out,
                                          unsigned long long* counters);

namespace {

template <typename T>
std::vector<T> ReadFile(const char* path, size_t count) {
  std::vector<T> v(count);
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr || std::fread(v.data(), sizeof(T), count, f) != count) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", count, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void WriteFile(const char* path, const std::vector<T>& v) {
  FILE* f = std::fopen(path, "wb");
  if (f == nullptr || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) {
    std::fprintf(stderr, "usage: %s IN OUT COUNTERS n f_in f_out n_counters grid counted\n",
                 argv[0]);
    return 2;
  }
  const long long n = std::atoll(argv[4]);
  const int f_in = std::atoi(argv[5]);
  const int f_out = std::atoi(argv[6]);
  const int n_counters = std::atoi(argv[7]);
  const unsigned int grid = static_cast<unsigned int>(std::atoi(argv[8]));
  const bool counted = std::atoi(argv[9]) != 0;
  const std::vector<float> in = ReadFile<float>(argv[1], static_cast<size_t>(n) * f_in);
  std::vector<float> out(static_cast<size_t>(n) * f_out);
  std::memset(out.data(), 0x7b, out.size() * sizeof(float));  // garbage: every element is written
  std::vector<unsigned long long> counters(static_cast<size_t>(n_counters), 0);

  constexpr unsigned int kThreads = 256;
  blockDim.x = kThreads;
  gridDim.x = grid;
  for (unsigned int b = 0; b < grid; ++b) {
    std::barrier<> block(kThreads);
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (unsigned int w = 0; w < kThreads / 32; ++w) {
      warps.push_back(std::make_unique<std::barrier<>>(32));
      g_emu.warps[w] = warps.back().get();
    }
    g_emu.block = &block;
    std::memset(mls_jit_shared4, 0x5a, sizeof(mls_jit_shared4));  // shared memory is not zeroed
    std::vector<std::thread> threads;
    for (unsigned int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t, b] {
        threadIdx.x = t;
        blockIdx.x = b;
        if (counted) {
          mls_jit_normalize_counted(in.data(), n, out.data(), counters.data());
        } else {
          mls_jit_normalize(in.data(), n, out.data(), nullptr);
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  WriteFile(argv[2], out);
  WriteFile(argv[3], counters);
  return 0;
}
