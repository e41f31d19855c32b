#include "comm/world.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

namespace cascade::comm {
namespace {

constexpr size_t kMaxChunk = size_t{1} << 30;  // MPI counts are int

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(buf, static_cast<size_t>(len));
}

// A coordinator started alone spawns its stages and supervises them itself: a stage
// that fails exits non-zero, and the coordinator stops the others and spawns new ones.
// Open MPI's default answer to a spawned process's non-zero exit is to abort the
// runtime (it terminates its daemons), after which the restart's MPI_Comm_spawn never
// returns: server_test's restart test failed so about once in 20 runs beside a busy
// core, when the surviving stage's exit reached the runtime before the coordinator had
// stopped it. So orte_abort_on_non_zero_status is off unless the user set it.
//
// Its stages run on this host, so Open MPI's TCP traffic (the runtime's out-of-band
// channel and the TCP transport between the coordinator and the stages) needs no
// interface but loopback, and no fabric: the ob1 messaging layer (shared memory,
// loopback TCP) instead of probing UCX, which cost ~0.2 s of every process's MPI start
// on the development VM. Left alone when the user named interfaces, a messaging layer
// or a hostfile.
//
// All of it is set before MPI starts, inherited by the runtime daemon it forks and by
// the stages, and left alone under mpirun (the launcher's settings rule).
void configure_single_host() {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK")) return;  // started by mpirun
  ::setenv("OMPI_MCA_orte_abort_on_non_zero_status", "0", 0);
  if (std::getenv("OMPI_MCA_orte_default_hostfile")) return;
  for (const char* family : {"oob_tcp", "btl_tcp"}) {
    const std::string inc = std::string("OMPI_MCA_") + family + "_if_include";
    const std::string exc = std::string("OMPI_MCA_") + family + "_if_exclude";
    if (!std::getenv(inc.c_str()) && !std::getenv(exc.c_str())) ::setenv(inc.c_str(), "lo", 0);
  }
  ::setenv("OMPI_MCA_pml", "ob1", 0);
}

}  // namespace

void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) throw CommError(std::string(call) + ": " + mpi_error_string(rc));
}

bool World::started_with_peers() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && std::atoi(v) > 1) return true;
  }
  return false;
}

World& World::get() {
  static World w;
  return w;
}

World::World() {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    configure_single_host();
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  }
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  if (parent != MPI_COMM_NULL) {
    spawned_ = true;
    check_mpi(MPI_Intercomm_merge(parent, /*high=*/1, &comm_), "MPI_Intercomm_merge");
  } else {
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
  }
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  find_locals();
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  host_.assign(name, static_cast<size_t>(len));
}

// Which ranks share this host: the local rank, whether the run spans hosts, and the
// stage's index among the stages here (the coordinator's rank 0 does not count).
void World::find_locals() {
  MPI_Comm local = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
  int local_size = 1;
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_size(local, &local_size);
  multi_node_ = local_size != size_;
  int has_zero = rank_ == 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &has_zero, 1, MPI_INT, MPI_MAX, local);
  local_stage_index_ = local_rank_ - has_zero;  // ranks are ordered by world rank within the host
  MPI_Comm_free(&local);
}

World::~World() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || abandoned_) return;
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  MPI_Finalize();
}

// MPI_Comm_spawn returns once every new process has called MPI_Init: a process that
// never does (an exec that fails late, a runtime that was torn down) would hold it
// forever, so it runs on a thread of its own and the caller waits until `deadline`.
// Everything the call reads lives in Spawn, which the thread shares, so a call left
// behind at the deadline reads nothing freed.
namespace {
struct Spawn {
  std::string exe;
  std::vector<std::string> args;
  int n = 0;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int rc = MPI_SUCCESS;
  MPI_Comm inter = MPI_COMM_NULL;
  std::vector<int> errcodes;

  void run() {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    MPI_Info info;
    MPI_Info_create(&info);
    // More stage processes than cores is normal: stages mostly wait for each other.
    MPI_Info_set(info, "map_by", ":OVERSUBSCRIBE");
    // A stage runs its own threads (threads_per_stage, the disk readers): binding it to one
    // core, Open MPI's default for small jobs, would put them all on that core.
    MPI_Info_set(info, "bind_to", "none");
    MPI_Comm comm = MPI_COMM_NULL;
    std::vector<int> codes(static_cast<size_t>(n), MPI_SUCCESS);
    const int r = MPI_Comm_spawn(exe.c_str(), argv.data(), n, info, 0, MPI_COMM_SELF, &comm, codes.data());
    MPI_Info_free(&info);
    std::lock_guard<std::mutex> l(mu);
    rc = r, inter = comm, errcodes = std::move(codes), done = true;
    cv.notify_all();
  }
};
}  // namespace

void World::spawn(int n, const std::string& exe, const std::vector<std::string>& args, Clock::time_point deadline) {
  if (size_ != 1 && !spawned_peers_)
    throw CommError("spawn: this process already has " + std::to_string(size_ - 1) + " peers");
  if (spawn_stuck_) throw CommError("spawn: an earlier MPI_Comm_spawn never returned; MPI cannot start processes here");
  auto call = std::make_shared<Spawn>();
  call->exe = exe, call->args = args, call->n = n;
  const std::string what = "MPI_Comm_spawn(" + exe + ", " + std::to_string(n) + " processes)";
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  std::thread([call] { call->run(); }).detach();
  std::unique_lock<std::mutex> l(call->mu);
  if (!call->cv.wait_until(l, deadline, [&] { return call->done; })) {
    abandoned_ = spawn_stuck_ = true;  // MPI_Finalize or another spawn would wait for the call left running
    throw CommError(what +
                    " timed out: the new processes did not all start MPI (is Open MPI's runtime still running?)");
  }
  check_mpi(call->rc, what.c_str());
  for (int i = 0; i < n; ++i) check_mpi(call->errcodes[static_cast<size_t>(i)], "MPI_Comm_spawn (a stage process)");
  MPI_Comm inter = call->inter;
  MPI_Comm merged = MPI_COMM_NULL;
  check_mpi(MPI_Intercomm_merge(inter, /*high=*/0, &merged), "MPI_Intercomm_merge");
  // A communicator with earlier stages (a restart: they were stopped) is left as it is:
  // freeing it could wait on processes that are gone, and it is a handful of bytes.
  if (!spawned_peers_) MPI_Comm_free(&comm_);
  comm_ = merged;
  spawned_peers_ = true;
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  find_locals();
}

// Polls (poll_pause), checking liveness and the deadline every 64 rounds.
void World::wait(MPI_Request* req, const char* what, int peer, Clock::time_point deadline,
                 const Liveness& alive) const {
  const auto since = Clock::now();
  for (int round = 0;; ++round) {
    int done = 0;
    check_mpi(MPI_Test(req, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    if (round % 64 == 63) {
      try {
        if (alive) alive();
        if (Clock::now() > deadline)
          throw CommError(std::string("timed out in ") + what + " with rank " + std::to_string(peer));
      } catch (...) {
        MPI_Cancel(req);  // leave no request pointing at a buffer that is about to go
        MPI_Request_free(req);
        throw;
      }
    }
    poll_pause(since);
  }
}

void World::send_raw(int dest, int tag, const void* data, size_t n, Clock::time_point deadline,
                     const Liveness& alive) const {
  const auto* p = static_cast<const char*>(data);
  do {
    const int chunk = static_cast<int>(std::min(n, kMaxChunk));
    MPI_Request req;
    check_mpi(MPI_Isend(p, chunk, MPI_BYTE, dest, tag, comm_, &req), "MPI_Isend");
    wait(&req, "MPI_Isend", dest, deadline, alive);
    p += chunk;
    n -= static_cast<size_t>(chunk);
  } while (n > 0);
}

void World::recv_raw(int src, int tag, void* data, size_t n, Clock::time_point deadline, const Liveness& alive) const {
  auto* p = static_cast<char*>(data);
  do {
    const int chunk = static_cast<int>(std::min(n, kMaxChunk));
    MPI_Request req;
    check_mpi(MPI_Irecv(p, chunk, MPI_BYTE, src, tag, comm_, &req), "MPI_Irecv");
    wait(&req, "MPI_Irecv", src, deadline, alive);
    p += chunk;
    n -= static_cast<size_t>(chunk);
  } while (n > 0);
}

void World::send(int dest, int tag, const std::vector<uint8_t>& bytes, Clock::time_point deadline,
                 const Liveness& alive) const {
  if (bytes.size() > kMaxChunk) throw CommError("control message of " + std::to_string(bytes.size()) + " bytes");
  send_raw(dest, tag, bytes.data(), bytes.size(), deadline, alive);
}

void World::send(int dest, int tag, const std::string& text, Clock::time_point deadline, const Liveness& alive) const {
  send(dest, tag, std::vector<uint8_t>(text.begin(), text.end()), deadline, alive);
}

bool World::probe(int src, int tag) const {
  int flag = 0;
  check_mpi(MPI_Iprobe(src, tag, comm_, &flag, MPI_STATUS_IGNORE), "MPI_Iprobe");
  return flag != 0;
}

bool World::try_recv(int src, int tag, std::vector<uint8_t>* out, int* from) const {
  int flag = 0;
  MPI_Message msg;
  MPI_Status st;
  check_mpi(MPI_Improbe(src, tag, comm_, &flag, &msg, &st), "MPI_Improbe");
  if (!flag) return false;
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  out->resize(static_cast<size_t>(count));
  check_mpi(MPI_Mrecv(out->data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
  if (from) *from = st.MPI_SOURCE;
  return true;
}

std::vector<uint8_t> World::recv(int src, int tag, Clock::time_point deadline, const Liveness& alive, int* from) const {
  std::vector<uint8_t> out;
  const auto since = Clock::now();
  for (int round = 0;; ++round) {
    if (try_recv(src, tag, &out, from)) return out;
    if (round % 64 == 63) {
      if (alive) alive();
      if (Clock::now() > deadline) {
        throw CommError("timed out waiting for message tag " + std::to_string(tag) + " from " +
                        (src == MPI_ANY_SOURCE ? std::string("any rank") : "rank " + std::to_string(src)));
      }
    }
    poll_pause(since);
  }
}

void poll_pause(Clock::time_point since) {
  const auto waited = Clock::now() - since;
  if (waited < std::chrono::milliseconds(2))
    std::this_thread::yield();
  else if (waited < std::chrono::milliseconds(50))
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  else
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

}  // namespace cascade::comm
