// 8-bit RGB PNG in and out with libpng, and the float planar layout the models take.
#pragma once

#include <png.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace rsd {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<unsigned char> rgb;  // row-major, 3 bytes per pixel
};

// Any PNG (gray, palette, alpha, 16-bit) read as 8-bit RGB.
inline Image read_png(const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) {
    throw std::runtime_error(path + ": not a readable PNG (" + image.message + ")");
  }
  image.format = PNG_FORMAT_RGB;
  Image out;
  out.width = static_cast<int>(image.width);
  out.height = static_cast<int>(image.height);
  out.rgb.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr)) {
    throw std::runtime_error(path + ": PNG decoding failed (" + image.message + ")");
  }
  return out;
}

inline void write_png(const std::string& path, const Image& img) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(img.width);
  image.height = static_cast<png_uint_32>(img.height);
  image.format = PNG_FORMAT_RGB;
  // write beside the target, then rename: a crash never leaves a half-written PNG
  const std::string partial = path + ".partial";
  if (!png_image_write_to_file(&image, partial.c_str(), 0, img.rgb.data(), 0, nullptr)) {
    throw std::runtime_error(path + ": cannot write PNG (" + image.message + ")");
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot rename " + partial);
}

// HWC uint8 -> CHW float in [0, 1].
inline std::vector<float> to_planar(const Image& img) {
  const size_t plane = static_cast<size_t>(img.width) * img.height;
  std::vector<float> out(3 * plane);
  for (size_t i = 0; i < plane; ++i)
    for (size_t c = 0; c < 3; ++c) out[c * plane + i] = img.rgb[3 * i + c] / 255.0f;
  return out;
}

// CHW float in [0, 1] -> HWC uint8: clamp, scale in float32, round to nearest with ties to even
// (numpy's rint), so the result equals Python's to the bit.
inline Image from_planar(const float* chw, int width, int height) {
  Image out;
  out.width = width;
  out.height = height;
  const size_t plane = static_cast<size_t>(width) * height;
  out.rgb.resize(3 * plane);
  for (size_t i = 0; i < plane; ++i)
    for (size_t c = 0; c < 3; ++c) {
      float v = std::fmin(std::fmax(chw[c * plane + i], 0.0f), 1.0f);
      out.rgb[3 * i + c] = static_cast<unsigned char>(std::nearbyint(v * 255.0f));
    }
  return out;
}

inline int padded(int size) { return size <= 64 ? 64 : (size + 63) / 64 * 64; }

}  // namespace rsd
