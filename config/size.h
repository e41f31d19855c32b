// Byte sizes as people write them in config files and on the command line.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cascade::config {

// Parses "2GiB", "500MB", "1.5 GB", "4096", "unlimited" (case-insensitive units).
// Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB)
// powers of 1000, as accelerate reads them. Returns nullopt for "unlimited".
// Throws std::invalid_argument with a message that quotes the text on anything else.
std::optional<uint64_t> parse_size(std::string_view text);

// "1.50 GiB", "512.0 MiB", "12 B": for tables and error messages.
std::string format_bytes(uint64_t bytes);

}  // namespace cascade::config
