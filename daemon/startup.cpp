#include "daemon/startup.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <string>

#include "daemon/generate.h"

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

}  // namespace

Started start_stages(PlannedRun run, std::ostream& log, bool trace) {
  Started s;
  s.run = std::move(run);
  const double before = seconds_since_process_start();
  s.cluster = Cluster::start(s.run, self_exe(), log, trace);
  const double total = seconds_since_process_start();
  if (before >= 0 && total >= 0) {  // the span a user waits for, from the command to the first request
    log << "cascade: ready " << std::fixed << std::setprecision(2) << total << " s after launch (" << before
        << " s before the stages were started: loading libraries, reading the config, planning)\n";
  }
  return s;
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
