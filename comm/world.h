// The MPI side of a run (DESIGN §1, §6): who this process is, how the stage processes
// came to exist, and control messages with deadlines.
//
// Two launches reach the same state, a communicator where rank 0 is the coordinator and
// ranks 1..S are stages:
//   - `mpirun -np S+1 cascade …`: MPI_COMM_WORLD as it is;
//   - `cascade …` alone: the coordinator calls spawn(), which starts S copies of
//     `cascade stage` with MPI_Comm_spawn and merges the intercommunicator (parent
//     first). A spawned process sees a parent and merges from its side.
//
// Every wait polls (MPI_Test / MPI_Iprobe) against a deadline and a liveness check,
// so a dead or stalled peer becomes a CommError, never a hang. MPI errors are returned,
// not fatal (MPI_ERRORS_RETURN), and turned into CommErrors naming the call.
//
// Ownership: World is a process-wide singleton (MPI is initialised once per process);
// finalize() happens at exit unless abandon() was called after a peer failure.
// Thread-safety: MPI is initialised with MPI_THREAD_MULTIPLE when the library offers it;
// still, one thread should drive a given peer's messages.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/message.h"

namespace cascade::comm {

using Clock = std::chrono::steady_clock;

// The pause between two polls of a wait that began at `since`: a yield for the first
// 2 ms (the answer to a decode step usually comes within that, and a 1 ms sleep would
// add half a step), then 50 us sleeps until 50 ms, then 1 ms (an idle stage stays cheap).
void poll_pause(Clock::time_point since);

// Throws CommError when a peer that the caller depends on is gone or stalled.
using Liveness = std::function<void()>;

// Message tags. The control messages' payloads are comm/control.h's codec.
enum Tag : int {
  kTagAssign = 1,  // coordinator -> stage: Assignment
  // stage -> coordinator: LoadProgress while loading, then StageReady (or why not);
  // one tag keeps them in the order they were sent.
  kTagLoad = 2,
  kTagError = 5,  // stage -> coordinator: StageFailure (a step failed)
  kTagStats = 6,  // stage -> coordinator: StageStats, now and then
  kTagTrace = 7,  // stage -> coordinator: its timeline spans (JSON), after the shutdown step (tracing runs)
  kTagData = 16,  // step payloads over the MPI channel; + hop index
};

class World {
 public:
  // MPI_Init_thread on first use. Safe to call again (returns the same object).
  static World& get();
  // Whether a launcher started this process as one of several ranks (mpirun -np 2 or
  // more: Open MPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE), from the environment alone,
  // so without starting MPI.
  static bool started_with_peers();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_coordinator() const { return rank_ == 0; }
  bool spawned() const { return spawned_; }              // started by a coordinator's MPI_Comm_spawn
  bool spawned_peers() const { return spawned_peers_; }  // this coordinator spawned its ranks 1..n
  MPI_Comm comm() const { return comm_; }
  // The rank's index among the ranks on its host (MPI_Comm_split_type).
  int local_rank() const { return local_rank_; }
  // True when the ranks span more than one host.
  bool multi_node() const { return multi_node_; }
  // This stage's index among the stage ranks on its host (the coordinator excluded):
  // on multi-node runs a stage's GPU is cuda:<local_stage_index>.
  int local_stage_index() const { return local_stage_index_; }
  const std::string& host() const { return host_; }

  // Coordinator started alone: start `n` processes `exe args…` and merge them in as
  // ranks 1..n. Oversubscribes the host (stages mostly wait on each other). May be
  // called again once the earlier stages are stopped (a restart): the new ones replace
  // them as ranks 1..n. A coordinator started alone confines Open MPI's TCP traffic to
  // loopback (OMPI_MCA_{oob,btl}_tcp_if_include=lo) unless the environment says otherwise,
  // and keeps Open MPI from aborting its runtime when a stage exits non-zero
  // (OMPI_MCA_orte_abort_on_non_zero_status=0): the daemon restarts stages itself.
  // Throws CommError when MPI_Comm_spawn has not returned by `deadline`: the call is
  // left running, and this process neither spawns again nor finalizes MPI.
  void spawn(int n, const std::string& exe, const std::vector<std::string>& args, Clock::time_point deadline);

  void send(int dest, int tag, const std::vector<uint8_t>& bytes, Clock::time_point deadline,
            const Liveness& alive) const;
  void send(int dest, int tag, const std::string& text, Clock::time_point deadline, const Liveness& alive) const;
  // Waits for a message from `src` (or MPI_ANY_SOURCE; *from receives the sender).
  std::vector<uint8_t> recv(int src, int tag, Clock::time_point deadline, const Liveness& alive,
                            int* from = nullptr) const;
  // Non-blocking: true when a message from `src` with `tag` is waiting (not received).
  bool probe(int src, int tag) const;
  // Non-blocking: true and the message when one from `src` with `tag` is waiting.
  bool try_recv(int src, int tag, std::vector<uint8_t>* out, int* from = nullptr) const;
  // Raw buffers, for payloads that land directly in a tensor.
  void send_raw(int dest, int tag, const void* data, size_t n, Clock::time_point deadline, const Liveness& alive) const;
  void recv_raw(int src, int tag, void* data, size_t n, Clock::time_point deadline, const Liveness& alive) const;

  // After a peer failed: skip MPI_Finalize at exit (it could wait on the dead peer).
  void abandon() { abandoned_ = true; }
  ~World();

 private:
  World();
  void wait(MPI_Request* req, const char* what, int peer, Clock::time_point deadline, const Liveness& alive) const;

  void find_locals();
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_stage_index_ = 0;
  bool multi_node_ = false;
  bool spawned_ = false, abandoned_ = false, spawn_stuck_ = false;
  bool spawned_peers_ = false;  // this coordinator spawned ranks 1..n
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string host_;
};

// "MPI_Send: <MPI's message>" when rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* call);

}  // namespace cascade::comm
