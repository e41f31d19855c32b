#include "stage/worker.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

#include "comm/channel.h"
#include "comm/control.h"
#include "comm/cores.h"
#include "comm/heartbeat.h"
#include "comm/world.h"
#include "config/env.h"
#include "config/size.h"
#include "stage/runner.h"
#include "storage/checkpoint.h"
#include "storage/offload.h"

#ifdef CASCADE_WITH_CUDA
#include <cuda_profiler_api.h>
#endif

namespace cascade::stage {
namespace {

using comm::Assignment;
using comm::Clock;
using comm::Hop;
using comm::Link;
using comm::Transport;

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}
const Clock::time_point kNever = Clock::time_point::max();

std::string error_text(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// Fault injection for the tests (leveldb's EnvWrapper idea, in one variable):
// CASCADE_FAULT="RANK:WHEN:WHAT" with WHEN = load | step=N and WHAT = exit (die as if
// killed), stall (stop as if hung), error (throw) or slow (sleep 20 ms in every step
// from then on: a stage much slower than the others). Unset in normal runs.
struct Fault {
  int rank = -1;
  int64_t step = -1;  // -1: during load
  std::string what;

  static Fault from_env(int rank) {
    Fault f;
    const char* v = std::getenv("CASCADE_FAULT");
    if (!v) return f;
    const std::string s = v;
    const size_t a = s.find(':'), b = s.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos || std::stoi(s.substr(0, a)) != rank) return f;
    const std::string when = s.substr(a + 1, b - a - 1);
    f.rank = rank;
    f.step = when == "load" ? -1 : std::stoll(when.substr(when.find('=') + 1));
    f.what = s.substr(b + 1);
    return f;
  }
  void maybe(int64_t at) const {
    if (rank >= 0 && what == "slow" && at >= step) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (rank < 0 || at != step) return;
    if (what == "exit") ::raise(SIGKILL);
    if (what == "stall") ::raise(SIGSTOP);
    if (what == "error") throw std::runtime_error("injected fault (CASCADE_FAULT)");
  }
};

// CASCADE_PROFILE_STEPS="FIRST:COUNT": the CUDA profiler runs from this stage's step
// FIRST for COUNT steps (cudaProfilerStart/Stop), so `ncu --profile-from-start off`
// measures decode steps only, not the load and the prefill (scripts/profile_decode.sh).
struct ProfileRange {
  int64_t first = -1, count = 0;
  static ProfileRange from_env() {
    ProfileRange r;
    const char* v = std::getenv("CASCADE_PROFILE_STEPS");
    if (!v) return r;
    const std::string s = v;
    long long first = -1, count = 0;
    char end = 0;  // catches trailing junk: "3:2x" reads three fields
    if (std::sscanf(s.c_str(), "%lld:%lld%c", &first, &count, &end) != 2 || first < 0 || count < 1)
      throw std::invalid_argument(
          "CASCADE_PROFILE_STEPS must be FIRST:COUNT (step numbers, FIRST >= 0, COUNT >= 1), "
          "got '" +
          s + "'");
    r.first = first;
    r.count = count;
    return r;
  }
  void maybe(int64_t at) const {
#ifdef CASCADE_WITH_CUDA
    if (first < 0) return;
    if (at == first) cudaProfilerStart();
    if (at == first + count) cudaProfilerStop();
#else
    (void)at;
#endif
  }
};

// A timeline span for `cascade bench --trace` (steady-clock microseconds, which every
// process on a host shares).
struct Span {
  const char* name;
  uint64_t step;
  uint32_t microbatch;
  int64_t begin_us, end_us;
};

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch()).count();
}

struct Channels {
  std::vector<std::unique_ptr<comm::Channel>> in, out;  // parallel to hops
};

Channels open_channels(const comm::World& w, const Assignment& a, at::Device device, const comm::Liveness& alive) {
  Channels c;
  c.in.resize(a.hops.size());
  c.out.resize(a.hops.size());
  auto unavailable = [](const Link& l) {
    return std::invalid_argument(std::string("transport '") + comm::to_string(l.transport) +
                                 "' is not available in this build");
  };
  // 1. Receivers create their shm rings (no waiting), MPI ends need no setup.
  std::vector<std::pair<int, std::pair<size_t, bool>>> nccl;  // (tag, (hop, is_out))
  for (size_t i = 0; i < a.hops.size(); ++i) {
    const Link& l = a.hops[i].in;
    switch (l.transport) {
      case Transport::kShm:
        c.in[i] = comm::shm_receiver(l.name, a.ring_bytes);
        break;
      case Transport::kMpi:
        c.in[i] = comm::mpi_channel(w, l.peer, l.tag);
        break;
      case Transport::kNccl:
        nccl.push_back({l.tag, {i, false}});
        break;
    }
    const Link& o = a.hops[i].out;
    if (o.transport == Transport::kMpi)
      c.out[i] = comm::mpi_channel(w, o.peer, o.tag);
    else if (o.transport == Transport::kNccl)
      nccl.push_back({o.tag, {i, true}});
  }
  // 2. NCCL pairs in global hop order, so both ends of every hop meet (no cycle of waits).
  std::sort(nccl.begin(), nccl.end());
  for (const auto& [tag, where] : nccl) {
#ifdef CASCADE_WITH_CUDA
    const auto [i, out] = where;
    const Link& l = out ? a.hops[i].out : a.hops[i].in;
    (out ? c.out[i] : c.in[i]) = comm::nccl_channel(w, l.peer, l.tag, out, device, after(a.runtime.step_timeout));
#else
    throw unavailable(a.hops[where.first].in);
#endif
  }
  // 3. Senders open the rings their successors created in step 1.
  for (size_t i = 0; i < a.hops.size(); ++i) {
    const Link& o = a.hops[i].out;
    if (o.transport == Transport::kShm) c.out[i] = comm::shm_sender(o.name, after(a.runtime.step_timeout));
  }
  for (size_t i = 0; i < a.hops.size(); ++i) {
    c.in[i]->set_liveness(alive);
    // A hop from module 0 receives token ids, which stay on the host: Model::forward
    // checks them there, where checking costs no wait for the device.
    if (a.hops[i].begin != 0) c.in[i]->set_device(device);
  }
  for (auto& ch : c.out) ch->set_liveness(alive);
  return c;
}

// The device this stage computes on. Across hosts the plan's cuda:N cannot name another
// node's GPUs: the stage's place among the stages on its host does instead.
at::Device stage_device(const comm::World& w, const Assignment& a) {
  at::Device d = assigned_device(a);
  if (d.is_cuda() && w.multi_node()) d = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(w.local_stage_index()));
  return d;
}

// Whether modules [hop.begin, hop.end) end with the model's LM head.
bool ends_with_head(const StepRunner& runner, const Hop& hop) {
  const auto& all = runner.model().all_modules();
  return hop.end == static_cast<int64_t>(all.size()) && all.back().kind == ModuleKind::kLmHead;
}

// Waits until p's tokens are on the host or a message is waiting on `in`, whichever
// comes first (the step timeout bounds it; liveness is polled).
void await_tokens_or_step(const StepRunner::PendingSample& p, const comm::Channel& in, double timeout,
                          const comm::Liveness& alive) {
  const auto since = Clock::now(), deadline = after(timeout);
  for (int round = 0; !p.ready() && !in.has_message(); ++round) {
    if (round % 64 == 63) {
      if (alive) alive();
      if (Clock::now() > deadline) throw comm::CommError("timed out waiting for a step's tokens from the device");
    }
    comm::poll_pause(since);
  }
}

// Serves steps until a shutdown step has passed through every hop.
//
// A stage whose one hop runs from the token ids to the LM head overlaps steps: when the
// next step is already waiting while this one's tokens are still on their way to the
// host, it starts that step first (StepRunner::begin_sample), then sends this one's
// result. The device then never idles while the host reads tokens back and exchanges
// messages, which is most of a small model's step. The coordinator sends a step early
// only where its entries are fed (comm::SeqEntry::fed); otherwise no step is waiting and
// each is finished before the next, as on every other stage. CASCADE_OVERLAP_STEPS=0
// turns it off (a measurement switch), as does --trace (its spans time each step apart).
void serve(const comm::World& w, const Assignment& a, StepRunner& runner, Channels& ch, const Fault& fault,
           const comm::Liveness& alive, std::vector<Span>* spans, std::ostream& log) {
  auto span = [&](const char* name, const comm::StepHeader& h, int64_t begin) {
    if (a.trace) spans->push_back({name, h.step_id, h.microbatch, begin, now_us()});
  };
  double busy = 0, reported_busy = 0;  // seconds spent computing, reported to the coordinator now and then
  auto reported = Clock::now();
  auto report = [&](int64_t steps) {
    w.send(0, comm::kTagStats, comm::encode(comm::StageStats{busy, steps}), after(a.runtime.step_timeout), alive);
    reported = Clock::now();
    reported_busy = busy;
  };
  const bool overlap = a.hops.size() == 1 && a.hops[0].begin == 0 && ends_with_head(runner, a.hops[0]) && !a.trace &&
                       config::env_flag("CASCADE_OVERLAP_STEPS", true);
  struct Started {  // a step of the head's hop whose results are not sent yet
    StepRunner::PendingSample sample;
    size_t hop;
    Clock::time_point t0;
  };
  std::optional<Started> started;
  int64_t overlapped = 0;                    // steps started before the one before them was delivered
  auto now_busy_from = Clock::time_point();  // the device works on no earlier step after this
  // Sends a step's results once its tokens are on the host.
  auto deliver = [&](Started st) {
    const comm::StepHeader asked = st.sample.header;
    const at::Tensor logits = st.sample.logits;
    comm::StepHeader h = asked;
    h.kind = comm::StepKind::kResult;
    const int64_t p0 = now_us();
    const StepRunner::Sampled sampled = runner.finish_sample(std::move(st.sample));
    const auto done = Clock::now();
    busy += std::chrono::duration<double>(done - std::max(st.t0, now_busy_from)).count();
    now_busy_from = done;
    span("sample", h, p0);
    comm::Channel& out = *ch.out[st.hop];
    const int64_t s0 = now_us();
    out.send(h, sampled.ids, after(a.runtime.step_timeout));
    runner.model().hop_sent();
    span("send", h, s0);
    if (asked.flags & comm::kStepWantLogits) {
      h.kind = comm::StepKind::kLogits;
      out.send(h, logits.to(at::kFloat), after(a.runtime.step_timeout));
    }
    if (asked.flags & comm::kStepWantLogprobs) {
      h.kind = comm::StepKind::kLogprobs;
      out.send(h, sampled.logprobs, after(a.runtime.step_timeout));
    }
  };
  auto deliver_started = [&] {
    if (!started) return;
    Started st = std::move(*started);
    started.reset();
    deliver(std::move(st));
  };
  const ProfileRange profile = ProfileRange::from_env();
  for (int64_t step = 0;; ++step) {
    fault.maybe(step);
    profile.maybe(step);
    if (Clock::now() - reported > std::chrono::milliseconds(250)) report(step);
    bool shutdown = false;
    for (size_t i = 0; i < a.hops.size(); ++i) {
      const Hop& hop = a.hops[i];
      if (started) {  // overlap: the next step, if it is here before this one's tokens
        await_tokens_or_step(started->sample, *ch.in[i], a.runtime.step_timeout, alive);
        if (!ch.in[i]->has_message()) deliver_started();
      }
      // A stage about to wait for work reports what it did since its last report:
      // otherwise the coordinator's figure stays stale while it idles, and a benchmark's
      // busy share counts its warm-up. Every time, not at most every few ms: the wait may
      // have no end, so a report held back here would be the last one of a short run.
      if (i == 0 && busy != reported_busy && !ch.in[0]->has_message()) report(step);
      // An idle daemon may wait for its next step indefinitely; liveness still applies.
      const int64_t r0 = now_us();
      comm::Message m = ch.in[i]->recv(i == 0 ? kNever : after(a.runtime.step_timeout));
      span("recv", m.header, r0);
      if (m.header.kind == comm::StepKind::kShutdown) {
        deliver_started();
        if (i == 0) report(step);
        ch.out[i]->send(m.header, m.payload, after(a.runtime.step_timeout));
        shutdown = true;
        continue;
      }
      const auto t0 = Clock::now();
      const int64_t c0 = now_us();
      at::Tensor out = runner.run(m.header, m.payload, hop.begin, hop.end);
      if (!ends_with_head(runner, hop)) {
        comm::StepHeader h = m.header;
        if (out.is_cuda()) out = out.contiguous();
        busy += std::chrono::duration<double>(Clock::now() - t0).count();
        span("compute", h, c0);
        const int64_t s0 = now_us();
        ch.out[i]->send(h, out, after(a.runtime.step_timeout));
        runner.model().hop_sent();
        span("send", h, s0);
        continue;
      }
      if (a.trace) {  // the forward's device work ends here, so "sample" is the host's part alone
        (void)out.reshape(-1).narrow(0, 0, 1).to(at::kCPU);
        span("compute", m.header, c0);
      }
      Started st{runner.begin_sample(m.header, out), i, t0};
      if (started) ++overlapped;
      deliver_started();  // the earlier step's results go first
      if (overlap && st.sample.on_device())
        started = std::move(st);
      else
        deliver(std::move(st));
    }
    if (shutdown) {
      const Model& m = runner.model();
      log << "cascade " << a.label << ": " << step << " steps";
      if (overlapped > 0) log << " (" << overlapped << " started while the one before returned its tokens)";
      log << ", " << std::fixed << std::setprecision(2) << busy << " s computing";
      if (m.graphs_captured() > 0)
        log << ", " << m.graphs_captured() << " CUDA graphs captured in " << m.graphs_capture_seconds() << " s";
      if (const WeightStream::ReadStats r = m.stream_reads(); r.bytes > 0) {  // the disk tier's share of the time
        log << "; disk tier: " << config::format_bytes(r.bytes) << " read into pinned memory in " << r.busy_s << " s ("
            << std::setprecision(1) << static_cast<double>(r.bytes) / 1e9 / std::max(r.busy_s, 1e-9)
            << " GB/s), the step loop waited " << std::setprecision(2) << r.waited_s << " s for the reads";
      }
      log << "\n";
      break;
    }
  }
  if (!a.trace) return;
  nlohmann::json j = nlohmann::json::array();
  for (const auto& sp : *spans) j.push_back({sp.name, sp.step, sp.microbatch, sp.begin_us, sp.end_us});
  w.send(0, comm::kTagTrace, j.dump(), after(a.runtime.step_timeout), alive);
}

// Liveness of every process this stage waits on: the coordinator and its hops' peers.
comm::Liveness peers_alive(const Assignment& a, const comm::Heartbeats& hb) {
  std::set<int> peers = {0};
  for (const auto& h : a.hops) peers.insert({h.in.peer, h.out.peer});
  return [&a, &hb, peers] {
    for (int p : peers) hb.check(p, a.runtime.heartbeat_timeout, a.rank_labels.at(static_cast<size_t>(p)));
  };
}

// Tells the coordinator this stage will not become ready, then gives MPI up.
void report_failed_load(comm::World& w, const std::string& error, const comm::Liveness& alive) {
  comm::StageReady r;
  r.error = error;
  r.host = w.host();
  r.pid = ::getpid();
  try {
    w.send(0, comm::kTagLoad, comm::encode(r), after(5), alive);
  } catch (const std::exception&) {
  }
  w.abandon();
}

}  // namespace

int run_stage(comm::World& w, std::ostream& log) {
  Assignment a;
  try {
    // The coordinator plans before it assigns (headers only: seconds at most).
    a = comm::decode_assignment(w.recv(0, comm::kTagAssign, after(120), nullptr));
  } catch (const std::exception& e) {
    const std::string msg = std::string("no usable assignment from the coordinator: ") + e.what();
    log << "cascade stage rank " << w.rank() << " on " << w.host() << ": error: " << msg << "\n";
    report_failed_load(w, msg, nullptr);  // at once, rather than let it wait for a heartbeat
    return 1;
  }
  if (!a.exit_reason.empty()) return 1;  // the coordinator prints the reason

  std::unique_ptr<comm::Heartbeats> hb;
  comm::Liveness alive;
  try {
    hb = comm::Heartbeats::open(a.heartbeats, after(a.runtime.heartbeat_timeout));
    hb->start(a.rank);
    alive = peers_alive(a, *hb);
  } catch (const std::exception& e) {
    log << "cascade " << a.label << ": error: " << e.what() << "\n";
    w.abandon();
    return 1;
  }
  const Fault fault = Fault::from_env(a.rank);
  std::unique_ptr<StepRunner> runner;
  Channels ch;
  const auto t0 = Clock::now();
  try {
    fault.maybe(-1);
    const at::Device device = stage_device(w, a);
    LoadedStage st = load_stage(
        a, device, w.host(),
        [&](const comm::LoadProgress& p) {
          w.send(0, comm::kTagLoad, comm::encode(p), after(a.runtime.step_timeout), nullptr);
        },
        log);
    runner = std::make_unique<StepRunner>(std::move(st.model));
    const auto loaded = Clock::now();
    ch = open_channels(w, a, device, alive);
    st.ready.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    st.ready.connect_s = std::chrono::duration<double>(Clock::now() - loaded).count();
    w.send(0, comm::kTagLoad, comm::encode(st.ready), after(a.runtime.step_timeout), alive);
  } catch (const std::exception& e) {
    report_failed_load(w, error_text(e), alive);
    return 1;
  }

  try {
    std::vector<Span> spans;
    serve(w, a, *runner, ch, fault, alive, &spans, log);
  } catch (const std::exception& e) {
    const std::string msg = error_text(e);
    try {
      w.send(0, comm::kTagError, comm::encode(comm::StageFailure{msg}), after(2), alive);
    } catch (const std::exception&) {
      log << "cascade " << a.label << ": error: " << msg << "\n";  // the coordinator is gone too
    }
    w.abandon();
    return 1;
  }
  return 0;
}

}  // namespace cascade::stage
