// Internals shared by the BPE and SPM tokenizers (not part of the public interface): the vocabulary
// read from tokenizer.ggml.*, special-token partitioning, pieces and detokenization.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/tokenizer.h"

namespace sinkstream {

// Token attributes from tokenizer.ggml.token_type (llama.cpp llama_token_type / llama_token_attr).
enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
};

enum class VocabKind { kBpe, kSpm };

struct Vocab {
  std::string source;  // the file, for messages
  VocabKind kind = VocabKind::kBpe;
  std::vector<std::string> text;  // id -> vocabulary entry
  std::vector<float> score;       // id -> score (SPM merge priority; 0 when absent)
  std::vector<uint32_t> attr;     // id -> TokenAttr bits
  std::unordered_map<std::string, int32_t> id_of;  // entry -> id

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SPM: a space before text that starts the input or follows a special token
  bool clean_spaces = false;      // detokenize removes spaces before punctuation (clean_up_tokenization_spaces)
  std::vector<uint8_t> end_of_generation;  // id -> 1 for EOS, EOT, EOM and tokens named like them
  std::vector<int32_t> specials;  // control, user-defined and unknown tokens, longest text first

  int32_t n() const { return (int32_t)text.size(); }
  int32_t find(const std::string& s) const {
    auto it = id_of.find(s);
    return it == id_of.end() ? -1 : it->second;
  }
};

// A piece of the input after special tokens were cut out: either a special token or raw text.
struct Fragment {
  int32_t token = -1;  // >= 0: this special token
  size_t offset = 0;   // raw text: [offset, offset + length) of the input
  size_t length = 0;
};

// llama.cpp tokenizer_st_partition: for each special token, longest first, every raw fragment is
// split at each occurrence (left to right, non-overlapping). With parse_special false only
// user-defined tokens are cut out (control and unknown tokens stay text).
std::vector<Fragment> partition_special_tokens(const Vocab& vocab, std::string_view text, bool parse_special);

class TokenizerBase : public Tokenizer {
 public:
  explicit TokenizerBase(Vocab vocab);

  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const final;
  std::string token_to_piece(int32_t id, bool render_special = true) const final;
  std::string decode(const std::vector<int32_t>& ids, bool render_special = true) const final;
  int32_t n_vocab() const final { return vocab_.n(); }
  const std::string& token_text(int32_t id) const final;
  int32_t bos_id() const final { return vocab_.bos; }
  int32_t eos_id() const final { return vocab_.eos; }
  bool add_bos_default() const final { return vocab_.add_bos; }
  bool add_eos_default() const final { return vocab_.add_eos; }
  bool is_end_of_generation(int32_t id) const final;
  bool is_control(int32_t id) const final;

  const Vocab& vocab() const { return vocab_; }

 protected:
  // Appends the tokens of one raw-text fragment. starts_after_special: the fragment begins the
  // input or follows a special token (SPM's space-prefix rule).
  virtual void encode_text(std::string_view text, bool starts_after_special, std::vector<int32_t>& out) const = 0;
  // The bytes of a normal (or byte) token in output text.
  virtual std::string normal_piece(int32_t id) const = 0;
  // Call at the end of the derived constructor: fills the piece cache (needs normal_piece).
  void build_piece_cache();

  void check_id(int32_t id, const char* what) const;

  Vocab vocab_;
  std::vector<std::string> pieces_;  // id -> token_to_piece(id, render_special=true)
};

std::unique_ptr<Tokenizer> make_bpe_tokenizer(Vocab vocab, const std::vector<std::string>& merges,
                                              const std::string& pre_name);
std::unique_ptr<Tokenizer> make_spm_tokenizer(Vocab vocab);

}  // namespace sinkstream
