// Which cores a process may run on, and binding it to some of them (runtime.pin_cores).
// The coordinator reads its own mask to hand cores out; a stage binds itself to those it
// was given and reports the mask it ended with. Linux only (sched_{get,set}affinity).
// Thread-safety: the calls read or set the calling thread's mask; threads started later
// inherit it, threads started earlier keep theirs.
#pragma once

#include <string>
#include <vector>

namespace cascade::comm {

// The cores this thread may run on (its affinity mask), ascending; empty when the mask
// cannot be read.
std::vector<int> allowed_cores();

// `cores` (ascending) as a list of ranges, "0-7,12"; "" for none.
std::string core_list(const std::vector<int>& cores);

// Binds the calling thread (and the threads it starts later) to `cores`. Returns why it
// could not, naming the cores ("" when it did, or when `cores` is empty: nothing asked);
// the mask is then unchanged.
std::string pin_to(const std::vector<int>& cores);

}  // namespace cascade::comm
