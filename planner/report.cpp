#include "planner/report.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config/size.h"

namespace cascade::planner {
namespace {

std::string range(const ModelDescriptor& m, const Segment& s) {
  const std::string& a = m.modules[s.begin].name;
  if (s.end - s.begin == 1) return a;
  return a + " .. " + m.modules[s.end - 1].name + " (" + std::to_string(s.end - s.begin) + ")";
}

std::string pad(const std::string& s, size_t w) { return s.size() >= w ? s + " " : s + std::string(w - s.size(), ' '); }

std::string bytes(uint64_t b) { return b ? config::format_bytes(b) : "-"; }

}  // namespace

std::string format_plan(const ModelDescriptor& m, const Plan& p) {
  std::ostringstream out;
  out << "device map (" << m.modules.size() << " modules, " << config::format_bytes(m.total_weight_bytes())
      << " of weights):\n";
  size_t width = 28;
  for (const auto& mod : m.modules) width = std::max(width, mod.name.size() + 2);
  for (size_t i = 0; i < m.modules.size(); ++i) {
    out << "  " << pad(m.modules[i].name, width) << hf_device(p.module_device[i]) << "\n";
  }
  out << "\n"
      << pad("device", 9) << pad("weights", 12) << pad("KV cache", 12) << pad("activations", 13) << pad("staging", 12)
      << pad("total", 12) << pad("budget", 12) << "used\n";
  for (const auto& [name, u] : p.devices) {
    std::string used = "-";
    if (u.budget && *u.budget > 0) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * static_cast<double>(u.total()) / static_cast<double>(*u.budget));
      used = buf;
    }
    out << pad(name, 9) << pad(bytes(u.weights), 12) << pad(bytes(u.kv), 12) << pad(bytes(u.activations), 13)
        << pad(bytes(u.staging), 12) << pad(bytes(u.total()), 12)
        << pad(u.budget ? config::format_bytes(*u.budget) : "unlimited", 12) << used << "\n";
  }
  out << "\nstages:\n";
  for (const Stage& s : p.stages) {
    std::string tiers;
    for (const auto& t : s.tiers) tiers += (tiers.empty() ? "" : "+") + t.str();
    out << "  rank " << s.rank << "  computes on " << pad(s.device.str(), 8) << " weights on " << pad(tiers, 12);
    // A stage that alternates with another (experts apart from attention) runs many
    // segments: the first two, the last and how many.
    const size_t n = s.segments.size();
    for (size_t k = 0; k < n; ++k) {
      if (n > 4 && k == 2) {
        out << "; ... (" << n << " segments)";
        k = n - 2;
        continue;
      }
      out << (k ? "; " : "") << range(m, s.segments[k]);
    }
    out << "\n";
  }
  out << "route: coordinator";
  for (size_t h = 0; h < p.edges.size(); ++h) {
    out << " -" << to_string(p.edges[h].transport) << "-> "
        << (p.edges[h].to == 0 ? "coordinator" : "rank " + std::to_string(p.edges[h].to));
  }
  out << "\n";
  return out.str();
}

std::string plan_json(const ModelDescriptor& m, const Plan& p) {
  nlohmann::ordered_json j;
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < m.modules.size(); ++i) {
    const auto& d = p.module_device[i];
    if (d.is_gpu())
      map[m.modules[i].name] = d.index;
    else
      map[m.modules[i].name] = hf_device(d);
  }
  j["device_map"] = map;
  j["offload_compute"] = p.offload_compute;
  j["offload_choice"] = p.offload_choice;
  j["predicted_step_s"] = p.predicted_step_s;
  j["stages"] = nlohmann::ordered_json::array();
  for (const Stage& s : p.stages) {
    nlohmann::ordered_json st;
    st["rank"] = s.rank;
    st["device"] = s.device.str();
    st["tiers"] = nlohmann::ordered_json::array();
    for (const auto& t : s.tiers) st["tiers"].push_back(t.str());
    st["segments"] = nlohmann::ordered_json::array();
    for (const auto& seg : s.segments) st["segments"].push_back({seg.begin, seg.end});
    j["stages"].push_back(st);
  }
  j["route"] = nlohmann::ordered_json::array();
  for (size_t k = 0; k < p.route_ranks.size(); ++k) {
    j["route"].push_back(
        {{"rank", p.route_ranks[k]}, {"modules", {p.route_segments[k].begin, p.route_segments[k].end}}});
  }
  j["edges"] = nlohmann::ordered_json::array();
  for (const Edge& e : p.edges)
    j["edges"].push_back({{"from", e.from}, {"to", e.to}, {"transport", to_string(e.transport)}});
  j["devices"] = nlohmann::ordered_json::object();
  for (const auto& [name, u] : p.devices) {
    nlohmann::ordered_json d;
    d["budget"] = u.budget ? nlohmann::ordered_json(*u.budget) : nlohmann::ordered_json(nullptr);
    d["weights"] = u.weights;
    d["kv"] = u.kv;
    d["activations"] = u.activations;
    d["staging"] = u.staging;
    j["devices"][name] = d;
  }
  return j.dump();
}

}  // namespace cascade::planner
