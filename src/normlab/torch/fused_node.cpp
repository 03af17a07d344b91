// The native autograd node of normlab.torch's fused route.
//
// A training step calls each norm once forward and once backward, and between
// a model's matrix products every Python operation is slower than on its own
// (torch's OpenMP workers spin on the other cores): a Python autograd.Function
// costs more there than the kernels it calls. This node does the route's
// per-call work in C++ -- output and statistics allocated, the kernels called,
// running statistics and num_batches_tracked updated, x saved for backward --
// and calls normlab's own compiled kernels (Numba cfuncs, see
// normlab/backends/_numba_entry_points.py) through the addresses in `plan`.
// Results are bit for bit those of the Python routes: the kernels are the same.
//
// normlab::fused_norm(x, weight, bias, mean, var, running_mean, running_var, num_batches_tracked,
//                     momentum, eps, kind, arg, plan) -> (out, stats)
//   x        contiguous float/double CPU input; weight, bias: None or P parameters of x's dtype
//   mean/var given statistics (eval) or None (x's); stats: (3, S) double mean, var, invstd
//   running_mean/var, num_batches_tracked: updated in place when given (batch norm in training)
//   momentum None: cumulative average, factor 1 / (num_batches_tracked + 1), as torch.nn
//   kind, arg the norm (a key of normlab.torch.ops.LAYOUTS and its argument): for double backward
//   plan     [forward, backward, update float, update double, huge-page bytes, S, P, dims...]:
//            S statistics of x.numel() / S values each, P parameters, dims as the entry points take
//            them (normlab/backends/_numba_entry_points.py)
// out is None (undefined) when the computed statistics are not finite, or weight/bias do not have
// x's dtype: nothing was changed, and the caller takes the general route.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

using ForwardFn = int64_t (*)(void*, void*, void*, double, int64_t, double*, void*, const int64_t*);
using BackwardFn = void (*)(void*, void*, void*, double*, int64_t, void*, void*, void*, const int64_t*);
using UpdateFn = void (*)(void*, void*, double*, int64_t, int64_t, double);

enum PlanSlot { kForward, kBackward, kUpdateFloat, kUpdateDouble, kHugePageBytes, kStats, kParams, kDims };

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// A fresh tensor like x, advised onto transparent huge pages when large (normlab.torch.memory's rule).
at::Tensor fresh_like(const at::Tensor& x, int64_t huge_page_bytes) {
  at::Tensor out = at::empty_like(x);
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

// Given statistics (any float dtype) into rows 0 and 1 of stats.
void copy_given(at::Tensor& stats, const at::Tensor& mean, const at::Tensor& var) {
  stats.select(0, 0).copy_(mean.reshape(-1));
  stats.select(0, 1).copy_(var.reshape(-1));
}

// What the forward computed before the node exists: a non-tensor argument of apply, so that autograd
// takes out and stats as the node's own outputs (not as inputs passed through).
struct Forwarded {
  at::Tensor out, stats, gamma;
};

struct FusedNorm : public torch::autograd::Function<FusedNorm> {
  static constexpr size_t kForwardArgs = 10;  // backward returns one result per argument of forward

  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& mean, const OptTensor& var,
                               const Forwarded& done, double eps, const std::string& kind, at::IntArrayRef arg,
                               at::IntArrayRef plan) {
    ctx->save_for_backward({x, done.gamma, done.stats, present(weight) ? *weight : at::Tensor(),
                            present(mean) ? *mean : at::Tensor(), present(var) ? *var : at::Tensor()});
    ctx->saved_data["plan"] = plan.vec();
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["arg"] = arg.vec();
    ctx->saved_data["has_bias"] = present(bias);
    // the parameters' shape (LayerNorm((5, 7)): (5, 7)), which their gradients take
    ctx->saved_data["param_shape"] =
        present(weight) ? weight->sizes().vec() : (present(bias) ? bias->sizes().vec() : std::vector<int64_t>{});
    ctx->mark_non_differentiable({done.stats});
    ctx->set_materialize_grads(false);  // stats never gets a gradient: no zeros for it on every backward
    return {done.out, done.stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();  // (unpacking checks that none was changed in place)
    const at::Tensor &x = saved[0], &gamma = saved[1], &stats = saved[2], &weight = saved[3];
    const at::Tensor &mean = saved[4], &var = saved[5];
    const bool given = mean.defined();
    at::Tensor dx, dweight, dbias;
    if (!grads[0].defined()) {  // out did not reach what was differentiated
      return variable_list(kForwardArgs);
    }
    if (at::GradMode::is_enabled()) {
      // create_graph: the closed form in torch ops, which autograd can differentiate (normlab.torch registers
      // normlab::closed_form_grads from Python; the statistics are recomputed as functions of x).
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("normlab::closed_form_grads", "")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                               const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef, double)>();
      auto opt = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
      const auto arg = ctx->saved_data["arg"].toIntVector();
      std::tie(dx, dweight, dbias) = op.call(grads[0], x, opt(weight), stats, opt(mean), opt(var),
                                             ctx->saved_data["kind"].toStringRef(), arg,
                                             ctx->saved_data["eps"].toDouble());
    } else {
      const auto plan = ctx->saved_data["plan"].toIntVector();
      const at::Tensor dout = grads[0].to(x.scalar_type()).contiguous();
      dx = fresh_like(x, plan[kHugePageBytes]);
      dweight = at::empty({plan[kParams]}, x.options());
      dbias = at::empty({plan[kParams]}, x.options());
      reinterpret_cast<BackwardFn>(plan[kBackward])(x.data_ptr(), dout.data_ptr(), gamma.data_ptr(),
                                                    stats.data_ptr<double>(), given, dweight.data_ptr(),
                                                    dbias.data_ptr(), dx.data_ptr(), plan.data() + kDims);
      const auto shape = ctx->saved_data["param_shape"].toIntVector();
      if (!shape.empty()) {
        dweight = dweight.view(shape);
        dbias = dbias.view(shape);
      }
    }
    // One result per argument of forward; needs_input_grad counts only the tensors that were given.
    const bool has_weight = weight.defined(), has_bias = ctx->saved_data["has_bias"].toBool();
    variable_list result(kForwardArgs);
    if (ctx->needs_input_grad(0)) result[0] = dx;
    if (has_weight && ctx->needs_input_grad(1)) result[1] = dweight;
    if (has_bias && ctx->needs_input_grad(1 + has_weight)) result[2] = dbias;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> fused_norm(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                                              const OptTensor& mean, const OptTensor& var,
                                              const OptTensor& running_mean, const OptTensor& running_var,
                                              const OptTensor& num_batches_tracked, std::optional<double> momentum,
                                              double eps, c10::string_view kind, at::IntArrayRef arg,
                                              at::IntArrayRef plan) {
  TORCH_CHECK(plan.size() > kDims, "fused_norm: plan has ", plan.size(), " entries");
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "fused_norm: x must be a contiguous float32/float64 CPU tensor");
  const int64_t stats_count = plan[kStats], params = plan[kParams];
  TORCH_CHECK(stats_count > 0 && x.numel() % stats_count == 0, "fused_norm: plan does not match x's shape");
  const int64_t count = x.numel() / stats_count;  // values per statistic
  for (const OptTensor* p : {&weight, &bias}) {
    if (present(*p) && ((*p)->scalar_type() != x.scalar_type() || !(*p)->is_contiguous())) return {};
  }
  const bool given = present(mean);
  Forwarded done;
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd(std::in_place);  // plain allocations
  done.gamma = present(weight) ? *weight : at::ones({params}, x.options());
  const at::Tensor beta = present(bias) ? *bias : at::zeros({params}, x.options());
  done.stats = at::empty({3, stats_count}, x.options().dtype(at::kDouble));
  if (given) copy_given(done.stats, *mean, *var);
  done.out = fresh_like(x, plan[kHugePageBytes]);
  const auto finite = reinterpret_cast<ForwardFn>(plan[kForward])(x.data_ptr(), done.gamma.data_ptr(),
                                                                  beta.data_ptr(), eps, given,
                                                                  done.stats.data_ptr<double>(),
                                                                  done.out.data_ptr(), plan.data() + kDims);
  if (!finite) return {at::Tensor(), done.stats};
  if (present(running_mean) && present(running_var)) {
    double factor = 0.0;
    if (momentum.has_value()) {
      factor = *momentum;
    } else if (present(num_batches_tracked)) {
      TORCH_CHECK(num_batches_tracked->scalar_type() == at::kLong, "num_batches_tracked must be int64");
      factor = 1.0 / static_cast<double>(*num_batches_tracked->data_ptr<int64_t>() + 1);
    }
    const auto update = reinterpret_cast<UpdateFn>(
        plan[running_mean->scalar_type() == at::kFloat ? kUpdateFloat : kUpdateDouble]);
    TORCH_CHECK(update != nullptr, "fused_norm: this plan has no running-statistics rule");
    update(running_mean->data_ptr(), running_var->data_ptr(), done.stats.data_ptr<double>(), stats_count, count,
           factor);
  }
  if (present(num_batches_tracked)) num_batches_tracked->add_(1);
  below_autograd.reset();  // apply records the node: autograd dispatch again
  auto result = FusedNorm::apply(x, weight, bias, mean, var, done, eps, std::string(kind), arg, plan);
  return {result[0], result[1]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def(
      "fused_norm(Tensor x, Tensor? weight, Tensor? bias, Tensor? mean, Tensor? var, Tensor? running_mean, "
      "Tensor? running_var, Tensor? num_batches_tracked, float? momentum, float eps, str kind, int[] arg, "
      "int[] plan) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normlab, CompositeImplicitAutograd, m) { m.impl("fused_norm", fused_norm); }
