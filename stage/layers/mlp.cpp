#include "stage/layers/mlp.h"

namespace cascade::stage {
namespace {

std::string expert_prefix(const std::string& prefix, const MlpNames& n, int64_t e) {
  return prefix + n.experts + "." + std::to_string(e) + ".";
}

}  // namespace

void Mlp::declare(ModuleSpec* s, const MlpSpec& m, const std::string& prefix, const MlpNames& n) {
  const int64_t H = m.hidden, I = m.intermediate;
  switch (m.kind) {
    case MlpKind::kGated:
      if (!n.gate_up.empty()) {
        s->add_linear(prefix + n.gate_up, 2 * I, H, m.bias, n.conv1d);
      } else {
        s->add_linear(prefix + n.gate, I, H, m.bias, n.conv1d);
        s->add_linear(prefix + n.up, I, H, m.bias, n.conv1d);
      }
      s->add_linear(prefix + n.down, H, I, m.bias, n.conv1d);
      s->cost.act_elems_per_token += 3 * I;
      break;
    case MlpKind::kPlain:
      s->add_linear(prefix + n.fc, I, H, m.bias, n.conv1d);
      s->add_linear(prefix + n.proj, H, I, m.bias, n.conv1d);
      s->cost.act_elems_per_token += 3 * I;
      break;
    case MlpKind::kMoe: {
      // The router stays unquantized (it decides, in float, which experts run).
      s->tensors.push_back(prefix + n.router + ".weight");
      s->cost.flops_per_token += 2.0 * static_cast<double>(m.experts * H);
      const double active = static_cast<double>(m.top_k) / static_cast<double>(m.experts);
      for (int64_t e = 0; e < m.experts; ++e) {
        const std::string p = expert_prefix(prefix, n, e);
        s->add_linear(p + n.gate, I, H, m.bias, false, active);
        s->add_linear(p + n.up, I, H, m.bias, false, active);
        s->add_linear(p + n.down, H, I, m.bias, false, active);
      }
      s->cost.act_elems_per_token += 3 * I * m.top_k + m.experts;
      break;
    }
  }
}

Mlp::Mlp(const MlpSpec& m, const WeightSource& W, const std::string& prefix, const MlpNames& n) : m_(m) {
  const int64_t H = m.hidden, I = m.intermediate;
  auto gated = [&](const std::string& p) {
    return Gated{Linear::load(W, p + n.gate, I, H, m.bias, n.conv1d),
                 Linear::load(W, p + n.up, I, H, m.bias, n.conv1d),
                 Linear::load(W, p + n.down, H, I, m.bias, n.conv1d),
                 {}};
  };
  switch (m.kind) {
    case MlpKind::kGated:
      if (!n.gate_up.empty()) {
        gated_.gate_up = Linear::load(W, prefix + n.gate_up, 2 * I, H, m.bias, n.conv1d);
        gated_.down = Linear::load(W, prefix + n.down, H, I, m.bias, n.conv1d);
      } else {
        gated_ = gated(prefix);
      }
      break;
    case MlpKind::kPlain:
      fc_ = Linear::load(W, prefix + n.fc, I, H, m.bias, n.conv1d);
      proj_ = Linear::load(W, prefix + n.proj, H, I, m.bias, n.conv1d);
      break;
    case MlpKind::kMoe:
      TORCH_CHECK(m.experts > 0 && m.top_k > 0 && m.top_k <= m.experts, "MoE needs 0 < top_k <= experts, got top_k ",
                  m.top_k, " of ", m.experts);
      router_ = Linear::load(W, prefix + n.router, m.experts, H, false);
      for (int64_t e = 0; e < m.experts; ++e) experts_.push_back(gated(expert_prefix(prefix, n, e)));
      break;
  }
}

void Mlp::finalize() {
  Gated& g = gated_;
  if (m_.kind != MlpKind::kGated || g.gate_up.defined() || !g.gate.w.is_cuda()) return;
  g.gate_up = Linear::fuse({&g.gate, &g.up});
}

at::Tensor Mlp::Gated::operator()(const at::Tensor& x, Activation act, const at::Tensor& r, bool r_spent) const {
  const Int8Activation h = (gate_up.defined() ? gate_up : gate).input(x);
  at::Tensor a;  // [tokens, intermediate]
  const auto plain = [](const Linear& l) { return !l.int8() && !l.conv1d && !l.b.defined(); };
  if (gate_up.defined()) {
    a = gate_up.gated(h, act);  // one kernel at decode on the GPU
  } else if (plain(gate) && plain(up)) {
    a = apply_gated(h.x, gate.w, up.w, act);  // one kernel on the CPU
  } else {
    a = activate(gate(h), act) * up(h);
  }
  return r.defined() ? down.add_to(r, down.input(a), r_spent) : down(a);
}

at::Tensor Mlp::operator()(const at::Tensor& x, const at::Tensor& r, bool r_spent) {
  switch (m_.kind) {
    case MlpKind::kGated:
      return gated_(x, m_.act, r, r_spent);
    case MlpKind::kPlain:
      return proj_.add_to(r, proj_.input(activate(fc_(x), m_.act)), r_spent);
    case MlpKind::kMoe:
      return r + moe(x);
  }
  return r + x;
}

at::Tensor Mlp::operator()(const at::Tensor& x) {
  switch (m_.kind) {
    case MlpKind::kGated:
      return gated_(x, m_.act);
    case MlpKind::kPlain:
      return proj_(activate(fc_(x), m_.act));
    case MlpKind::kMoe:
      return moe(x);
  }
  return x;
}

// Mixtral's sparse block: softmax over the router logits in float32, top-k experts per
// token, each token's expert outputs summed with those weights (renormalised when the
// family says so). Tokens are gathered per expert so an expert runs once per step.
at::Tensor Mlp::moe(const at::Tensor& x) {
  const at::Tensor probs = at::softmax(router_(x).to(at::kFloat), -1);  // [T, E]
  auto [w, idx] = probs.topk(m_.top_k, -1);                             // [T, k]
  if (m_.normalize_top_k) w = w / w.sum(-1, /*keepdim=*/true);
  w = w.to(x.scalar_type());
  at::Tensor out = at::zeros_like(x);
  // Which (token, choice) pairs picked each expert: one host read per step.
  const at::Tensor flat = idx.reshape({-1}).cpu();
  const int64_t* e_of = flat.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(m_.experts));
  for (int64_t r = 0; r < flat.numel(); ++r) rows[static_cast<size_t>(e_of[r])].push_back(r);
  const at::Tensor wflat = w.reshape({-1});
  for (int64_t e = 0; e < m_.experts; ++e) {
    const auto& r = rows[static_cast<size_t>(e)];
    if (r.empty()) continue;
    const at::Tensor pick = at::tensor(r, at::TensorOptions().dtype(at::kLong)).to(x.device());
    const at::Tensor tokens = at::floor_divide(pick, m_.top_k);
    const at::Tensor y = experts_[static_cast<size_t>(e)](x.index_select(0, tokens), m_.act);
    out.index_add_(0, tokens, y * wflat.index_select(0, pick).unsqueeze(1));
  }
  return out;
}

}  // namespace cascade::stage
