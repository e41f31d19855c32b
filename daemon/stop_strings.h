// OpenAI's `stop` sequences over a choice's generated text: where the text ends, and
// how much of it may be sent while more tokens can still come. Pure functions.
#pragma once

#include <string>
#include <vector>

namespace cascade::daemon {

struct StopScan {
  size_t safe = 0;                 // text[0, safe) may be sent now
  size_t cut = std::string::npos;  // where the earliest stop sequence begins, or npos
};

// `text` is the choice's text so far; text[0, emitted) has been sent already, so a stop
// sequence is searched only where it could end past `emitted`. Without a stop found and
// unless `final` (no more text comes), a tail that could still grow into a stop sequence
// is held back. Never moves back: safe >= emitted. `stops` must not hold an empty string
// (the API refuses one).
StopScan scan_stops(const std::string& text, size_t emitted, const std::vector<std::string>& stops, bool final);

}  // namespace cascade::daemon
