// The autograd node of normlab.torch's native route (normlab/torch/route.py draws the routes).
//
// A training step calls each norm once forward and once backward, and between
// a model's matrix products every Python operation is slower than on its own
// (torch's OpenMP workers spin on the other cores): a Python autograd.Function
// costs more there than the kernels it calls. This module does the route's
// per-call work in C++ -- output and statistics allocated, the kernels called,
// running statistics and num_batches_tracked updated, x saved for backward in
// a graph node of its own -- and calls normlab's own compiled kernels (Numba
// cfuncs, see normlab/backends/_numba_entry_points.py) through the addresses
// in the plan. Results are bit for bit those of the core's route: the kernels
// are the same.
//
// It is a Python module (pybind11), not a torch operator: an operator's call
// from Python (argument parsing against its schema, the dispatcher, a
// torch::autograd::Function's bookkeeping) cost more per forward inside a
// training step than the kernels of a BatchNorm1d on (128, 512) (measured in
// docs/benchmarks.md, "A native autograd node"); and the route is never taken
// under torch.compile, tracing or functorch transforms, where an operator
// would be needed.
//
// Plan(kind, arg, record): one input signature's facts, built once (normlab.torch.fused.plan_for)
//   kind, arg the norm (a key of normlab.torch.ops.LAYOUTS and its argument): for double backward
//   record    the plan record, int64 fields named in normlab/backends/plan_record.py (the only definition;
//             normlab_plan_fields.h is generated from it at build time): the kernels' entry points, the
//             sizes every call is checked against (numel, stats, params), the kernels' view and task grid,
//             which the entry points read from the same record
//
// fused_norm(x, weight, bias, mean, var, running_mean, running_var, num_batches_tracked, momentum, eps, plan)
//   -> (out, stats)
//   x        contiguous float/double CPU input; weight, bias: None or P parameters of x's dtype
//   mean/var given statistics (eval) or None (x's); stats: (3, S) double mean, var, invstd
//   running_mean/var, num_batches_tracked: updated in place when given (batch norm in training)
//   momentum None: cumulative average, factor 1 / (num_batches_tracked + 1), as torch.nn
// Every tensor must be what the plan was made for (normlab.torch.route checked the call before choosing this
// route; the node checks again what its kernels touch). out is None when the computed statistics are not
// finite or an input carries a forward-mode tangent: nothing was changed, and the caller takes the core's route.

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "normlab_plan_fields.h"

namespace {

namespace py = pybind11;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

using ForwardFn = int64_t (*)(void*, void*, void*, double, int64_t, double*, void*, const int64_t*);
using BackwardFn = void (*)(void*, void*, void*, double*, int64_t, void*, void*, void*, const int64_t*);
using UpdateFn = void (*)(void*, void*, double*, int64_t, int64_t, double);
// The backward's flags (normlab/backends/_numba_entry_points.py: GIVEN, NO_DX, NO_PARAMS).
constexpr int64_t kGiven = 1, kNoDx = 2, kNoParams = 4;

// The plan record's fields, in the order of normlab/backends/plan_record.py: k_forward, k_backward, ...
#define NORMLAB_FIELD_ENUM(name) k_##name,
enum Field : size_t { NORMLAB_PLAN_FIELDS(NORMLAB_FIELD_ENUM) kFieldCount };
#undef NORMLAB_FIELD_ENUM

struct Plan {
  std::string kind;
  std::vector<int64_t> arg, record;
  int64_t operator[](Field field) const { return record[field]; }
  const int64_t* data() const { return record.data(); }  // what the entry points read
};

std::shared_ptr<Plan> make_plan(std::string kind, std::vector<int64_t> arg, std::vector<int64_t> record) {
  TORCH_CHECK(record.size() == kFieldCount, "Plan: a plan record has ", kFieldCount, " fields, got ", record.size());
  auto plan = std::make_shared<Plan>(Plan{std::move(kind), std::move(arg), std::move(record)});
  const Plan& p = *plan;
  // The record's sizes must describe one view: the kernels index x by (n, groups, per_group, length).
  TORCH_CHECK(p[k_numel] > 0 && p[k_n] * p[k_groups] * p[k_per_group] * p[k_length] == p[k_numel] &&
                  p[k_params] == p[k_groups] * p[k_per_group] &&
                  p[k_stats] == (p.kind == "batch" ? p[k_groups] : p[k_n] * p[k_groups]),
              "Plan: the record's sizes do not describe one view (numel ", p[k_numel], ", n ", p[k_n], ", groups ",
              p[k_groups], ", per_group ", p[k_per_group], ", length ", p[k_length], ", stats ", p[k_stats],
              ", params ", p[k_params], ")");
  return plan;
}

// normlab's kernel launch lock (normlab.backends.numba_backend.launch_lock), set where Numba's threading layer
// is not thread-safe (workqueue), else null. A Python lock, so that launches from Python and from this node
// take turns; leaked on purpose (no destructor runs after the interpreter is gone).
py::object* launch_lock = nullptr;

// Holds the launch lock, if there is one, for its lifetime. Called without the GIL (the node releases it):
// takes the GIL only to call acquire/release; a thread waiting in acquire() lets others run.
struct LaunchGuard {
  bool held = false;
  LaunchGuard() {
    if (launch_lock == nullptr) return;
    py::gil_scoped_acquire gil;
    launch_lock->attr("acquire")();
    held = true;
  }
  ~LaunchGuard() {
    if (!held) return;
    py::gil_scoped_acquire gil;
    launch_lock->attr("release")();
  }
  LaunchGuard(const LaunchGuard&) = delete;
  LaunchGuard& operator=(const LaunchGuard&) = delete;
};

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }
OptTensor or_none(const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

// A fresh CPU tensor, straight from the allocator (no operator call: a step makes dozens of these).
at::Tensor fresh(at::IntArrayRef sizes, at::ScalarType dtype) { return at::detail::empty_cpu(sizes, dtype); }

// A fresh tensor like a contiguous x, advised onto transparent huge pages when large (normlab.torch.memory's
// rule).
at::Tensor fresh_like(const at::Tensor& x, int64_t huge_page_bytes) {
  at::Tensor out = fresh(x.sizes(), x.scalar_type());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto bytes = static_cast<int64_t>(out.nbytes());
  if (huge_page_bytes > 0 && bytes >= huge_page_bytes) {
    const auto start = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t page = 4096, first = (start + page - 1) / page * page;
    madvise(reinterpret_cast<void*>(first), (start + bytes - first) / page * page, MADV_HUGEPAGE);
  }
#endif
  return out;
}

// dst[0:n] = src (n values, any shape) as double. A plain loop for the usual contiguous float/double CPU
// buffers: two copy_ operator calls cost more than the rest of an eval call's setup inside a model's step.
void copy_row(double* dst, const at::Tensor& src, int64_t n) {
  if (src.is_cpu() && src.is_contiguous() && src.scalar_type() == at::kFloat) {
    const float* p = src.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
  } else if (src.is_cpu() && src.is_contiguous() && src.scalar_type() == at::kDouble) {
    const double* p = src.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) dst[i] = p[i];
  } else {
    at::from_blob(dst, {n}, at::TensorOptions().dtype(at::kDouble)).copy_(src.reshape(-1));
  }
}

// The backward of one call: the closed form by the plan's kernel, or in torch ops under create_graph.
// Its next edges are x, weight, bias (an absent one has an invalid edge).
struct FusedNormBackward : public torch::autograd::Node {
  SavedVariable x, gamma, stats, weight, mean, var;
  std::shared_ptr<const Plan> plan;
  double eps = 0.0;
  std::vector<int64_t> param_shape;  // (P,), or LayerNorm((5, 7))'s (5, 7): the parameters' gradients' shape

  std::string name() const override { return "FusedNormBackward"; }

  void release_variables() override {  // after a backward without retain_graph: x is freed with the graph
    for (SavedVariable* v : {&x, &gamma, &stats, &weight, &mean, &var}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list result(3);
    if (!grads[0].defined()) return result;  // out did not reach what was differentiated
    // (unpacking checks that none was changed in place, and that the graph was not freed)
    const at::Tensor x_ = x.unpack(), gamma_ = gamma.unpack(), stats_ = stats.unpack();
    const at::Tensor weight_ = weight.unpack(), mean_ = mean.unpack(), var_ = var.unpack();
    at::Tensor dx, dweight, dbias;
    if (at::GradMode::is_enabled()) {
      // create_graph: the closed form in torch ops, which autograd can differentiate (normlab.torch registers
      // normlab::closed_form_grads from Python; the statistics are recomputed as functions of x).
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("normlab::closed_form_grads", "")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                               const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef, double)>();
      std::tie(dx, dweight, dbias) = op.call(grads[0], x_, or_none(weight_), stats_, or_none(mean_),
                                             or_none(var_), plan->kind, plan->arg, eps);
    } else {
      const Plan& p = *plan;
      at::Tensor dout = grads[0];
      if (dout.scalar_type() != x_.scalar_type() || !dout.is_contiguous()) {
        dout = dout.to(x_.scalar_type()).contiguous();
      }
      // Only what the graph wants, as torch's norms skip outputs by their output mask: no dx for an input that
      // does not require grad (a norm on the model's input), no dgamma, dbeta for frozen or absent parameters
      // (fine-tuning, elementwise_affine=False); the kernels then skip that work.
      const bool want_dx = task_should_compute_output(0);
      const bool want_params = task_should_compute_output(1) || task_should_compute_output(2);
      if (!want_dx && !want_params) return result;
      if (want_dx) dx = fresh_like(x_, p[k_huge_page_bytes]);
      if (want_params) {
        dweight = fresh(param_shape, x_.scalar_type());
        dbias = fresh(param_shape, x_.scalar_type());
      }
      LaunchGuard launching;
      const int64_t flags = (mean_.defined() ? kGiven : 0) | (want_dx ? 0 : kNoDx) | (want_params ? 0 : kNoParams);
      reinterpret_cast<BackwardFn>(p[k_backward])(x_.data_ptr(), dout.data_ptr(), gamma_.data_ptr(),
                                                  stats_.data_ptr<double>(), flags,
                                                  want_params ? dweight.data_ptr() : nullptr,
                                                  want_params ? dbias.data_ptr() : nullptr,
                                                  want_dx ? dx.data_ptr() : nullptr, p.data());
    }
    if (task_should_compute_output(0)) result[0] = dx;
    if (task_should_compute_output(1)) result[1] = dweight;
    if (task_should_compute_output(2)) result[2] = dbias;
    return result;
  }
};

// Refuses (an internal error: normlab.torch.route checked the call's signature before choosing this route)
// any tensor the kernels would read or write that is not what the plan was made for.
void check_operands(const Plan& p, const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                    const OptTensor& mean, const OptTensor& var, const OptTensor& running_mean,
                    const OptTensor& running_var, const OptTensor& num_batches_tracked) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "fused_norm: x must be a contiguous float32/float64 CPU tensor");
  TORCH_CHECK(x.numel() == p[k_numel], "fused_norm: the plan (for ", p[k_numel], " values) does not match x of shape ",
              x.sizes());
  for (const auto& [t, want] : {std::pair{&weight, p[k_params]}, {&bias, p[k_params]}, {&mean, p[k_stats]},
                                {&var, p[k_stats]}, {&running_mean, p[k_stats]}, {&running_var, p[k_stats]}}) {
    TORCH_CHECK(!present(*t) || ((*t)->numel() == want && (*t)->device().is_cpu()), "fused_norm: a per-channel tensor "
                "has ", (*t)->numel(), " values on ", (*t)->device(), " where the plan has ", want, " on the CPU");
  }
  for (const OptTensor* t : {&weight, &bias}) {  // read through raw pointers as x's type
    TORCH_CHECK(!present(*t) || ((*t)->scalar_type() == x.scalar_type() && (*t)->is_contiguous()),
                "fused_norm: weight and bias must be contiguous and of x's dtype");
  }
  if (present(running_mean) || present(running_var)) {  // one rule updates both, chosen by their one dtype
    TORCH_CHECK(present(running_mean) && present(running_var) &&
                    running_mean->scalar_type() == running_var->scalar_type() &&
                    (running_mean->scalar_type() == at::kFloat || running_mean->scalar_type() == at::kDouble) &&
                    running_mean->is_contiguous() && running_var->is_contiguous(),
                "fused_norm: running_mean and running_var must be contiguous float32/float64 tensors of one dtype");
  }
  TORCH_CHECK(!present(num_batches_tracked) ||
                  (num_batches_tracked->scalar_type() == at::kLong && num_batches_tracked->numel() == 1 &&
                   num_batches_tracked->is_cpu() && num_batches_tracked->is_contiguous()),
              "fused_norm: num_batches_tracked must be a one-element int64 CPU tensor");
}

std::tuple<at::Tensor, at::Tensor> fused_norm(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                              const OptTensor& mean, const OptTensor& var,
                                              const OptTensor& running_mean, const OptTensor& running_var,
                                              const OptTensor& num_batches_tracked, std::optional<double> momentum,
                                              double eps, const std::shared_ptr<const Plan>& plan) {
  const Plan& p = *plan;
  check_operands(p, x, weight, bias, mean, var, running_mean, running_var, num_batches_tracked);
  // Forward-mode AD (dual tensors): the core's route, which says it is not supported.
  for (const OptTensor& t : {OptTensor(x), weight, bias, mean, var}) {
    if (torch::autograd::isFwGradDefined(t)) return {};
  }
  const int64_t stats_count = p[k_stats], params = p[k_params];
  const bool given = present(mean);
  at::Tensor out, stats, gamma;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain allocations
    gamma = present(weight) ? *weight : at::ones({params}, x.options());
    const at::Tensor beta = present(bias) ? *bias : at::zeros({params}, x.options());
    stats = fresh({3, stats_count}, at::kDouble);
    if (given) {
      copy_row(stats.data_ptr<double>(), *mean, stats_count);
      copy_row(stats.data_ptr<double>() + stats_count, *var, stats_count);
    }
    out = fresh_like(x, p[k_huge_page_bytes]);
    LaunchGuard launching;
    const auto finite = reinterpret_cast<ForwardFn>(p[k_forward])(x.data_ptr(), gamma.data_ptr(), beta.data_ptr(), eps,
                                                                  given, stats.data_ptr<double>(), out.data_ptr(),
                                                                  p.data());
    if (!finite) return {at::Tensor(), stats};
  }
  // Everything that can still refuse comes before any buffer changes: the count's version bump (an inference
  // tensor outside inference mode refuses, as torch.nn's add_ does) and the graph node (saving an inference x
  // refuses, as torch's kernels do).
  const bool counts = present(num_batches_tracked), update = present(running_mean);
  if (counts) num_batches_tracked->unsafeGetTensorImpl()->bump_version();  // as add_(1) would
  c10::intrusive_ptr<FusedNormBackward> node;
  if (torch::autograd::compute_requires_grad(x, weight, bias)) {
    node = c10::make_intrusive<FusedNormBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
    node->x = SavedVariable(x, false);
    node->gamma = SavedVariable(gamma, false);
    node->stats = SavedVariable(stats, false);
    node->weight = SavedVariable(weight, false);
    node->mean = SavedVariable(mean, false);
    node->var = SavedVariable(var, false);
    node->plan = plan;
    node->eps = eps;
    node->param_shape = present(weight) || present(bias) ? (present(weight) ? *weight : *bias).sizes().vec()
                                                         : std::vector<int64_t>{params};
  }
  if (update) {
    double factor = 0.0;
    if (momentum.has_value()) {
      factor = *momentum;
    } else if (counts) {
      factor = 1.0 / static_cast<double>(*num_batches_tracked->data_ptr<int64_t>() + 1);
    }
    const auto update_fn =
        reinterpret_cast<UpdateFn>(p[running_mean->scalar_type() == at::kFloat ? k_update_float : k_update_double]);
    TORCH_CHECK(update_fn != nullptr, "fused_norm: this plan has no running-statistics rule");
    update_fn(running_mean->data_ptr(), running_var->data_ptr(), stats.data_ptr<double>(), stats_count,
              x.numel() / stats_count, factor);
  }
  if (counts) *num_batches_tracked->data_ptr<int64_t>() += 1;  // num_batches_tracked.add_(1), no operator call
  if (node) torch::autograd::set_history(out, node);
  return {out, stats};
}

}  // namespace

// The tensors of one call as a key of normlab.torch.route's plan cache: for each, None or its class (Tensor or
// Parameter), layout, dtype, device, requires_grad and, if strided, contiguity and sizes -- what
// route._signature reads, at C++ speed (a test holds the two to the same distinctions). None for a tensor of
// any other class (a subclass may mean other semantics): the route then keys the call in Python.
py::object signature(const py::args& tensors) {
  std::string key;
  key.reserve(tensors.size() * 12 * sizeof(int64_t));
  const auto put = [&key](int64_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
  for (const py::handle h : tensors) {
    PyObject* obj = h.ptr();
    if (obj == Py_None) {
      put(-1);
      continue;
    }
    if (!THPVariable_CheckExact(obj)) return py::none();
    const at::Tensor& t = THPVariable_Unpack(obj);
    put(Py_TYPE(obj) == reinterpret_cast<PyTypeObject*>(ParameterClass));
    put(static_cast<int64_t>(t.layout()));
    put(static_cast<int64_t>(t.scalar_type()));
    put(static_cast<int64_t>(t.device().type()));
    put(t.device().index());
    put(t.requires_grad());
    if (t.layout() != at::kStrided) continue;  // (the checks refuse it)
    put(t.is_contiguous());
    put(t.dim());
    for (const int64_t size : t.sizes()) put(size);
  }
  return py::bytes(key);
}

#define NORMLAB_FIELD_NAME(name) #name,
const char* const kFieldNames[] = {NORMLAB_PLAN_FIELDS(NORMLAB_FIELD_NAME)};
#undef NORMLAB_FIELD_NAME

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  auto plan = py::class_<Plan, std::shared_ptr<Plan>>(m, "Plan")
                  .def(py::init(&make_plan), py::arg("kind"), py::arg("arg"), py::arg("record"))
                  .def_readonly("kind", &Plan::kind)
                  .def_readonly("arg", &Plan::arg);
  // Each field read back by name, as this side reads it (tests compare with what Python wrote).
#define NORMLAB_FIELD_PROPERTY(name) plan.def_property_readonly(#name, [](const Plan& p) { return p[k_##name]; });
  NORMLAB_PLAN_FIELDS(NORMLAB_FIELD_PROPERTY)
#undef NORMLAB_FIELD_PROPERTY
  py::tuple names(static_cast<size_t>(kFieldCount));
  for (size_t i = 0; i < kFieldCount; ++i) names[i] = py::str(kFieldNames[i]);
  m.attr("PLAN_FIELDS") = names;
  // The GIL is released while the kernels run: other Python threads (data loading) go on.
  m.def("fused_norm", &fused_norm, py::call_guard<py::gil_scoped_release>());
  m.def("signature", &signature, "The call's tensors as a plan-cache key (bytes), or None (route.py keys it)");
  m.def("set_launch_lock", [](py::object lock) { launch_lock = lock.is_none() ? nullptr : new py::object(lock); },
        "The lock kernel launches hold (None: none), normlab.backends.numba_backend.launch_lock()");
}
