#include "stage/layers/embedding.h"

#include "stage/kernels/ops.h"

namespace cascade::stage {

Embedding::Embedding(at::Tensor tokens, at::Tensor positions, double scale, std::optional<Norm> norm)
    : tokens_(std::move(tokens)), positions_(std::move(positions)), scale_(scale), norm_(std::move(norm)) {}

at::Tensor Embedding::forward(const at::Tensor& ids, StepContext& ctx) {
  const at::Tensor x = embed(ids, ctx);
  return norm_ ? (*norm_)(x) : x;
}

at::Tensor Embedding::embed(const at::Tensor& ids, StepContext& ctx) const {
  at::Tensor x = at::embedding(tokens_, ids);                         // [tokens, hidden]
  if (scale_ != 1.0) x = x * at::scalar_tensor(scale_, x.options());  // rounded to the dtype first, as HF does
  if (!positions_.defined()) return x;
  for (const SeqSlice& s : ctx.batch.seqs)  // checked on the host: no device sync
    TORCH_CHECK(s.start_pos + s.n_tokens <= positions_.size(0), "position past the ", positions_.size(0),
                " learned positions of this model");
  return x + at::embedding(positions_, ctx.positions);
}

at::Tensor LmHead::forward(const at::Tensor& x, StepContext& ctx) {
  const bool one_row_each = x.size(0) == static_cast<int64_t>(ctx.batch.seqs.size());
  at::Tensor h = ctx.logit_rows.defined() ? x.index_select(0, ctx.logit_rows)
                 : one_row_each           ? x
                                          : x.index_select(0, ctx.batch.logit_rows(x.device()));
  if (input_scale_ != 1.0) h = h * input_scale_;
  at::Tensor logits = apply_linear(h, w_);
  if (softcap_ > 0) logits = at::tanh(logits / softcap_) * softcap_;
  return logits;  // [seqs, vocab], or [rows, vocab] (Batch::logit_rows)
}

}  // namespace cascade::stage
