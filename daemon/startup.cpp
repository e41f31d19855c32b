#include "daemon/startup.h"

#include <c10/util/Exception.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "comm/world.h"
#include "config/size.h"
#include "daemon/generate.h"
#include "stage/load.h"

namespace cascade::daemon {

namespace {

// Seconds since this process started (its start time in /proc/self/stat against
// CLOCK_BOOTTIME, 10 ms resolution); negative when Linux's /proc cannot say.
double seconds_since_process_start() {
  std::ifstream f("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t comm_end = stat.rfind(')');  // the command name may hold spaces
  if (comm_end == std::string::npos) return -1;
  std::istringstream fields(stat.substr(comm_end + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {  // field 22: start time in clock ticks since boot
    if (i < 22) continue;
    timespec now{};
    if (clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
    return static_cast<double>(now.tv_sec) + now.tv_nsec * 1e-9 -
           std::stod(field) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return -1;
}

double main_started_at = -1;  // note_main_started()

// The span a user waits for, from the command to the first request; `before`: the
// seconds from launch to `what`, split at main() when note_main_started() was called.
void print_ready(double before, const char* what, std::ostream& log) {
  const double total = seconds_since_process_start();
  if (before < 0 || total < 0) return;
  log << "cascade: ready " << std::fixed << std::setprecision(2) << total << " s after launch (" << before
      << " s before " << what << ": ";
  if (main_started_at >= 0 && main_started_at <= before)
    log << "starting the process and its libraries " << main_started_at << " s, reading the config and planning "
        << before - main_started_at << " s)\n";
  else
    log << "loading libraries, reading the config, planning)\n";
}

}  // namespace

void note_main_started() { main_started_at = seconds_since_process_start(); }

Started start_stages(PlannedRun run, std::ostream& log, bool trace) {
  Started s;
  s.run = std::move(run);
  const double before = seconds_since_process_start();
  s.cluster = Cluster::start(s.run, self_exe(), log, trace);
  print_ready(before, "the stages were started", log);
  return s;
}

bool runs_here(const PlannedRun& run, bool spawn_stages) {
  return !spawn_stages && run.plan.stages.size() == 1 && run.config.runtime.mode == config::Mode::kSequential &&
         !comm::World::started_with_peers();
}

std::shared_ptr<Executor> load_here(const PlannedRun& run, std::ostream& log) {
  const double before = seconds_since_process_start();
  print_plan(run, log);
  log << "cascade: the plan has one stage; it runs in this process, so the route's hops are calls, not messages "
         "(--spawn-stages starts a stage process instead)\n";
  const std::vector<std::string> labels = {"the coordinator", stage_label(run.plan.stages.at(0)) + " in this process"};
  const comm::Assignment a = stage_assignments(run, "", "", labels, /*trace=*/false, /*one_host=*/true).at(0);
  stage::LoadedStage st;
  try {
    st = stage::load_stage(
        a, stage::assigned_device(a), "this host",
        [&](const comm::LoadProgress& p) {
          log << "cascade: loading: " << config::format_bytes(p.bytes) << " / " << config::format_bytes(p.total)
              << "\n";
        },
        log);
  } catch (const c10::Error& e) {  // LibTorch's checks: without the C++ backtrace
    throw std::runtime_error(a.label + " failed to load: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw std::runtime_error(a.label + " failed to load: " + e.what());
  }
  log << "cascade: " << ready_line(a.label, st.ready);
  if (st.ready.device_start_s > 0)
    log << std::fixed << std::setprecision(2) << " (CUDA start " << st.ready.device_start_s << " s)";
  log << "\n";
  print_ready(before, "the load began", log);
  return std::make_shared<LocalExecutor>(std::move(st.model), run.config.runtime.step_timeout);
}

SchedulerOptions scheduler_options(const Started& s, config::Mode mode) {
  const config::RuntimeSection& rt = s.run.config.runtime;
  SchedulerOptions o;
  set_mode(&o, mode, rt, s.stages());
  o.eos_ids = s.run.description.config.eos_token_ids;
  o.recompute_at = s.run.description.config.rope.recompute_at();
  o.decoder_start = s.run.description.config.decoder_start_token_id;
  o.stage_busy = [c = s.cluster] { return c->stage_busy(); };
  o.stage_labels.assign(s.cluster->labels().begin() + 1, s.cluster->labels().end());
  return o;
}

}  // namespace cascade::daemon
