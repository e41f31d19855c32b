#include "daemon/cli.h"

int main(int argc, char** argv) { return cascade::daemon::run_cli(argc, argv); }
