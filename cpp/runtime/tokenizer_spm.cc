// SentencePiece-style BPE over a scored vocabulary (tokenizer.ggml.model = "llama"), as llama.cpp's
// llm_tokenizer_spm_session: spaces become U+2581 ("▁"), with one added in front of text that
// starts the input or follows a special token (tokenizer.ggml.add_space_prefix); the text is cut
// into UTF-8 characters; repeatedly the adjacent pair whose concatenation is the vocabulary entry
// with the highest score is merged (leftmost first among equal scores); a final symbol that is no
// token falls back to its bytes as <0xNN> byte tokens.
#include <algorithm>
#include <array>
#include <cstdio>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "runtime/tokenizer_impl.h"
#include "runtime/unicode.h"

namespace sinkstream {

namespace {

const std::string kSpaceMark = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t at = text.find(from, pos);
    if (at == std::string_view::npos) break;
    out.append(text.substr(pos, at - pos));
    out.append(to);
    pos = at + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

class SpmTokenizer final : public TokenizerBase {
 public:
  explicit SpmTokenizer(Vocab vocab);

 private:
  void encode_text(std::string_view text, bool starts_after_special, std::vector<int32_t>& out) const override;
  std::string normal_piece(int32_t id) const override;

  struct Symbol {
    int32_t prev, next;
    size_t begin, length;  // bytes of the escaped text; length 0 once merged away
  };
  using Split = std::unordered_map<std::string, std::pair<int32_t, int32_t>>;
  void emit(const std::string& text, const std::vector<Symbol>& symbols, const Split& split, int32_t index,
            int depth, std::vector<int32_t>& out) const;
  int32_t byte_token(uint8_t byte) const;

  std::array<int32_t, 256> byte_token_;  // <0xNN>, else the one-byte entry, else -1
};

SpmTokenizer::SpmTokenizer(Vocab vocab) : TokenizerBase(std::move(vocab)) {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    int32_t id = vocab_.find(name);
    if (id < 0) id = vocab_.find(std::string(1, (char)b));
    byte_token_[b] = id;
  }
  build_piece_cache();
}

int32_t SpmTokenizer::byte_token(uint8_t byte) const {
  if (byte_token_[byte] >= 0) return byte_token_[byte];
  // llama.cpp fails here (std::out_of_range); sinkstream uses the unknown token when there is one.
  if (vocab_.unk >= 0) return vocab_.unk;
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", byte);
  throw ArgumentError(cat("encode: the vocabulary of ", vocab_.source, " has no token for byte ", hex,
                          " (no <0x..> byte tokens and no unknown token)"));
}

void SpmTokenizer::encode_text(std::string_view raw, bool starts_after_special, std::vector<int32_t>& out) const {
  std::string prefixed;
  if (vocab_.add_space_prefix && starts_after_special) prefixed = " ";
  prefixed.append(raw);
  const std::string text = replace_all(prefixed, " ", kSpaceMark);
  if (text.empty()) return;

  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = std::min(unicode::utf8_sequence_length((uint8_t)text[pos]), text.size() - pos);
    symbols.push_back(Symbol{(int32_t)symbols.size() - 1, -1, pos, length});
    pos += length;
    if (pos < text.size()) symbols.back().next = (int32_t)symbols.size();
  }

  struct Candidate {
    float score;
    int32_t left, right;
    size_t length;  // bytes of the pair when queued; stale if either symbol changed since
  };
  struct Later {  // highest score first, then leftmost
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score != b.score ? a.score < b.score : a.left > b.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, Later> queue;
  Split split;  // merged text -> the two symbols it was last formed from (llama.cpp rev_merge)
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    std::string pair = text.substr(symbols[left].begin, symbols[left].length + symbols[right].length);
    const int32_t id = vocab_.find(pair);
    if (id < 0) return;
    queue.push(Candidate{vocab_.score[id], left, right, pair.size()});
    split[std::move(pair)] = {left, right};
  };
  for (size_t i = 1; i < symbols.size(); ++i) consider((int32_t)i - 1, (int32_t)i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    if (left.length == 0 || right.length == 0 || left.length + right.length != c.length) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) emit(text, symbols, split, i, 0, out);
}

// llama.cpp resegment: a symbol's token, else the two symbols its text was merged from, else its
// bytes. (Merged texts are always tokens, so in practice only single characters reach the split
// lookup; the depth bound only guards against a malformed vocabulary looping.)
void SpmTokenizer::emit(const std::string& text, const std::vector<Symbol>& symbols, const Split& split,
                        int32_t index, int depth, std::vector<int32_t>& out) const {
  const Symbol& s = symbols[index];
  const std::string piece = text.substr(s.begin, s.length);
  const int32_t id = vocab_.find(piece);
  if (id >= 0) {
    out.push_back(id);
    return;
  }
  auto it = split.find(piece);
  if (it == split.end() || depth > 64) {
    for (unsigned char byte : piece) out.push_back(byte_token(byte));
    return;
  }
  emit(text, symbols, split, it->second.first, depth + 1, out);
  emit(text, symbols, split, it->second.second, depth + 1, out);
}

std::string SpmTokenizer::normal_piece(int32_t id) const { return replace_all(vocab_.text[id], kSpaceMark, " "); }

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(Vocab vocab) { return std::make_unique<SpmTokenizer>(std::move(vocab)); }

}  // namespace sinkstream
