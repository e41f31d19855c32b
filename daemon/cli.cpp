#include "daemon/cli.h"

#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "comm/world.h"
#include "daemon/bench.h"
#include "daemon/calibrate.h"
#include "daemon/generate.h"
#include "daemon/http/client.h"
#include "daemon/http/server.h"
#include "daemon/planning.h"
#include "daemon/startup.h"
#ifdef CASCADE_WITH_TOKENIZER
#include "daemon/text.h"
#endif
#include "stage/worker.h"

namespace cascade::daemon {
namespace {

void add_generate(CLI::App& app, GenerateOptions& g, std::vector<std::string>& prompt_ids, bool& json, bool& greedy) {
  auto* cmd = app.add_subcommand("generate",
                                 "Continue prompts: in this process (--model, or --config with a plan of "
                                 "one stage) or across the stage processes of a plan (--config)");
  auto* model = cmd->add_option("--model", g.model_dir, "Hugging Face checkpoint directory (one process)")
                    ->check(CLI::ExistingDirectory);
  auto* config = cmd->add_option("--config", g.config_file, "cascade.toml: model and placement; runs its stages")
                     ->check(CLI::ExistingFile);
  model->excludes(config);
  cmd->add_flag("--spawn-stages", g.spawn_stages,
                "With --config: a plan of one stage in a stage process too (the default loads it here)")
      ->needs(config);
  cmd->add_option("--set", g.overrides, "With --config: override a key, section.key=value")->take_all();
  cmd->add_option("--prompt-ids", prompt_ids, "Comma-separated token ids; repeat for several prompts")->take_all();
  cmd->add_option("--prompt", g.prompt_texts, "Prompt text, encoded with DIR/tokenizer.json; repeatable")->take_all();
  cmd->add_option("--max-new-tokens", g.max_new_tokens, "Tokens to generate per prompt")->capture_default_str();
  cmd->add_option("--dtype", g.dtype, "Compute dtype")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))
      ->capture_default_str();
  cmd->add_option("--quantization", g.quantization, "none | int8 (LLM.int8 linear weights)")
      ->check(CLI::IsMember({"none", "int8"}))
      ->capture_default_str();
  cmd->add_flag("--greedy", greedy, "Greedy decoding (the default)");
  cmd->add_option("--temperature", g.sampling.temperature, "Sampling temperature (> 0 samples)");
  cmd->add_option("--top-k", g.sampling.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", g.sampling.top_p, "Nucleus sampling mass (1 = off)");
  cmd->add_option("--seed", g.sampling.seed, "Sampling seed");
  cmd->add_flag("--logits", g.logits, "Include the logits at the last prompt position (with --json)");
  cmd->add_flag("--json", json, "One JSON object per prompt on stdout");
  cmd->add_flag("--stop-at-eos", g.stop_at_eos, "Stop a sequence at the model's EOS token");
  cmd->add_flag("--warmup", g.warmup, "Generate once untimed first (graph capture, lazy loading)");
  cmd->add_option("--threads", g.threads, "Compute threads (0 = LibTorch's default)");
}

void add_plan(CLI::App& app, PlanOptions& p) {
  auto* cmd = app.add_subcommand("plan", "Show where every module would live, without loading weights");
  cmd->add_option("--config", p.config_file, "cascade.toml")->check(CLI::ExistingFile);
  cmd->add_option("--set", p.overrides, "Override a config key: section.key=value")->take_all();
  cmd->add_option("--model", p.model_dir, "Hugging Face checkpoint directory (instead of --config)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--max-memory", p.max_memory,
                  "Budgets, e.g. \"cuda:0=20GiB,cpu=64GiB,disk\"; a device without a size is measured");
  cmd->add_option("--strategy", p.strategy, "auto | balanced | balanced_low_0 | sequential");
  cmd->add_option("--mode", p.mode, "sequential | pipeline");
  cmd->add_option("--max-batch", p.max_batch, "KV slots");
  cmd->add_option("--max-seq-len", p.max_seq_len, "Tokens per sequence");
  cmd->add_option("--dtype", p.dtype, "auto | float32 | bfloat16 | float16");
  cmd->add_option("--offload-compute", p.offload_compute, "cpu | cuda:N | cpu+cuda:N | auto");
  cmd->add_option("--experts", p.experts, "Mixtures of experts: auto | offload | with-layer")
      ->check(CLI::IsMember({"auto", "offload", "with-layer"}));
  cmd->add_option("--quantization", p.quantization, "none | int8")->check(CLI::IsMember({"none", "int8"}));
  cmd->add_flag("--json", p.json, "Print the plan as JSON");
}

int run_generate(GenerateOptions& g, const std::vector<std::string>& prompt_ids, bool json, bool greedy) {
  if (g.model_dir.empty() && g.config_file.empty()) throw std::invalid_argument("give --model DIR or --config FILE");
  if (!g.overrides.empty() && g.config_file.empty()) throw std::invalid_argument("--set needs --config");
  if (!g.config_file.empty()) {
    // Under `mpirun -np S+1 cascade generate --config …` every rank runs this command;
    // ranks 1..S are the stages.
    // Only then is MPI started before the plan: a plan of one stage runs in this process
    // without it, or starts it to spawn its stages.
    if (comm::World::started_with_peers()) {
      comm::World& w = comm::World::get();
      if (!w.is_coordinator()) return stage::run_stage(w, std::cerr);
    }
  }
  if (greedy && g.sampling.temperature > 0)
    throw std::invalid_argument("--greedy and --temperature exclude each other");
  for (const auto& p : prompt_ids) g.prompts.push_back(parse_ids(p));
  if (g.prompts.empty() && g.prompt_texts.empty())
    throw std::invalid_argument("give --prompt TEXT or --prompt-ids 1,2,3");
  const auto results = generate(g, std::cerr);
  if (json) {
    print_json(results, g.logits, std::cout);
  } else if (!results.empty() && results.front().has_text) {
    for (size_t i = 0; i < results.size(); ++i) {
      std::cout << (i ? "\n" : "") << results[i].prompt_text << results[i].text << "\n";
    }
  } else {
    for (size_t i = 0; i < results.size(); ++i) {
      std::cout << "prompt " << i << ":";
      for (int64_t t : results[i].prompt_ids) std::cout << " " << t;
      std::cout << "\n  output:";
      for (int64_t t : results[i].output_ids) std::cout << " " << t;
      std::cout << "\n";
    }
  }
  return 0;
}

}  // namespace

#ifdef CASCADE_WITH_TOKENIZER
void add_text_commands(CLI::App& app, TextOptions& t) {
  auto* tk = app.add_subcommand("tokenize", "Text to token ids with a Hugging Face tokenizer.json");
  tk->add_option("--tokenizer", t.tokenizer, "tokenizer.json or a directory holding one")->required();
  tk->add_flag("--add-special-tokens", t.special, "Apply the post-processor (e.g. BOS)");
  tk->add_option("text", t.text, "The text")->required();
  auto* dt = app.add_subcommand("detokenize", "Token ids to text");
  dt->add_option("--tokenizer", t.tokenizer, "tokenizer.json or a directory holding one")->required();
  dt->add_flag("--skip-special-tokens", t.special, "Drop special tokens");
  dt->add_option("ids", t.text, "Comma-separated ids, e.g. 1,2,3")->required();
}
#endif

int run_cli(int argc, char** argv) {
  note_main_started();
  CLI::App app{"Cascade: serve language models too large for one GPU"};
  app.require_subcommand(1);
  GenerateOptions gen;
  std::vector<std::string> prompt_ids;
  bool json = false, greedy = false;
  add_generate(app, gen, prompt_ids, json, greedy);
  PlanOptions plan;
  add_plan(app, plan);
  CalibrateOptions calibrate;
  auto* cal =
      app.add_subcommand("calibrate", "Measure the CPU, page cache and PCIe rates the planner's cost model uses");
  cal->add_option("--threads", calibrate.threads, "CPU threads (default: the cores less one)");
  cal->add_option("--pool-mib", calibrate.pool_mib, "MiB of weights read per pass (more than the caches)");
  cal->add_option("--out", calibrate.out, "Rates file (default: $CASCADE_RATES or ~/.cache/cascade/rates.json)");
  app.add_subcommand("stage", "(internal) A stage process: started by the coordinator or mpirun");
  ServeOptions serve_opts;
  auto* sv = app.add_subcommand("serve", "Serve the model of a config on a Unix socket (OpenAI-compatible HTTP)");
  auto* sv_config = sv->add_option("--config", serve_opts.config_file, "cascade.toml")->check(CLI::ExistingFile);
  sv->add_option("--model", serve_opts.model_dir, "A checkpoint directory, instead of --config (measured budgets)")
      ->check(CLI::ExistingDirectory)
      ->excludes(sv_config);
  sv->add_option("--set", serve_opts.overrides, "Override a config key: section.key=value")->take_all();
  std::string serve_socket, serve_host, serve_key;
  int serve_port = 0;
  sv->add_option("--socket", serve_socket, "Unix socket path (server.socket)");
  sv->add_option("--host", serve_host, "TCP address to listen on too (with --port; default 127.0.0.1)");
  sv->add_option("--port", serve_port, "TCP port (server.tcp = HOST:PORT)")->check(CLI::Range(1, 65535));
  sv->add_option("--api-key", serve_key, "Bearer key clients must send (server.api_key)");
  std::string serve_quant, bench_quant;
  sv->add_option("--quantization", serve_quant, "none | int8 (overrides [quantization] mode)")
      ->check(CLI::IsMember({"none", "int8"}));
  BenchOptions bo;
  auto* bc = app.add_subcommand("bench", "Sequential vs pipeline mode on one set of stages, side by side");
  bc->add_option("--config", bo.config_file, "cascade.toml")->required()->check(CLI::ExistingFile);
  bc->add_option("--set", bo.overrides, "Override a config key: section.key=value")->take_all();
  bc->add_option("--mode", bo.mode, "sequential | pipeline | both")
      ->check(CLI::IsMember({"sequential", "pipeline", "both"}))
      ->capture_default_str();
  bc->add_option("--requests", bo.requests, "Requests per mode")->capture_default_str();
  bc->add_option("--prompt-len", bo.prompt_len, "Prompt tokens per request")->capture_default_str();
  bc->add_option("--new-tokens", bo.new_tokens, "Generated tokens per request")->capture_default_str();
  bc->add_option("--concurrency", bo.concurrency, "Requests in flight (closed loop)")->capture_default_str();
  bc->add_option("--trace", bo.trace, "Write a Chrome/Perfetto trace here");
  bc->add_flag("--json", bo.json, "One JSON object on stdout");
  bc->add_option("--quantization", bench_quant, "none | int8 (overrides [quantization] mode)")
      ->check(CLI::IsMember({"none", "int8"}));
  CompleteOptions comp;
  auto* cp = app.add_subcommand("complete", "Stream a completion from a running `cascade serve`");
  cp->add_option("--socket", comp.socket, "The daemon's Unix socket")->capture_default_str();
  cp->add_option("--max-tokens", comp.max_tokens, "Tokens to generate")->capture_default_str();
  cp->add_option("--temperature", comp.temperature, "Sampling temperature (0 = greedy)")->capture_default_str();
  cp->add_option("--api-key", comp.api_key, "Bearer key, when the server has one");
  cp->add_option("prompt", comp.prompt, "The prompt text")->required();
#ifdef CASCADE_WITH_TOKENIZER
  TextOptions text;
  add_text_commands(app, text);
#endif
  try {
    app.parse(argc, argv);
    if (!serve_quant.empty()) serve_opts.overrides.push_back("quantization.mode=\"" + serve_quant + "\"");
    if (!serve_socket.empty()) serve_opts.overrides.push_back("server.socket=\"" + serve_socket + "\"");
    if (!serve_host.empty() && serve_port == 0) throw CLI::ValidationError("--host", "--host needs --port");
    if (serve_port != 0)
      serve_opts.overrides.push_back("server.tcp=\"" + (serve_host.empty() ? "127.0.0.1" : serve_host) + ":" +
                                     std::to_string(serve_port) + "\"");
    if (!serve_key.empty()) serve_opts.overrides.push_back("server.api_key=\"" + serve_key + "\"");
    if (!bench_quant.empty()) bo.overrides.push_back("quantization.mode=\"" + bench_quant + "\"");
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const std::string name = app.get_subcommands().front()->get_name();
  try {
    if (name == "generate") return run_generate(gen, prompt_ids, json, greedy);
    if (name == "stage") return stage::run_stage(comm::World::get(), std::cerr);
    if (name == "complete") return complete(comp, std::cout, std::cerr);
    if (name == "bench") {
      comm::World& w = comm::World::get();
      if (!w.is_coordinator()) return stage::run_stage(w, std::cerr);
      return bench(bo, std::cout, std::cerr);
    }
    if (name == "serve") {
      comm::World& w = comm::World::get();
      if (!w.is_coordinator()) return stage::run_stage(w, std::cerr);
      return serve(serve_opts, std::cerr);
    }
#ifdef CASCADE_WITH_TOKENIZER
    if (name == "tokenize") {
      std::cout << tokenize_json(text) << "\n";
      return 0;
    }
    if (name == "detokenize") {
      std::cout << detokenize(text) << "\n";
      return 0;
    }
#endif
    if (name == "plan") {
      run_plan(plan, std::cout);
      return 0;
    }
    if (name == "calibrate") {
      run_calibrate(calibrate, std::cout);
      return 0;
    }
  } catch (const c10::Error& e) {  // LibTorch's checks: drop the C++ backtrace
    std::cerr << "cascade " << name << ": error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "cascade " << name << ": error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}

}  // namespace cascade::daemon
