#include "daemon/startup.h"

#include <algorithm>

#include "daemon/generate.h"

namespace cascade::daemon {

Started start_stages(PlannedRun run, std::ostream& log, bool trace) {
  Started s;
  s.run = std::move(run);
  s.cluster = Cluster::start(s.run, self_exe(), log, trace);
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
