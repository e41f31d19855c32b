#include "daemon/scheduler.h"

#include <algorithm>
#include <random>
#include <set>

#include "daemon/stop_strings.h"

#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/tokenizer/tokenizer.h"
#endif

namespace cascade::daemon {

using Clock = std::chrono::steady_clock;

struct Scheduler::Seq {
  Job job;  // choice i > 0: request.sampling.seed is the request's + i
  // What its prefill runs (comm::prefill_tokens): the prompt, and an encoder-decoder
  // model's start token, after `context` encoder tokens (comm::SeqEntry::context).
  std::vector<int64_t> prompt;
  int64_t context = 0;
  int64_t index = 0;  // choice
  int64_t slot = 0;
  uint64_t gen = 0;
  int group = 0;
  int64_t prefill_pos = 0;     // prompt tokens already issued
  int64_t redo_pos = -1;       // >= 0: tokens of a recompute already issued
  int in_flight = 0;           // submitted steps that include this sequence
  uint64_t issued_in = 0;      // step_id of the last step that took it (in_flight > 0)
  bool waiting = false;        // a step whose sampled token it needs is in flight
  bool ahead = false;          // and a fed step after it (comm::SeqEntry::fed), whose token it needs next
  bool awaiting_fork = false;  // choice > 0 before choice 0's prompt ends
  std::vector<std::pair<int64_t, uint64_t>> followers;  // choice 0: (slot, gen) of choices 1..n-1
  bool prefilled() const { return prefill_pos >= static_cast<int64_t>(prompt.size()); }
  std::vector<int64_t> out;                                  // generated ids
  std::vector<stage::TokenScore> logprobs, prompt_logprobs;  // when the request asks for them
  bool prompt_sent = false;                                  // prompt_logprobs went out with the first delta
  std::string text;                                          // decoded so far
  size_t emitted = 0;                                        // text[0, emitted) has been sent
  size_t ids_emitted = 0;                                    // out[0, ids_emitted) has been sent
  Clock::time_point admitted, last_token;
#ifdef CASCADE_WITH_TOKENIZER
  std::unique_ptr<StreamDecoder> decoder;
#endif
};

void set_mode(SchedulerOptions* o, config::Mode mode, const config::RuntimeSection& rt, int stages) {
  const bool pipeline = mode == config::Mode::kPipeline;
  o->microbatches = pipeline ? (rt.microbatches > 0 ? rt.microbatches : std::max(1, stages)) : 1;
  o->prefill_chunk = pipeline ? (rt.prefill_chunk > 0 ? rt.prefill_chunk : 128) : 0;
}

// One submitted step: which sequences (slot, generation) its result rows belong to, in
// order (its entries, then their forks), and for each row the row whose prompt it shares.
struct Scheduler::InFlight {
  std::vector<std::pair<int64_t, uint64_t>> seqs;
  std::vector<size_t> parent;
  int64_t prompt_tokens = 0;
};

Scheduler::Scheduler(std::shared_ptr<Executor> ex, std::shared_ptr<const Tokenizer> tok, SchedulerOptions opts,
                     Metrics* metrics)
    : ex_(std::move(ex)),
      tok_(std::move(tok)),
      opts_(std::move(opts)),
      metrics_(metrics),
      ahead_(opts_.microbatches <= 1 && ex_->feeds_ahead()) {
  slots_.resize(static_cast<size_t>(ex_->kv_slots()));
  free_slots_ = ex_->kv_slots();
  if (metrics_) metrics_->set_kv_slots(0, ex_->kv_slots());
}

Scheduler::~Scheduler() = default;

int Scheduler::submit(Job job) {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_ || recovering_ || stopping_) return 503;
  // Free slots take queued jobs at the next step, so they count as room too.
  if (static_cast<int64_t>(queue_.size()) >= opts_.max_queue + free_slots_) return 429;
  if (!job.request.seeded) job.request.sampling.seed = std::random_device()();
  queue_.push_back(std::move(job));
  if (metrics_) metrics_->set_queue_length(static_cast<int64_t>(queue_.size()));
  cv_.notify_one();
  return 0;
}

int64_t Scheduler::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<int64_t>(queue_.size());
}

std::string Scheduler::failure() const {
  std::lock_guard<std::mutex> l(mu_);
  return failure_;
}

void Scheduler::stop(std::chrono::duration<double> grace) {
  std::lock_guard<std::mutex> l(mu_);
  stop_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(grace);
  stopping_ = true;
  cv_.notify_one();
}

// Moves queued jobs into free slots (under mu_), in order: a job with n choices waits
// until n slots are free at once.
void Scheduler::admit() {
  while (!queue_.empty()) {
    std::vector<int64_t> free;
    for (size_t s = 0; s < slots_.size(); ++s)
      if (!slots_[s]) free.push_back(static_cast<int64_t>(s));
    const int64_t n = std::max<int64_t>(1, queue_.front().request.n);
    if (static_cast<int64_t>(free.size()) < n) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    Seq* leader = nullptr;
    for (int64_t i = 0; i < n; ++i) {
      auto seq = std::make_unique<Seq>();
      seq->job = job;
      seq->job.request.sampling.seed = job.request.sampling.seed + static_cast<uint64_t>(i);
      seq->index = i;
      seq->slot = free[static_cast<size_t>(i)];
      seq->gen = ++generation_;
      seq->admitted = Clock::now();
      seq->awaiting_fork = i > 0;
      seq->prompt = comm::prefill_tokens(job.request.prompt_ids, opts_.decoder_start);
      if (opts_.decoder_start >= 0) seq->context = static_cast<int64_t>(job.request.prompt_ids.size());
      std::vector<int> size(static_cast<size_t>(std::max(1, opts_.microbatches)), 0);
      for (const auto& o : slots_)
        if (o) ++size[static_cast<size_t>(o->group)];
      seq->group = static_cast<int>(std::min_element(size.begin(), size.end()) - size.begin());
#ifdef CASCADE_WITH_TOKENIZER
      if (tok_) seq->decoder = std::make_unique<StreamDecoder>(tok_, /*skip_special_tokens=*/true);
#endif
      if (leader) leader->followers.push_back({seq->slot, seq->gen});
      Seq* raw = seq.get();
      slots_[static_cast<size_t>(seq->slot)] = std::move(seq);
      if (i == 0) leader = raw;
    }
  }
}

// Sends the text that is safe to send (scan_stops), and finishes the sequence where a
// stop sequence begins, cutting the text there.
void Scheduler::emit(Seq& s, bool final) {
  const StopScan scan = scan_stops(s.text, s.emitted, s.job.request.stop, final);
  const size_t safe = scan.safe, cut = scan.cut;
  Delta d;
  d.index = s.index;
  d.ids.assign(s.out.begin() + static_cast<std::ptrdiff_t>(s.ids_emitted), s.out.end());
  if (s.logprobs.size() >= s.out.size())
    d.logprobs.assign(s.logprobs.begin() + static_cast<std::ptrdiff_t>(s.ids_emitted), s.logprobs.end());
  if (!s.prompt_sent) d.prompt_logprobs = s.prompt_logprobs;
  s.prompt_sent = true;
  d.text = s.text.substr(s.emitted, safe - s.emitted);
  if (!d.text.empty() || !d.ids.empty()) s.job.sink->on_tokens(d);
  s.emitted = safe;
  s.ids_emitted = s.out.size();
  if (cut != std::string::npos) {
    s.text.resize(cut);
    finish(s, Finish::kStop);
  }
}

void Scheduler::finish(Seq& s, Finish f) {
  CompletionResult r;
  r.index = s.index;
  r.text = s.text.substr(0, s.emitted);
  r.token_ids = s.out;
  r.logprobs = s.logprobs;
  r.prompt_logprobs = s.prompt_logprobs;
  r.finish = f;
  s.job.sink->on_done(r);
  if (metrics_ && s.index == 0) metrics_->request_finished(200);
  slots_[static_cast<size_t>(s.slot)].reset();
}

void Scheduler::fail_all(int status, const std::string& msg) {
  std::deque<Job> queued;
  {
    std::lock_guard<std::mutex> l(mu_);
    queued.swap(queue_);
  }
  std::set<const Sink*> told;  // a request's choices share a sink: one error each
  for (auto& s : slots_) {
    if (!s) continue;
    if (told.insert(s->job.sink.get()).second) {
      s->job.sink->on_error(status, msg);
      if (metrics_) metrics_->request_finished(status);
    }
    s.reset();
  }
  for (auto& j : queued) {
    j.sink->on_error(status, msg);
    if (metrics_) metrics_->request_finished(status);
  }
}

// Keeps the groups within one sequence of each other, moving only sequences with no
// step in flight (their next step has not been built yet).
void Scheduler::regroup() {
  const int m = std::max(1, opts_.microbatches);
  if (m == 1) return;
  for (;;) {
    std::vector<int> size(static_cast<size_t>(m), 0);
    for (const auto& s : slots_)
      if (s) ++size[static_cast<size_t>(s->group)];
    const int big = static_cast<int>(std::max_element(size.begin(), size.end()) - size.begin());
    const int small = static_cast<int>(std::min_element(size.begin(), size.end()) - size.begin());
    if (size[static_cast<size_t>(big)] - size[static_cast<size_t>(small)] <= 1) return;
    Seq* move = nullptr;
    for (auto& s : slots_)
      if (s && s->group == big && s->in_flight == 0) move = s.get();
    if (!move) return;
    move->group = small;
  }
}

bool Scheduler::issue() {
  const int m = std::max(1, opts_.microbatches);
  for (int tries = 0; tries < m; ++tries) {
    const int g = (next_group_ + tries) % m;
    comm::StepHeader h;
    h.step_id = step_id_++;
    h.microbatch = static_cast<uint32_t>(g);
    h.kind = comm::StepKind::kDecode;
    std::vector<int64_t> ids;
    InFlight f, forks;  // forks' rows follow the entries'
    bool carry_ids = false;
    for (auto& sp : slots_) {
      if (!sp || sp->group != g || sp->awaiting_fork) continue;
      Seq& s = *sp;
      // Fed only behind an earlier step: a fork whose first token this very step samples
      // (add_forks, for its leader earlier in this loop) waits on this step.
      const bool fed = s.waiting && !(s.in_flight > 0 && s.issued_in == h.step_id) && feeds_next(s);
      if (s.waiting && !fed) continue;
      const auto& r = s.job.request;
      comm::SeqEntry e;
      e.slot = s.slot;
      e.sampling = r.sampling;
      e.context = s.context;
      if (r.sampling.needs_prompt()) carry_ids = true;
      if (r.sampling.logprobs >= 0) h.flags |= comm::kStepWantLogprobs;
      if (fed) {  // the token after the one in flight, which the stage feeds itself
        e.start_pos = decode_pos(s) + 1;
        e.n_tokens = 1;
        e.fed = true;
        ids.push_back(-1);
        s.ahead = true;
      } else if (!s.prefilled()) {
        const int64_t n = static_cast<int64_t>(s.prompt.size());
        int64_t chunk = opts_.prefill_chunk > 0 ? std::min(opts_.prefill_chunk, n - s.prefill_pos) : n;
        // The encoder reads its whole input at once: the first chunk holds all of it.
        if (s.prefill_pos < s.context) chunk = std::max(chunk, std::min(n, s.context + 1) - s.prefill_pos);
        e.start_pos = s.prefill_pos;
        e.n_tokens = chunk;
        e.seq_len = n;
        ids.insert(ids.end(), s.prompt.begin() + s.prefill_pos, s.prompt.begin() + s.prefill_pos + chunk);
        s.prefill_pos += chunk;
        e.sample = s.prefilled();  // only the prompt's last chunk yields a token
        s.waiting = e.sample;
        if (e.sample) add_forks(s, e, forks, f.seqs.size(), h.step_id);
        h.kind = comm::StepKind::kPrefill;
        f.prompt_tokens += chunk;
      } else if (s.redo_pos >= 0 || (opts_.recompute_at > 0 && decode_pos(s) == opts_.recompute_at)) {
        add_recompute(s, e, ids);
        h.kind = comm::StepKind::kPrefill;
      } else {
        e.start_pos = decode_pos(s);
        e.n_tokens = 1;
        ids.push_back(s.out.back());
        s.waiting = true;
      }
      ++s.in_flight;
      s.issued_in = h.step_id;
      h.seqs.push_back(e);
      f.seqs.push_back({s.slot, s.gen});
      f.parent.push_back(f.parent.size());
    }
    if (h.seqs.empty()) {
      --step_id_;
      continue;
    }
    f.seqs.insert(f.seqs.end(), forks.seqs.begin(), forks.seqs.end());
    f.parent.insert(f.parent.end(), forks.parent.begin(), forks.parent.end());
    if (carry_ids && h.kind == comm::StepKind::kPrefill) h.ids = ids;
    next_group_ = (g + 1) % m;
    ex_->submit(h, at::tensor(ids, at::kLong));
    in_flight_.push_back(std::move(f));
    return true;
  }
  return false;
}

int64_t Scheduler::decode_pos(const Seq& s) { return static_cast<int64_t>(s.prompt.size() + s.out.size()) - 1; }

// Whether a sequence whose sampling step is in flight gets a fed step after it now:
// only in sequential mode, once, and where that step's token cannot end it by length
// nor needs a recompute (a step past its EOS or stop string is dropped when it returns).
// Not while stopping, nor for a client that went away: their sequences must come to a
// moment with no step in flight (run() frees a cancelled one's slot only then).
bool Scheduler::feeds_next(const Seq& s) const {
  if (!ahead_ || s.ahead || !s.prefilled() || s.redo_pos >= 0 || stopping_ || s.job.sink->cancelled()) return false;
  const int64_t next = decode_pos(s) + 1;  // the position the fed step's token takes
  return static_cast<int64_t>(s.out.size()) + 1 < s.job.request.max_tokens && next + 1 < ex_->max_seq_len() &&
         !(opts_.recompute_at > 0 && next == opts_.recompute_at);
}

// The next chunk of re-running the sequence's tokens (prompt, then generated) from
// position 0, as transformers' Phi-3 does when a sequence outgrows its original
// context; its last chunk samples the next token.
void Scheduler::add_recompute(Seq& s, comm::SeqEntry& e, std::vector<int64_t>& ids) {
  const auto& prompt = s.prompt;
  const int64_t total = decode_pos(s) + 1;
  if (s.redo_pos < 0) s.redo_pos = 0;
  int64_t chunk = opts_.prefill_chunk > 0 ? std::min(opts_.prefill_chunk, total - s.redo_pos) : total - s.redo_pos;
  if (s.redo_pos < s.context) chunk = std::max(chunk, std::min(total, s.context + 1) - s.redo_pos);
  for (int64_t p = s.redo_pos; p < s.redo_pos + chunk; ++p) {
    const auto i = static_cast<size_t>(p);
    ids.push_back(i < prompt.size() ? prompt[i] : s.out[i - prompt.size()]);
  }
  e.start_pos = s.redo_pos;
  e.n_tokens = chunk;
  e.seq_len = total;
  e.recompute = true;
  s.redo_pos += chunk;
  e.sample = s.redo_pos == total;
  s.waiting = e.sample;
  if (e.sample) s.redo_pos = -1;
}

// Choice 0's prompt ends in this entry: its followers still here start from it.
void Scheduler::add_forks(Seq& leader, comm::SeqEntry& e, InFlight& f, size_t leader_row, uint64_t step_id) {
  for (const auto& [slot, gen] : leader.followers) {
    Seq* fs = slots_[static_cast<size_t>(slot)].get();
    if (!fs || fs->gen != gen || !fs->awaiting_fork) continue;  // cancelled meanwhile
    e.forks.push_back({slot, fs->job.request.sampling.seed});
    fs->awaiting_fork = false;
    fs->prefill_pos = static_cast<int64_t>(fs->prompt.size());
    fs->waiting = true;
    ++fs->in_flight;
    fs->issued_in = step_id;
    f.seqs.push_back({slot, gen});
    f.parent.push_back(leader_row);
  }
  leader.followers.clear();
}

// Hands the step's kLogprobs records to their sequences: a prompt token's to
// prompt_logprobs (a fork gets a copy of its parent's), a sampled token's to logprobs.
void Scheduler::take_logprobs(const StepOutput& res, const InFlight& f) {
  if (!res.logprobs.defined() || res.logprobs.size(0) == 0) return;
  const at::Tensor t = res.logprobs.contiguous();
  const int64_t w = t.size(1), k = (w - 4) / 2;
  const double* d = t.data_ptr<double>();
  std::vector<std::vector<stage::TokenScore>> prompt(f.seqs.size());
  std::vector<std::vector<stage::TokenScore>> sampled(f.seqs.size());
  for (int64_t r = 0; r < t.size(0); ++r, d += w) {
    const size_t row = static_cast<size_t>(d[0]);
    if (row >= f.seqs.size()) continue;
    Seq* sp = slots_[static_cast<size_t>(f.seqs[row].first)].get();
    if (!sp || sp->gen != f.seqs[row].second) continue;
    stage::TokenScore sc;
    sc.token = static_cast<int64_t>(d[2]);
    sc.logprob = d[3];
    for (int64_t i = 0; i < k && d[4 + 2 * i] >= 0; ++i)
      sc.top.emplace_back(static_cast<int64_t>(d[4 + 2 * i]), d[5 + 2 * i]);
    const bool in_prompt = static_cast<int64_t>(d[1]) < static_cast<int64_t>(sp->prompt.size());
    (in_prompt ? prompt : sampled)[row].push_back(std::move(sc));
  }
  for (size_t row = 0; row < f.seqs.size(); ++row) {
    Seq* sp = slots_[static_cast<size_t>(f.seqs[row].first)].get();
    if (!sp || sp->gen != f.seqs[row].second) continue;
    if (f.parent[row] == row) {
      sp->prompt_logprobs.insert(sp->prompt_logprobs.end(), prompt[row].begin(), prompt[row].end());
    } else {  // a fork: its parent's whole prompt, earlier chunks' included (its row came first)
      const auto& [pslot, pgen] = f.seqs[f.parent[row]];
      const Seq* parent = slots_[static_cast<size_t>(pslot)].get();
      if (parent && parent->gen == pgen) sp->prompt_logprobs = parent->prompt_logprobs;
    }
    sp->logprobs.insert(sp->logprobs.end(), sampled[row].begin(), sampled[row].end());
  }
}

void Scheduler::collect() {
  const StepOutput res = ex_->next();
  const InFlight f = std::move(in_flight_.front());
  in_flight_.pop_front();
  take_logprobs(res, f);
  const int64_t* tok = res.ids.data_ptr<int64_t>();
  const auto now = Clock::now();
  int64_t sampled = 0;
  for (size_t i = 0; i < f.seqs.size(); ++i) {
    const auto [slot, gen] = f.seqs[i];
    Seq* sp = slots_[static_cast<size_t>(slot)].get();
    if (!sp || sp->gen != gen) continue;  // gone meanwhile
    Seq& s = *sp;
    --s.in_flight;
    const int64_t t = tok[i];
    if (t < 0) continue;  // a prefill chunk before the prompt's end
    ++sampled;
    s.waiting = s.ahead;  // the fed step's token is the one it waits for now
    s.ahead = false;
    if (s.out.empty()) {
      if (metrics_) metrics_->observe_ttft(std::chrono::duration<double>(now - s.admitted).count());
    } else if (metrics_) {
      metrics_->observe_inter_token(std::chrono::duration<double>(now - s.last_token).count());
    }
    s.last_token = now;
    const auto& stops = s.job.request.stop_token_ids;  // a chat format's end of turn
    const bool eos =
        !s.job.request.ignore_eos && (std::find(opts_.eos_ids.begin(), opts_.eos_ids.end(), t) != opts_.eos_ids.end() ||
                                      std::find(stops.begin(), stops.end(), t) != stops.end());
    s.out.push_back(t);
#ifdef CASCADE_WITH_TOKENIZER
    if (s.decoder) s.text += s.decoder->push(t);
#endif
    const bool length = static_cast<int64_t>(s.out.size()) >= s.job.request.max_tokens ||
                        static_cast<int64_t>(s.prompt.size() + s.out.size()) >= ex_->max_seq_len();
    const bool final = eos || length;
#ifdef CASCADE_WITH_TOKENIZER
    if (final && s.decoder) s.text += s.decoder->flush();
#endif
    emit(s, final);
    if (!slots_[static_cast<size_t>(slot)]) continue;  // a stop sequence finished it (and freed s)
    if (final) finish(s, eos ? Finish::kStop : Finish::kLength);
  }
  if (metrics_) metrics_->add_tokens(f.prompt_tokens, sampled);
}

// Fails every request held or queued with a 503 naming `why`, then lets the executor
// try to recover. While it does, submit() answers 503 too.
bool Scheduler::recover(const std::string& why) {
  {
    std::lock_guard<std::mutex> l(mu_);
    failure_ = why;
    recovering_ = true;
  }
  in_flight_.clear();
  fail_all(503, "the model is unavailable: " + why);
  running_ = 0;
  if (metrics_) metrics_->set_in_flight(0);
  const bool ok = ex_->recover(why);
  std::lock_guard<std::mutex> l(mu_);
  if (ok) {
    slots_.clear();
    slots_.resize(static_cast<size_t>(ex_->kv_slots()));
    free_slots_ = ex_->kv_slots();
    if (metrics_) metrics_->stage_restarted();
  } else {
    failed_ = true;
  }
  recovering_ = false;
  return ok;
}

void Scheduler::run() {
  // Sequential mode with fed steps keeps a second step in flight: the stage finds it
  // waiting when the first one's tokens come back (Scheduler::feeds_next).
  const size_t max_in_flight = ahead_ ? 2 : static_cast<size_t>(std::max(1, opts_.microbatches));
  for (;;) {
    int64_t used = 0;
    bool idle = false;
    {
      std::unique_lock<std::mutex> l(mu_);
      // Clients that went away give up their slots before the next step (once no
      // step of theirs is in flight, so a new sequence never shares one).
      for (auto& s : slots_) {
        if (s && s->in_flight == 0 && s->job.sink->cancelled()) {
          if (metrics_ && s->index == 0) metrics_->request_finished(499);
          s.reset();
        }
      }
      admit();
      regroup();
      for (const auto& s : slots_) used += s ? 1 : 0;
      free_slots_ = static_cast<int64_t>(slots_.size()) - used;
      if (used == 0 && in_flight_.empty()) {
        running_ = 0;
        if (metrics_) {
          metrics_->set_in_flight(0);
          metrics_->set_kv_slots(0, static_cast<int64_t>(slots_.size()));
        }
        if (stopping_) break;
        cv_.wait_for(l, std::chrono::milliseconds(100));
        idle = true;
      } else if (stopping_ && Clock::now() > stop_deadline_ && in_flight_.empty()) {
        break;
      }
    }
    if (idle) {
      try {
        ex_->check();
      } catch (const std::exception& e) {
        if (!recover(e.what())) return;
      }
      continue;
    }
    running_ = used;
    if (metrics_) {
      metrics_->set_in_flight(used);
      metrics_->set_kv_slots(used, static_cast<int64_t>(slots_.size()));
      metrics_->set_queue_length(queued());
    }
    try {
      while (in_flight_.size() < max_in_flight && issue()) {
      }
      if (!in_flight_.empty()) collect();
    } catch (const std::exception& e) {
      if (!recover(e.what())) return;
      continue;
    }
    if (metrics_ && opts_.stage_busy) {
      const auto busy = opts_.stage_busy();
      for (size_t i = 0; i < busy.size() && i < opts_.stage_labels.size(); ++i)
        metrics_->set_stage_busy(opts_.stage_labels[i], busy[i]);
    }
  }
  fail_all(503, "the server is shutting down");
  running_ = 0;
  if (metrics_) metrics_->set_in_flight(0);
}

}  // namespace cascade::daemon
