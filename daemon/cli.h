// The `cascade` command line: parses arguments with CLI11 and calls the named
// function of each subcommand. Errors are caught here, at the boundary, and printed
// as "cascade <command>: error: ..." with a non-zero exit status.
#pragma once

namespace cascade::daemon {

int run_cli(int argc, char** argv);

}  // namespace cascade::daemon
