#include "daemon/executor.h"

#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::daemon {
namespace {

std::unique_ptr<stage::Model> load(const std::string& name) {
  stage::LoadOptions lo;
  lo.runtime.max_batch = 2;
  lo.runtime.max_seq_len = 32;
  return stage::Model::load(storage::Checkpoint::open(test::fixture(name)), lo);
}

comm::StepHeader prompt_step(double temperature) {
  comm::StepHeader h;
  h.step_id = 1;
  for (int64_t s : {0, 1}) {
    comm::SeqEntry e;
    e.slot = s;
    e.n_tokens = s == 0 ? 3 : 2;
    e.sampling.temperature = temperature;
    e.sampling.seed = 5;
    h.seqs.push_back(e);
  }
  return h;
}

// The decode step after `prev`: each sequence one token on; `fed`: its input is the
// token the executor sampled last, not a carried id.
comm::StepHeader decode_step(const comm::StepHeader& prev, bool fed) {
  comm::StepHeader d = prev;
  d.step_id = prev.step_id + 1;
  d.kind = comm::StepKind::kDecode;
  for (auto& s : d.seqs) {
    s.start_pos += s.n_tokens;
    s.n_tokens = 1;
    s.fed = fed;
  }
  return d;
}

// Steps submitted ahead (each decode step fed before the previous result was taken)
// give the same tokens, in order, as steps submitted one at a time with their ids:
// greedy (tokens read back in next()) and seeded sampling (finished in submit()).
TEST(LocalExecutor, StepsSubmittedAheadEqualStepsOneAtATime) {
  for (const double temperature : {0.0, 1.0}) {
    SCOPED_TRACE(temperature);
    LocalExecutor told(load("llama_gqa")), ahead(load("llama_gqa"));
    const at::Tensor prompt = at::tensor({1, 2, 3, 9, 4}, at::kLong);
    comm::StepHeader h = prompt_step(temperature);
    std::vector<at::Tensor> want;
    told.submit(h, prompt);
    want.push_back(told.next().ids);
    ahead.submit(h, prompt);
    for (int step = 0; step < 4; ++step) {
      h = decode_step(h, /*fed=*/false);
      told.submit(h, want.back());
      want.push_back(told.next().ids);
      comm::StepHeader f = h;
      for (auto& s : f.seqs) s.fed = true;
      ahead.submit(f, at::full({2}, -1, at::kLong));  // before the step it feeds on returns
    }
    // Each step ran in submit() on the CPU: its tokens were ready then, in order, though
    // next() hands them over only now (decode rates are timed from them).
    const auto submitted = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last{};
    for (size_t i = 0; i < want.size(); ++i) {
      const StepOutput got = ahead.next();
      EXPECT_LT(got.ready, submitted) << "step " << i;
      EXPECT_GT(got.ready, last) << "step " << i;
      last = got.ready;
      EXPECT_EQ(got.header.step_id, static_cast<int64_t>(i) + 1);
      EXPECT_TRUE(at::equal(got.ids, want[i])) << "step " << i << ": " << got.ids << " against " << want[i];
    }
  }
}

// On the CPU a step runs whole in submit(), tokens picked: the loops that drive the
// executor (generate, the scheduler) take each step's tokens before they submit the next,
// as a step ahead would overlap nothing and hand every token over a step late. It still
// takes fed steps (the test above).
TEST(LocalExecutor, OnTheCpuLoopsSubmitNoStepAhead) {
  LocalExecutor ex(load("llama_gqa"));
  EXPECT_TRUE(ex.feeds_sampled());
  EXPECT_FALSE(ex.overlaps_steps());
  EXPECT_FALSE(ex.feeds_ahead());
}

TEST(LocalExecutor, ReturnsLogitsOnlyWhereAsked) {
  LocalExecutor ex(load("llama_gqa"));
  comm::StepHeader h = prompt_step(0.0);
  h.flags = comm::kStepWantLogits;
  ex.submit(h, at::tensor({1, 2, 3, 9, 4}, at::kLong));
  const StepOutput out = ex.next();
  ASSERT_TRUE(out.logits.defined());
  EXPECT_EQ(out.logits.scalar_type(), at::kFloat);
  EXPECT_EQ(out.logits.size(0), 2);
  EXPECT_TRUE(at::equal(out.logits.argmax(-1), out.ids));  // greedy
  comm::StepHeader d = decode_step(h, /*fed=*/false);
  d.flags = 0;
  ex.submit(d, out.ids);
  EXPECT_FALSE(ex.next().logits.defined());
  EXPECT_EQ(ex.kv_slots(), 2);
  EXPECT_EQ(ex.max_seq_len(), 32);
}

TEST(LocalExecutor, NextWithoutAStepIsAnError) {
  LocalExecutor ex(load("llama_gqa"));
  EXPECT_THROW_WITH(ex.next(), c10::Error, "without a submitted step");
}

}  // namespace
}  // namespace cascade::daemon
