// Command line shared by the C++ runners:  <runner> MODEL input.png output.png [--seed N] [--iters N]
#pragma once

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>

namespace rsd {

struct RunnerArgs {
  std::string model, input, output;
  uint64_t seed = 0;
  int iters = 1;
};

// Parsed arguments, or nothing after printing the usage / the bad option (the caller exits with 2).
inline std::optional<RunnerArgs> parse_runner_args(int argc, char** argv, const char* model_name, int default_iters) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " " << model_name << " input.png output.png [--seed N] [--iters N]\n";
    return std::nullopt;
  }
  RunnerArgs args{argv[1], argv[2], argv[3], 0, default_iters};
  for (int i = 4; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) { std::cerr << flag << ": missing value\n"; return std::nullopt; }
    try {
      if (flag == "--seed") args.seed = std::stoull(argv[i + 1]);
      else if (flag == "--iters") args.iters = std::max(1, std::stoi(argv[i + 1]));
      else { std::cerr << "unknown option " << flag << "\n"; return std::nullopt; }
    } catch (const std::exception&) {
      std::cerr << flag << ": expected an integer, got '" << argv[i + 1] << "'\n";
      return std::nullopt;
    }
  }
  return args;
}

}  // namespace rsd
