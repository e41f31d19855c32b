#include "daemon/http/reply.h"

#include <algorithm>

namespace cascade::daemon {

Reply::Reply(ReplySetup s) : s_(std::move(s)) {
  const size_t n = static_cast<size_t>(std::max<int64_t>(1, s_.request.n));
  results_.resize(n);
  started_.assign(n, false);
  offsets_.assign(n, 0);
}

std::string Reply::on_tokens(const Delta& in) {
  if (!s_.request.stream || in.index < 0 || in.index >= static_cast<int64_t>(results_.size())) return "";
  const size_t i = static_cast<size_t>(in.index);
  Delta d = in;
  const bool first = !started_[i];
  if (first && s_.request.echo) d.text = s_.echo_text + d.text;
  const bool logprobs = s_.request.sampling.logprobs >= 0 && !(d.logprobs.empty() && d.prompt_logprobs.empty());
  if (d.text.empty() && !logprobs && !(first && s_.chat) && !(s_.request.return_token_ids && !d.ids.empty())) return "";
  started_[i] = true;
  d.text_offset = offsets_[i];
  for (const auto* v : {&d.prompt_logprobs, &d.logprobs})
    for (const auto& sc : *v) offsets_[i] += code_points(s_.text_of(sc.token));
  return s_.chat ? chat_chunk_event(s_.id, s_.created, s_.model, s_.request, first, d, nullptr, s_.text_of)
                 : chunk_event(s_.id, s_.created, s_.model, s_.request, d, nullptr, s_.text_of);
}

std::string Reply::first_event(int64_t index) {
  Delta d;
  d.index = index;
  return on_tokens(d);
}

std::string Reply::on_done(const CompletionResult& r) {
  if (r.index < 0 || r.index >= static_cast<int64_t>(results_.size())) return "";
  results_[static_cast<size_t>(r.index)] = r;
  ++done_;
  if (!s_.request.stream)
    return !complete() ? ""
           : s_.chat   ? chat_completion_json(s_.id, s_.created, s_.model, s_.request, results_, s_.text_of)
                       : completion_json(s_.id, s_.created, s_.model, s_.request, results_, s_.echo_text, s_.text_of);
  std::string out;
  if (!started_[static_cast<size_t>(r.index)]) out += first_event(r.index);
  Delta d;
  d.index = r.index;
  out += s_.chat ? chat_chunk_event(s_.id, s_.created, s_.model, s_.request, false, d, &r.finish, s_.text_of)
                 : chunk_event(s_.id, s_.created, s_.model, s_.request, d, &r.finish, s_.text_of);
  if (!complete()) return out;
  if (s_.request.stream_usage) out += usage_event(s_.id, s_.created, s_.model, s_.chat, s_.request, results_);
  return out + "data: [DONE]\n\n";
}

}  // namespace cascade::daemon
