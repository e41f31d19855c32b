#include "stage/runner.h"

#include <cmath>
#include <set>

#include "storage/checkpoint.h"
#include "tests/test_util.h"

namespace cascade::stage {
namespace {

std::unique_ptr<Model> load(const std::string& name, std::vector<int64_t> modules = {}, int64_t slots = 2) {
  LoadOptions lo;
  lo.modules = std::move(modules);
  lo.runtime.max_batch = slots;
  lo.runtime.max_seq_len = 32;
  return Model::load(storage::Checkpoint::open(test::fixture(name)), lo);
}

comm::SeqEntry entry(int64_t slot, int64_t pos, int64_t n) {
  comm::SeqEntry e;
  e.slot = slot;
  e.start_pos = pos;
  e.n_tokens = n;
  return e;
}

comm::StepHeader prefill(std::vector<int64_t> lens) {
  comm::StepHeader h;
  for (size_t i = 0; i < lens.size(); ++i) h.seqs.push_back(entry(static_cast<int64_t>(i), 0, lens[i]));
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
  EXPECT_TRUE(at::equal(whole.sample(h, want).ids, b.sample(h, got).ids));
}

TEST(StepRunner, SamplesOnlyWhereAsked) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3, 2});
  h.seqs[0].sample = false;
  const at::Tensor logits = r.run(h, at::tensor({1, 2, 3, 9, 4}, at::kLong), 0, -1);
  const at::Tensor ids = r.sample(h, logits).ids;
  EXPECT_EQ(ids[0].item<int64_t>(), -1);
  EXPECT_EQ(ids[1].item<int64_t>(), logits[1].argmax().item<int64_t>());
}

// Plain greedy batches take one argmax on the logits' device; any sequence with
// logprobs sends the whole batch through the host path. Both pick the first largest
// logit of each sequence's last row (ties included), also when a sequence returns a
// row per prompt token.
// The rows sampling reads: one logits row a sequence, every token's for all_logits.
TEST(StepRunner, LastLogitRowsFollowAllLogits) {
  Batch b;
  b.seqs = {{0, 0, 5}, {1, 0, 3}, {2, 7, 1}};
  EXPECT_EQ(b.last_logit_rows(), (std::vector<int64_t>{0, 1, 2}));
  b.seqs[1].all_logits = true;
  EXPECT_EQ(b.last_logit_rows(), (std::vector<int64_t>{0, 3, 4}));
  EXPECT_TRUE(at::equal(b.logit_rows(at::kCPU), at::tensor({4, 5, 6, 7, 8}, at::kLong)));
}

TEST(StepRunner, BatchArgmaxEqualsTheHostPath) {
  auto h = prefill({1, 3, 1});
  h.seqs[1].sampling.prompt_logprobs = true;  // all its rows, logprobs still off
  h.ids = {7, 1, 2, 3, 9};
  at::manual_seed(5);
  // Few distinct values, so rows hold ties.
  const at::Tensor logits = (at::randint(0, 4, {5, 40}, at::kFloat) / 2).to(at::kBFloat16);
  StepRunner device_path(load("llama_gqa", {}, 3)), host_path(load("llama_gqa", {}, 3));
  auto scored = h;
  for (auto& s : scored.seqs) s.sampling.logprobs = 0;
  const at::Tensor got = device_path.sample(h, logits).ids;
  const at::Tensor want = host_path.sample(scored, logits).ids;
  EXPECT_TRUE(at::equal(got, want)) << got << want;
  const int64_t last_rows[] = {0, 3, 4};
  for (int64_t i = 0; i < 3; ++i) {
    const at::Tensor row = logits[last_rows[i]].to(at::kFloat);
    const float best = row.max().item<float>();
    int64_t first = 0;
    while (row[first].item<float>() != best) ++first;
    EXPECT_EQ(got[i].item<int64_t>(), first) << "sequence " << i;
  }
}

TEST(StepRunner, SeededSamplingRestartsWithTheSequence) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3});
  h.seqs[0].sampling.temperature = 1.0;
  h.seqs[0].sampling.seed = 77;
  const at::Tensor ids = at::tensor({1, 2, 3}, at::kLong);
  const int64_t a = r.sample(h, r.run(h, ids, 0, -1)).ids[0].item<int64_t>();
  const int64_t b = r.sample(h, r.run(h, ids, 0, -1)).ids[0].item<int64_t>();  // start_pos 0: a fresh sampler
  EXPECT_EQ(a, b);
}

// A recompute re-runs a sequence from position 0 but keeps its sampler: a seeded
// sequence draws the same tokens whether or not it was recomputed on the way (the
// model's RoPE does not depend on length, so the recomputed KV is the same), while a
// fresh start at position 0 restarts the draws.
TEST(StepRunner, ARecomputeKeepsTheSequencesSampler) {
  auto draws = [](bool recompute) {
    StepRunner r(load("llama_gqa"));
    auto h = prefill({3});
    h.seqs[0].sampling.temperature = 1.5;
    h.seqs[0].sampling.seed = 5;
    std::vector<int64_t> seq = {1, 2, 3};
    for (int step = 0; step < 6; ++step) {
      const std::vector<int64_t> feed(seq.end() - h.seqs[0].n_tokens, seq.end());
      seq.push_back(r.sample(h, r.run(h, at::tensor(feed, at::kLong), 0, -1)).ids[0].item<int64_t>());
      const int64_t pos = static_cast<int64_t>(seq.size()) - 1;
      const bool redo = recompute && step == 2;
      h.seqs[0].start_pos = redo ? 0 : pos;
      h.seqs[0].n_tokens = redo ? pos + 1 : 1;
      h.seqs[0].recompute = redo;
    }
    return seq;
  };
  const auto plain = draws(false), recomputed = draws(true);
  EXPECT_EQ(plain, recomputed);
  EXPECT_GE(std::set<int64_t>(plain.begin() + 3, plain.end()).size(), 3u);  // sampled, not one token
}

comm::StepHeader decode(std::vector<int64_t> slots, int64_t pos) {
  comm::StepHeader h;
  h.kind = comm::StepKind::kDecode;
  for (int64_t s : slots) h.seqs.push_back(entry(s, pos, 1));
  return h;
}

// n > 1: the forks get the prompt's KV and their first token from the same logits;
// from then on each slot continues exactly as the original would.
TEST(StepRunner, ForksShareThePromptsKvAndLogits) {
  for (bool split : {false, true}) {
    StepRunner whole(load("llama_gqa", {}, 3));
    const int64_t m = static_cast<int64_t>(whole.model().all_modules().size());
    std::vector<int64_t> first, second;
    for (int64_t i = 0; i < m; ++i) (i < 3 ? first : second).push_back(i);
    StepRunner a(load("llama_gqa", first, 3)), b(load("llama_gqa", second, 3));
    auto run = [&](const comm::StepHeader& h, const at::Tensor& ids) {
      return split ? b.run(h, a.run(h, ids, 0, 3), 3, m) : whole.run(h, ids, 0, m);
    };
    StepRunner& last = split ? b : whole;
    auto h = prefill({4});
    h.seqs[0].forks = {{2, 7}, {1, 8}};
    const at::Tensor logits = run(h, at::tensor({5, 6, 7, 8}, at::kLong));
    const at::Tensor ids = last.sample(h, logits).ids;
    ASSERT_EQ(ids.numel(), 3);
    const int64_t t = logits[0].argmax().item<int64_t>();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(ids[i].item<int64_t>(), t);
    const at::Tensor next = run(decode({0, 1, 2}, 4), at::tensor({t, t, t}, at::kLong));
    EXPECT_TRUE(at::equal(next[0], next[1]));
    EXPECT_TRUE(at::equal(next[0], next[2]));
    // And equal to one sequence that never forked.
    StepRunner ref(load("llama_gqa"));
    ref.run(prefill({4}), at::tensor({5, 6, 7, 8}, at::kLong), 0, m);
    const at::Tensor want = ref.run(decode({0}, 4), at::tensor({t}, at::kLong), 0, m);
    EXPECT_TRUE(at::allclose(next[1], want[0], 1e-5, 1e-6)) << (next[1] - want[0]).abs().max();
  }
}

// echo + logprobs: prompt token j is scored by the logits at j - 1, the same in one
// step and across prefill chunks, and equal to running each prefix alone.
TEST(StepRunner, PromptLogprobsMatchEachPrefixAlone) {
  const std::vector<int64_t> prompt = {3, 14, 15, 92, 65};
  StepRunner ref(load("llama_gqa"));
  auto score_alone = [&](size_t j) {  // log-softmax at the end of prompt[0, j)
    const auto h = prefill({static_cast<int64_t>(j)});
    const at::Tensor l = ref.run(h, at::tensor(std::vector<int64_t>(prompt.begin(), prompt.begin() + j)), 0, -1);
    return at::log_softmax(l[0].to(at::kDouble), 0);
  };
  for (int64_t chunk : {5, 2}) {
    StepRunner r(load("llama_gqa"));
    std::vector<double> got;  // records, flattened
    int64_t width = 0;
    for (int64_t pos = 0; pos < 5; pos += chunk) {
      const int64_t len = std::min<int64_t>(chunk, 5 - pos);
      comm::StepHeader h;
      h.kind = comm::StepKind::kPrefill;
      h.seqs.push_back(entry(0, pos, len));
      h.seqs[0].sample = pos + len == 5;
      h.seqs[0].sampling.logprobs = 2;
      h.seqs[0].sampling.prompt_logprobs = true;
      h.ids.assign(prompt.begin() + pos, prompt.begin() + pos + len);
      const auto s = r.sample(h, r.run(h, at::tensor(h.ids), 0, -1));
      width = s.logprobs.size(1);
      const at::Tensor rec = s.logprobs.contiguous();
      got.insert(got.end(), rec.data_ptr<double>(), rec.data_ptr<double>() + rec.numel());
    }
    ASSERT_EQ(width, 8);
    ASSERT_EQ(got.size(), 6u * 8) << "5 prompt tokens and the sampled one, chunks of " << chunk;
    EXPECT_EQ(got[1], 0);             // position 0 ...
    EXPECT_TRUE(std::isnan(got[3]));  // ... has no log-probability
    for (size_t j = 1; j <= 5; ++j) {
      const double* rec = &got[j * 8];
      EXPECT_EQ(rec[1], static_cast<double>(j));
      const at::Tensor lp = score_alone(j);
      const int64_t token = static_cast<int64_t>(rec[2]);
      if (j < 5) {
        EXPECT_EQ(token, prompt[j]);
      }
      EXPECT_NEAR(rec[3], lp[token].item<double>(), 1e-5) << "position " << j << ", chunks of " << chunk;
      EXPECT_EQ(static_cast<int64_t>(rec[4]), lp.argmax().item<int64_t>());
      EXPECT_NEAR(rec[5], lp.max().item<double>(), 1e-5);
    }
  }
}

TEST(StepRunner, ARepetitionPenaltyNeedsThePromptIds) {
  StepRunner r(load("llama_gqa"));
  auto h = prefill({3});
  h.step_id = 12;
  h.seqs[0].sampling.repetition_penalty = 1.2;
  const at::Tensor ids = at::tensor({1, 2, 3}, at::kLong);
  EXPECT_THROW_WITH(r.sample(h, r.run(h, ids, 0, -1)), c10::Error, "step 12", "prompt's token ids");
  h.ids = {1, 2, 3};
  EXPECT_NO_THROW(r.sample(h, r.run(h, ids, 0, -1)));
  h.ids = {1, 2};
  EXPECT_THROW_WITH(r.sample(h, r.run(h, ids, 0, -1)), c10::Error, "2 token ids for 3 tokens");
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
  h = prefill({3});
  h.seqs[0].forks = {{0, 1}};
  EXPECT_THROW_WITH(r.run(h, at::tensor({1, 2, 3}, at::kLong), 0, -1), c10::Error, "fork slot 0");
}

// A fed entry (comm::SeqEntry::fed) runs on its slot's last sampled token: the same
// logits and tokens as the step that carries that token's id, whether the tokens were
// picked on the device (plain greedy) or on the host (seeded sampling), and when the
// next step runs before this one's sampling is finished (the stage's overlap).
TEST(StepRunner, FedStepsRunOnTheSlotsLastSampledToken) {
  for (const double temperature : {0.0, 1.0}) {
    SCOPED_TRACE(temperature);
    StepRunner told(load("llama_gqa")), fed(load("llama_gqa"));
    auto h = prefill({3, 2});
    for (auto& s : h.seqs) {
      s.sampling.temperature = temperature;
      s.sampling.seed = 11;
    }
    const at::Tensor prompt = at::tensor({1, 2, 3, 9, 4}, at::kLong);
    at::Tensor want = told.sample(h, told.run(h, prompt, 0, -1)).ids;
    StepRunner::PendingSample pending = fed.begin_sample(h, fed.run(h, prompt, 0, -1));
    for (int64_t step = 0; step < 4; ++step) {
      auto d = h;
      d.kind = comm::StepKind::kDecode;
      for (auto& s : d.seqs) {
        s.start_pos = (s.slot == 0 ? 3 : 2) + step;
        s.n_tokens = 1;
        s.fed = true;
      }
      d.seqs[1].fed = step % 2 == 1;  // a step of fed and told entries
      const at::Tensor logits = told.run(d, want, 0, -1);
      const std::vector<int64_t> told_ids = {-1, d.seqs[1].fed ? -1 : want[1].item<int64_t>()};
      const at::Tensor placeholders = at::tensor(told_ids, at::kLong);
      if (pending.on_device()) {  // the next step first, as the stage does
        const at::Tensor got = fed.run(d, placeholders, 0, -1);
        EXPECT_TRUE(at::equal(fed.finish_sample(std::move(pending)).ids, want)) << "step " << step;
        EXPECT_TRUE(at::equal(got, logits)) << "step " << step;
        pending = fed.begin_sample(d, got);
      } else {
        EXPECT_TRUE(at::equal(fed.finish_sample(std::move(pending)).ids, want)) << "step " << step;
        const at::Tensor got = fed.run(d, placeholders, 0, -1);
        EXPECT_TRUE(at::equal(got, logits)) << "step " << step;
        pending = fed.begin_sample(d, got);
      }
      EXPECT_EQ(pending.on_device(), temperature == 0.0);
      want = told.sample(d, logits).ids;
    }
    EXPECT_TRUE(at::equal(fed.finish_sample(std::move(pending)).ids, want));
  }
}

TEST(StepRunner, BadFedStepsAreNamed) {
  StepRunner r(load("llama_gqa"));
  comm::StepHeader d;
  d.step_id = 8;
  d.kind = comm::StepKind::kDecode;
  d.seqs = {entry(1, 4, 1)};
  d.seqs[0].fed = true;
  EXPECT_THROW_WITH(r.run(d, at::tensor({-1}, at::kLong), 0, -1), c10::Error, "step 8", "slot 1", "has sampled none");
  auto h = prefill({3, 2});
  (void)r.sample(h, r.run(h, at::tensor({1, 2, 3, 9, 4}, at::kLong), 0, -1));
  EXPECT_NO_THROW(r.run(d, at::tensor({-1}, at::kLong), 0, -1));
  EXPECT_THROW_WITH(r.run(d, at::zeros({1}), 0, -1), c10::Error, "step 8", "not token ids");
  d.seqs.push_back(entry(0, 3, 1));  // told, with an id out of the vocabulary
  EXPECT_THROW_WITH(r.run(d, at::tensor({-1, -1}, at::kLong), 0, -1), c10::Error,
                    "token id -1 (row 1) is out of range [0, 256)");
}

}  // namespace
}  // namespace cascade::stage
