#include "daemon/generate.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "config/config.h"
#include "config/size.h"
#include "daemon/cluster.h"
#include "daemon/executor.h"
#include "daemon/planning.h"
#include "daemon/scheduler.h"
#include "daemon/startup.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/tokenizer/tokenizer.h"
#endif
#include "stage/model.h"
#include "storage/checkpoint.h"

namespace cascade::daemon {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || v < 0) {
      throw std::invalid_argument("invalid token id list '" + text + "' (expected e.g. 1,17,250)");
    }
    ids.push_back(v);
    pos = comma + 1;
  }
  return ids;
}

namespace {

// Prefill every prompt in one ragged step, then decode all running sequences one
// token per step until each has max_new_tokens (or EOS). Prompt i uses KV slot i.
//
// Where the executor feeds sampled tokens (Executor::feeds_ahead), each decode step
// is submitted before the previous step's tokens are taken, its entries fed: the stage
// finds its next step waiting and starts it at once. A sequence that turns out to have
// ended at EOS ran one step past its end; that token is dropped. Not for a model whose
// RoPE re-runs sequences.
std::vector<GenerateResult> run_generation(Executor& ex, const GenerateOptions& opts, const stage::ModelConfig& cfg,
                                           std::ostream& log) {
  const std::vector<int64_t>& eos_ids = cfg.eos_token_ids;
  const int64_t redo_at = cfg.rope.recompute_at();
  const bool ahead = ex.feeds_ahead() && redo_at <= 0;
  const size_t n = opts.prompts.size();
  std::vector<GenerateResult> results(n);
  std::vector<std::vector<int64_t>> prefill(n);  // what the stages run for each prompt
  for (size_t i = 0; i < n; ++i) {
    results[i].prompt_ids = opts.prompts[i];
    prefill[i] = comm::prefill_tokens(opts.prompts[i], cfg.decoder_start_token_id);
  }
  auto is_eos = [&](int64_t t) {
    return opts.stop_at_eos && std::find(eos_ids.begin(), eos_ids.end(), t) != eos_ids.end();
  };
  auto entry = [&](size_t i, int64_t pos, int64_t len) {
    comm::SeqEntry e;
    e.slot = static_cast<int64_t>(i);
    e.start_pos = pos;
    e.n_tokens = len;
    e.sampling = opts.sampling;
    if (cfg.encoder_decoder()) e.context = static_cast<int64_t>(opts.prompts[i].size());
    return e;
  };
  // Tokens each prompt has once the steps submitted so far return, and whether it ended.
  std::vector<int64_t> issued(n, 1);
  std::vector<bool> ended(n, false);

  const auto t1 = Clock::now();
  comm::StepHeader h;
  h.kind = comm::StepKind::kPrefill;
  h.flags = opts.logits ? comm::kStepWantLogits : 0;
  std::vector<int64_t> ids;
  for (size_t i = 0; i < n; ++i) {
    h.seqs.push_back(entry(i, 0, static_cast<int64_t>(prefill[i].size())));
    ids.insert(ids.end(), prefill[i].begin(), prefill[i].end());
  }
  if (opts.sampling.needs_prompt()) h.ids = ids;
  ex.submit(h, at::tensor(ids, at::kLong));
  int in_flight = 1;
  // The next decode step, for every prompt still short of its tokens; false when none is.
  // Fed, its ids are placeholders; else each is the prompt's last token, all returned.
  auto submit_decode = [&](bool fed) {
    h.kind = comm::StepKind::kDecode;
    h.flags = 0;
    ++h.step_id;
    h.seqs.clear();
    ids.clear();
    for (size_t i = 0; i < n; ++i) {
      if (ended[i] || issued[i] >= opts.max_new_tokens) continue;
      const GenerateResult& g = results[i];
      const int64_t pos = static_cast<int64_t>(prefill[i].size()) + issued[i] - 1;  // of the token fed
      ++issued[i];
      if (redo_at > 0 && pos == redo_at) {  // re-run every token, as transformers' Phi-3 does
        h.seqs.push_back(entry(i, 0, pos + 1));
        h.seqs.back().recompute = true;
        h.kind = comm::StepKind::kPrefill;
        ids.insert(ids.end(), prefill[i].begin(), prefill[i].end());
        ids.insert(ids.end(), g.output_ids.begin(), g.output_ids.end());
        continue;
      }
      h.seqs.push_back(entry(i, pos, 1));
      h.seqs.back().fed = fed;
      ids.push_back(fed ? -1 : g.output_ids.back());
    }
    if (h.seqs.empty()) return false;
    if (opts.sampling.needs_prompt()) h.ids = ids;  // placeholders where fed: the samplers have their prompts
    ex.submit(h, at::tensor(ids, at::kLong));
    ++in_flight;
    return true;
  };
  int64_t generated = 0, first = 0;
  auto t_first = Clock::now();
  while (in_flight > 0) {
    if (ahead && in_flight == 1) submit_decode(/*fed=*/true);
    const StepOutput out = ex.next();
    --in_flight;
    if (out.header.kind == comm::StepKind::kPrefill && out.header.step_id == 0) {  // decode is timed from here
      t_first = out.ready;  // when its tokens were ready: a step fed ahead may have run since
      first = static_cast<int64_t>(n);
    }
    const int64_t* tok = out.ids.data_ptr<int64_t>();
    for (size_t r = 0; r < out.header.seqs.size(); ++r) {
      const size_t i = static_cast<size_t>(out.header.seqs[r].slot);
      if (ended[i]) continue;  // a step past its EOS
      if (out.logits.defined()) {
        const at::Tensor row = out.logits[static_cast<int64_t>(r)].contiguous();
        results[i].last_logits.assign(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
      }
      results[i].output_ids.push_back(tok[r]);
      ++generated;
      ended[i] = is_eos(tok[r]) || static_cast<int64_t>(results[i].output_ids.size()) >= opts.max_new_tokens;
    }
    if (!ahead) submit_decode(/*fed=*/false);
  }
  const double dt = seconds_since(t1), decode_s = seconds_since(t_first);
  log << "cascade: generated " << generated << " tokens for " << n << " prompt(s) in " << std::fixed
      << std::setprecision(3) << dt << " s (" << std::setprecision(1) << (dt > 0 ? generated / dt : 0.0)
      << " tokens/s); first tokens after " << std::setprecision(3) << (dt - decode_s) << " s, then "
      << (generated - first) << " in " << decode_s << " s (" << std::setprecision(1)
      << (decode_s > 0 ? static_cast<double>(generated - first) / decode_s : 0.0) << " tokens/s decode)\n";
  return results;
}

// Pipeline mode: the prompts become requests to the Scheduler, which keeps up to M
// steps in flight across the stages.
std::vector<GenerateResult> run_scheduled(std::shared_ptr<Executor> ex, const GenerateOptions& opts,
                                          SchedulerOptions so, std::ostream& log) {
  struct Collect : Sink {
    void on_tokens(const Delta&) override {}
    void on_done(const CompletionResult& r) override {
      std::lock_guard<std::mutex> l(mu);
      ids = r.token_ids;
      done = true;
    }
    void on_error(int, const std::string& m) override {
      std::lock_guard<std::mutex> l(mu);
      error = m;
      done = true;
    }
    bool cancelled() const override { return false; }
    std::mutex mu;
    std::vector<int64_t> ids;
    std::string error;
    std::atomic<bool> done{false};
  };
  so.max_queue = static_cast<int64_t>(opts.prompts.size());
  Scheduler sched(std::move(ex), nullptr, so, nullptr);
  std::vector<std::shared_ptr<Collect>> sinks;
  const auto t1 = Clock::now();
  for (const auto& p : opts.prompts) {
    Job j;
    j.request.prompt_ids = p;
    j.request.max_tokens = opts.max_new_tokens;
    j.request.sampling = opts.sampling;
    j.request.seeded = true;
    j.request.ignore_eos = !opts.stop_at_eos;
    sinks.push_back(std::make_shared<Collect>());
    j.sink = sinks.back();
    if (sched.submit(std::move(j)) != 0) throw std::runtime_error("the scheduler refused a prompt");
  }
  std::thread t([&] { sched.run(); });
  for (const auto& c : sinks)
    while (!c->done && !sched.failed()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sched.stop(std::chrono::seconds(0));
  t.join();
  std::vector<GenerateResult> results;
  int64_t generated = 0;
  for (size_t i = 0; i < sinks.size(); ++i) {
    if (!sinks[i]->error.empty()) throw std::runtime_error(sinks[i]->error);
    GenerateResult r;
    r.prompt_ids = opts.prompts[i];
    r.output_ids = sinks[i]->ids;
    generated += static_cast<int64_t>(r.output_ids.size());
    results.push_back(r);
  }
  const double dt = seconds_since(t1);
  log << "cascade: generated " << generated << " tokens for " << results.size() << " prompt(s) in " << std::fixed
      << std::setprecision(3) << dt << " s (" << std::setprecision(1) << (dt > 0 ? generated / dt : 0.0)
      << " tokens/s; pipeline mode, " << so.microbatches << " microbatches)\n";
  return results;
}

// Positions a prompt of `n` tokens fills when it generates max_new_tokens (an
// encoder-decoder model's decoder start token takes one more).
int64_t positions_needed(const GenerateOptions& opts, const stage::ModelConfig& cfg, size_t n) {
  return static_cast<int64_t>(n) + (cfg.encoder_decoder() ? 1 : 0) + opts.max_new_tokens;
}

void check_prompts(const GenerateOptions& opts, const stage::ModelConfig& cfg, int64_t slots, int64_t max_seq_len) {
  const int64_t vocab = cfg.vocab_size;
  if (static_cast<int64_t>(opts.prompts.size()) > slots) {
    throw std::invalid_argument(std::to_string(opts.prompts.size()) + " prompts need as many KV slots, but " +
                                "runtime.max_batch is " + std::to_string(slots));
  }
  for (const auto& p : opts.prompts) {
    if (p.empty()) throw std::invalid_argument("a prompt has no tokens");
    if (positions_needed(opts, cfg, p.size()) > max_seq_len) {
      throw std::invalid_argument("a prompt of " + std::to_string(p.size()) + " tokens plus " +
                                  std::to_string(opts.max_new_tokens) + " new tokens" +
                                  (cfg.encoder_decoder() ? " (and the decoder's start token)" : "") +
                                  " exceeds max_seq_len " + std::to_string(max_seq_len));
    }
    for (int64_t id : p) {
      if (id >= vocab) {
        throw std::invalid_argument("token id " + std::to_string(id) + " is out of range for vocab_size " +
                                    std::to_string(vocab));
      }
    }
  }
}

}  // namespace

std::vector<GenerateResult> generate(const GenerateOptions& in, std::ostream& log) {
  GenerateOptions opts = in;
  std::optional<PlannedRun> run;
  if (!opts.config_file.empty()) {
    std::vector<std::string> ov = opts.overrides;
    if (opts.quantization != "none") ov.push_back("quantization.mode=\"" + opts.quantization + "\"");
    run = plan_run(config::load_config(opts.config_file, ov), "", &log);
    opts.model_dir = run->config.model.path;
  }
#ifdef CASCADE_WITH_TOKENIZER
  std::shared_ptr<const Tokenizer> tok;
  const bool has_tokenizer = std::ifstream(opts.model_dir + "/tokenizer.json").good();
  if (has_tokenizer) tok = Tokenizer::load(opts.model_dir);
  for (const auto& t : opts.prompt_texts) {
    if (!tok) throw std::invalid_argument(opts.model_dir + " has no tokenizer.json; give token ids with --prompt-ids");
    opts.prompts.push_back(tok->encode(t, /*add_special_tokens=*/true));
  }
#else
  if (!opts.prompt_texts.empty()) throw std::invalid_argument("this build has no tokenizer; use --prompt-ids");
#endif
  if (opts.prompts.empty()) throw std::invalid_argument("no prompt given (use --prompt-ids 1,2,3)");
  if (opts.max_new_tokens < 1) throw std::invalid_argument("--max-new-tokens must be at least 1");

  const auto t0 = Clock::now();
  std::shared_ptr<Executor> ex;
  std::optional<Started> started;
  stage::ModelConfig cfg;
  if (run) {
    cfg = run->description.config;
    check_prompts(opts, cfg, run->config.runtime.max_batch, run->config.runtime.max_seq_len);
    if (runs_here(*run, opts.spawn_stages)) {
      ex = load_here(*run, log);
    } else {
      started = start_stages(std::move(*run), log);
      ex = started->cluster;
    }
  } else {
    if (opts.threads > 0) at::set_num_threads(opts.threads);
    std::shared_ptr<const storage::Checkpoint> ck = storage::Checkpoint::open(opts.model_dir);
    stage::ModelDescription d = stage::describe(*ck);
    cfg = d.config;
    stage::LoadOptions lo;
    lo.dtype = stage::resolve_dtype(opts.dtype, *ck, d);
    lo.runtime.max_batch = static_cast<int>(opts.prompts.size());
    lo.quantization.mode = opts.quantization;
    int64_t longest = 0;
    for (const auto& p : opts.prompts) longest = std::max(longest, positions_needed(opts, cfg, p.size()));
    lo.runtime.max_seq_len = static_cast<int>(longest);
    check_prompts(opts, cfg, lo.runtime.max_batch, lo.runtime.max_seq_len);
    auto model = stage::Model::load(ck, lo, std::move(d));
    log << std::fixed << std::setprecision(3) << "cascade: loaded " << cfg.model_type << " (" << cfg.num_layers
        << " layers, " << config::format_bytes(model->weight_bytes()) << " as " << storage::dtype_name(lo.dtype)
        << ") from " << opts.model_dir << " in " << seconds_since(t0) << " s\n";
    ex = std::make_unique<LocalExecutor>(std::move(model));
  }
  std::vector<GenerateResult> results;
  if (started && started->run.config.runtime.mode == config::Mode::kPipeline) {
    if (opts.logits) throw std::invalid_argument("--logits needs runtime.mode = \"sequential\"");
    results = run_scheduled(ex, opts, scheduler_options(*started, config::Mode::kPipeline), log);
  } else {
    if (opts.warmup) {
      std::ostringstream untimed;
      run_generation(*ex, opts, cfg, untimed);
      log << "cascade: warm-up run done\n";
    }
    results = run_generation(*ex, opts, cfg, log);
  }
  if (started) started->cluster->shutdown();
#ifdef CASCADE_WITH_TOKENIZER
  if (tok) {
    for (auto& r : results) {
      r.has_text = true;
      r.prompt_text = tok->decode(r.prompt_ids, /*skip_special_tokens=*/true);
      r.text = tok->decode(r.output_ids, /*skip_special_tokens=*/true);
    }
  }
#endif
  return results;
}

std::string self_exe() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot find this program's path (/proc/self/exe): " + ec.message());
  return p.string();
}

void print_json(const std::vector<GenerateResult>& results, bool with_logits, std::ostream& out) {
  for (const auto& r : results) {
    nlohmann::json j;
    j["prompt_ids"] = r.prompt_ids;
    j["output_ids"] = r.output_ids;
    if (with_logits) j["last_logits"] = r.last_logits;
    if (r.has_text) {
      j["prompt"] = r.prompt_text;
      j["text"] = r.text;
    }
    out << j.dump() << "\n";
  }
}

}  // namespace cascade::daemon
