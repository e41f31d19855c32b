#include "config/config.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "config/size.h"
#include "config/toml_guard.h"

namespace cascade::config {
namespace {

namespace fs = std::filesystem;

// The schema: section -> keys. max_memory and device_map are tables with free keys.
const std::map<std::string, std::set<std::string>>& schema() {
  static const std::map<std::string, std::set<std::string>> s = {
      {"model", {"path", "dtype"}},
      {"placement",
       {"strategy", "max_memory", "device_map", "offload_folder", "offload_compute", "streamed_share", "stream_slots",
        "experts"}},
      {"runtime",
       {"mode", "microbatches", "prefill_chunk", "max_batch", "max_seq_len", "threads_per_stage", "heartbeat_timeout",
        "step_timeout", "cuda_graphs", "pin_cores"}},
      {"quantization", {"mode", "threshold", "skip_modules"}},
      {"server",
       {"socket", "tcp", "api_key", "max_request_bytes", "max_connections", "max_pending_connections", "max_restarts",
        "max_tokens", "max_queue", "header_timeout", "idle_timeout", "shutdown_grace"}},
  };
  return s;
}

std::string join(const std::set<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    default:
      return "a date/time";
  }
}

// Walks the parsed table and fills a Config, with every error located.
class Reader {
 public:
  Reader(std::string source, std::string base_dir, std::map<std::string, std::string> overridden)
      : source_(std::move(source)), base_dir_(std::move(base_dir)), overridden_(std::move(overridden)) {}

  [[noreturn]] void fail(const toml::node* n, const std::string& key, const std::string& what) const {
    throw ConfigError(where(n, key) + ": " + key + ": " + what);
  }

  std::string where(const toml::node* n, const std::string& key) const {
    // An overridden key (or a table holding one) is reported as the --set that made it.
    for (const auto& [k, text] : overridden_) {
      if (k == key || k.rfind(key + ".", 0) == 0) return "--set " + text;
    }
    if (n && n->source().begin.line > 0) return source_ + ":" + std::to_string(n->source().begin.line);
    return source_;
  }

  bool from_override(const std::string& key) const { return overridden_.count(key) > 0; }

  void str(const toml::table& sec, const std::string& section, const char* key, std::string* out) const {
    const toml::node* n = sec.get(key);
    if (!n) return;
    const std::string k = section + "." + key;
    if (!n->is_string()) fail(n, k, std::string("expected a string, got ") + type_name(*n));
    *out = **n->as_string();
  }

  void integer(const toml::table& sec, const std::string& section, const char* key, int* out, int64_t lo,
               int64_t hi) const {
    const toml::node* n = sec.get(key);
    if (!n) return;
    const std::string k = section + "." + key;
    if (!n->is_integer()) fail(n, k, std::string("expected an integer, got ") + type_name(*n));
    const int64_t v = **n->as_integer();
    if (v < lo || v > hi) {
      fail(n, k,
           "value " + std::to_string(v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    *out = static_cast<int>(v);
  }

  void boolean(const toml::table& sec, const std::string& section, const char* key, bool* out) const {
    const toml::node* n = sec.get(key);
    if (!n) return;
    if (!n->is_boolean()) fail(n, section + "." + key, std::string("expected true or false, got ") + type_name(*n));
    *out = **n->as_boolean();
  }

  // A finite number in [lo, hi]. TOML allows nan and inf; neither is a duration or a
  // threshold (nan compares false with everything, so a bound alone would let it in),
  // and hi keeps seconds * 1000 far inside an int64 of milliseconds.
  void number(const toml::table& sec, const std::string& section, const char* key, double* out, double lo,
              double hi = 1e7) const {
    const toml::node* n = sec.get(key);
    if (!n) return;
    const std::string k = section + "." + key;
    if (!n->is_number()) fail(n, k, std::string("expected a number, got ") + type_name(*n));
    const double v = n->is_integer() ? static_cast<double>(**n->as_integer()) : **n->as_floating_point();
    if (!std::isfinite(v)) fail(n, k, "must be a finite number, got " + std::to_string(v));
    if (v < lo || v > hi)
      fail(n, k, "value " + std::to_string(v) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    *out = v;
  }

  std::string choice(const toml::table& sec, const std::string& section, const char* key,
                     const std::set<std::string>& allowed, const std::string& dflt) const {
    std::string v = dflt;
    str(sec, section, key, &v);
    if (!allowed.count(v)) {
      fail(sec.get(key), section + "." + key, "'" + v + "' is not one of: " + join(allowed));
    }
    return v;
  }

  std::optional<uint64_t> size(const toml::node& n, const std::string& key) const {
    if (n.is_integer()) {
      if (**n.as_integer() < 0) fail(&n, key, "a size cannot be negative");
      return static_cast<uint64_t>(**n.as_integer());
    }
    if (!n.is_string()) fail(&n, key, std::string("expected a size string such as \"2GiB\", got ") + type_name(n));
    try {
      return parse_size(**n.as_string());
    } catch (const std::invalid_argument& e) {
      fail(&n, key, e.what());
    }
  }

  DeviceName device(const toml::node& n, const std::string& key) const {
    std::string text;
    if (n.is_integer())
      text = std::to_string(**n.as_integer());
    else if (n.is_string())
      text = **n.as_string();
    else
      fail(&n, key, std::string("expected a device such as \"cuda:0\", \"cpu\" or \"disk\", got ") + type_name(n));
    try {
      return parse_device(text);
    } catch (const std::invalid_argument& e) {
      fail(&n, key, e.what());
    }
  }

  std::string path(const std::string& value, const std::string& key) const {
    if (value.empty() || fs::path(value).is_absolute() || from_override(key)) return value;
    return (fs::path(base_dir_) / value).lexically_normal().string();
  }

 private:
  std::string source_;
  std::string base_dir_;
  std::map<std::string, std::string> overridden_;
};

// A table's entries in the order they were written (toml++ iterates by key).
std::vector<std::pair<std::string, const toml::node*>> in_file_order(const toml::table& t) {
  std::vector<std::pair<std::string, const toml::node*>> out;
  for (const auto& [k, v] : t) out.emplace_back(std::string(k.str()), &v);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    const auto& x = a.second->source().begin;
    const auto& y = b.second->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  return out;
}

// "placement.max_memory.cuda:0=2GiB" -> path [placement, max_memory, cuda:0], value "2GiB".
// Only the first two dots split the key, so module names such as "model.layers.3" stay whole.
void apply_override(toml::table& root, const std::string& text, std::map<std::string, std::string>* overridden) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set " + text + ": expected section.key=value, e.g. --set runtime.mode=pipeline");
  }
  const std::string key = text.substr(0, eq);
  const std::string value = text.substr(eq + 1);
  std::vector<std::string> parts;
  size_t start = 0;
  for (int i = 0; i < 2; ++i) {
    const size_t dot = key.find('.', start);
    if (dot == std::string::npos) break;
    parts.push_back(key.substr(start, dot - start));
    start = dot + 1;
  }
  parts.push_back(key.substr(start));
  if (parts.size() < 2) throw ConfigError("--set " + text + ": the key must be section.key, e.g. runtime.mode");
  for (auto& p : parts) {
    if (p.size() >= 2 && p.front() == '"' && p.back() == '"') p = p.substr(1, p.size() - 2);
    if (p.empty()) throw ConfigError("--set " + text + ": empty key component");
  }
  toml::table* table = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    toml::node* child = table->get(parts[i]);
    if (!child) child = table->insert_or_assign(parts[i], toml::table{}).first->second.as_table();
    if (!child->is_table()) throw ConfigError("--set " + text + ": '" + parts[i] + "' is not a table");
    table = child->as_table();
  }
  // The value is TOML when it parses as TOML, else a bare string (so mode=pipeline works).
  try {
    const toml::table parsed = parse_toml("v = " + value, "--set " + text);
    table->insert_or_assign(parts.back(), *parsed.get("v"));
  } catch (const toml::parse_error&) {
    table->insert_or_assign(parts.back(), value);
  }
  std::string dotted = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) dotted += "." + parts[i];
  (*overridden)[dotted] = text;
}

Config read(const toml::table& root, const Reader& r, const std::string& source) {
  for (const auto& [k, v] : root) {
    const std::string key(k.str());
    const auto it = schema().find(key);
    if (it == schema().end()) {
      std::set<std::string> sections;
      for (const auto& s : schema()) sections.insert(s.first);
      r.fail(&v, key, "unknown section (known sections: " + join(sections) + ")");
    }
    if (!v.is_table()) r.fail(&v, key, std::string("expected a table [") + key + "], got " + type_name(v));
    for (const auto& [sk, sv] : *v.as_table()) {
      const std::string name(sk.str());
      if (!it->second.count(name)) {
        r.fail(&sv, key + "." + name, "unknown key (known keys of [" + key + "]: " + join(it->second) + ")");
      }
    }
  }
  static const toml::table kEmpty;
  auto section = [&](const char* name) -> const toml::table& {
    const toml::node* n = root.get(name);
    return n ? *n->as_table() : kEmpty;
  };

  Config c;
  c.source = source;
  const toml::table& model = section("model");
  r.str(model, "model", "path", &c.model.path);
  if (c.model.path.empty()) r.fail(root.get("model"), "model.path", "is required (the checkpoint directory)");
  c.model.path = r.path(c.model.path, "model.path");
  c.model.dtype = r.choice(model, "model", "dtype", {"auto", "float32", "bfloat16", "float16"}, "auto");

  const toml::table& pl = section("placement");
  const std::string strategy =
      r.choice(pl, "placement", "strategy", {"auto", "balanced", "balanced_low_0", "sequential"}, "auto");
  c.placement.strategy = strategy == "auto"             ? Strategy::kAuto
                         : strategy == "balanced"       ? Strategy::kBalanced
                         : strategy == "balanced_low_0" ? Strategy::kBalancedLow0
                                                        : Strategy::kSequential;
  if (const toml::node* mm = pl.get("max_memory")) {
    if (!mm->is_table()) r.fail(mm, "placement.max_memory", std::string("expected a table, got ") + type_name(*mm));
    for (const auto& [dk, dv] : in_file_order(*mm->as_table())) {
      const std::string key = "placement.max_memory." + dk;
      const DeviceName dev = r.device(toml::value<std::string>(dk), key);
      for (const auto& b : c.placement.max_memory) {
        if (b.device == dev) r.fail(dv, key, "device " + dev.str() + " is listed twice");
      }
      c.placement.max_memory.push_back({dev, r.size(*dv, key)});
    }
  }
  if (const toml::node* dm = pl.get("device_map")) {
    if (!dm->is_table()) r.fail(dm, "placement.device_map", std::string("expected a table, got ") + type_name(*dm));
    for (const auto& [module, mv] : in_file_order(*dm->as_table())) {
      c.placement.device_map.emplace_back(module, r.device(*mv, "placement.device_map." + module));
    }
  }
  r.str(pl, "placement", "offload_folder", &c.placement.offload_folder);
  c.placement.offload_folder = r.path(c.placement.offload_folder, "placement.offload_folder");
  r.str(pl, "placement", "offload_compute", &c.placement.offload_compute);
  OffloadCompute oc;
  try {
    oc = parse_offload_compute(c.placement.offload_compute);
  } catch (const std::invalid_argument&) {
    r.fail(pl.get("offload_compute"), "placement.offload_compute",
           "'" + c.placement.offload_compute + "' is not one of: auto, cpu, cuda:N, cpu+cuda:N");
  }
  if (oc.gpu) c.placement.offload_compute = (oc.hybrid ? "cpu+" : "") + oc.gpu->str();  // canonical spelling
  if (pl.get("streamed_share")) {
    double share = 0;
    r.number(pl, "placement", "streamed_share", &share, 0.0, 1.0);
    if (!oc.hybrid)
      r.fail(pl.get("streamed_share"), "placement.streamed_share",
             "applies to offload_compute = \"cpu+cuda:N\" only, not \"" + c.placement.offload_compute + "\"");
    c.placement.streamed_share = share;
  }
  if (const toml::node* n = pl.get("stream_slots"); n && n->is_string()) {
    if (**n->as_string() != "auto")
      r.fail(n, "placement.stream_slots",
             "expected \"auto\" or an integer in [" + std::to_string(kMinStreamSlots) + ", " +
                 std::to_string(kMaxStreamSlots) + "], got \"" + **n->as_string() + "\"");
    c.placement.stream_slots = kAutoStreamSlots;
  } else {
    r.integer(pl, "placement", "stream_slots", &c.placement.stream_slots, kMinStreamSlots, kMaxStreamSlots);
  }
  const std::string experts = r.choice(pl, "placement", "experts", {"auto", "offload", "with-layer"}, "auto");
  c.placement.experts = experts == "auto"      ? ExpertPlacement::kAuto
                        : experts == "offload" ? ExpertPlacement::kOffload
                                               : ExpertPlacement::kWithLayer;

  const toml::table& rt = section("runtime");
  c.runtime.mode = r.choice(rt, "runtime", "mode", {"sequential", "pipeline"}, "sequential") == "pipeline"
                       ? Mode::kPipeline
                       : Mode::kSequential;
  r.integer(rt, "runtime", "microbatches", &c.runtime.microbatches, 0, 1024);
  r.integer(rt, "runtime", "prefill_chunk", &c.runtime.prefill_chunk, 0, 1 << 24);
  r.integer(rt, "runtime", "max_batch", &c.runtime.max_batch, 1, 65536);
  r.integer(rt, "runtime", "max_seq_len", &c.runtime.max_seq_len, 1, 1 << 24);
  r.integer(rt, "runtime", "threads_per_stage", &c.runtime.threads_per_stage, 0, 4096);
  r.number(rt, "runtime", "heartbeat_timeout", &c.runtime.heartbeat_timeout, 0.1);
  r.number(rt, "runtime", "step_timeout", &c.runtime.step_timeout, 0.1);
  r.boolean(rt, "runtime", "cuda_graphs", &c.runtime.cuda_graphs);
  r.boolean(rt, "runtime", "pin_cores", &c.runtime.pin_cores);

  const toml::table& q = section("quantization");
  c.quantization.mode = r.choice(q, "quantization", "mode", {"none", "int8"}, "none");
  r.number(q, "quantization", "threshold", &c.quantization.threshold, 0.0);
  if (const toml::node* sm = q.get("skip_modules")) {
    if (!sm->is_array())
      r.fail(sm, "quantization.skip_modules", std::string("expected an array of strings, got ") + type_name(*sm));
    c.quantization.skip_modules.clear();
    for (const auto& e : *sm->as_array()) {
      if (!e.is_string()) r.fail(&e, "quantization.skip_modules", std::string("expected strings, got ") + type_name(e));
      c.quantization.skip_modules.push_back(**e.as_string());
    }
  }

  const toml::table& sv = section("server");
  r.str(sv, "server", "socket", &c.server.socket);
  c.server.socket = r.path(c.server.socket, "server.socket");
  r.str(sv, "server", "tcp", &c.server.tcp);
  if (!c.server.tcp.empty()) {
    const size_t colon = c.server.tcp.rfind(':');
    int port = -1;
    try {
      if (colon != std::string::npos && colon > 0) port = std::stoi(c.server.tcp.substr(colon + 1));
    } catch (const std::exception&) {
    }
    if (port < 1 || port > 65535) {
      r.fail(sv.get("tcp"), "server.tcp", "'" + c.server.tcp + "' is not host:port (e.g. 127.0.0.1:8000)");
    }
  }
  r.str(sv, "server", "api_key", &c.server.api_key);
  if (const toml::node* n = sv.get("max_request_bytes")) {
    const auto v = r.size(*n, "server.max_request_bytes");
    if (!v || *v == 0) r.fail(n, "server.max_request_bytes", "must be a positive finite size");
    c.server.max_request_bytes = *v;
  }
  r.integer(sv, "server", "max_connections", &c.server.max_connections, 1, 1 << 20);
  r.integer(sv, "server", "max_pending_connections", &c.server.max_pending_connections, 1, 1 << 20);
  r.integer(sv, "server", "max_restarts", &c.server.max_restarts, 0, 1 << 20);
  r.integer(sv, "server", "max_tokens", &c.server.max_tokens, 1, 1 << 24);
  r.integer(sv, "server", "max_queue", &c.server.max_queue, 0, 1 << 20);
  r.number(sv, "server", "header_timeout", &c.server.header_timeout, 0.1);
  r.number(sv, "server", "idle_timeout", &c.server.idle_timeout, 0.1);
  r.number(sv, "server", "shutdown_grace", &c.server.shutdown_grace, 0.0);
  return c;
}

}  // namespace

std::string DeviceName::str() const {
  switch (kind) {
    case Kind::kCuda:
      return "cuda:" + std::to_string(index);
    case Kind::kCpu:
      return "cpu:" + std::to_string(index);
    case Kind::kDisk:
      return "disk";
  }
  return "?";
}

OffloadCompute parse_offload_compute(const std::string& text) {
  OffloadCompute oc;
  if (text == "auto" || text == "cpu") return oc;
  const std::string hybrid = "cpu+";
  oc.hybrid = text.rfind(hybrid, 0) == 0;
  const DeviceName d = parse_device(oc.hybrid ? text.substr(hybrid.size()) : text);
  if (d.kind != DeviceName::Kind::kCuda)
    throw std::invalid_argument("offload_compute '" + text + "' is not one of: auto, cpu, cuda:N, cpu+cuda:N");
  oc.gpu = d;
  return oc;
}

DeviceName parse_device(const std::string& text) {
  auto index_of = [&](const std::string& digits) {
    if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos) {
      throw std::invalid_argument("invalid device '" + text + "' (expected cuda:N, N, cpu, cpu:N or disk)");
    }
    return std::stoi(digits);
  };
  if (text == "disk") return {DeviceName::Kind::kDisk, 0};
  if (text == "cpu") return {DeviceName::Kind::kCpu, 0};
  if (text.rfind("cpu:", 0) == 0) return {DeviceName::Kind::kCpu, index_of(text.substr(4))};
  if (text.rfind("cuda:", 0) == 0) return {DeviceName::Kind::kCuda, index_of(text.substr(5))};
  return {DeviceName::Kind::kCuda, index_of(text)};
}

Config parse_config(const std::string& toml_text, const std::string& source_name, const std::string& base_dir,
                    const std::vector<std::string>& overrides) {
  toml::table root;
  try {
    root = parse_toml(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << source_name << ":" << e.source().begin.line << ":" << e.source().begin.column
        << ": TOML syntax error: " << e.description();
    throw ConfigError(msg.str());
  }
  std::map<std::string, std::string> overridden;
  for (const auto& o : overrides) apply_override(root, o, &overridden);
  return read(root, Reader(source_name, base_dir, overridden), source_name);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open config file");
  std::ostringstream text;
  text << in.rdbuf();
  const fs::path dir = fs::absolute(fs::path(path)).parent_path();
  return parse_config(text.str(), path, dir.string(), overrides);
}

std::vector<std::string> env_overrides() {
  std::vector<std::string> out;
  for (char** e = environ; e && *e; ++e) {
    const std::string var(*e);
    if (var.rfind("CASCADE_", 0) != 0) continue;
    const size_t eq = var.find('=');
    if (eq == std::string::npos) continue;
    std::string name = var.substr(8, eq - 8);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    for (const auto& [section, keys] : schema()) {
      if (name.rfind(section + "_", 0) != 0) continue;
      const std::string key = name.substr(section.size() + 1);
      if (!keys.count(key))
        throw ConfigError(var.substr(0, eq) + ": [" + section + "] has no key '" + key + "' (keys: " + join(keys) +
                          ")");
      out.push_back(section + "." + key + "=" + var.substr(eq + 1));
    }
  }
  std::sort(out.begin(), out.end());  // the environment's order is no order
  return out;
}

Config resolve_config(const std::string& path, const std::string& model_dir,
                      const std::vector<std::string>& overrides) {
  std::vector<std::string> ov = env_overrides();
  ov.insert(ov.end(), overrides.begin(), overrides.end());
  if (!path.empty()) return load_config(path, ov);
  if (model_dir.empty()) throw ConfigError("give --config FILE or --model DIR");
  ov.insert(ov.begin(), "model.path=\"" + model_dir + "\"");
  return parse_config("[model]\npath = \"\"\n", "(command line)", ".", ov);
}

const char* to_string(Strategy s) {
  switch (s) {
    case Strategy::kAuto:
      return "auto";
    case Strategy::kBalanced:
      return "balanced";
    case Strategy::kBalancedLow0:
      return "balanced_low_0";
    case Strategy::kSequential:
      return "sequential";
  }
  return "?";
}

const char* to_string(ExpertPlacement e) {
  switch (e) {
    case ExpertPlacement::kAuto:
      return "auto";
    case ExpertPlacement::kOffload:
      return "offload";
    case ExpertPlacement::kWithLayer:
      return "with-layer";
  }
  return "?";
}

const char* to_string(Mode m) { return m == Mode::kPipeline ? "pipeline" : "sequential"; }

}  // namespace cascade::config
