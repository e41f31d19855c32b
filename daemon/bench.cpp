#include "daemon/bench.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <thread>

#include "config/config.h"
#include "daemon/cluster.h"
#include "daemon/generate.h"
#include "daemon/planning.h"
#include "daemon/scheduler.h"
#include "daemon/startup.h"
#include "stage/model.h"
#include "storage/checkpoint.h"

namespace cascade::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
int64_t us(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

struct ModeResult {
  std::string mode;
  int microbatches = 1;
  double wall = 0, tokens_per_s = 0, total_tokens_per_s = 0, ttft_p50 = 0, ttft_p99 = 0;
  double token_interval_p50 = 0;  // a request's (last token - first token) / (tokens - 1), median
  int64_t generated = 0, prompt_tokens = 0, failed = 0;
  std::vector<double> busy_pct;
  Clock::time_point begin, end;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// Runs the closed-loop workload on `ex` with one Scheduler; returns the measurements.
class Driver {
 public:
  Driver(std::shared_ptr<Executor> ex, SchedulerOptions so, const std::vector<std::vector<int64_t>>& prompts,
         int new_tokens, int concurrency)
      : sched_(std::move(ex), nullptr, so, nullptr),
        prompts_(prompts),
        new_tokens_(new_tokens),
        concurrency_(concurrency) {}

  struct Request : Sink {
    Driver* d;
    size_t index;
    Clock::time_point sent, first;
    bool got_first = false;
    void on_tokens(const Delta& d) override {
      if (!got_first && !d.ids.empty()) {
        first = Clock::now();
        got_first = true;
      }
    }
    void on_done(const CompletionResult& r) override { d->done(*this, static_cast<int64_t>(r.token_ids.size()), ""); }
    void on_error(int status, const std::string& m) override {
      d->done(*this, 0, m.empty() ? "HTTP status " + std::to_string(status) : m);
    }
    bool cancelled() const override { return false; }
  };

  void run() {
    std::thread t([&] { sched_.run(); });
    {
      std::unique_lock<std::mutex> l(mu_);
      for (int i = 0; i < concurrency_ && next_ < prompts_.size(); ++i) send();
      cv_.wait(l, [&] { return finished_ == prompts_.size(); });
    }
    sched_.stop(std::chrono::seconds(0));
    t.join();
  }

  std::vector<double> ttft, interval;  // interval: per request, seconds between its decode tokens
  int64_t generated = 0, failed = 0;
  std::string first_error;  // why the first failed request failed

 private:
  void send() {  // under mu_
    auto r = std::make_shared<Request>();
    r->d = this;
    r->index = next_++;
    r->sent = Clock::now();
    Job j;
    j.request.prompt_ids = prompts_[r->index];
    j.request.max_tokens = new_tokens_;
    j.request.sampling.temperature = 0;
    j.request.seeded = true;
    j.request.ignore_eos = true;
    j.sink = r;
    live_.push_back(r);
    if (const int rc = sched_.submit(std::move(j)); rc != 0) {
      if (failed++ == 0) first_error = "the scheduler refused a request (" + std::to_string(rc) + ")";
      ++finished_;
    }
  }
  // Called on the scheduler thread: the closed loop sends the next request from here.
  void done(Request& r, int64_t tokens, const std::string& error) {
    std::lock_guard<std::mutex> l(mu_);
    if (error.empty()) {
      generated += tokens;
      ttft.push_back(seconds(r.first - r.sent));
      if (tokens > 1) interval.push_back(seconds(Clock::now() - r.first) / static_cast<double>(tokens - 1));
    } else if (failed++ == 0) {
      first_error = error;
    }
    ++finished_;
    if (next_ < prompts_.size()) send();
    cv_.notify_all();
  }

  Scheduler sched_;
  const std::vector<std::vector<int64_t>>& prompts_;
  int new_tokens_, concurrency_;
  size_t next_ = 0, finished_ = 0;
  std::vector<std::shared_ptr<Request>> live_;
  std::mutex mu_;
  std::condition_variable cv_;
};

void write_trace(const std::string& path, const Cluster& c, const std::vector<ModeResult>& modes,
                 Clock::time_point t0) {
  json ev = json::array();
  const int64_t base = us(t0);
  ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"args", {{"name", "cascade bench"}}}});
  for (size_t r = 0; r < c.labels().size(); ++r) {
    ev.push_back({{"name", "thread_name"},
                  {"ph", "M"},
                  {"pid", 1},
                  {"tid", r},
                  {"args", {{"name", r == 0 ? std::string("coordinator (modes)") : c.labels()[r]}}}});
  }
  for (const auto& m : modes) {
    ev.push_back({{"name", m.mode},
                  {"cat", "mode"},
                  {"ph", "X"},
                  {"pid", 1},
                  {"tid", 0},
                  {"ts", us(m.begin) - base},
                  {"dur", us(m.end) - us(m.begin)},
                  {"args", {{"microbatches", m.microbatches}, {"tokens_per_s", m.tokens_per_s}}}});
  }
  for (size_t s = 0; s < c.traces().size(); ++s) {
    for (const auto& sp : c.traces()[s]) {
      const int64_t b = sp[3].get<int64_t>() - base, e = sp[4].get<int64_t>() - base;
      if (e < 0) continue;  // before the measured runs (warm-up)
      ev.push_back({{"name", sp[0]},
                    {"cat", sp[0]},
                    {"ph", "X"},
                    {"pid", 1},
                    {"tid", s + 1},
                    {"ts", b},
                    {"dur", std::max<int64_t>(0, e - b)},
                    {"args", {{"step", sp[1]}, {"microbatch", sp[2]}}}});
    }
  }
  std::ofstream out(path);
  out << json({{"traceEvents", ev}, {"displayTimeUnit", "ms"}}).dump() << "\n";
  if (!out) throw std::runtime_error("cannot write the trace to " + path);
}

json mode_json(const ModeResult& m, const std::vector<std::string>& labels) {
  json busy = json::object();
  for (size_t i = 0; i < m.busy_pct.size(); ++i) busy[labels[i + 1]] = m.busy_pct[i];
  return {{"microbatches", m.microbatches},
          {"tokens_per_s", m.tokens_per_s},
          {"total_tokens_per_s", m.total_tokens_per_s},
          {"ttft_p50_s", m.ttft_p50},
          {"ttft_p99_s", m.ttft_p99},
          {"token_interval_p50_s", m.token_interval_p50},
          {"wall_s", m.wall},
          {"generated_tokens", m.generated},
          {"prompt_tokens", m.prompt_tokens},
          {"failed_requests", m.failed},
          {"stage_busy_pct", busy}};
}

// One mode's measured run (after a short warm-up) on the started stages.
ModeResult run_mode(const BenchOptions& o, const Started& started, const std::string& mode,
                    const std::vector<std::vector<int64_t>>& prompts, std::ostream& log) {
  const std::shared_ptr<Cluster>& cluster = started.cluster;
  SchedulerOptions so =
      scheduler_options(started, mode == "pipeline" ? config::Mode::kPipeline : config::Mode::kSequential);
  so.max_queue = o.requests;
  {  // warm-up: first-step allocations and page faults are not part of either mode
    const std::vector<std::vector<int64_t>> warm(static_cast<size_t>(o.concurrency), prompts.front());
    Driver w(cluster, so, warm, 2, o.concurrency);
    w.run();
    if (w.failed > 0) throw std::runtime_error(mode + " mode's warm-up failed: " + w.first_error);
  }
  log << "cascade bench: " << mode << " (" << so.microbatches << " microbatch" << (so.microbatches > 1 ? "es" : "")
      << "): " << o.requests << " requests x (" << o.prompt_len << " prompt + " << o.new_tokens
      << " new tokens), concurrency " << o.concurrency << std::endl;
  ModeResult m;
  m.mode = mode;
  m.microbatches = so.microbatches;
  const std::vector<double> busy0 = cluster->stage_busy();
  Driver d(cluster, so, prompts, o.new_tokens, o.concurrency);
  m.begin = Clock::now();
  d.run();
  m.end = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the stages' last busy reports
  const std::vector<double> busy1 = cluster->stage_busy();
  // A rate measured over failed requests means nothing: say why instead of printing it.
  if (d.failed > 0) {
    throw std::runtime_error(mode + " mode: " + std::to_string(d.failed) + " of " + std::to_string(o.requests) +
                             " requests failed; the first: " + d.first_error);
  }
  m.wall = seconds(m.end - m.begin);
  m.generated = d.generated;
  m.failed = d.failed;
  m.prompt_tokens = static_cast<int64_t>(o.requests) * o.prompt_len;
  m.tokens_per_s = static_cast<double>(m.generated) / m.wall;
  m.total_tokens_per_s = static_cast<double>(m.generated + m.prompt_tokens) / m.wall;
  m.ttft_p50 = percentile(d.ttft, 0.50);
  m.ttft_p99 = percentile(d.ttft, 0.99);
  m.token_interval_p50 = percentile(d.interval, 0.50);
  for (size_t i = 0; i < busy1.size(); ++i) m.busy_pct.push_back(100.0 * (busy1[i] - busy0[i]) / m.wall);
  return m;
}

// The human-readable report: one row per mode, then the ratio.
void print_table(const BenchOptions& o, const std::vector<ModeResult>& results, const std::vector<std::string>& labels,
                 int stages, double ratio, double predicted, std::ostream& out) {
  out << std::fixed << std::setprecision(1) << "workload: " << o.requests << " requests, " << o.prompt_len
      << " prompt + " << o.new_tokens << " new tokens each, concurrency " << o.concurrency << ", " << stages
      << " stages\n\n"
      << std::left << std::setw(12) << "mode" << std::right << std::setw(8) << "micro" << std::setw(12) << "out tok/s"
      << std::setw(14) << "total tok/s" << std::setw(12) << "TTFT p50" << std::setw(12) << "TTFT p99";
  for (size_t i = 1; i < labels.size(); ++i) out << std::setw(14) << ("busy r" + std::to_string(i));
  out << "\n";
  for (const auto& m : results) {
    out << std::left << std::setw(12) << m.mode << std::right << std::setw(8) << m.microbatches << std::setw(12)
        << m.tokens_per_s << std::setw(14) << m.total_tokens_per_s << std::setw(10) << m.ttft_p50 * 1000 << " ms"
        << std::setw(10) << m.ttft_p99 * 1000 << " ms";
    for (double b : m.busy_pct) out << std::setw(13) << b << "%";
    out << "\n";
  }
  // The planner's cost model against the run: a step of `concurrency` tokens, and each
  // request's time between its tokens (which also holds the other requests' prefills).
  out << std::setprecision(2) << "\ncost model: a decode step of " << o.concurrency << " token"
      << (o.concurrency > 1 ? "s" : "") << " ~" << predicted * 1000
      << " ms predicted; measured per-token interval p50:";
  for (const auto& m : results) out << " " << m.mode << " " << m.token_interval_p50 * 1000 << " ms";
  out << "\n";
  if (results.size() == 2) {
    out << std::setprecision(2) << "\npipeline / sequential: " << ratio << "x output tokens/s\n";
    if (o.concurrency == 1) {
      out << "(one request in flight: a sequence cannot be in two stages at once, so pipeline mode "
             "cannot be faster here)\n";
    }
  }
}

}  // namespace

int bench(const BenchOptions& o, std::ostream& out, std::ostream& log) {
  if (o.mode != "sequential" && o.mode != "pipeline" && o.mode != "both")
    throw std::invalid_argument("--mode must be sequential, pipeline or both");
  if (o.requests < 1 || o.prompt_len < 1 || o.new_tokens < 1 || o.concurrency < 1)
    throw std::invalid_argument("--requests, --prompt-len, --new-tokens and --concurrency must be at least 1");
  PlannedRun run = plan_run(config::load_config(o.config_file, o.overrides), "", &log);
  const auto& rt = run.config.runtime;
  if (o.concurrency > rt.max_batch)
    throw std::invalid_argument("--concurrency " + std::to_string(o.concurrency) + " exceeds runtime.max_batch " +
                                std::to_string(rt.max_batch));
  if (o.prompt_len + o.new_tokens > rt.max_seq_len)
    throw std::invalid_argument("--prompt-len + --new-tokens exceeds runtime.max_seq_len " +
                                std::to_string(rt.max_seq_len));
  const Started started = start_stages(std::move(run), log, !o.trace.empty());
  const std::shared_ptr<Cluster>& cluster = started.cluster;
  const int64_t vocab = started.run.description.config.vocab_size;
  std::mt19937_64 rng(1234);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(o.requests));
  for (auto& p : prompts)
    for (int i = 0; i < o.prompt_len; ++i) p.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab)));

  const int stages = started.stages();
  std::vector<std::string> modes;
  if (o.mode != "pipeline") modes.push_back("sequential");
  if (o.mode != "sequential") modes.push_back("pipeline");
  std::vector<ModeResult> results;
  const auto t0 = Clock::now();
  for (const auto& mode : modes) results.push_back(run_mode(o, started, mode, prompts, log));
  cluster->shutdown();
  if (!o.trace.empty()) {
    write_trace(o.trace, *cluster, results, t0);
    log << "cascade bench: trace written to " << o.trace << " (open it in https://ui.perfetto.dev)\n";
  }

  const double ratio = results.size() == 2 ? results[1].tokens_per_s / results[0].tokens_per_s : 0.0;
  planner::PlanRequest step = started.run.request;
  step.max_batch = o.concurrency;
  const double predicted = planner::predicted_step_seconds(step, started.run.plan);
  if (o.json) {
    json j = {{"config", o.config_file},
              {"stages", stages},
              {"workload",
               {{"requests", o.requests},
                {"prompt_len", o.prompt_len},
                {"new_tokens", o.new_tokens},
                {"concurrency", o.concurrency}}}};
    for (const auto& m : results) j[m.mode] = mode_json(m, cluster->labels());
    j["ratio"] = results.size() == 2 ? json(ratio) : json(nullptr);
    j["predicted_step_s"] = predicted;
    out << j.dump() << "\n";
    return 0;
  }
  print_table(o, results, cluster->labels(), stages, ratio, predicted, out);
  return 0;
}

}  // namespace cascade::daemon
