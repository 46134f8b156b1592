// Python bindings of FeaturePlan: dict spec -> PlanSpec, transform (GIL released), histograms.
#include <cmath>
#include <memory>
#include <string>

#include "bindings/common.h"
#include "cuda/cuda_benchmark.h"
#include "cuda/cuda_normalizer.h"
#include "cuda/jit_compile.h"
#include "plan/feature_plan.h"
#include "plan/plan_codegen.h"

namespace mlserve::bindings {
namespace {

[[noreturn]] void BadSpec(const std::string& where, const std::string& problem) {
  ThrowInvalid("feature plan: " + where + ": " + problem);
}

std::string Str(const py::handle& h, const std::string& where, const char* key) {
  if (!py::isinstance<py::str>(h)) BadSpec(where, std::string("'") + key + "' must be a string");
  return h.cast<std::string>();
}

double Number(const py::handle& h, const std::string& where, const std::string& key) {
  if (py::isinstance<py::bool_>(h) || !(py::isinstance<py::int_>(h) || py::isinstance<py::float_>(h))) {
    BadSpec(where, "parameter '" + key + "' must be a number, got " +
                       py::str(py::repr(h)).cast<std::string>());
  }
  return h.cast<double>();
}

OpSpec ParseOp(const py::handle& h, const std::string& where) {
  if (!py::isinstance<py::dict>(h)) BadSpec(where, "each op must be an object like {\"op\": \"log1p\"}");
  const auto d = h.cast<py::dict>();
  if (!d.contains("op")) BadSpec(where, "an op is missing its 'op' name");
  OpSpec op;
  op.op = Str(d["op"], where, "op");
  for (const auto& kv : d) {
    const std::string key = py::str(kv.first).cast<std::string>();
    if (key == "op") continue;
    if (key == "vocabulary") {
      if (!py::isinstance<py::list>(kv.second) && !py::isinstance<py::tuple>(kv.second)) {
        BadSpec(where, "onehot 'vocabulary' must be a list of category names");
      }
      op.vocabulary_size = static_cast<int64_t>(py::len(kv.second));
      for (const auto& v : kv.second) op.vocabulary.push_back(py::str(v).cast<std::string>());
      continue;
    }
    op.params.emplace_back(key, Number(kv.second, where + " op '" + op.op + "'", key));
  }
  return op;
}

PlanSpec ParseSpec(const py::dict& spec) {
  PlanSpec out;
  if (!spec.contains("features")) ThrowInvalid("feature plan: missing 'features' (a list of features)");
  const py::object features = spec["features"];
  if (!py::isinstance<py::list>(features) && !py::isinstance<py::tuple>(features)) {
    ThrowInvalid("feature plan: 'features' must be a list");
  }
  size_t i = 0;
  for (const auto& fh : features) {
    std::string where = "feature #" + std::to_string(i++);
    if (!py::isinstance<py::dict>(fh)) BadSpec(where, "must be an object with name, kind and ops");
    const auto fd = fh.cast<py::dict>();
    FeatureSpec f;
    if (!fd.contains("name")) BadSpec(where, "has no 'name'");
    f.name = Str(fd["name"], where, "name");
    where = "feature '" + f.name + "'";
    if (!fd.contains("kind")) BadSpec(where, "has no 'kind' (numeric or categorical)");
    f.kind = Str(fd["kind"], where, "kind");
    if (fd.contains("ops")) {
      const py::object ops = fd["ops"];
      if (!py::isinstance<py::list>(ops) && !py::isinstance<py::tuple>(ops)) {
        BadSpec(where, "'ops' must be a list");
      }
      for (const auto& oh : ops) f.ops.push_back(ParseOp(oh, where));
    }
    if (fd.contains("histogram")) {
      const py::object h = fd["histogram"];
      if (py::isinstance<py::bool_>(h)) {
        f.histogram = h.cast<bool>();
      } else if (py::isinstance<py::dict>(h)) {
        f.histogram = true;
        const auto hd = h.cast<py::dict>();
        if (hd.contains("edges")) {
          for (const auto& e : hd["edges"]) f.histogram_edges.push_back(Number(e, where, "histogram edge"));
        }
      } else if (!h.is_none()) {
        BadSpec(where, "'histogram' must be true/false or {\"edges\": [...]}");
      }
    }
    out.features.push_back(std::move(f));
  }
  if (spec.contains("output_order") && !spec["output_order"].is_none()) {
    out.has_output_order = true;
    for (const auto& n : spec["output_order"]) out.output_order.push_back(Str(n, "output_order", "name"));
  }
  return out;
}

py::dict SnapshotToDict(const HistogramSnapshot& s) {
  py::dict features;
  for (const auto& h : s.features) {
    py::dict d;
    py::array_t<int64_t> counts(static_cast<py::ssize_t>(h.counts.size()));
    std::copy(h.counts.begin(), h.counts.end(), counts.mutable_data());
    d["counts"] = counts;
    if (h.encoding == MLS_ENC_NUMERIC) {
      py::array_t<float> edges(static_cast<py::ssize_t>(h.edges.size()));
      std::copy(h.edges.begin(), h.edges.end(), edges.mutable_data());
      d["kind"] = "numeric";
      d["edges"] = edges;
      d["underflow"] = h.underflow;
      d["overflow"] = h.overflow;
      d["nan"] = h.missing;
    } else {
      d["kind"] = "categorical";
      d["encoding"] = h.encoding == MLS_ENC_ONEHOT ? "onehot" : "hash_bucket";
      d["missing"] = h.missing;
    }
    features[py::str(h.name)] = d;
  }
  py::dict out;
  out["rows"] = s.rows;
  out["features"] = features;
  return out;
}

}  // namespace

py::dict HistogramsToDict(const FeaturePlan& plan, bool reset) {
  HistogramSnapshot s;
  {
    py::gil_scoped_release release;
    s = plan.Snapshot(reset);
  }
  return SnapshotToDict(s);
}

void BindPlan(py::module_& m) {
  py::class_<FeaturePlan, std::shared_ptr<FeaturePlan>>(m, "FeaturePlan", R"doc(
Compiled feature plan (docs/feature_plan.md). Construct from the parsed JSON dict; mlserve.FeaturePlan
wraps this with file/string loading.)doc")
      .def(py::init([](const py::dict& spec) { return std::make_shared<FeaturePlan>(ParseSpec(spec)); }),
           py::arg("spec"))
      .def_property_readonly("f_in", &FeaturePlan::f_in)
      .def_property_readonly("f_out", &FeaturePlan::f_out)
      .def_property_readonly("input_names", &FeaturePlan::input_names)
      .def_property_readonly("output_names", &FeaturePlan::output_names)
      .def_property_readonly("has_histograms", &FeaturePlan::has_histograms)
      .def(
          "transform",
          [](const FeaturePlan& plan, const py::object& x, bool histograms, int num_threads,
             const py::object& out_arg) {
            FloatArray a = InputRows(x, plan);
            const int64_t n = a.shape(0);
            py::array_t<float> out;
            if (out_arg.is_none()) {
              out = py::array_t<float>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(plan.f_out())});
            } else {
              // A caller-owned buffer (reused across calls: no page faults on fresh memory).
              if (!py::isinstance<py::array_t<float>>(out_arg)) ThrowInvalid("out must be a float32 numpy array");
              out = py::reinterpret_borrow<py::array_t<float>>(out_arg);
              const bool c_contig = (out.flags() & py::array::c_style) != 0;
              if (out.ndim() != 2 || out.shape(0) != n || out.shape(1) != plan.f_out() || !c_contig ||
                  !out.writeable()) {
                ThrowInvalid("out must be a writeable, C-contiguous float32 array of shape (" +
                             std::to_string(n) + ", " + std::to_string(plan.f_out()) + ")");
              }
            }
            const float* in = a.data();
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;  // pure C++ over buffers the arrays keep alive
              plan.Transform(in, n, plan.f_in(), o, histograms, num_threads);
            }
            return out;
          },
          py::arg("x"), py::arg("histograms") = false, py::arg("num_threads") = 1,
          py::arg("out") = py::none(),
          "Normalize float32 [n, f_in] -> float32 [n, f_out] (into `out` when given); optionally "
          "count histograms.")
      .def(
          "transform_cuda",
          [](const FeaturePlan& plan, const py::object& x, int device, bool histograms,
             const std::string& kernel) {
            FloatArray a = InputRows(x, plan);
            const int64_t n = a.shape(0);
            py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(plan.f_out())});
            const float* in = a.data();
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;  // device work and copies; no Python inside
              CudaNormalizer normalizer(plan, device, kernel);
              normalizer.Transform(in, n, o, histograms);
            }
            return out;
          },
          py::arg("x"), py::arg("device") = 0, py::arg("histograms") = false,
          py::arg("kernel") = "",
          "transform() on a GPU; raises mlserve.errors.Unavailable without a CUDA build or GPU. "
          "kernel: 'generic', 'jit' (the plan's NVRTC-specialized kernel; Unavailable when it "
          "cannot be built), 'jit-tma' (the same with Hopper bulk copies) or 'auto'; '' reads "
          "MLSERVE_CUDA_KERNEL (default generic).")
      .def(
          "benchmark_cuda",
          [](const FeaturePlan& plan, const py::object& x, int device, int iterations,
             bool histograms, const std::string& kernel) {
            FloatArray a = InputRows(x, plan);
            const int64_t n = a.shape(0);
            const float* in = a.data();
            CudaNormalizeTiming t;
            {
              py::gil_scoped_release release;  // device work only
              t = TimeCudaNormalize(plan, in, n, device, iterations, histograms, kernel);
            }
            py::dict d;
            d["rows"] = n;
            d["kernel_ms"] = t.kernel_ms;
            d["copy_ms"] = t.copy_ms;
            d["bytes"] = t.bytes;
            d["tile_rows"] = t.tile_rows;
            d["blocks_per_sm"] = t.blocks_per_sm;
            d["max_blocks"] = t.max_blocks;
            d["buffer_sets"] = t.buffer_sets;
            d["kernel"] = t.kernel;
            d["jit_compile_ms"] = t.jit_compile_ms;
            d["registers"] = t.registers;
            d["local_bytes"] = t.local_bytes;
            return d;
          },
          py::arg("x"), py::arg("device") = 0, py::arg("iterations") = 50,
          py::arg("histograms") = true, py::arg("kernel") = "",
          "Benchmark hook: median times of the normalize kernel over x's rows (on the device) and "
          "of a device-to-device copy of the same bytes; the plan's counters are not touched.")
      .def(
          "cuda_jit_source",
          [](const FeaturePlan& plan, int tile_rows, bool kernel, bool tma, int min_blocks) {
            const int rows = tile_rows > 0 ? tile_rows : DefaultJitTileRows(plan);
            return GenerateNormalizeSource(plan, JitKernelShape{rows, tma, min_blocks}, kernel);
          },
          py::arg("tile_rows") = 0, py::arg("kernel") = true, py::arg("tma") = false,
          py::arg("min_blocks") = kJitDefaultMinBlocks,
          "The plan's specialized normalizer source (plan/plan_codegen.h): C++ for the host "
          "(mls_jit_row) and, with kernel=True, the CUDA kernels NVRTC compiles. tile_rows 0: "
          "the default tile.")
      .def(
          "compile_cuda_jit",
          [](const FeaturePlan& plan, const std::string& arch, int tile_rows, bool tma,
             int min_blocks) {
            JitBinary bin;
            {
              py::gil_scoped_release release;
              bin = CompileJitNormalizeKernel(plan, arch, JitKernelShape{tile_rows, tma, min_blocks});
            }
            py::dict d;
            d["arch"] = arch;
            d["tile_rows"] = bin.tile_rows;
            d["bytes"] = bin.output->binary.size();
            d["compile_ms"] = bin.output->compile_ms;
            d["cached"] = bin.cached;
            d["log"] = bin.output->log;
            d["binary"] = py::bytes(bin.output->binary.data(), bin.output->binary.size());
            return d;
          },
          py::arg("arch") = "sm_90", py::arg("tile_rows") = 0, py::arg("tma") = false,
          py::arg("min_blocks") = kJitDefaultMinBlocks,
          "Compiles the plan's JIT normalize kernels with NVRTC for arch ('sm_90': CUBIN, "
          "'compute_90': PTX) without a GPU; raises Unavailable without NVRTC.")
      .def(
          "merge_counters",
          [](const FeaturePlan& plan, const py::array_t<int64_t, py::array::c_style>& counters,
             int64_t rows) {
            if (counters.ndim() != 1 || counters.shape(0) != plan.view().n_counters) {
              ThrowInvalid("counters must be a 1-d int64 array of the plan's " +
                           std::to_string(plan.view().n_counters) + " counters");
            }
            if (rows < 0) ThrowInvalid("rows must be >= 0");
            plan.MergeCounters(counters.data(), rows);
          },
          py::arg("counters"), py::arg("rows"),
          "Adds externally computed counters (the plan's flat counter layout, "
          "compiled_plan.h) for `rows` rows to the histograms.")
      .def_property_readonly(
          "n_counters", [](const FeaturePlan& plan) { return plan.view().n_counters; },
          "Length of the plan's flat histogram counter array.")
      .def("histograms", &HistogramsToDict, py::arg("reset") = false,
           "Counters since the last reset; reset=True reads and zeroes them atomically.");
}

}  // namespace mlserve::bindings
