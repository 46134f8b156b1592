// Built-in C++ backends used by tests and benchmarks (see backend.h).
#include <numeric>

#include "backends/backend.h"

namespace mlserve {
namespace {

class NoopBackend final : public Backend {
 public:
  void Execute(const float*, int64_t n, int64_t, BatchOutput* out) override {
    out->data.assign(static_cast<size_t>(n), 0.0f);
    out->rows = n;
    out->width = 1;
    out->ndim = 2;
  }
  std::string Name() const override { return "noop"; }
};

class RowSumBackend final : public Backend {
 public:
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override {
    out->data.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      double s = 0.0;
      for (int64_t j = 0; j < d; ++j) s += x[i * d + j];
      out->data[static_cast<size_t>(i)] = static_cast<float>(s);
    }
    out->rows = n;
    out->width = 1;
    out->ndim = 2;
  }
  std::string Name() const override { return "rowsum"; }
};

}  // namespace

std::unique_ptr<Backend> MakeBuiltinBackend(const std::string& name) {
  if (name == "noop") return std::make_unique<NoopBackend>();
  if (name == "rowsum") return std::make_unique<RowSumBackend>();
  return nullptr;
}

}  // namespace mlserve
