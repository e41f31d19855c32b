# Finds every third-party dependency and exposes it as an imported target.
# Header-only packages may also come from CASCADE_EXTRA_INCLUDE (the GPU machine has
# no Debian packages; scripts/gpu_check.sh carries the Debian headers there).
set(CASCADE_EXTRA_INCLUDE "" CACHE PATH "Extra include directory searched for header-only dependencies")

find_package(Torch REQUIRED)
find_package(Threads REQUIRED)
# MPI (its C API, through the CXX target): bootstrap, control messages, the MPI channel.
find_package(MPI REQUIRED COMPONENTS CXX)

find_path(TOMLPP_INCLUDE_DIR toml++/toml.h HINTS ${CASCADE_EXTRA_INCLUDE})
find_path(NLOHMANN_INCLUDE_DIR nlohmann/json.hpp HINTS ${CASCADE_EXTRA_INCLUDE})
find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp HINTS ${CASCADE_EXTRA_INCLUDE})
foreach(dir TOMLPP_INCLUDE_DIR NLOHMANN_INCLUDE_DIR CLI11_INCLUDE_DIR)
  if(NOT ${dir})
    message(FATAL_ERROR "${dir} not found: install libtomlplusplus-dev nlohmann-json3-dev libcli11-dev "
                        "(scripts/install_deps.sh) or set CASCADE_EXTRA_INCLUDE")
  endif()
endforeach()

# toml++ is used header-only so the same build works where only the header exists.
add_library(cascade_tomlpp INTERFACE)
target_include_directories(cascade_tomlpp SYSTEM INTERFACE ${TOMLPP_INCLUDE_DIR})
target_compile_definitions(cascade_tomlpp INTERFACE TOML_HEADER_ONLY=1 TOML_EXCEPTIONS=1)
add_library(cascade_json INTERFACE)
target_include_directories(cascade_json SYSTEM INTERFACE ${NLOHMANN_INCLUDE_DIR})
add_library(cascade_cli11 INTERFACE)
target_include_directories(cascade_cli11 SYSTEM INTERFACE ${CLI11_INCLUDE_DIR})

# The tokenizer: PCRE2 (Unicode regexes) and ICU (normalization, case mapping).
# Plain find_path/find_library: the GPU machine has no pkg-config.
set(CASCADE_EXTRA_LIB "" CACHE PATH "Extra library directory searched for PCRE2")
find_path(PCRE2_INCLUDE_DIR pcre2.h HINTS ${CASCADE_EXTRA_INCLUDE})
find_library(PCRE2_LIBRARY NAMES pcre2-8 HINTS ${CASCADE_EXTRA_LIB})
find_path(ICU_UC_INCLUDE_DIR unicode/normalizer2.h HINTS ${CASCADE_EXTRA_INCLUDE})
find_library(ICU_UC_LIB NAMES icuuc HINTS ${CASCADE_EXTRA_LIB})
if(PCRE2_INCLUDE_DIR AND PCRE2_LIBRARY AND ICU_UC_INCLUDE_DIR AND ICU_UC_LIB)
  set(CASCADE_WITH_TOKENIZER ON)
  add_library(cascade_pcre2 UNKNOWN IMPORTED)
  set_target_properties(cascade_pcre2 PROPERTIES IMPORTED_LOCATION ${PCRE2_LIBRARY}
                                                 INTERFACE_INCLUDE_DIRECTORIES ${PCRE2_INCLUDE_DIR})
  add_library(cascade_icu UNKNOWN IMPORTED)
  set_target_properties(cascade_icu PROPERTIES IMPORTED_LOCATION ${ICU_UC_LIB}
                                               INTERFACE_INCLUDE_DIRECTORIES ${ICU_UC_INCLUDE_DIR})
else()
  set(CASCADE_WITH_TOKENIZER OFF)
  message(WARNING "PCRE2 (${PCRE2_LIBRARY}) or ICU (${ICU_UC_LIB}) not found (libpcre2-dev, libicu-dev): "
                  "building without the tokenizer")
endif()

# LibTorch's CMake config adds flags through TORCH_CXX_FLAGS; wrap it in one target.
# PyTorch's wheels export statically linked libstdc++ symbols, std::filesystem among
# them (pytorch/pytorch#133437); whichever library comes first among a binary's
# dependencies wins the dynamic lookup, and LibTorch's copies crash (remove_all jumped
# to address 0 on the GPU machine). Listing libstdc++ ahead of LibTorch makes every
# std:: symbol resolve to the real library.
add_library(cascade_torch INTERFACE)
target_link_libraries(cascade_torch INTERFACE "-Wl,--push-state,--no-as-needed" stdc++ "-Wl,--pop-state"
                                              ${TORCH_LIBRARIES})
target_compile_options(cascade_torch INTERFACE ${TORCH_CXX_FLAGS})

# GPU support: on when LibTorch has CUDA and NCCL is present (AUTO), or forced.
set(_torch_has_cuda OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(_torch_has_cuda ON)
endif()
find_path(NCCL_INCLUDE_DIR nccl.h HINTS /usr/local/cuda/include)
find_library(NCCL_LIBRARY nccl HINTS /usr/local/cuda/lib64)
if(CASCADE_CUDA STREQUAL "AUTO")
  if(_torch_has_cuda AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(CASCADE_WITH_CUDA ON)
  else()
    set(CASCADE_WITH_CUDA OFF)
  endif()
elseif(CASCADE_CUDA)
  if(NOT _torch_has_cuda)
    message(FATAL_ERROR "CASCADE_CUDA=ON but LibTorch at ${Torch_DIR} was built without CUDA")
  endif()
  set(CASCADE_WITH_CUDA ON)
else()
  set(CASCADE_WITH_CUDA OFF)
endif()
if(CASCADE_WITH_CUDA)
  target_compile_definitions(cascade_torch INTERFACE CASCADE_WITH_CUDA=1)
  add_library(cascade_nccl UNKNOWN IMPORTED)
  set_target_properties(cascade_nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                                                INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
endif()
message(STATUS "Cascade: LibTorch ${Torch_VERSION}, GPU code ${CASCADE_WITH_CUDA}, tokenizer ${CASCADE_WITH_TOKENIZER}")

if(CASCADE_BUILD_TESTS)
  find_package(GTest QUIET)
  if(NOT GTest_FOUND AND EXISTS /usr/src/googletest/CMakeLists.txt)
    add_subdirectory(/usr/src/googletest ${CMAKE_BINARY_DIR}/googletest EXCLUDE_FROM_ALL)
    add_library(GTest::gtest ALIAS gtest)
    add_library(GTest::gtest_main ALIAS gtest_main)
  elseif(NOT GTest_FOUND)
    message(FATAL_ERROR "GoogleTest not found: install libgtest-dev or pass -DCASCADE_BUILD_TESTS=OFF")
  endif()
endif()
