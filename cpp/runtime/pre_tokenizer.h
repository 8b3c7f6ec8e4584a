// Pre-tokenization for byte-level BPE: text -> the words BPE merges within, following llama.cpp for
// each tokenizer.ggml.pre name (llama-vocab.cpp picks a list of regexes per name; unicode.cpp
// applies them one after another, each splitting the pieces the previous one left).
//
// The regexes are not run through a regex engine: each one is a hand-written matcher over code
// points with the semantics of the engine llama.cpp uses for it (ECMAScript leftmost, first
// alternative that matches, greedy with backtracking; text between matches is kept as a piece of
// its own). Character classes come from the generated Unicode tables (see unicode.h).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sinkstream {

class PreTokenizer {
 public:
  // The pre-tokenizer llama.cpp uses for tokenizer.ggml.pre = name ("" when the key is absent:
  // llama.cpp's "default"). Throws ModelError naming the key and value for names not implemented.
  static PreTokenizer for_name(const std::string& name);

  // The words of text as UTF-8. Malformed UTF-8 is first decoded with U+FFFD for each bad byte and
  // re-encoded, as llama.cpp does, so words are always well-formed.
  std::vector<std::string> split(std::string_view text) const;

  const std::string& name() const { return name_; }
  // Per-name settings of llama.cpp's BPE vocabularies (defaults that GGUF keys may override).
  bool ignore_merges() const { return ignore_merges_; }  // a word that is a token is kept whole
  bool clean_spaces() const { return clean_spaces_; }    // detokenize applies clean_up_tokenization_spaces
  bool add_bos() const { return add_bos_; }              // default of tokenizer.ggml.add_bos_token

  // The names for_name accepts.
  static std::vector<std::string> known_names();

 private:
  // One regex of llama.cpp's list each.
  enum class Stage : uint8_t {
    kEachNumber,           // \p{N}
    kNumberRuns,           // \p{N}+
    kAsciiDigitTriples,    // [0-9][0-9][0-9]
    kPunctuationRuns,      // [\p{P}\$\+<=>\^~\|]+
    kPunctuationRunsTick,  // [\p{P}\$\+<=>\^~\|`]+
    kGpt2,                 // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    kLlama3,               // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
                           //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    kQwen2,                // the Llama 3 pattern with \p{N} (single digits) for \p{N}{1,3}
    kO200k,                // o200k (GPT-4o, gpt-oss): [^\r\n\p{L}\p{N}]?U*L+C?|[^\r\n\p{L}\p{N}]?U+L*C?|
                           //  \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+ with
                           //  U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], L = [\p{Ll}\p{Lm}\p{Lo}\p{M}],
                           //  C = (?i:'s|'t|'re|'ve|'m|'ll|'d)
  };

  // Length in code points of the match starting exactly at pos (0: none), end = segment end.
  static size_t match(Stage stage, const std::vector<uint32_t>& cps, size_t pos, size_t end);

  std::string name_;
  std::vector<Stage> stages_;
  bool ignore_merges_ = false;
  bool clean_spaces_ = true;
  bool add_bos_ = false;
};

}  // namespace sinkstream
