// Helpers for the layer-toolkit tests: random weights served through a WeightSource,
// and a one-sequence StepContext over a KV cache.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "stage/family.h"

namespace cascade::test {

// Named tensors, served as a family's load() would get them (shape checked).
struct Weights {
  std::map<std::string, at::Tensor> t;
  double threshold = 0;

  at::Tensor& add(const std::string& name, std::vector<int64_t> shape, double scale = 0.3) {
    return t[name] = at::randn(shape) * scale;
  }
  stage::WeightSource source() {
    return {[this](const std::string& name, const std::vector<int64_t>& expected) {
              const auto it = t.find(name);
              if (it == t.end()) throw std::out_of_range("test weights lack " + name);
              if (!expected.empty()) {
                EXPECT_EQ(it->second.sizes().vec(), expected) << name;
              }
              return it->second;
            },
            threshold};
  }
};

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace cascade::test
