// Fused CPU kernels for the pointwise math of one (clipped) GRU step, forward and backward.
//
// Why: in PyTorch the gate math of one step is ~12 separate ops (each a pass over memory plus
// dispatch), which cost more than the step's matmul at LFADS sizes. Here it is one vectorised pass.
// The math, argument layout and outputs are exactly those of `_cell_forward` / `_cell_backward` in
// neuralnets/nn/fast.py (the reference; see its docstring); the loops over time stay in Python.
//
// Layout: every tensor is (R, C) or (K, B, C) with the same leading sizes as the first output, the
// last dim contiguous and any leading strides (0 = broadcast), so per-step slices of time-major
// buffers and of transposed projections need no copy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

namespace {

using at::Tensor;

// Pointer to row r of a 2-d or 3-d tensor with a contiguous last dim.
template <typename T>
struct Rows {
  T* base;
  int64_t d1, s0, s1;
  bool three;
  explicit Rows(const Tensor& t)
      : base(static_cast<T*>(t.data_ptr())),
        d1(t.dim() == 3 ? t.size(1) : 1),
        s0(t.stride(0)),
        s1(t.dim() == 3 ? t.stride(1) : 0),
        three(t.dim() == 3) {}
  T* operator[](int64_t r) const { return three ? base + (r / d1) * s0 + (r % d1) * s1 : base + r * s0; }
};

void check(const Tensor& t, const Tensor& like, int64_t cols, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "neuralnets gru_cell: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "neuralnets gru_cell: ", name, " has dtype ", t.scalar_type(),
              "; expected ", dtype);
  TORCH_CHECK(t.dim() == like.dim() && (t.dim() == 2 || t.dim() == 3), "neuralnets gru_cell: ", name,
              " must be 2-d or 3-d like the output; got ", t.sizes());
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    TORCH_CHECK(t.size(d) == like.size(d), "neuralnets gru_cell: ", name, " has shape ", t.sizes(),
                "; leading dims must match ", like.sizes());
  }
  TORCH_CHECK(t.size(-1) == cols && (t.stride(-1) == 1 || cols == 1), "neuralnets gru_cell: ", name,
              " needs a contiguous last dim of size ", cols, "; got shape ", t.sizes(), " strides ",
              t.strides());
}

// Rows per parallel chunk: ~16k state elements, so that small steps stay on one thread.
inline int64_t grain_rows(int64_t H) { return std::max<int64_t>(1, 16384 / H); }

template <typename Vec>
inline Vec sigmoid(const Vec& x) {
  return Vec(1) / (Vec(1) + x.neg().exp_u20());
}

// tanh(x) = 2 sigmoid(2x) - 1: the same function, and Sleef's vector tanh is ~3x slower than its exp.
template <typename Vec>
inline Vec tanh(const Vec& x) {
  return Vec(2) * sigmoid(x + x) - Vec(1);
}

template <typename Vec, typename T>
inline Vec load(const T* p, int64_t n) {
  return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
}

template <typename scalar_t>
void forward_kernel(const Tensor& xp, const Tensor& hp, const Tensor& h, std::optional<double> clip,
                    const Tensor& h_out, const Tensor& ru_out, const Tensor& n_out, const Tensor* keep_out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t H = h_out.size(-1), R = h_out.numel() / H;
  const Rows<const scalar_t> X(xp), P(hp), S(h);
  const Rows<scalar_t> O(h_out), RU(ru_out), N(n_out);
  const Vec lo(clip ? static_cast<scalar_t>(-*clip) : 0), hi(clip ? static_cast<scalar_t>(*clip) : 0);
  at::parallel_for(0, R, grain_rows(H), [&](int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t *x = X[r], *p = P[r], *s = S[r];
    scalar_t *o = O[r], *ru = RU[r], *n = N[r];
    scalar_t* keep = keep_out ? Rows<scalar_t>(*keep_out)[r] : nullptr;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t c = std::min(V, H - j);
      const Vec rg = sigmoid(load<Vec>(x + j, c) + load<Vec>(p + j, c));
      const Vec ug = sigmoid(load<Vec>(x + H + j, c) + load<Vec>(p + H + j, c));
      const Vec nn = tanh(load<Vec>(x + 2 * H + j, c) + rg * load<Vec>(p + 2 * H + j, c));
      const Vec pre = nn + ug * (load<Vec>(s + j, c) - nn);  // unclipped new state
      const Vec hn = clip ? at::vec::clamp(pre, lo, hi) : pre;
      rg.store(ru + j, c);
      ug.store(ru + H + j, c);
      nn.store(n + j, c);
      hn.store(o + j, c);
      if (keep) pre.eq(hn).store(keep + j, c);  // 1 where the clip let the state through, else 0
    }
  }
  });
}

template <typename scalar_t>
void backward_kernel(const Tensor& dh, const Tensor& h_prev, const Tensor& ru, const Tensor& n, const Tensor& hc,
                     const Tensor* keep, const Tensor& dhh_out, const Tensor& dan_out, const Tensor& direct_out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t H = direct_out.size(-1), R = direct_out.numel() / H;
  const Rows<const scalar_t> DH(dh), HP(h_prev), RU(ru), N(n), HC(hc);
  const Rows<scalar_t> DHH(dhh_out), DAN(dan_out), DIR(direct_out);
  at::parallel_for(0, R, grain_rows(H), [&](int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t *d = DH[r], *hprev = HP[r], *rup = RU[r], *np = N[r], *hcp = HC[r];
    scalar_t *dhh = DHH[r], *dan_p = DAN[r], *dir = DIR[r];
    const scalar_t* kp = keep ? Rows<const scalar_t>(*keep)[r] : nullptr;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t c = std::min(V, H - j);
      Vec g = load<Vec>(d + j, c);
      if (kp) {  // no gradient where the state was clipped (a select, so that NaN * 0 cannot leak)
        g = Vec::blendv(Vec(0), g, load<Vec>(kp + j, c) != Vec(0));
      }
      const Vec rg = load<Vec>(rup + j, c), ug = load<Vec>(rup + H + j, c), nn = load<Vec>(np + j, c);
      const Vec direct = g * ug;                     // dh * u: straight to h_prev
      const Vec dn = g - direct;                     // dh (1 - u)
      const Vec dan = dn - dn * (nn * nn);           // through tanh: dn (1 - n^2)
      const Vec dr = dan * load<Vec>(hcp + j, c) * (rg - rg * rg);
      const Vec du = (load<Vec>(hprev + j, c) - nn) * g * (ug - ug * ug);
      dr.store(dhh + j, c);
      du.store(dhh + H + j, c);
      (dan * rg).store(dhh + 2 * H + j, c);
      dan.store(dan_p + j, c);
      direct.store(dir + j, c);
    }
  }
  });
}

void cell_forward(const Tensor& xp, const Tensor& hp, const Tensor& h, std::optional<double> clip,
                  const Tensor& h_out, const Tensor& ru_out, const Tensor& n_out,
                  const std::optional<Tensor>& keep_out) {
  const int64_t H = h_out.size(-1);
  const auto dt = h_out.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "neuralnets gru_cell: float32/float64 only; got ", dt);
  check(h_out, h_out, H, "h_out", dt);
  check(xp, h_out, 3 * H, "xp", dt);
  check(hp, h_out, 3 * H, "hp", dt);
  check(h, h_out, H, "h", dt);
  check(ru_out, h_out, 2 * H, "ru_out", dt);
  check(n_out, h_out, H, "n_out", dt);
  const Tensor* keep = keep_out && keep_out->defined() ? &*keep_out : nullptr;
  if (keep) check(*keep, h_out, H, "keep_out", dt);
  AT_DISPATCH_FLOATING_TYPES(dt, "neuralnets_cell_forward", [&] {
    forward_kernel<scalar_t>(xp, hp, h, clip, h_out, ru_out, n_out, keep);
  });
}

void cell_backward(const Tensor& dh, const Tensor& h_prev, const Tensor& ru, const Tensor& n, const Tensor& hc,
                   const std::optional<Tensor>& keep_in, const Tensor& dhh_out, const Tensor& dan_out,
                   const Tensor& direct_out) {
  const int64_t H = direct_out.size(-1);
  const auto dt = direct_out.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "neuralnets gru_cell: float32/float64 only; got ", dt);
  check(direct_out, direct_out, H, "direct_out", dt);
  check(dh, direct_out, H, "dh", dt);
  check(h_prev, direct_out, H, "h_prev", dt);
  check(ru, direct_out, 2 * H, "ru", dt);
  check(n, direct_out, H, "n", dt);
  check(hc, direct_out, H, "hc", dt);
  check(dhh_out, direct_out, 3 * H, "dhh_out", dt);
  check(dan_out, direct_out, H, "dan_out", dt);
  const Tensor* keep = keep_in && keep_in->defined() ? &*keep_in : nullptr;
  if (keep) check(*keep, direct_out, H, "keep", dt);
  AT_DISPATCH_FLOATING_TYPES(dt, "neuralnets_cell_backward", [&] {
    backward_kernel<scalar_t>(dh, h_prev, ru, n, hc, keep, dhh_out, dan_out, direct_out);
  });
}

}  // namespace

TORCH_LIBRARY(neuralnets, m) {
  m.def(
      "gru_cell_forward(Tensor xp, Tensor hp, Tensor h, float? clip, Tensor(a!) h_out, Tensor(b!) ru_out, "
      "Tensor(c!) n_out, Tensor(d!)? keep_out) -> ()");
  m.def(
      "gru_cell_backward(Tensor dh, Tensor h_prev, Tensor ru, Tensor n, Tensor hc, Tensor? keep, "
      "Tensor(a!) dhh_out, Tensor(b!) dan_out, Tensor(c!) direct_out) -> ()");
}

TORCH_LIBRARY_IMPL(neuralnets, CPU, m) {
  m.impl("gru_cell_forward", &cell_forward);
  m.impl("gru_cell_backward", &cell_backward);
}
