// Runs a TensorRT engine of the fused one-step pipeline (rsd-export's pipeline.<precision>.plan)
// on a PNG: deserialize, set the input shapes, bind device buffers, enqueueV3 on a stream, time
// it with CUDA events, write the x4 PNG. TensorRT 10 / 11 API (name-based tensor I/O).
//
//   trt_runner pipeline.fp16.plan input.png output.png [--seed N] [--iters N]
//
// Engine I/O (rsd_deploy/export/stages.py, stage "pipeline"): lr (1, 3, h, w) in [0, 1];
// eps (1, C, H, W) N(0, 1) at the padded LR size (multiples of 64); noise_map (1, 1, H, W) for RSD
// students; hr (1, 3, 4h, 4w) in [0, 1]. Noise is drawn here with std::mt19937_64: seeded and
// repeatable, but not the same numbers as Python's torch generator.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "png_io.h"
#include "runner_args.h"

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << message << "\n";
  }
};

std::vector<char> read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw std::runtime_error(path + ": cannot open engine file");
  std::vector<char> data(static_cast<size_t>(file.tellg()));
  file.seekg(0);
  file.read(data.data(), static_cast<std::streamsize>(data.size()));
  return data;
}

size_t volume(const nvinfer1::Dims& dims) {
  size_t n = 1;
  for (int i = 0; i < dims.nbDims; ++i) n *= static_cast<size_t>(dims.d[i]);
  return n;
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t size) : bytes(size) { check(cudaMalloc(&ptr, size), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace

int main(int argc, char** argv) {
  const auto args = rsd::parse_runner_args(argc, argv, "engine.plan", 10);
  if (!args) return 2;
  const std::string engine_path = args->model, input = args->input, output = args->output;
  const uint64_t seed = args->seed;
  const int iters = args->iters;
  try {
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    std::vector<char> blob = read_file(engine_path);
    std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine) throw std::runtime_error(engine_path + ": not deserializable (built by another TensorRT version or for another GPU?)");
    std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());

    const rsd::Image image = rsd::read_png(input);
    const int h = image.height, w = image.width, ph = rsd::padded(h), pw = rsd::padded(w);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);

    // Host data for every input, keyed by the stage description's tensor names.
    std::map<std::string, std::vector<float>> host;
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::string output_name;
    for (int i = 0; i < engine->getNbIOTensors(); ++i) {
      const char* name = engine->getIOTensorName(i);
      if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT) { output_name = name; continue; }
      if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
        throw std::runtime_error(std::string("input ") + name + " is not float32 (export with fp32 I/O)");
      nvinfer1::Dims dims = engine->getTensorShape(name);  // -1 where dynamic
      const std::string tensor = name;
      if (tensor == "lr") {
        dims.d[0] = 1; dims.d[2] = h; dims.d[3] = w;
        host[tensor] = rsd::to_planar(image);
      } else {  // eps / noise_map: N(0, 1) at the padded size, channels from the engine
        dims.d[0] = 1; dims.d[2] = ph; dims.d[3] = pw;
        std::vector<float> noise(volume(dims));
        for (float& v : noise) v = normal(rng);
        host[tensor] = std::move(noise);
      }
      if (!context->setInputShape(name, dims))
        throw std::runtime_error(tensor + ": shape outside the engine's optimization profile (LR " + std::to_string(w) + "x" + std::to_string(h) + ")");
      buffers.push_back(std::make_unique<DeviceBuffer>(host[tensor].size() * sizeof(float)));
      check(cudaMemcpy(buffers.back()->ptr, host[tensor].data(), buffers.back()->bytes, cudaMemcpyHostToDevice), "upload");
      context->setTensorAddress(name, buffers.back()->ptr);
    }
    if (output_name.empty()) throw std::runtime_error(engine_path + ": engine has no output");
    const nvinfer1::Dims out_dims = context->getTensorShape(output_name.c_str());  // resolved from the input shapes
    if (engine->getTensorDataType(output_name.c_str()) != nvinfer1::DataType::kFLOAT)
      throw std::runtime_error("output " + output_name + " is not float32 (export with fp32 I/O)");
    buffers.push_back(std::make_unique<DeviceBuffer>(volume(out_dims) * sizeof(float)));
    void* out_ptr = buffers.back()->ptr;
    context->setTensorAddress(output_name.c_str(), out_ptr);

    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    cudaEvent_t start, stop;
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");  // warm-up
    check(cudaStreamSynchronize(stream), "warm-up");
    std::vector<float> times_ms;
    for (int i = 0; i < iters; ++i) {
      check(cudaEventRecord(start, stream), "cudaEventRecord");
      context->enqueueV3(stream);
      check(cudaEventRecord(stop, stream), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      times_ms.push_back(ms);
    }
    std::vector<float> result(volume(out_dims));
    check(cudaMemcpyAsync(result.data(), out_ptr, result.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), "download");
    check(cudaStreamSynchronize(stream), "download");
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);

    const int out_h = static_cast<int>(out_dims.d[2]), out_w = static_cast<int>(out_dims.d[3]);
    rsd::write_png(output, rsd::from_planar(result.data(), out_w, out_h));
    std::sort(times_ms.begin(), times_ms.end());
    std::printf("%s: %dx%d -> %dx%d, GPU p50 %.2f ms, p90 %.2f ms over %d runs\n", output.c_str(), w, h, out_w, out_h,
                times_ms[times_ms.size() / 2], times_ms[std::min(times_ms.size() - 1, times_ms.size() * 9 / 10)], iters);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
