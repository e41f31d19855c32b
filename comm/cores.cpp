#include "comm/cores.h"

#include <sched.h>

#include <cerrno>
#include <cstring>

namespace cascade::comm {

std::vector<int> allowed_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

std::string core_list(const std::vector<int>& cores) {
  std::string out;
  for (size_t i = 0; i < cores.size(); ++i) {
    size_t last = i;
    while (last + 1 < cores.size() && cores[last + 1] == cores[last] + 1) ++last;
    out += (out.empty() ? "" : ",") + std::to_string(cores[i]) + (last > i ? "-" + std::to_string(cores[last]) : "");
    i = last;
  }
  return out;
}

std::string pin_to(const std::vector<int>& cores) {
  if (cores.empty()) return "";
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cores) {
    if (c < 0 || c >= CPU_SETSIZE) return "core " + std::to_string(c) + " is outside this host's CPU set";
    CPU_SET(c, &set);
  }
  if (::sched_setaffinity(0, sizeof set, &set) != 0)
    return std::string("sched_setaffinity to cores ") + core_list(cores) + ": " + std::strerror(errno) +
           " (not all of them are allowed here; this host allows " + core_list(allowed_cores()) + ")";
  return "";
}

}  // namespace cascade::comm
