// Continuous batching (DESIGN §1 step 4, §7): one thread turns the requests of many
// clients into steps on an Executor.
//
// Sequential mode: one step in flight, carrying every running sequence — new ones
// with their whole prompt (prefill), the rest with their last token (decode) — as one
// ragged batch. Where the executor feeds sampled tokens back (one stage takes the ids
// and samples), a second step follows it at once, whose decoding entries are fed
// (comm::SeqEntry::fed): the stage then never waits for this thread between steps. A
// sequence that ends (EOS, a stop string) then ran one step too many; its token is
// dropped. Pipeline mode: the running sequences are split into M groups (kept
// even as requests come and go) and up to M steps are in flight, so every stage works
// on a different group; a group's next step is issued as soon as its tokens return.
// Prompts are cut into chunks of `prefill_chunk` tokens, and a sequence's next chunk
// is issued without waiting for the previous one (no token depends on it), so chunk
// c+1 enters the first stage while chunk c is in the second; the KV cache makes this
// exact. A request joins at the next step after a KV slot frees up (n slots for n
// choices, all at once); admission waits in a bounded queue (past it, submit() refuses
// and the client gets 429). Each sequence samples with its own seed in its own slot,
// so its tokens do not depend on what shares its batch, nor on the mode. Choices 1..n-1
// of a request do not prefill: they fork from choice 0 when its prompt's last chunk
// runs (comm::SeqEntry::forks), seeded seed + i.
//
// Results flow back through the request's Sink, called on the scheduler thread. A
// request whose sink reports cancelled() (its client went away) gives up its slot at
// the next step. While idle it asks the Executor to check itself every 100 ms, so a
// stage that dies between requests is noticed too. If the Executor fails (a stage
// died), every request in flight or queued gets a 503 naming the failure, and the
// scheduler asks the Executor to recover (Supervisor restarts the stages); meanwhile
// new requests get a 503 too. If it cannot, the scheduler refuses new work for good,
// reporting the failure, and run() returns.
//
// Ownership: owns the Executor. Thread-safety: submit(), stop() and the accessors may
// be called from any thread; run() is the scheduler thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"
#include "daemon/executor.h"
#include "daemon/http/api.h"
#include "daemon/http/metrics.h"

namespace cascade::daemon {

class Tokenizer;

// Where a request's results go. Called on the scheduler thread; must not block.
class Sink {
 public:
  virtual ~Sink() = default;
  // A choice's new text (possibly empty while a multi-byte character or a possible stop
  // string is held back), the ids that produced it and their logprobs.
  virtual void on_tokens(const Delta& d) = 0;
  // Once per choice (request.n of them), in the order they finish.
  virtual void on_done(const CompletionResult& result) = 0;
  // At most once per request, and nothing follows it.
  virtual void on_error(int status, const std::string& message) = 0;
  virtual bool cancelled() const = 0;
};

struct Job {
  CompletionRequest request;  // prompt_ids filled in, limits checked
  std::shared_ptr<Sink> sink;
};

struct SchedulerOptions {
  int64_t max_queue = 64;
  int microbatches = 1;       // steps in flight: 1 = sequential mode
  int64_t prefill_chunk = 0;  // tokens per prefill step; 0 = whole prompts
  std::vector<int64_t> eos_ids;
  // A decoding sequence about to feed this position is re-prefilled from its tokens
  // first (stage::RopeConfig::recompute_at); 0 = never.
  int64_t recompute_at = 0;
  // >= 0: an encoder-decoder model; a prompt is the encoder's input and the decoder
  // starts from this token (stage::ModelConfig::decoder_start_token_id).
  int64_t decoder_start = -1;
  std::function<std::vector<double>()> stage_busy;  // for metrics; may be empty
  std::vector<std::string> stage_labels;
};

// Microbatches and prefill chunk for `mode` (sequential: 1 and whole prompts; pipeline:
// runtime.microbatches or one per stage, runtime.prefill_chunk or 128).
void set_mode(SchedulerOptions* o, config::Mode mode, const config::RuntimeSection& rt, int stages);

class Scheduler {
 public:
  // The executor may be shared with a later Scheduler (the benchmark runs both modes
  // on the same stages), but only one may run at a time.
  Scheduler(std::shared_ptr<Executor> ex, std::shared_ptr<const Tokenizer> tok, SchedulerOptions opts,
            Metrics* metrics);
  ~Scheduler();

  // Queues a job; returns an ApiError status (429 queue full, 503 failed or stopping)
  // or 0 when accepted.
  int submit(Job job);
  // The scheduler loop; returns after stop() once the work is done or the grace ends.
  void run();
  // Stop admitting; finish what is in flight within `grace`, then fail the rest (503).
  void stop(std::chrono::duration<double> grace);

  bool failed() const { return failed_; }
  bool recovering() const { return recovering_; }
  std::string failure() const;
  int64_t running() const { return running_; }
  int64_t queued() const;
  Executor& executor() { return *ex_; }

 private:
  struct Seq;
  struct InFlight;
  void admit();
  void regroup();
  bool issue();    // submits one step if a group has work; false when none has
  void collect();  // takes the oldest step's results
  void finish(Seq& s, Finish f);
  void add_forks(Seq& leader, comm::SeqEntry& e, InFlight& forks, size_t leader_row, uint64_t step_id);
  static int64_t decode_pos(const Seq& s);  // position of the token a decode step feeds
  bool feeds_next(const Seq& s) const;
  void add_recompute(Seq& s, comm::SeqEntry& e, std::vector<int64_t>& ids);
  void take_logprobs(const StepOutput& res, const InFlight& f);
  void fail_all(int status, const std::string& msg);
  bool recover(const std::string& why);  // after the executor failed; false when it stays failed
  void emit(Seq& s, bool final);

  std::shared_ptr<Executor> ex_;
  std::shared_ptr<const Tokenizer> tok_;
  SchedulerOptions opts_;
  Metrics* metrics_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::vector<std::unique_ptr<Seq>> slots_;  // by KV slot; null = free
  std::deque<InFlight> in_flight_;           // submitted steps, oldest first
  uint64_t generation_ = 0;                  // tells a slot's sequences apart
  int next_group_ = 0;                       // round-robin over groups
  std::atomic<bool> stopping_{false}, failed_{false}, recovering_{false};
  std::atomic<int64_t> running_{0}, free_slots_{0};
  std::chrono::steady_clock::time_point stop_deadline_;
  std::string failure_;
  uint64_t step_id_ = 0;
  // Sequential mode on an executor that feeds sampled tokens (Executor::feeds_ahead):
  // a sequence's next decode step is issued while its previous one is in flight, fed.
  bool ahead_ = false;
};

}  // namespace cascade::daemon
