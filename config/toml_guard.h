// toml::parse, safe from a bug of toml++ 3.3 (Debian 12's): its whitespace test reaches
// an "unreachable" branch, undefined behaviour, for some non-ASCII code points
// (U+00A1..U+0499, U+2C5E..U+3057 but U+3000, U+FB26..U+FEFE; toml++ issue #295, fixed
// upstream after 3.3). It runs that test on any character it may skip: outside strings,
// in a bare value's look-ahead (which runs through quotes: `v = 0"é"`), after a backslash
// in a multi-line string. A config file or a --set value with an "é" or a Cyrillic
// letter in such a place would otherwise do anything.
//
// parse_toml hands toml++ the text with each such code point c replaced by a stand-in,
// U+F0000 + c (supplementary private use), which toml++ tests as "not whitespace", as it
// does the code points beside c; the parsed keys and strings, and the messages of parse
// errors, get c back. Text that holds a code point of the stand-ins' own range
// (U+F00A1..U+FFEFE) is refused with a parse error, so no stand-in is ambiguous.
// Used only inside cascade_config; pure functions, thread-safe.
#pragma once

#include <toml++/toml.h>

#include <string>
#include <string_view>

namespace cascade::config {

// toml::parse(text, source), throwing toml::parse_error as it does.
toml::table parse_toml(std::string_view text, const std::string& source);

// Whether toml++ 3.3's whitespace test has no answer for code point `c` (see above).
bool trips_toml_whitespace_test(char32_t c);

}  // namespace cascade::config
