#include "stage/layers/attention.h"

#include <cmath>
#include <vector>

#include "stage/kernels/ops.h"

namespace cascade::stage {

AttentionSpec AttentionSpec::of(const ModelConfig& c) {
  AttentionSpec a;
  a.hidden = c.hidden_size;
  a.heads = c.num_heads;
  a.kv_heads = c.num_kv_heads;
  a.head_dim = c.head_dim;
  a.window = c.sliding_window;
  a.rope = c.rope;
  a.max_position = c.max_position_embeddings;
  a.qkv_bias = c.qkv_bias;
  a.o_bias = c.o_bias;
  return a;
}

void Attention::declare(ModuleSpec* s, const AttentionSpec& a, const std::string& prefix, const AttentionNames& n) {
  const int64_t q_out = a.heads * a.head_dim, kv_out = a.kv_heads * a.head_dim;
  if (!n.qkv.empty()) {
    s->add_linear(prefix + n.qkv, q_out + 2 * kv_out, a.hidden, a.qkv_bias, n.conv1d);
  } else {
    s->add_linear(prefix + n.q, q_out, a.hidden, a.qkv_bias, n.conv1d);
    s->add_linear(prefix + n.k, kv_out, a.hidden, a.qkv_bias, n.conv1d);
    s->add_linear(prefix + n.v, kv_out, a.hidden, a.qkv_bias, n.conv1d);
  }
  s->add_linear(prefix + n.o, a.hidden, q_out, a.o_bias, n.conv1d);
  if (a.qk_norm) {
    for (const std::string& norm : {n.q_norm, n.k_norm}) {
      s->tensors.push_back(prefix + norm + ".weight");
      if (*a.qk_norm == NormKind::kLayer) s->tensors.push_back(prefix + norm + ".bias");
    }
  }
  if (a.charges_kv) s->cost.kv_elems_per_token += 2 * kv_out;
  s->cost.act_elems_per_token += q_out + 2 * kv_out;
  s->cost.score_heads = std::max(s->cost.score_heads, a.heads);
}

Attention::Attention(const AttentionSpec& a, int64_t layer, const WeightSource& W, const std::string& prefix,
                     const AttentionNames& n)
    : a_(a), layer_(layer), qkv_per_head_(n.qkv_per_head) {
  TORCH_CHECK(!n.qkv_per_head || (!n.qkv.empty() && a.kv_heads == a.heads),
              "a per-head fused qkv needs as many KV heads as heads");
  if (a_.scale == 0) a_.scale = 1.0 / std::sqrt(static_cast<double>(a_.head_dim));
  const int64_t q_out = a.heads * a.head_dim, kv_out = a.kv_heads * a.head_dim;
  if (!n.qkv.empty()) {
    qkv_ = Linear::load(W, prefix + n.qkv, q_out + 2 * kv_out, a.hidden, a.qkv_bias, n.conv1d);
  } else {
    q_ = Linear::load(W, prefix + n.q, q_out, a.hidden, a.qkv_bias, n.conv1d);
    k_ = Linear::load(W, prefix + n.k, kv_out, a.hidden, a.qkv_bias, n.conv1d);
    v_ = Linear::load(W, prefix + n.v, kv_out, a.hidden, a.qkv_bias, n.conv1d);
  }
  o_ = Linear::load(W, prefix + n.o, a.hidden, q_out, a.o_bias, n.conv1d);
  if (a.qk_norm) {
    q_norm_ = Norm::load(W, prefix + n.q_norm, a.head_dim, *a.qk_norm, a.qk_norm_eps);
    k_norm_ = Norm::load(W, prefix + n.k_norm, a.head_dim, *a.qk_norm, a.qk_norm_eps);
  }
  const at::Device device = o_.w.device();
  if (a.position == PositionKind::kRope) {
    rope_.emplace(a.rope, a.head_dim, a.max_position);
    rope_->place(device);
  } else if (a.position == PositionKind::kAlibi) {
    alibi_ = alibi_slopes(a.heads).to(device);
  }
}

// On a GPU, q/k/v become one matmul: at decode each is a GEMV that reads its weight
// once, and three small ones use HBM worse than one large one, besides the launches
// (int8 rows too: they fuse with their scales).
void Attention::finalize() {
  if (qkv_.defined() || !q_.w.is_cuda()) return;
  Linear f = Linear::fuse({&q_, &k_, &v_});
  if (f.defined()) qkv_ = std::move(f);
}

at::Tensor Attention::operator()(const at::Tensor& x, StepContext& ctx, const at::Tensor& residual,
                                 bool residual_spent) {
  const int64_t T = x.size(0);
  const int64_t q_out = a_.heads * a_.head_dim, kv_out = a_.kv_heads * a_.head_dim;
  at::Tensor q, k, v;
  if (qkv_per_head_) {
    const at::Tensor qkv = qkv_(x).view({T, a_.heads, 3, a_.head_dim});
    q = qkv.select(2, 0).contiguous();  // [T, heads, head_dim], as the other layouts give
    k = qkv.select(2, 1).contiguous();
    v = qkv.select(2, 2).contiguous();
  } else if (qkv_.defined()) {
    const at::Tensor qkv = qkv_(x);  // [T, q_out + 2 * kv_out]
    q = qkv.narrow(1, 0, q_out);
    k = qkv.narrow(1, q_out, kv_out);
    v = qkv.narrow(1, q_out + kv_out, kv_out);
  } else {
    const Int8Activation h = q_.input(x);  // split once for the three
    q = q_(h);
    k = k_(h);
    v = v_(h);
  }
  q = q.reshape({T, a_.heads, a_.head_dim});
  k = k.reshape({T, a_.kv_heads, a_.head_dim});
  v = v.reshape({T, a_.kv_heads, a_.head_dim});
  if (q_norm_) {
    q = (*q_norm_)(q);
    k = (*k_norm_)(k);
  }
  if (rope_ && !ctx.rope_cos.defined()) {
    std::tie(ctx.rope_cos, ctx.rope_sin) = rope_->cos_sin(ctx.batch, ctx.positions, ctx.decode.defined());
    ctx.rope_cos = ctx.rope_cos.to(x.scalar_type());  // cast once per step, as HF casts per layer
    ctx.rope_sin = ctx.rope_sin.to(x.scalar_type());
  }
  const ScoreMods mods{a_.softcap, alibi_};
  at::Tensor a;                         // [T, heads * head_dim]
  if (rope_ && ctx.decode.defined()) {  // RoPE inside the KV store's kernel, where it applies
    a = ctx.kv->attend_decode_rotary(layer_, q, k, v, ctx.rope_cos, ctx.rope_sin, ctx.decode, a_.scale, a_.window,
                                     mods);
  } else if (rope_ && q.is_cuda()) {
    if (!ctx.rows.defined()) ctx.rows = ctx.kv->row_index(ctx.batch, q.device());
    a = ctx.kv->attend_rotary(layer_, q, k, v, ctx.rope_cos, ctx.rope_sin, ctx.rows, ctx.batch, a_.scale, a_.window,
                              mods);
  }
  if (!a.defined()) {
    if (rope_) {
      q = apply_rope(q, ctx.rope_cos, ctx.rope_sin);
      k = apply_rope(k, ctx.rope_cos, ctx.rope_sin);
    }
    a = ctx.decode.defined() ? ctx.kv->attend_decode(layer_, q, k, v, ctx.decode, a_.scale, a_.window, mods)
                             : ctx.kv->attend(layer_, q, k, v, ctx.batch, a_.scale, a_.window, mods);
  }
  return residual.defined() ? o_.add_to(residual, o_.input(a), residual_spent) : o_(a);
}

at::Tensor Attention::alibi_slopes(int64_t heads) {
  // Bloom's recipe: a geometric sequence for the largest power of two <= heads, then
  // every other term of the next power's sequence for the remaining heads.
  const int64_t p2 = int64_t{1} << static_cast<int>(std::floor(std::log2(static_cast<double>(heads))));
  auto base = [](int64_t n) { return std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3))); };
  std::vector<float> s;
  for (int64_t i = 1; i <= p2; ++i) s.push_back(static_cast<float>(std::pow(base(p2), static_cast<double>(i))));
  for (int64_t i = 0; i < std::min(p2, heads - p2); ++i)
    s.push_back(static_cast<float>(std::pow(base(2 * p2), static_cast<double>(2 * i + 1))));
  return at::tensor(s, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace cascade::stage
