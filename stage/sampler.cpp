#include "stage/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace cascade::stage {

TokenScore score_token(const float* logits, int64_t n, int64_t token, int64_t top) {
  TORCH_CHECK(token >= 0 && token < n, "token ", token, " is outside the vocabulary of ", n);
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, static_cast<double>(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double lse = max + std::log(sum);
  TokenScore s;
  s.token = token;
  s.logprob = logits[token] - lse;
  const int64_t k = std::min(std::max<int64_t>(top, 0), n);
  if (k == 0) return s;
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int64_t i = 0; i < k; ++i) s.top.emplace_back(order[i], logits[order[i]] - lse);
  return s;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  TORCH_CHECK(p.top_p > 0.0 && p.top_p <= 1.0, "top_p must be in (0, 1], got ", p.top_p);
  TORCH_CHECK(p.top_k >= 0, "top_k must be >= 0, got ", p.top_k);
  TORCH_CHECK(p.min_p >= 0.0 && p.min_p <= 1.0, "min_p must be in [0, 1], got ", p.min_p);
  TORCH_CHECK(p.repetition_penalty > 0.0, "repetition_penalty must be > 0, got ", p.repetition_penalty);
  TORCH_CHECK(std::isfinite(p.presence_penalty) && std::isfinite(p.frequency_penalty),
              "presence and frequency penalties must be finite");
  TORCH_CHECK(p.logprobs >= -1, "logprobs must be >= -1, got ", p.logprobs);
}

void Sampler::observe(const int64_t* ids, int64_t n) {
  if (sampled() || p_.repetition_penalty == 1.0) return;
  seen_.insert(ids, ids + n);
}

Sampler Sampler::fork(uint64_t seed) const {
  Sampler s = *this;
  s.p_.seed = seed;
  s.rng_.seed(seed);
  return s;
}

bool Sampler::plain_greedy(const SamplingParams& p) {
  return p.greedy() && p.logit_bias.empty() && p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 &&
         p.frequency_penalty == 0.0;
}

void Sampler::adjust(std::vector<float>& l) const {
  const int64_t n = static_cast<int64_t>(l.size());
  for (const auto& [token, bias] : p_.logit_bias) {
    TORCH_CHECK(token >= 0 && token < n, "logit_bias token ", token, " is outside the vocabulary of ", n);
    l[static_cast<size_t>(token)] += bias;
  }
  if (p_.repetition_penalty != 1.0) {
    const float r = static_cast<float>(p_.repetition_penalty);
    for (int64_t t : seen_) {
      if (t < 0 || t >= n) continue;
      float& x = l[static_cast<size_t>(t)];
      x = x < 0 ? x * r : x / r;  // as HF's RepetitionPenaltyLogitsProcessor
    }
  }
  if (p_.presence_penalty != 0.0 || p_.frequency_penalty != 0.0) {
    for (const auto& [t, c] : counts_) {
      if (t < 0 || t >= n) continue;
      l[static_cast<size_t>(t)] -= static_cast<float>(p_.presence_penalty + p_.frequency_penalty * c);
    }
  }
}

int64_t Sampler::draw(const std::vector<float>& l) {
  const int64_t n = static_cast<int64_t>(l.size());
  std::vector<double> score(l.begin(), l.end());
  for (double& s : score) s /= p_.temperature;
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  // Descending by score; ties by index so the order never depends on the sort.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  int64_t keep = n;
  if (p_.top_k > 0 && p_.top_k < n) {
    // HF keeps every token scoring at least the k-th best.
    const double kth = score[order[p_.top_k - 1]];
    keep = p_.top_k;
    while (keep < n && score[order[keep]] >= kth) ++keep;
  }
  const double max_score = score[order[0]];
  std::vector<double> prob(keep);
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += prob[i] = std::exp(score[order[i]] - max_score);
  for (double& p : prob) p /= total;
  const int64_t before = keep;
  if (p_.top_p < 1.0) {
    // Smallest prefix of the sorted tokens whose mass reaches top_p (at least one token).
    double cum = 0;
    int64_t cut = 0;
    while (cut < keep) {
      cum += prob[cut++];
      if (cum >= p_.top_p) break;
    }
    keep = cut;
  }
  if (p_.min_p > 0.0) {
    // A prefix again: tokens at least min_p times as likely as the best (which stays).
    int64_t cut = 1;
    while (cut < keep && prob[cut] >= p_.min_p * prob[0]) ++cut;
    keep = cut;
  }
  // Without a cut the kept mass is 1 by construction (no re-summing: the draws stay
  // those of earlier releases for the same seed).
  total = keep == before && p_.top_p >= 1.0 ? 1.0 : std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double cum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += prob[i];
    if (u < cum) return order[i];
  }
  return order[keep - 1];
}

int64_t Sampler::next(const at::Tensor& logits, TokenScore* score) {
  const at::Tensor t = logits.to(at::kCPU, at::kFloat).contiguous();
  const float* raw = t.data_ptr<float>();
  const int64_t n = t.numel();
  int64_t token = 0;
  if (plain_greedy(p_)) {
    token = t.argmax().item<int64_t>();
    if (score) *score = score_token(raw, n, token, p_.logprobs);
  } else {
    std::vector<float> l(raw, raw + n);
    adjust(l);
    token = p_.greedy() ? std::max_element(l.begin(), l.end()) - l.begin() : draw(l);
    if (score) *score = score_token(l.data(), n, token, p_.logprobs);
  }
  accept(token);
  return token;
}

void Sampler::accept(int64_t token) {
  ++counts_[token];
  if (p_.repetition_penalty != 1.0) seen_.insert(token);
}

}  // namespace cascade::stage
