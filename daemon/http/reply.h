// Reply: one completion request's response, built from the scheduler's callbacks
// (daemon/scheduler.h Sink): the SSE events of a stream as they come, or the JSON body
// once every choice is done. It owns the per-choice state a response needs: whether a
// choice's first chunk went out (chat's role, echo's prompt), its text_offset, and the
// finished choices. Plain object; no I/O. Thread-safety: none (one connection's strand).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/http/api.h"

namespace cascade::daemon {

struct ReplySetup {
  CompletionRequest request;
  bool chat = false;
  std::string id, model;
  int64_t created = 0;
  std::string echo_text;  // completions with echo: the prompt as it comes back
  TokenText text_of;      // a token's text, for logprobs
};

class Reply {
 public:
  explicit Reply(ReplySetup s);
  // Stream events for a choice's new tokens ("" when there is nothing to send).
  std::string on_tokens(const Delta& d);
  // A choice finished. Streams: its last event, and once every choice is done the
  // usage chunk (when asked for) and [DONE]. Otherwise "" until every choice is done,
  // then the whole JSON body.
  std::string on_done(const CompletionResult& r);
  bool complete() const { return done_ == static_cast<int64_t>(results_.size()); }

 private:
  std::string first_event(int64_t index);  // a choice that finished before sending anything

  ReplySetup s_;
  std::vector<CompletionResult> results_;  // by index
  std::vector<bool> started_;              // a chunk of the choice went out
  std::vector<int64_t> offsets_;           // code points of the choice's token texts so far
  int64_t done_ = 0;
};

}  // namespace cascade::daemon
