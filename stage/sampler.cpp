#include "stage/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace cascade::stage {

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  TORCH_CHECK(p.top_p > 0.0 && p.top_p <= 1.0, "top_p must be in (0, 1], got ", p.top_p);
  TORCH_CHECK(p.top_k >= 0, "top_k must be >= 0, got ", p.top_k);
}

int64_t Sampler::next(const at::Tensor& logits) {
  at::Tensor l = logits.to(at::kCPU, at::kFloat).contiguous();
  if (p_.greedy()) return l.argmax().item<int64_t>();

  const float* data = l.data_ptr<float>();
  const int64_t n = l.numel();
  std::vector<double> score(data, data + n);
  for (double& s : score) s /= p_.temperature;
  std::vector<int64_t> order(n);
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
  if (p_.top_p < 1.0) {
    // Smallest prefix of the sorted tokens whose mass reaches top_p (at least one token).
    double cum = 0;
    int64_t cut = 0;
    while (cut < keep) {
      cum += prob[cut++];
      if (cum >= p_.top_p) break;
    }
    keep = cut;
    total = std::accumulate(prob.begin(), prob.begin() + keep, 0.0);
  } else {
    total = 1.0;
  }
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double cum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += prob[i];
    if (u < cum) return order[i];
  }
  return order[keep - 1];
}

}  // namespace cascade::stage
