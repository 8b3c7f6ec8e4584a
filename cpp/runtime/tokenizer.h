// Tokenizer built from GGUF metadata (tokenizer.ggml.*), exact with llama.cpp:
//  - "gpt2": byte-level BPE, pre-tokenizer regex chosen by tokenizer.ggml.pre, merges by rank;
//  - "llama": SentencePiece-style vocabulary with scores, <0xNN> byte tokens, space prefix rule.
// Special (control / user-defined) tokens are matched in the text when parse_special is true.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sinkstream {

class GgufFile;

class Tokenizer {
 public:
  // Throws ModelError naming the missing or inconsistent metadata key.
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);
  virtual ~Tokenizer() = default;

  // Text -> token ids. add_bos: prepend BOS (callers pass the GGUF default when the user did not say).
  // EOS is never appended here; add_eos_default() tells whether the model wants it.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const = 0;

  // The bytes a token stands for in output text (byte tokens decoded, GPT-2 byte map reversed,
  // SPM U+2581 -> space). Control tokens give their text when render_special, else nothing.
  virtual std::string token_to_piece(int32_t id, bool render_special = true) const = 0;

  // Concatenated pieces of ids (SPM: drops the leading space the prefix rule added), as llama.cpp's
  // llama_detokenize; for BPE vocabularies whose pre-tokenizer llama.cpp marks so (e.g. gpt-2, not
  // smollm) it then removes spaces before punctuation (clean_up_tokenization_spaces).
  virtual std::string decode(const std::vector<int32_t>& ids, bool render_special = true) const = 0;

  virtual int32_t n_vocab() const = 0;
  virtual const std::string& token_text(int32_t id) const = 0;  // the vocabulary entry, raw
  virtual int32_t bos_id() const = 0;                 // -1 if none
  virtual int32_t eos_id() const = 0;                 // -1 if none
  virtual bool add_bos_default() const = 0;           // tokenizer.ggml.add_bos_token
  virtual bool add_eos_default() const = 0;           // tokenizer.ggml.add_eos_token
  virtual bool is_end_of_generation(int32_t id) const = 0;  // EOS, EOT, EOM and similar
  virtual bool is_control(int32_t id) const = 0;
};

}  // namespace sinkstream
