// Byte-level BPE (tokenizer.ggml.model = "gpt2"), as llama.cpp's llm_tokenizer_bpe_session:
// pre-tokenize into words; write each word's bytes in the GPT-2 byte alphabet, one symbol per
// byte; repeatedly merge the adjacent pair whose merge rule has the lowest rank (leftmost first
// among equal ranks); emit the token of each final symbol.
#include <array>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "runtime/pre_tokenizer.h"
#include "runtime/tokenizer_impl.h"
#include "runtime/unicode.h"

namespace sinkstream {

namespace {

class BpeTokenizer final : public TokenizerBase {
 public:
  BpeTokenizer(Vocab vocab, const std::vector<std::string>& merges, PreTokenizer pre);

 private:
  void encode_text(std::string_view text, bool starts_after_special, std::vector<int32_t>& out) const override;
  std::string normal_piece(int32_t id) const override;
  void encode_word(const std::string& word, std::vector<int32_t>& out) const;

  struct MergeRule {
    int32_t rank;    // index in tokenizer.ggml.merges: lower merges first
    int32_t result;  // token of the merged text, -1 if the vocabulary lacks it
  };
  static uint64_t pair_key(int32_t left, int32_t right) { return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right; }

  PreTokenizer pre_;
  bool ignore_merges_;
  // Symbols are identified by their token id: every merge rule joins two vocabulary entries
  // (checked at load), so a symbol that is no token can never merge again and is kept as -1.
  std::unordered_map<uint64_t, MergeRule> merges_;  // (left token, right token) -> rule
  std::array<int32_t, 256> byte_token_;  // byte -> token of its one-character byte-alphabet text, or -1
};

BpeTokenizer::BpeTokenizer(Vocab vocab, const std::vector<std::string>& merges, PreTokenizer pre)
    : TokenizerBase(std::move(vocab)), pre_(std::move(pre)), ignore_merges_(pre_.ignore_merges()) {
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& rule = merges[rank];
    // "left right"; llama.cpp splits at the first space after the first byte.
    const size_t space = rule.size() > 1 ? rule.find(' ', 1) : std::string::npos;
    if (space == std::string::npos)
      throw ModelError(cat(vocab_.source, ": metadata key 'tokenizer.ggml.merges' entry ", rank, " ('", rule,
                           "') is not two tokens separated by a space"));
    const std::string left = rule.substr(0, space), right = rule.substr(space + 1);
    const int32_t left_id = vocab_.find(left), right_id = vocab_.find(right);
    if (left_id < 0 || right_id < 0)
      throw ModelError(cat(vocab_.source, ": metadata key 'tokenizer.ggml.merges' entry ", rank, " ('", rule,
                           "') names '", left_id < 0 ? left : right, "', which is not in tokenizer.ggml.tokens"));
    // A repeated pair keeps its first (lowest) rank, as in llama.cpp.
    merges_.emplace(pair_key(left_id, right_id), MergeRule{(int32_t)rank, vocab_.find(left + right)});
  }
  for (int b = 0; b < 256; ++b) byte_token_[b] = vocab_.find(unicode::byte_to_utf8((uint8_t)b));
  build_piece_cache();
}

void BpeTokenizer::encode_text(std::string_view text, bool /*starts_after_special*/, std::vector<int32_t>& out) const {
  // Words repeat a lot in long texts: remember each distinct word's tokens for this call.
  std::unordered_map<std::string, std::vector<int32_t>> seen;
  std::vector<int32_t> tokens;
  for (const std::string& word : pre_.split(text)) {
    auto it = seen.find(word);
    if (it == seen.end()) {
      tokens.clear();
      encode_word(word, tokens);
      it = seen.emplace(word, tokens).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

void BpeTokenizer::encode_word(const std::string& word, std::vector<int32_t>& out) const {
  const size_t n = word.size();
  if (n == 0) return;
  if (ignore_merges_) {  // Llama 3: a word that is a token is taken whole
    std::string encoded;
    for (unsigned char b : word) encoded += unicode::byte_to_utf8(b);
    const int32_t id = vocab_.find(encoded);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }

  // One symbol per byte, in a doubly linked list; a merge grows the left symbol over the right one.
  struct Symbol {
    int32_t token;  // -1: no token (cannot merge)
    int32_t prev, next;
    uint32_t begin, length;  // bytes of word; length 0 once merged away
  };
  std::vector<Symbol> symbols(n);
  for (size_t i = 0; i < n; ++i) {
    symbols[i] = Symbol{byte_token_[(unsigned char)word[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1,
                        (uint32_t)i, 1};
  }

  struct Candidate {
    int32_t rank, left, right;
    int32_t left_token, right_token;  // the pair when queued; stale if either symbol changed since
  };
  struct Later {  // lowest rank first, then leftmost
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Later> queue;
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t a = symbols[left].token, b = symbols[right].token;
    if (a < 0 || b < 0) return;
    auto it = merges_.find(pair_key(a, b));
    if (it != merges_.end()) queue.push(Candidate{it->second.rank, left, right, a, b});
  };
  for (size_t i = 1; i < n; ++i) consider((int32_t)i - 1, (int32_t)i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    // A symbol only grows by absorbing its right neighbour, so while both are alive they are
    // adjacent and the pair is current exactly when neither changed.
    if (left.length == 0 || right.length == 0 || left.token != c.left_token || right.token != c.right_token) continue;
    left.token = merges_.at(pair_key(c.left_token, c.right_token)).result;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    if (s.token >= 0) {
      out.push_back(s.token);
      continue;
    }
    // A merge result missing from the vocabulary (or a byte without a token): llama.cpp looks up
    // each byte of the symbol's byte-alphabet text as a one-byte token and skips those it lacks.
    std::string encoded;
    for (uint32_t k = s.begin; k < s.begin + s.length; ++k) encoded += unicode::byte_to_utf8((unsigned char)word[k]);
    for (char byte : encoded) {
      const int32_t id = vocab_.find(std::string(1, byte));
      if (id >= 0) out.push_back(id);
    }
  }
}

// Byte-alphabet text -> bytes. A code point outside the alphabet is kept visible the way llama.cpp
// does it ("[UNK_BYTE_0x<its UTF-8 in hex><the token text>]").
std::string BpeTokenizer::normal_piece(int32_t id) const {
  const std::string& text = vocab_.text[id];
  std::string out;
  for (uint32_t cp : unicode::decode_utf8(text)) {
    const int byte = unicode::codepoint_to_byte(cp);
    if (byte >= 0) {
      out.push_back((char)byte);
      continue;
    }
    std::string utf8;
    unicode::append_utf8(utf8, cp);
    static const char* const hex = "0123456789abcdef";
    out += "[UNK_BYTE_0x";
    for (unsigned char b : utf8) {
      out.push_back(hex[b >> 4]);
      out.push_back(hex[b & 15]);
    }
    out += text + "]";
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(Vocab vocab, const std::vector<std::string>& merges,
                                              const std::string& pre_name) {
  return std::make_unique<BpeTokenizer>(std::move(vocab), merges, PreTokenizer::for_name(pre_name));
}

}  // namespace sinkstream
