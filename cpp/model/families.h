// The architectures sinkstream runs: one entry per GGUF `general.architecture`, each filled in by a
// small family file (family_*.cc) that knows its model's quirks (which layers slide, which norms,
// which RoPE) and nothing about streaming, threads or kernels.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace sinkstream {

class GgufFile;

struct Family {
  const char* architecture;  // general.architecture
  const char* features;      // what it adds to the plain llama block, for users (inspect, README)
  // Fills the per-layer configuration after the keys every family shares were read (config.cc).
  void (*configure)(const GgufFile& file, ModelConfig& config);
  bool experts = false;  // runs mixture-of-experts feed-forwards (<arch>.expert_count > 0)
};

const std::vector<Family>& supported_families();

// The family of `architecture`, or a ModelError naming the file, what it would need (for known
// architectures that cannot run: recurrent, mixture-of-experts, encoder...) and what runs.
const Family& find_family(const std::string& path, const std::string& architecture);

// The family files.
void configure_llama(const GgufFile& f, ModelConfig& c);     // llama, mistral
void configure_granite(const GgufFile& f, ModelConfig& c);
void configure_smollm3(const GgufFile& f, ModelConfig& c);
void configure_qwen2(const GgufFile& f, ModelConfig& c);
void configure_qwen3(const GgufFile& f, ModelConfig& c);
void configure_gemma2(const GgufFile& f, ModelConfig& c);
void configure_gemma3(const GgufFile& f, ModelConfig& c);
void configure_phi3(const GgufFile& f, ModelConfig& c);
void configure_gptneox(const GgufFile& f, ModelConfig& c);
void configure_falcon(const GgufFile& f, ModelConfig& c);
void configure_mpt(const GgufFile& f, ModelConfig& c);
void configure_bloom(const GgufFile& f, ModelConfig& c);
void configure_stablelm(const GgufFile& f, ModelConfig& c);
void configure_phi2(const GgufFile& f, ModelConfig& c);
void configure_gptoss(const GgufFile& f, ModelConfig& c);

}  // namespace sinkstream
