// Runs an AOTInductor package of the fused one-step pipeline (rsd_deploy.export.aoti) on a PNG.
//
//   aoti_runner model.pt2 input.png output.png [--seed N] [--iters N]
//
// The package stores its LR size and channel counts in its metadata. Noise follows the contract
// of rsd_deploy.export.aoti.pipeline_noise: one CPU generator seeded with --seed draws eps and
// then the noise map with randn, so the output equals Python's for the same seed.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "png_io.h"
#include "runner_args.h"

namespace {

int metadata_int(const std::unordered_map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto found = meta.find(key);
  if (found == meta.end()) throw std::runtime_error(path + ": no '" + key + "' metadata (not packaged by rsd_deploy.export.aoti)");
  return std::stoi(found->second);
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = rsd::parse_runner_args(argc, argv, "model.pt2", 1);
  if (!args) return 2;
  const std::string package = args->model, input = args->input, output = args->output;
  const uint64_t seed = args->seed;
  const int iters = args->iters;
  try {
    torch::inductor::AOTIModelPackageLoader loader(package);
    auto meta = loader.get_metadata();
    const int latent = metadata_int(meta, "rsd.latent_channels", package);
    const int noise_channels = metadata_int(meta, "rsd.noise_channels", package);
    const int scale = metadata_int(meta, "rsd.scale", package);

    rsd::Image lr_image = rsd::read_png(input);
    if (meta.count("rsd.lr_size") && meta["rsd.lr_size"] != std::to_string(lr_image.height) + "x" + std::to_string(lr_image.width)) {
      throw std::runtime_error(input + ": " + std::to_string(lr_image.height) + "x" + std::to_string(lr_image.width) +
                               " LR pixels, the package was compiled for " + meta["rsd.lr_size"]);
    }
    std::vector<float> planar = rsd::to_planar(lr_image);
    at::Tensor lr = at::from_blob(planar.data(), {1, 3, lr_image.height, lr_image.width}, at::kFloat).clone();
    const int64_t ph = rsd::padded(lr_image.height), pw = rsd::padded(lr_image.width);
    at::Generator generator = at::detail::createCPUGenerator(seed);
    std::vector<at::Tensor> inputs{lr, at::randn({1, latent, ph, pw}, generator)};
    if (noise_channels > 0) inputs.push_back(at::randn({1, noise_channels, ph, pw}, generator));

    std::vector<at::Tensor> outputs = loader.run(inputs);  // first call: lazy initialisation
    std::vector<double> times_ms;
    for (int i = 0; i < iters; ++i) {
      auto begin = std::chrono::steady_clock::now();
      outputs = loader.run(inputs);
      times_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count());
    }
    std::sort(times_ms.begin(), times_ms.end());
    at::Tensor hr = outputs.at(0).contiguous().to(at::kFloat);
    const int out_h = static_cast<int>(hr.size(2)), out_w = static_cast<int>(hr.size(3));
    if (out_h != scale * lr_image.height || out_w != scale * lr_image.width) throw std::runtime_error("unexpected output size");
    rsd::write_png(output, rsd::from_planar(hr.data_ptr<float>(), out_w, out_h));
    std::printf("%s: %dx%d -> %dx%d, p50 %.1f ms over %d run(s), seed %llu\n", output.c_str(), lr_image.width, lr_image.height,
                out_w, out_h, times_ms[times_ms.size() / 2], iters, static_cast<unsigned long long>(seed));
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
