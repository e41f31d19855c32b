#include "stage/kv_cache.h"

#include <ATen/TensorIndexing.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "stage/kernels/attention_kernels.h"
#include "stage/kernels/cpu_attention.h"
#include "storage/compat.h"

namespace cascade::stage {
namespace {

// Attention with score modifications, written out (no fused kernel takes them):
// q [..., heads, q_len, d] against k/v [..., heads, kv_len, d]; `kpos` [kv_len] int64 key
// positions; the rest as compat::attention. `slopes` is broadcastable to q's leading
// dims plus [1, 1] once viewed by the caller.
at::Tensor attention_with(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                          double scale, const ScoreMods& mods, const at::Tensor& slopes, const at::Tensor& kpos) {
  if (!mods.any()) return compat::attention(q, k, v, mask, scale);
  at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-1, -2)) * scale;
  if (mods.softcap > 0) scores = at::tanh(scores / mods.softcap) * mods.softcap;
  if (slopes.defined()) scores = scores + slopes * kpos.to(at::kFloat);
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(scores, -1).to(q.scalar_type()), v);
}

}  // namespace

KvCache::KvCache(const std::vector<int64_t>& layers, int64_t slots, int64_t kv_heads, int64_t max_seq_len,
                 int64_t head_dim, at::ScalarType dtype, at::Device device)
    : KvCache(layers, slots, kv_heads, max_seq_len, head_dim, dtype, device, false) {}

KvCache::KvCache(const std::vector<int64_t>& layers, int64_t slots, int64_t kv_heads, int64_t max_seq_len,
                 int64_t head_dim, at::ScalarType dtype, at::Device device, bool spare_slot)
    : slots_(slots), max_seq_len_(max_seq_len), spare_(spare_slot) {
  TORCH_CHECK(slots > 0 && max_seq_len > 0, "KvCache needs at least one slot and one position");
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  const int64_t rows = slots + (spare_slot ? 1 : 0);
  for (int64_t l : layers) {
    layers_[l] = Layer{at::zeros({rows, kv_heads, max_seq_len, head_dim}, opts),
                       at::zeros({rows, kv_heads, max_seq_len, head_dim}, opts)};
  }
  // A CUDA-graph batch is padded up to a power of two, below twice the rows.
  if (device.is_cuda()) counters_ = at::zeros({2 * rows * kv_heads}, opts.dtype(at::kInt));
}

DecodeIndex KvCache::decode_index(const Batch& batch, at::Device device, int64_t span) const {
  std::vector<int64_t> slots, pos, context;
  int64_t longest = 0;
  bool seq2seq = false;
  for (const SeqSlice& s : batch.seqs) {
    if (s.n_tokens != 1) return {};
    context.push_back(s.context);
    seq2seq = seq2seq || s.context > 0;
    TORCH_CHECK(s.slot >= 0 && s.slot < slots_, "KV slot ", s.slot, " out of range [0, ", slots_, ")");
    TORCH_CHECK(s.start_pos >= 0 && s.start_pos < max_seq_len_, "sequence in slot ", s.slot, " would reach ",
                s.start_pos + 1, " tokens, past max_seq_len ", max_seq_len_);
    slots.push_back(s.slot);
    pos.push_back(s.start_pos);
    longest = std::max(longest, s.start_pos + 1);
  }
  if (slots.empty()) return {};
  TORCH_CHECK(span == 0 || (span >= longest && span <= max_seq_len_), "decode span ", span, " outside [", longest, ", ",
              max_seq_len_, "]");
  const auto opts = at::TensorOptions().dtype(at::kLong);
  return {at::tensor(slots, opts).to(device), at::tensor(pos, opts).to(device), span == 0 ? longest : span,
          seq2seq ? at::tensor(context, opts).to(device) : at::Tensor()};
}

void KvCache::store_decode(int64_t layer, const DecodeIndex& d, const at::Tensor& k, const at::Tensor& v) {
  using at::indexing::Slice;
  Layer& c = this->layer(layer);
  c.k.index_put_({d.slots, Slice(), d.pos}, k);  // [B, kv_heads, head_dim] at (slot, :, pos)
  c.v.index_put_({d.slots, Slice(), d.pos}, v);
}

std::pair<at::Tensor, at::Tensor> KvCache::read_decode(int64_t layer, const DecodeIndex& d) {
  Layer& c = this->layer(layer);
  return {c.k.narrow(2, 0, d.span).index_select(0, d.slots), c.v.narrow(2, 0, d.span).index_select(0, d.slots)};
}

at::Tensor KvCache::attend_decode(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const DecodeIndex& d, double scale, int64_t window, const ScoreMods& mods) {
  Layer& c = this->layer(layer);
  const int64_t B = q.size(0), heads = q.size(1), kv_heads = k.size(1), head_dim = q.size(2);
  TORCH_CHECK(heads % kv_heads == 0, "query heads (", heads, ") must be a multiple of KV heads (", kv_heads, ")");
  TORCH_CHECK(d.slots.size(0) == B, "decode index has ", d.slots.size(0), " sequences, the step ", B);
  if (counters_.defined()) {  // the kernels, where they apply; otherwise the ATen path below
    const DecodeAttentionArgs args{d.span, scale, window, mods.softcap, mods.alibi};
    if (decode_store_kv(k, v, c.k, c.v, d.slots, d.pos)) {
      const at::Tensor o = decode_attention(q, c.k, c.v, d.slots, d.pos, args, counters_);
      if (o.defined()) return o.view({B, heads * head_dim});
    }
  }
  store_decode(layer, d, k, v);
  const auto [keys, vals] = read_decode(layer, d);  // [B, kv_heads, span, head_dim]
  // GQA without copying K/V: the query heads sharing a KV head become that head's
  // "query rows" ([B, kv_heads, group, head_dim]); the mask is the same for all of them.
  at::Tensor qg = q.view({B, kv_heads, heads / kv_heads, head_dim});
  at::Tensor kpos = at::arange(d.span, d.pos.options()).unsqueeze(0);  // [1, span]
  at::Tensor qpos = d.pos.unsqueeze(1);                                // [B, 1]
  at::Tensor mask = kpos <= qpos;                                      // [B, span], true = may attend
  if (window > 0) mask = mask.logical_and((qpos - kpos) < window);
  at::Tensor slopes;  // [1, kv_heads, group, 1]
  if (mods.alibi.defined()) slopes = mods.alibi.view({1, kv_heads, heads / kv_heads, 1});
  at::Tensor o = attention_with(qg, keys, vals, mask.view({B, 1, 1, d.span}), scale, mods, slopes, kpos.view({d.span}));
  return o.reshape({B, heads * head_dim});
}

at::Tensor KvCache::attend_decode_rotary(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& cos, const at::Tensor& sin, const DecodeIndex& d,
                                         double scale, int64_t window, const ScoreMods& mods) {
  if (!counters_.defined()) return {};
  Layer& c = this->layer(layer);
  const int64_t B = q.size(0), heads = q.size(1), head_dim = q.size(2);
  TORCH_CHECK(d.slots.size(0) == B, "decode index has ", d.slots.size(0), " sequences, the step ", B);
  const DecodeAttentionArgs args{d.span, scale, window, mods.softcap, mods.alibi};
  if (!decode_attention_applies(q, c.k, c.v, args, counters_)) return {};
  const at::Tensor fused = decode_rope_attention(q, k, v, cos, sin, c.k, c.v, d.slots, d.pos, args, counters_);
  if (fused.defined()) return fused.view({B, heads * head_dim});
  const at::Tensor qr = decode_rope_store_kv(q, k, v, cos, sin, c.k, c.v, d.slots, d.pos);
  if (!qr.defined()) return {};
  const at::Tensor o = decode_attention(qr, c.k, c.v, d.slots, d.pos, args, counters_);
  TORCH_CHECK(o.defined(), "decode attention refused a step it said it takes");
  return o.view({B, heads * head_dim});
}

uint64_t KvCache::bytes() const {
  uint64_t b = 0;
  for (const auto& [l, t] : layers_) b += 2 * t.k.numel() * t.k.element_size();
  return b;
}

at::Tensor KvCache::attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const Batch& batch, double scale, int64_t window, const ScoreMods& mods) {
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "query heads (", q.size(1), ") must be a multiple of KV heads (", k.size(1),
              ")");
  int64_t row = 0;
  for (const SeqSlice& s : batch.seqs) {
    store(layer, s.slot, s.start_pos, k.narrow(0, row, s.n_tokens), v.narrow(0, row, s.n_tokens));
    row += s.n_tokens;
  }
  return attend_stored(layer, q, batch, scale, window, mods);
}

at::Tensor KvCache::attend_rotary(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& cos, const at::Tensor& sin, const RowIndex& rows,
                                  const Batch& batch, double scale, int64_t window, const ScoreMods& mods) {
  if (!counters_.defined() || !rows.defined() || q.size(1) % k.size(1) != 0) return {};
  Layer& c = this->layer(layer);
  const at::Tensor qr = decode_rope_store_kv(q, k, v, cos, sin, c.k, c.v, rows.slots, rows.pos);
  return qr.defined() ? attend_stored(layer, qr, batch, scale, window, mods) : at::Tensor();
}

at::Tensor KvCache::attend_stored(int64_t layer, const at::Tensor& q, const Batch& batch, double scale, int64_t window,
                                  const ScoreMods& mods) {
  Layer& c = this->layer(layer);
  const int64_t heads = q.size(1), kv_heads = c.k.size(1), head_dim = q.size(2);
  at::Tensor out = at::empty({q.size(0), heads, head_dim}, q.options());
  int64_t row = 0;
  for (const SeqSlice& s : batch.seqs) {
    const int64_t n = s.n_tokens, len = s.start_pos + n;
    if (q.device().is_cpu()) {  // one call instead of a dozen ATen ones (cpu_attention.h)
      const CpuAttention args{scale, window, mods.softcap, mods.alibi};
      at::Tensor o = n == 1 ? out[row] : out.narrow(0, row, n);
      if (n == 1 ? cpu_decode_attention(q[row].contiguous(), c.k[s.slot], c.v[s.slot], len, args, o)
                 : cpu_prompt_attention(q.narrow(0, row, n), c.k[s.slot], c.v[s.slot], s.start_pos, args, o)) {
        row += n;
        continue;
      }
    }
    at::Tensor keys = c.k[s.slot].narrow(1, 0, len);  // [kv_heads, len, head_dim]
    at::Tensor vals = c.v[s.slot].narrow(1, 0, len);
    if (kv_heads != heads) {  // GQA: each KV head serves heads/kv_heads consecutive query heads
      keys = keys.repeat_interleave(heads / kv_heads, 0);
      vals = vals.repeat_interleave(heads / kv_heads, 0);
    }
    const bool window_bites = window > 0 && len > window;
    const at::Tensor qs = q.narrow(0, row, n).transpose(0, 1);        // [heads, n, head_dim]
    if (n > 1 && s.start_pos == 0 && !window_bites && !mods.any()) {  // a prompt: the fused causal kernel
      const at::Tensor o = compat::causal_attention(qs, keys, vals, scale);
      if (o.defined()) {
        out.narrow(0, row, n).copy_(o.transpose(0, 1));
        row += n;
        continue;
      }
    }
    at::Tensor mask;  // [n, len], true = may attend
    const at::Tensor kpos = at::arange(len, at::TensorOptions().dtype(at::kLong).device(q.device()));
    if (n > 1 || window_bites) {
      at::Tensor qpos = at::arange(s.start_pos, len, kpos.options()).unsqueeze(1);
      mask = kpos.unsqueeze(0) <= qpos;
      if (window > 0) mask = mask.logical_and((qpos - kpos.unsqueeze(0)) < window);
    }
    const at::Tensor slopes = mods.alibi.defined() ? mods.alibi.view({heads, 1, 1}) : at::Tensor();
    at::Tensor o = attention_with(qs, keys, vals, mask, scale, mods, slopes, kpos);
    out.narrow(0, row, n).copy_(o.transpose(0, 1));
    row += n;
  }
  return out.view({q.size(0), heads * head_dim});
}

KvCache::Layer& KvCache::layer(int64_t l) {
  const auto it = layers_.find(l);
  TORCH_CHECK(it != layers_.end(), "layer ", l, " has no KV cache on this stage");
  return it->second;
}

void KvCache::check_span(int64_t slot, int64_t pos, int64_t n) const {
  TORCH_CHECK(slot >= 0 && slot < slots_, "KV slot ", slot, " out of range [0, ", slots_, ")");
  TORCH_CHECK(pos >= 0 && pos + n <= max_seq_len_, "sequence in slot ", slot, " would reach ", pos + n,
              " tokens, past max_seq_len ", max_seq_len_);
}

RowIndex KvCache::row_index(const Batch& batch, at::Device device) const {
  std::vector<int64_t> idx;  // [2, tokens]: slots, then positions
  for (const SeqSlice& s : batch.seqs) {
    check_span(s.slot, s.start_pos, s.n_tokens);
    idx.insert(idx.end(), static_cast<size_t>(s.n_tokens), s.slot);
  }
  for (const SeqSlice& s : batch.seqs)
    for (int64_t i = 0; i < s.n_tokens; ++i) idx.push_back(s.start_pos + i);
  const at::Tensor t = at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(device).view({2, -1});
  return {t[0], t[1]};
}

void KvCache::store(int64_t layer, int64_t slot, int64_t pos, const at::Tensor& k, const at::Tensor& v) {
  Layer& c = this->layer(layer);
  const int64_t n = k.size(0);
  check_span(slot, pos, n);
  // [n, kv_heads, head_dim] -> [kv_heads, n, head_dim] at positions [pos, pos + n).
  c.k[slot].narrow(1, pos, n).copy_(k.transpose(0, 1));
  c.v[slot].narrow(1, pos, n).copy_(v.transpose(0, 1));
}

std::pair<at::Tensor, at::Tensor> KvCache::read(int64_t layer, int64_t slot, int64_t from, int64_t to) {
  Layer& c = this->layer(layer);
  TORCH_CHECK(slot >= 0 && slot < slots_, "KV slot ", slot, " out of range [0, ", slots_, ")");
  TORCH_CHECK(from >= 0 && from <= to && to <= max_seq_len_, "KV positions [", from, ", ", to, ") outside [0, ",
              max_seq_len_, ")");
  return {c.k[slot].narrow(1, from, to - from), c.v[slot].narrow(1, from, to - from)};
}

void KvCache::copy_prefix(int64_t layer, int64_t from, int64_t to, int64_t n) {
  auto it = layers_.find(layer);
  TORCH_CHECK(it != layers_.end(), "this KV cache holds no layer ", layer);
  TORCH_CHECK(from >= 0 && from < slots_ && to >= 0 && to < slots_ && from != to, "cannot copy KV slot ", from,
              " to slot ", to, " of ", slots_);
  TORCH_CHECK(n >= 0 && n <= max_seq_len_, "cannot copy ", n, " positions of ", max_seq_len_);
  if (n == 0) return;
  for (at::Tensor* t : {&it->second.k, &it->second.v})
    (*t)[to].narrow(1, 0, n).copy_((*t)[from].narrow(1, 0, n));  // [kv_heads, n, head_dim]
}

}  // namespace cascade::stage
