#include "stage/layers/seq2seq.h"

#include <c10/util/Exception.h>

#include <limits>
#include <memory>

namespace cascade::stage {

Seq2SeqRows Seq2SeqRows::of(const Batch& b, at::Device device) {
  Seq2SeqRows r;
  std::vector<int64_t> enc, dec;
  int64_t row = 0;
  for (const SeqSlice& s : b.seqs) {
    TORCH_CHECK(s.context >= 1, "slot ", s.slot, ": an encoder-decoder model needs the sequence's encoder input");
    Seq q;
    q.slot = s.slot;
    q.context = s.context;
    if (s.start_pos < s.context) {
      TORCH_CHECK(s.start_pos == 0 && s.n_tokens >= s.context, "slot ", s.slot, ": the encoder input (", s.context,
                  " tokens) must come whole in one step, not positions [", s.start_pos, ", ", s.start_pos + s.n_tokens,
                  ")");
      q.enc_row = static_cast<int64_t>(enc.size());
      q.enc_len = s.context;
      for (int64_t i = 0; i < s.context; ++i) enc.push_back(row + i);
    }
    q.dec_row = static_cast<int64_t>(dec.size());
    q.dec_pos = s.start_pos + q.enc_len;
    q.dec_len = s.n_tokens - q.enc_len;
    for (int64_t i = q.enc_len; i < s.n_tokens; ++i) dec.push_back(row + i);
    row += s.n_tokens;
    r.seqs.push_back(q);
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  r.enc_tokens = static_cast<int64_t>(enc.size());
  r.dec_tokens = static_cast<int64_t>(dec.size());
  r.enc = at::tensor(enc, opts).to(device);
  r.dec = at::tensor(dec, opts).to(device);
  return r;
}

const Seq2SeqRows& Seq2SeqRows::of(StepContext& ctx, at::Device device) {
  // Rebuilt where a module computes on another device than the one before it.
  if (!ctx.seq2seq_rows || ctx.seq2seq_rows->enc.device() != device)
    ctx.seq2seq_rows = std::make_shared<const Seq2SeqRows>(of(ctx.batch, device));
  return *ctx.seq2seq_rows;
}

namespace {

// softmax(q k^T + bias) v over the last two dimensions, as T5 computes it: no 1/sqrt(d)
// scaling, scores and bias added in the compute dtype, the softmax in float32. mask
// (true = may attend) and bias broadcast to the scores [..., q, k]. Masked scores take
// the lowest float rather than -inf, as transformers masks, so a row that may attend
// nowhere (a CUDA graph's padding) stays finite. Returns [..., q, d].
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                  const at::Tensor& mask) {
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2));
  if (bias.defined()) scores = scores + bias;
  scores = scores.to(at::kFloat);
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), std::numeric_limits<float>::lowest());
  return at::matmul(at::softmax(scores, -1).to(q.scalar_type()), v);
}

}  // namespace

at::Tensor biased_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias,
                            const at::Tensor& mask) {
  const at::Tensor o = attend(q, k, v, bias, mask);  // [heads, q, d]
  return o.transpose(0, 1).reshape({q.size(1), q.size(0) * q.size(2)});
}

at::Tensor biased_decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& vals,
                                   const at::Tensor& bias, const at::Tensor& allowed) {
  const int64_t B = q.size(0), heads = q.size(1), d = q.size(2);
  const at::Tensor o = attend(q.unsqueeze(2), keys, vals, bias.defined() ? bias.unsqueeze(2) : bias,
                              allowed.view({B, 1, 1, allowed.size(1)}));  // [B, heads, 1, d]
  return o.reshape({B, heads * d});
}

at::Tensor with_rows(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& values) {
  if (rows.numel() == x.size(0) && values.size(0) == x.size(0)) {
    // Every row, and Seq2SeqRows lists rows in ascending order: the values are x's.
    return values;
  }
  return x.index_copy(0, rows, values);
}

}  // namespace cascade::stage
