#include "stage/layers/rope.h"

#include <cmath>

#include "stage/kernels/cpu_rows.h"
#include "stage/kernels/fused_kernels.h"

namespace cascade::stage {

Rope::Rope(const RopeConfig& cfg, int64_t head_dim, int64_t max_position_embeddings)
    : cfg_(cfg), dim_(cfg.rotary_dim(head_dim)), max_pos_(max_position_embeddings) {
  at::Tensor f = default_inv_freq(cfg_.theta);
  if (cfg_.type == "longrope") {
    auto factors = [&](const std::vector<double>& v) {
      TORCH_CHECK(static_cast<int64_t>(v.size()) == dim_ / 2, "longrope needs ", dim_ / 2, " factors, got ", v.size());
      return at::tensor(v, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
    };
    long_inv_freq_ = f / factors(cfg_.long_factor);
    f = f / factors(cfg_.short_factor);
  } else if (cfg_.type == "linear") {
    f = f / cfg_.factor;
  } else if (cfg_.type == "llama3") {
    // Long wavelengths are slowed by `factor`, short ones kept, the band between
    // interpolated smoothly (Llama 3.1's scheme).
    const double old_ctx = static_cast<double>(cfg_.original_max_position);
    const double low_wavelen = old_ctx / cfg_.low_freq_factor;
    const double high_wavelen = old_ctx / cfg_.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / f;
    at::Tensor scaled = at::where(wavelen > low_wavelen, f / cfg_.factor, f);
    at::Tensor smooth = (old_ctx / wavelen - cfg_.low_freq_factor) / (cfg_.high_freq_factor - cfg_.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / cfg_.factor + smooth * scaled;
    at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    f = at::where(medium, smoothed, scaled);
  }
  inv_freq_ = f;
}

at::Tensor Rope::default_inv_freq(double base) const {
  at::Tensor exponents = at::arange(0, dim_, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / dim_;
  return 1.0 / at::pow(base, exponents);
}

at::Tensor Rope::inv_freq(int64_t seq_len) const {
  if (cfg_.type == "longrope") return (seq_len > cfg_.original_max_position ? long_inv_freq_ : inv_freq_).cpu();
  if (cfg_.type != "dynamic" || seq_len <= max_pos_) return inv_freq_.cpu();
  const double d = static_cast<double>(dim_);
  const double base = cfg_.theta * std::pow(cfg_.factor * static_cast<double>(seq_len) / static_cast<double>(max_pos_) -
                                                (cfg_.factor - 1),
                                            d / (d - 2));
  return default_inv_freq(base);
}

// [tokens, rotary_dim / 2]: each token's frequencies, long for the tokens of sequences
// longer than original_max_position (the whole sequence's length decides, as in HF).
at::Tensor Rope::longrope_freqs(const Batch& batch, const at::Tensor& pos, bool decode) const {
  at::Tensor is_long;  // [tokens, 1] bool
  if (decode) {
    is_long = pos >= static_cast<double>(cfg_.original_max_position);
  } else {
    std::vector<uint8_t> flags;
    for (const SeqSlice& s : batch.seqs)
      flags.insert(flags.end(), static_cast<size_t>(s.n_tokens), s.length() > cfg_.original_max_position ? 1 : 0);
    is_long = at::tensor(flags, at::TensorOptions().dtype(at::kByte)).to(at::kBool).to(pos.device()).unsqueeze(1);
  }
  return at::where(is_long, pos * long_inv_freq_.unsqueeze(0), pos * inv_freq_.unsqueeze(0));
}

std::pair<at::Tensor, at::Tensor> Rope::cos_sin(const Batch& batch, const at::Tensor& positions, bool decode) const {
  at::Tensor pos = positions.to(at::kFloat).unsqueeze(1);  // [tokens, 1]
  at::Tensor freqs;                                        // [tokens, rotary_dim / 2]
  if (cfg_.type == "longrope") {
    freqs = longrope_freqs(batch, pos, decode);
  } else if (cfg_.type != "dynamic") {
    freqs = pos * inv_freq_.to(positions.device()).unsqueeze(0);
  } else {
    std::vector<at::Tensor> parts;
    int64_t row = 0;
    for (const SeqSlice& s : batch.seqs) {
      const at::Tensor f = inv_freq(s.length()).to(positions.device()).unsqueeze(0);
      parts.push_back(pos.narrow(0, row, s.n_tokens) * f);
      row += s.n_tokens;
    }
    freqs = at::cat(parts, 0);
  }
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  if (cfg_.attention_factor != 1.0) return {emb.cos() * cfg_.attention_factor, emb.sin() * cfg_.attention_factor};
  return {emb.cos(), emb.sin()};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  if (rot < x.size(-1))
    return at::cat({apply_rope(x.narrow(-1, 0, rot), cos, sin), x.narrow(-1, rot, x.size(-1) - rot)}, -1);
  if (x.is_cuda()) {
    at::Tensor y = fused_rope(x, cos, sin);  // one kernel instead of ten
    if (y.defined()) return y;
  } else {
    at::Tensor y = cpu_rope(x, cos, sin);  // one pass instead of ten calls
    if (y.defined()) return y;
  }
  const int64_t half = x.size(-1) / 2;
  at::Tensor c = cos.to(x.scalar_type()).unsqueeze(1);  // [tokens, 1, head_dim]
  at::Tensor s = sin.to(x.scalar_type()).unsqueeze(1);
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * c + rotated * s;
}

}  // namespace cascade::stage
