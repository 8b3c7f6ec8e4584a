// libFuzzer target: Model::load on a GGUF whose header, metadata and tensor infos come from the
// fuzzer, followed by a fixed data section (kDataBytes of a repeating pattern), so mutations spend
// their time on the structure a loader must validate (hyper-parameters, tensor names, shapes,
// types, offsets) and not on weight bytes. Seeds are the headers of valid tiny models
// (fuzz/make_corpus.py), so most inputs are a valid model with a few lies in it.
//
// When the model loads, a short streaming session runs over it (6 tokens in chunks of 2, the ring
// wrapping): whatever the loader accepted, the forward pass must not read out of bounds.
// Contract (model.h): a bad file throws GgufError or ModelError; anything else is a finding.
//
// The file goes through a memfd and Model::load("/proc/self/fd/N"): the same path (open, fstat,
// mmap) a user's file takes. tests/test_fuzz_regressions.py rebuilds files the same way.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/model.h"
#include "runtime/session.h"

using namespace sinkstream;

namespace {

// Appended after every input. 0x00 0x3c repeated: as fp16 each pair is 1.0, as float32 each
// quadruple is ~0.0078, so every weight type decodes to finite values (quant scales of 1.0).
constexpr size_t kDataBytes = 64 * 1024;

std::vector<uint8_t> make_data_section() {
  std::vector<uint8_t> d(kDataBytes);
  for (size_t i = 0; i < d.size(); ++i) d[i] = i % 2 ? 0x3c : 0x00;
  return d;
}

void write_all(int fd, const uint8_t* data, size_t size, off_t at) {
  while (size > 0) {
    const ssize_t n = pwrite(fd, data, size, at);
    if (n <= 0) {
      std::perror("fuzz_model_load: pwrite to memfd");
      std::abort();
    }
    data += n;
    size -= (size_t)n;
    at += n;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<uint8_t> data_section = make_data_section();
  static const int fd = memfd_create("fuzz-model.gguf", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0) {
    std::perror("fuzz_model_load: memfd_create");
    std::abort();
  }
  if (ftruncate(fd, 0) != 0) std::abort();
  write_all(fd, data, size, 0);
  write_all(fd, data_section.data(), data_section.size(), (off_t)size);

  std::shared_ptr<const Model> model;
  try {
    model = Model::load(path);
  } catch (const GgufError&) {
    return 0;
  } catch (const ModelError&) {
    return 0;
  }

  SessionOptions options;
  options.n_sink = 2;
  options.window = 3;
  options.batch_size = 2;
  options.n_threads = 1;
  options.kv_type = size % 2 ? KvType::kF16 : KvType::kF32;
  options.allow_beyond_training_context = true;
  Session session(model, options);
  const int64_t n_vocab = model->n_vocab();
  std::vector<int32_t> tokens;
  for (int i = 0; i < 6; ++i) tokens.push_back((int32_t)((i * 37 + (size > 0 ? data[0] : 0)) % n_vocab));
  std::vector<float> logits((size_t)(2 * n_vocab));
  for (int chunk = 0; chunk < 3; ++chunk) session.eval(tokens.data() + 2 * chunk, 2, chunk == 1, logits.data());
  return 0;
}
