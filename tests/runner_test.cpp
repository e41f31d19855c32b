#include "stage/runner.h"

#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

std::unique_ptr<Model> load(const std::string& name, std::vector<int64_t> modules = {}) {
  LoadOptions lo;
  lo.modules = std::move(modules);
  lo.runtime.max_batch = 2;
  lo.runtime.max_seq_len = 32;
  return Model::load(storage::Checkpoint::open(test::fixture(name)), lo);
}

comm::StepHeader prefill(std::vector<int64_t> lens) {
  comm::StepHeader h;
  for (size_t i = 0; i < lens.size(); ++i) h.seqs.push_back({static_cast<int64_t>(i), 0, lens[i]});
  return h;
}

TEST(StepRunner, TwoRunnersSplitAtAModuleEqualOne) {
  StepRunner whole(load("llama_gqa"));
  const int64_t n = static_cast<int64_t>(whole.model().all_modules().size());
  std::vector<int64_t> first, second;
  for (int64_t i = 0; i < n; ++i) (i < 2 ? first : second).push_back(i);
  StepRunner a(load("llama_gqa", first)), b(load("llama_gqa", second));
  const auto h = prefill({3, 2});
  const at::Tensor ids = at::tensor({1, 2, 3, 9, 4}, at::kLong);
  const at::Tensor want = whole.run(h, ids, 0, n);
  const at::Tensor hidden = a.run(h, ids, 0, 2);  // [tokens, hidden]
  EXPECT_EQ(hidden.size(0), 5);
  const at::Tensor got = b.run(h, hidden, 2, n);  // [seqs, vocab]
  EXPECT_TRUE(at::equal(got, want));
  EXPECT_TRUE(at::equal(whole.sample(h, want), b.sample(h, got)));
}

TEST(StepRunner, SamplesOnlyWhereAsked) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3, 2});
  h.seqs[0].sample = false;
  const at::Tensor logits = r.run(h, at::tensor({1, 2, 3, 9, 4}, at::kLong), 0, -1);
  const at::Tensor ids = r.sample(h, logits);
  EXPECT_EQ(ids[0].item<int64_t>(), -1);
  EXPECT_EQ(ids[1].item<int64_t>(), logits[1].argmax().item<int64_t>());
}

TEST(StepRunner, SeededSamplingRestartsWithTheSequence) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3});
  h.seqs[0].temperature = 1.0;
  h.seqs[0].seed = 77;
  const at::Tensor ids = at::tensor({1, 2, 3}, at::kLong);
  const int64_t a = r.sample(h, r.run(h, ids, 0, -1))[0].item<int64_t>();
  const int64_t b = r.sample(h, r.run(h, ids, 0, -1))[0].item<int64_t>();  // start_pos 0: a fresh sampler
  EXPECT_EQ(a, b);
}

TEST(StepRunner, BadStepsAreNamed) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3});
  h.step_id = 41;
  h.seqs[0].slot = 5;
  EXPECT_THROW_WITH(r.run(h, at::tensor({1, 2, 3}, at::kLong), 0, -1), c10::Error, "step 41", "KV slot 5");
  h.seqs[0].slot = 0;
  h.seqs[0].start_pos = 30;
  EXPECT_THROW_WITH(r.run(h, at::tensor({1, 2, 3}, at::kLong), 0, -1), c10::Error, "max_seq_len 32");
  h.kind = comm::StepKind::kShutdown;
  EXPECT_THROW_WITH(r.run(h, at::tensor({1}, at::kLong), 0, -1), c10::Error, "not a prefill or decode step");
}

}  // namespace
}  // namespace cascade::stage
