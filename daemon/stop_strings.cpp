#include "daemon/stop_strings.h"

#include <algorithm>

namespace cascade::daemon {

StopScan scan_stops(const std::string& text, size_t emitted, const std::vector<std::string>& stops, bool final) {
  StopScan r;
  for (const auto& st : stops) {
    const size_t from = emitted > st.size() ? emitted - st.size() : 0;
    const size_t p = text.find(st, from);
    if (p != std::string::npos) r.cut = std::min(r.cut, p);
  }
  r.safe = text.size();
  if (r.cut != std::string::npos) {
    r.safe = r.cut;
  } else if (!final) {
    for (const auto& st : stops)
      for (size_t k = std::min(st.size() - 1, text.size()); k > 0; --k)
        if (text.compare(text.size() - k, k, st, 0, k) == 0) {
          r.safe = std::min(r.safe, text.size() - k);
          break;
        }
  }
  r.safe = std::max(r.safe, emitted);
  return r;
}

}  // namespace cascade::daemon
