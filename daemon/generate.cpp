#include "daemon/generate.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>

#include "config/size.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/tokenizer.h"
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

std::vector<GenerateResult> generate(const GenerateOptions& in, std::ostream& log) {
  GenerateOptions opts = in;
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
  if (opts.threads > 0) at::set_num_threads(opts.threads);

  const auto t0 = Clock::now();
  std::shared_ptr<const storage::Checkpoint> ck = storage::Checkpoint::open(opts.model_dir);
  stage::LoadOptions lo;
  lo.dtype = stage::resolve_dtype(opts.dtype, *ck);
  lo.kv_slots = static_cast<int64_t>(opts.prompts.size());
  int64_t longest = 0;
  for (const auto& p : opts.prompts) {
    if (p.empty()) throw std::invalid_argument("a prompt has no tokens");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  lo.max_seq_len = longest + opts.max_new_tokens;
  auto model = stage::Model::load(ck, lo);
  const stage::ModelConfig& cfg = model->config();
  for (const auto& p : opts.prompts) {
    for (int64_t id : p) {
      if (id >= cfg.vocab_size) {
        throw std::invalid_argument("token id " + std::to_string(id) + " is out of range for vocab_size " +
                                    std::to_string(cfg.vocab_size));
      }
    }
  }
  log << std::fixed << std::setprecision(3) << "cascade: loaded " << cfg.model_type << " (" << cfg.num_layers
      << " layers, " << config::format_bytes(model->weight_bytes()) << " as " << storage::dtype_name(lo.dtype)
      << ") from " << opts.model_dir << " in " << seconds_since(t0) << " s\n";

  const size_t n = opts.prompts.size();
  std::vector<GenerateResult> results(n);
  std::vector<stage::Sampler> samplers;
  std::vector<bool> done(n, false);
  for (size_t i = 0; i < n; ++i) {
    results[i].prompt_ids = opts.prompts[i];
    samplers.emplace_back(opts.sampling);
  }
  auto is_eos = [&](int64_t t) {
    return opts.stop_at_eos &&
           std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), t) != cfg.eos_token_ids.end();
  };

  const auto t1 = Clock::now();
  // Prefill: every prompt in one ragged step.
  stage::Batch batch;
  std::vector<int64_t> ids;
  for (size_t i = 0; i < n; ++i) {
    batch.seqs.push_back({static_cast<int64_t>(i), 0, static_cast<int64_t>(opts.prompts[i].size())});
    ids.insert(ids.end(), opts.prompts[i].begin(), opts.prompts[i].end());
  }
  std::vector<size_t> active(n);
  for (size_t i = 0; i < n; ++i) active[i] = i;
  at::Tensor logits = model->forward(at::tensor(ids, at::kLong), batch);  // [seqs, vocab]
  int64_t generated = 0;
  while (true) {
    at::Tensor cpu = logits.to(at::kCPU, at::kFloat);
    std::vector<size_t> still;
    for (size_t r = 0; r < active.size(); ++r) {
      const size_t i = active[r];
      if (opts.logits && results[i].output_ids.empty()) {
        const float* p = cpu[r].contiguous().data_ptr<float>();
        results[i].last_logits.assign(p, p + cpu.size(1));
      }
      const int64_t tok = samplers[i].next(cpu[r]);
      results[i].output_ids.push_back(tok);
      ++generated;
      if (!is_eos(tok) && static_cast<int64_t>(results[i].output_ids.size()) < opts.max_new_tokens) still.push_back(i);
    }
    active = still;
    if (active.empty()) break;
    // Decode: one token for every sequence still running.
    batch.seqs.clear();
    ids.clear();
    for (size_t i : active) {
      const int64_t pos = static_cast<int64_t>(results[i].prompt_ids.size() + results[i].output_ids.size()) - 1;
      batch.seqs.push_back({static_cast<int64_t>(i), pos, 1});
      ids.push_back(results[i].output_ids.back());
    }
    logits = model->forward(at::tensor(ids, at::kLong), batch);
  }
  const double dt = seconds_since(t1);
#ifdef CASCADE_WITH_TOKENIZER
  if (tok) {
    for (auto& r : results) {
      r.has_text = true;
      r.prompt_text = tok->decode(r.prompt_ids, /*skip_special_tokens=*/true);
      r.text = tok->decode(r.output_ids, /*skip_special_tokens=*/true);
    }
  }
#endif
  log << "cascade: generated " << generated << " tokens for " << n << " prompt(s) in " << dt << " s ("
      << std::setprecision(1) << (dt > 0 ? generated / dt : 0.0) << " tokens/s)\n";
  return results;
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
