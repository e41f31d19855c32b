#include "daemon/scheduler.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>

#include "stage/model.h"
#include "storage/checkpoint.h"
#include "tests/test_util.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/tokenizer/tokenizer.h"
#endif

namespace cascade::daemon {
namespace {

// Records what the scheduler reports for one request (`n` choices).
class Recorder : public Sink {
 public:
  explicit Recorder(int64_t n = 1) : n(n) {}
  void on_tokens(const Delta& d) override {
    std::lock_guard<std::mutex> l(mu);
    if (d.index == 0) {
      streamed += d.text;
      stream_ids.insert(stream_ids.end(), d.ids.begin(), d.ids.end());
    }
    deltas.push_back(d);
  }
  void on_done(const CompletionResult& r) override {
    std::lock_guard<std::mutex> l(mu);
    if (r.index == 0) result = r;
    results.push_back(r);
    done = static_cast<int64_t>(results.size()) == n;
  }
  void on_error(int s, const std::string& m) override {
    std::lock_guard<std::mutex> l(mu);
    status = s;
    error = m;
    done = true;
  }
  bool cancelled() const override { return cancel; }
  std::mutex mu;
  std::string streamed, error;
  std::vector<int64_t> stream_ids;  // choice 0's
  CompletionResult result;          // choice 0's
  std::vector<CompletionResult> results;
  std::vector<Delta> deltas;
  int64_t n;
  int status = 0;
  std::atomic<bool> done{false}, cancel{false};
};

// Fault injection: an executor whose steps fail after `ok` of them.
class FailingExecutor : public Executor {
 public:
  FailingExecutor(std::unique_ptr<Executor> e, int ok) : e_(std::move(e)), ok_(ok) {}
  void submit(const comm::StepHeader& h, const at::Tensor& ids) override { e_->submit(h, ids); }
  StepOutput next() override {
    StepOutput o = e_->next();
    if (ok_-- <= 0) throw std::runtime_error("stage 2 (rank 2, cpu:1) (pid 42) exited");
    return o;
  }
  int64_t kv_slots() const override { return e_->kv_slots(); }
  int64_t max_seq_len() const override { return e_->max_seq_len(); }

 private:
  std::unique_ptr<Executor> e_;
  int ok_;
};

std::unique_ptr<Executor> local(const std::string& dir, int64_t slots, int64_t max_seq = 64) {
  stage::LoadOptions lo;
  lo.runtime.max_batch = slots;
  lo.runtime.max_seq_len = max_seq;
  return std::make_unique<LocalExecutor>(stage::Model::load(storage::Checkpoint::open(dir), lo));
}

// Counts what the scheduler sends: fed entries and the most steps in flight at once;
// `feeds` says whether it takes fed entries at all.
class CountingExecutor : public Executor {
 public:
  CountingExecutor(std::unique_ptr<Executor> e, bool feeds) : e_(std::move(e)), feeds_(feeds) {}
  void submit(const comm::StepHeader& h, const at::Tensor& ids) override {
    most = std::max(most.load(), ++in_flight_);
    for (const auto& s : h.seqs) fed += s.fed ? 1 : 0;
    e_->submit(h, ids);
  }
  StepOutput next() override {
    --in_flight_;
    return e_->next();
  }
  bool feeds_sampled() const override { return feeds_; }
  int64_t kv_slots() const override { return e_->kv_slots(); }
  int64_t max_seq_len() const override { return e_->max_seq_len(); }
  std::atomic<int> fed{0}, most{0};

 private:
  std::unique_ptr<Executor> e_;
  bool feeds_;
  int in_flight_ = 0;
};

Job job(std::vector<int64_t> prompt, int64_t max_tokens, uint64_t seed, std::shared_ptr<Recorder> rec) {
  Job j;
  j.request.prompt_ids = std::move(prompt);
  j.request.max_tokens = max_tokens;
  j.request.sampling.temperature = 0.9;
  j.request.sampling.seed = seed;
  j.request.seeded = true;
  j.sink = std::move(rec);
  return j;
}

void wait_all(const std::vector<std::shared_ptr<Recorder>>& recs) {
  for (const auto& r : recs)
    for (int i = 0; i < 2000 && !r->done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

TEST(Scheduler, ARequestGetsTheSameTokensAloneOrAmongSixteen) {
  auto run = [](int n, int64_t slots) {
    Scheduler s(local(test::fixture("llama_gqa"), slots), nullptr, {}, nullptr);
    std::thread t([&] { s.run(); });
    std::vector<std::shared_ptr<Recorder>> recs;
    for (int i = 0; i < n; ++i) {
      recs.push_back(std::make_shared<Recorder>());
      EXPECT_EQ(s.submit(job({1, 2, 3 + i % 5, 7}, 12 + i % 4, 100 + i, recs.back())), 0);
      if (i % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // arrive mid-flight
    }
    wait_all(recs);
    s.stop(std::chrono::seconds(5));
    t.join();
    std::vector<std::vector<int64_t>> out;
    for (const auto& r : recs) {
      EXPECT_TRUE(r->done);
      EXPECT_EQ(r->result.token_ids, r->stream_ids);
      out.push_back(r->result.token_ids);
    }
    return out;
  };
  const auto together = run(17, 16);  // 16 slots: the 17th waits in the queue and joins later
  for (int i = 0; i < 17; ++i) {
    Scheduler s(local(test::fixture("llama_gqa"), 1), nullptr, {}, nullptr);
    std::thread t([&] { s.run(); });
    auto rec = std::make_shared<Recorder>();
    ASSERT_EQ(s.submit(job({1, 2, 3 + i % 5, 7}, 12 + i % 4, 100 + i, rec)), 0);
    wait_all({rec});
    s.stop(std::chrono::seconds(5));
    t.join();
    EXPECT_EQ(rec->result.token_ids, together[static_cast<size_t>(i)]) << "request " << i;
    EXPECT_EQ(rec->result.token_ids.size(), static_cast<size_t>(12 + i % 4));
    EXPECT_EQ(rec->result.finish, Finish::kLength);
  }
}

// Pipeline mode (M groups, chunked prefill) against sequential mode on a real model:
// the same tokens, greedy and sampled, with requests arriving while steps are in flight.
TEST(Scheduler, PipelineModeMatchesSequentialMode) {
  auto run = [](int microbatches, int64_t chunk) {
    SchedulerOptions o;
    o.microbatches = microbatches;
    o.prefill_chunk = chunk;
    Scheduler s(local(test::fixture("mistral_window"), 8), nullptr, o, nullptr);
    std::thread t([&] { s.run(); });
    std::vector<std::shared_ptr<Recorder>> recs;
    for (int i = 0; i < 11; ++i) {
      recs.push_back(std::make_shared<Recorder>());
      std::vector<int64_t> prompt;
      for (int k = 0; k < 3 + (i * 7) % 13; ++k) prompt.push_back((i * 31 + k * 17) % 250 + 1);
      Job j = job(prompt, 6 + i % 5, 500 + i, recs.back());
      if (i % 2) j.request.sampling.temperature = 0;  // greedy and sampled
      EXPECT_EQ(s.submit(std::move(j)), 0);
      if (i % 4 == 1) std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
    wait_all(recs);
    s.stop(std::chrono::seconds(5));
    t.join();
    std::vector<std::vector<int64_t>> out;
    for (const auto& r : recs) out.push_back(r->result.token_ids);
    return out;
  };
  const auto sequential = run(1, 0);
  for (const auto& [m, chunk] : std::vector<std::pair<int, int64_t>>{{2, 4}, {3, 2}, {5, 3}, {8, 1}}) {
    EXPECT_EQ(run(m, chunk), sequential) << m << " microbatches, chunks of " << chunk;
  }
}

// Every sampling option (penalties, logit_bias, min_p, logprobs, echo's prompt
// logprobs, n > 1) gives the same tokens in pipeline mode as in sequential mode, and
// choice i of n equals the same request alone with seed + i.
struct OptionRun {
  std::vector<std::vector<int64_t>> tokens;  // request-major, then choice
  std::vector<std::vector<double>> logprobs;
};

Job option_job(int i, std::shared_ptr<Recorder> rec, int64_t n, uint64_t seed_shift = 0) {
  std::vector<int64_t> prompt;
  for (int k = 0; k < 4 + (i * 5) % 11; ++k) prompt.push_back((i * 37 + k * 11) % 250 + 1);
  Job j = job(prompt, 5 + i % 4, 900 + i + seed_shift, std::move(rec));
  auto& p = j.request.sampling;
  p.temperature = i % 3 == 0 ? 0.0 : 0.8;
  if (i % 2 == 0) p.repetition_penalty = 1.3;
  if (i % 3 == 1) p.frequency_penalty = 0.7;
  if (i % 4 == 2) p.presence_penalty = -0.5;
  if (i % 5 == 3) p.min_p = 0.1;
  if (i % 4 == 1) p.logit_bias = {{7, 3.0f}, {prompt[0], -2.0f}};
  p.logprobs = i % 2 ? 3 : -1;
  p.prompt_logprobs = i % 4 == 1;
  j.request.n = n;
  return j;
}

OptionRun run_options(int microbatches, int64_t chunk, int64_t n, int requests, bool alone = false) {
  SchedulerOptions o;
  o.microbatches = microbatches;
  o.prefill_chunk = chunk;
  Scheduler s(local(test::fixture("mistral_window"), 8), nullptr, o, nullptr);
  std::thread t([&] { s.run(); });
  std::vector<std::shared_ptr<Recorder>> recs;
  for (int i = 0; i < requests; ++i) {
    for (int64_t c = 0; c < (alone ? n : 1); ++c) {
      recs.push_back(std::make_shared<Recorder>(alone ? 1 : n));
      Job j = option_job(i, recs.back(), alone ? 1 : n, static_cast<uint64_t>(c));
      EXPECT_EQ(s.submit(std::move(j)), 0);
    }
    if (i % 3 == 1) std::this_thread::sleep_for(std::chrono::milliseconds(3));
  }
  wait_all(recs);
  s.stop(std::chrono::seconds(5));
  t.join();
  OptionRun out;
  for (const auto& r : recs) {
    EXPECT_TRUE(r->done) << r->error;
    std::vector<CompletionResult> by_index = r->results;
    std::sort(by_index.begin(), by_index.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
    for (const auto& c : by_index) {
      out.tokens.push_back(c.token_ids);
      std::vector<double> lp;
      for (const auto* v : {&c.prompt_logprobs, &c.logprobs})
        for (const auto& sc : *v) {
          lp.push_back(static_cast<double>(sc.token));
          lp.push_back(sc.logprob);
          for (const auto& [id, x] : sc.top) lp.insert(lp.end(), {static_cast<double>(id), x});
        }
      out.logprobs.push_back(lp);
    }
  }
  return out;
}

void expect_same(const OptionRun& a, const OptionRun& b, const std::string& what) {
  EXPECT_EQ(a.tokens, b.tokens) << what;
  ASSERT_EQ(a.logprobs.size(), b.logprobs.size()) << what;
  for (size_t i = 0; i < a.logprobs.size(); ++i) {
    ASSERT_EQ(a.logprobs[i].size(), b.logprobs[i].size()) << what << ", choice row " << i;
    for (size_t k = 0; k < a.logprobs[i].size(); ++k) {
      if (std::isnan(a.logprobs[i][k])) {
        EXPECT_TRUE(std::isnan(b.logprobs[i][k])) << what;
      } else {
        EXPECT_NEAR(a.logprobs[i][k], b.logprobs[i][k], 1e-5) << what << ", choice row " << i << " value " << k;
      }
    }
  }
}

TEST(Scheduler, EverySamplingOptionMatchesAcrossModesAndChoices) {
  const OptionRun sequential = run_options(1, 0, 1, 9);
  for (const auto& [m, chunk] : std::vector<std::pair<int, int64_t>>{{2, 3}, {4, 1}})
    expect_same(run_options(m, chunk, 1, 9), sequential, std::to_string(m) + " microbatches");
  // n = 3: choices fork from choice 0's prefill; each equals its seed alone.
  const OptionRun forked = run_options(1, 0, 3, 6);
  expect_same(forked, run_options(1, 0, 3, 6, /*alone=*/true), "n = 3 against three requests");
  expect_same(run_options(3, 2, 3, 6), forked, "n = 3 in pipeline mode");
  // Logprobs came back where asked: request 1 asks for them with echo.
  ASSERT_GE(forked.logprobs.size(), 6u);
  EXPECT_FALSE(forked.logprobs[3].empty());
  EXPECT_TRUE(forked.logprobs[0].empty());
}

// Sequential mode on an executor that feeds sampled tokens keeps a fed step behind
// each decoding sequence's current one (two steps in flight), and no token changes:
// greedy and sampled requests arriving mid-flight, one stopping at EOS (its step past
// EOS dropped), against the same requests on an executor that does not feed.
TEST(Scheduler, FedStepsKeepTwoStepsInFlightAndChangeNoToken) {
  auto run = [](bool feeds, const std::vector<int64_t>& eos, int* fed, int* most) {
    SchedulerOptions o;
    o.eos_ids = eos;
    auto ex = std::make_shared<CountingExecutor>(local(test::fixture("llama_gqa"), 4), feeds);
    Scheduler s(ex, nullptr, o, nullptr);
    std::thread t([&] { s.run(); });
    std::vector<std::shared_ptr<Recorder>> recs;
    for (int i = 0; i < 6; ++i) {
      recs.push_back(std::make_shared<Recorder>());
      Job j = job({1, 2, 3 + i, 7}, 10 + i, 300 + i, recs.back());
      if (i % 2 == 0) j.request.sampling.temperature = 0.0;  // greedy: picked on the device's side
      EXPECT_EQ(s.submit(std::move(j)), 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    wait_all(recs);
    s.stop(std::chrono::seconds(5));
    t.join();
    *fed = ex->fed;
    *most = ex->most;
    std::vector<std::vector<int64_t>> out;
    for (const auto& r : recs) {
      EXPECT_TRUE(r->done) << r->error;
      out.push_back(r->result.token_ids);
    }
    return out;
  };
  int fed = 0, most = 0;
  const auto first = run(false, {}, &fed, &most);
  ASSERT_GE(first[0].size(), 5u);
  const std::vector<int64_t> eos = {first[0][3]};  // request 0 ends at its fourth token
  const auto told = run(false, eos, &fed, &most);
  EXPECT_EQ(fed, 0);
  EXPECT_EQ(most, 1);
  EXPECT_EQ(told[0].size(), 4u);
  const auto with_fed = run(true, eos, &fed, &most);
  EXPECT_GT(fed, 10);
  EXPECT_EQ(most, 2);
  EXPECT_EQ(with_fed, told);
}

TEST(Scheduler, BoundedQueueAndCancellation) {
  SchedulerOptions o;
  o.max_queue = 1;
  Scheduler s(local(test::fixture("llama_gqa"), 1, 2048), nullptr, o, nullptr);
  auto a = std::make_shared<Recorder>(), b = std::make_shared<Recorder>(), c = std::make_shared<Recorder>();
  EXPECT_EQ(s.submit(job({1, 2}, 2000, 1, a)), 0);  // takes the slot at the first step
  EXPECT_EQ(s.submit(job({1, 2}, 4, 2, b)), 0);     // free slot counts as room
  EXPECT_EQ(s.submit(job({1, 2}, 4, 3, c)), 429);   // slot spoken for, queue full
  std::thread t([&] { s.run(); });
  for (int i = 0; i < 400 && a->stream_ids.size() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  a->cancel = true;  // the client went away: b gets the slot
  wait_all({b});
  EXPECT_TRUE(b->done);
  EXPECT_EQ(b->result.token_ids.size(), 4u);
  EXPECT_FALSE(a->done);
  EXPECT_LT(a->stream_ids.size(), 2000u);
  s.stop(std::chrono::seconds(1));
  t.join();
  EXPECT_EQ(s.submit(job({1}, 1, 1, c)), 503);  // stopped
}

TEST(Scheduler, AFailedExecutorAnswers503AndRefusesNewWork) {
  Scheduler s(std::make_unique<FailingExecutor>(local(test::fixture("llama_gqa"), 4), 3), nullptr, {}, nullptr);
  std::thread t([&] { s.run(); });
  auto a = std::make_shared<Recorder>(), b = std::make_shared<Recorder>();
  s.submit(job({1, 2}, 50, 1, a));
  s.submit(job({3, 4}, 50, 2, b));
  t.join();  // run() returns after the failure
  for (const auto& r : {a, b}) {
    EXPECT_EQ(r->status, 503);
    EXPECT_NE(r->error.find("stage 2 (rank 2, cpu:1) (pid 42) exited"), std::string::npos) << r->error;
  }
  EXPECT_TRUE(s.failed());
  EXPECT_EQ(s.submit(job({1}, 1, 1, a)), 503);
}

#ifdef CASCADE_WITH_TOKENIZER
TEST(Scheduler, StopSequencesCutTheTextAndAreNeverStreamed) {
  const std::string demo = std::string(CASCADE_SOURCE_DIR) + "/models/demo";
  auto tok = Tokenizer::load(demo);
  auto greedy = [&](std::vector<std::string> stop) {
    Scheduler s(local(demo, 1, 256), tok, {}, nullptr);
    std::thread t([&] { s.run(); });
    auto rec = std::make_shared<Recorder>();
    Job j = job(tok->encode("def add(a, b):", true), 40, 0, rec);
    j.request.sampling.temperature = 0;
    j.request.stop = std::move(stop);
    s.submit(std::move(j));
    wait_all({rec});
    s.stop(std::chrono::seconds(1));
    t.join();
    EXPECT_EQ(rec->streamed, rec->result.text);
    return rec->result;
  };
  const CompletionResult full = greedy({});
  ASSERT_GT(full.text.size(), 12u) << full.text;
  const std::string stop = full.text.substr(6, 4);  // occurs in the greedy text
  const CompletionResult cut = greedy({stop, "never appears"});
  EXPECT_EQ(cut.finish, Finish::kStop);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
}
#endif

}  // namespace
}  // namespace cascade::daemon
