// Tokenizer: the vocabulary from GGUF metadata, special tokens, pieces and detokenization. The two
// algorithms live in tokenizer_bpe.cc and tokenizer_spm.cc. Behaviour follows llama.cpp
// (src/llama-vocab.cpp) so token ids match it exactly; where sinkstream deliberately differs it is
// said at the spot.
#include <algorithm>
#include <optional>

#include "core/error.h"
#include "gguf/gguf_file.h"
#include "runtime/pre_tokenizer.h"
#include "runtime/tokenizer.h"
#include "runtime/tokenizer_impl.h"

namespace sinkstream {

namespace {

constexpr const char* kKeyModel = "tokenizer.ggml.model";
constexpr const char* kKeyPre = "tokenizer.ggml.pre";
constexpr const char* kKeyTokens = "tokenizer.ggml.tokens";
constexpr const char* kKeyScores = "tokenizer.ggml.scores";
constexpr const char* kKeyTokenType = "tokenizer.ggml.token_type";
constexpr const char* kKeyMerges = "tokenizer.ggml.merges";
constexpr const char* kKeyAddBos = "tokenizer.ggml.add_bos_token";
constexpr const char* kKeyAddEos = "tokenizer.ggml.add_eos_token";
constexpr const char* kKeyAddSpacePrefix = "tokenizer.ggml.add_space_prefix";
constexpr const char* kKeyBos = "tokenizer.ggml.bos_token_id";
constexpr const char* kKeyEos = "tokenizer.ggml.eos_token_id";
constexpr const char* kKeyEot = "tokenizer.ggml.eot_token_id";
constexpr const char* kKeyEom = "tokenizer.ggml.eom_token_id";
constexpr const char* kKeyUnk = "tokenizer.ggml.unknown_token_id";
constexpr const char* kKeyPad = "tokenizer.ggml.padding_token_id";

// Typed metadata lookups that report problems as ModelError (the file parsed; its tokenizer
// metadata is what is wrong).
template <typename Getter>
auto metadata(Getter getter) -> decltype(getter()) {
  try {
    return getter();
  } catch (const GgufError& e) {
    throw ModelError(e.what());
  }
}

// Token texts llama.cpp treats as ending generation whatever their type (llama-vocab.cpp, "find
// EOT token" and the special_eog_ids list); such tokens are made control tokens.
const char* const kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<turn|>", "<|tool_response>", "</s>", "<eos>",
    // Fill-in-the-middle pad, repository and file-separator tokens end generation too (llama.cpp takes
    // the first of each kind it meets; a vocabulary rarely has two).
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
    "<REPO>", "<reponame>", "<|file_sep|>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",  // DeepSeek <｜end▁of▁sentence｜>
    "[e~[",
};

// gpt-oss: rendered in output even though the file marks them control (llama.cpp sets them
// user-defined).
const char* const kAlwaysRenderedTexts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};

uint32_t attr_of_token_type(int64_t type) {
  switch (type) {  // tokenizer.ggml.token_type values (gguf-py TokenType)
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return kAttrUndefined;
  }
}

// <0xNN> -> NN; -1 if the text is not of that form.
int parse_byte_token(const std::string& text) {
  if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(text[3]), lo = hex(text[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// Reads a special token id key: absent -> fallback; present -> must be a valid id.
int32_t special_id(const GgufFile& file, const char* key, int32_t fallback, int32_t n_vocab, bool required_in_range) {
  std::optional<int64_t> id = metadata([&] { return file.get_int(key); });
  if (!id) return fallback < n_vocab ? fallback : -1;
  if (*id < 0 || *id >= n_vocab) {
    // llama.cpp warns and keeps its default; an id the tokenizer would emit or stop on must be
    // right, so those are refused. A stray padding id is harmless and ignored as llama.cpp does.
    if (!required_in_range) return fallback < n_vocab ? fallback : -1;
    throw ModelError(cat(file.path(), ": metadata key '", key, "' is ", *id, ", outside the vocabulary of ",
                         n_vocab, " tokens"));
  }
  return (int32_t)*id;
}

}  // namespace

// ---- special-token partitioning -------------------------------------------------------------

std::vector<Fragment> partition_special_tokens(const Vocab& vocab, std::string_view text, bool parse_special) {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back(Fragment{-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t id : vocab.specials) {
    if (!parse_special && (vocab.attr[id] & (kAttrControl | kAttrUnknown))) continue;
    const std::string& special = vocab.text[id];
    bool changed = false;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t begin = f.offset;
      const size_t end = f.offset + f.length;
      while (begin < end) {
        const size_t at = text.substr(0, end).find(special, begin);
        if (at == std::string_view::npos) break;
        if (at > begin) next.push_back(Fragment{-1, begin, at - begin});
        next.push_back(Fragment{id, 0, 0});
        begin = at + special.size();
        changed = true;
      }
      if (begin < end) next.push_back(Fragment{-1, begin, end - begin});
    }
    if (changed) fragments.swap(next);
  }
  return fragments;
}

// ---- TokenizerBase --------------------------------------------------------------------------

TokenizerBase::TokenizerBase(Vocab vocab) : vocab_(std::move(vocab)) {}

void TokenizerBase::build_piece_cache() {
  pieces_.resize(vocab_.text.size());
  for (int32_t id = 0; id < vocab_.n(); ++id) {
    const uint32_t attr = vocab_.attr[id];
    if (attr & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      pieces_[id] = vocab_.text[id];
    } else if (attr & kAttrNormal) {
      pieces_[id] = normal_piece(id);
    } else if (attr & kAttrByte) {
      const int byte = parse_byte_token(vocab_.text[id]);
      pieces_[id] = byte >= 0 ? std::string(1, (char)byte) : vocab_.text[id];
    }
    // unused and undefined tokens give no text (llama.cpp token_to_piece)
  }
}

void TokenizerBase::check_id(int32_t id, const char* what) const {
  SS_CHECK_ARG(id >= 0 && id < vocab_.n(), what, ": token id ", id, " is outside the vocabulary of ", vocab_.n(),
               " tokens");
}

std::vector<int32_t> TokenizerBase::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos) {
    SS_CHECK_ARG(vocab_.bos >= 0, "add_bos: ", vocab_.source, " has no BOS token (", kKeyBos, ")");
    out.push_back(vocab_.bos);
  }
  bool after_special = true;  // the input's start counts as following a special token (SPM prefix rule)
  for (const Fragment& f : partition_special_tokens(vocab_, text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else {
      encode_text(text.substr(f.offset, f.length), after_special, out);
      after_special = false;
    }
  }
  return out;
}

std::string TokenizerBase::token_to_piece(int32_t id, bool render_special) const {
  check_id(id, "token_to_piece");
  if (!render_special && (vocab_.attr[id] & (kAttrUnknown | kAttrControl))) return std::string();
  return pieces_[id];
}

// llama.cpp llama_detokenize(remove_special = false, unparse_special = render_special).
std::string TokenizerBase::decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  bool strip_space = vocab_.add_space_prefix;  // the first piece loses the space the prefix rule added
  for (int32_t id : ids) {
    check_id(id, "decode");
    std::string_view piece;
    if (render_special || !(vocab_.attr[id] & (kAttrUnknown | kAttrControl))) piece = pieces_[id];
    if (strip_space && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    strip_space = false;
    out.append(piece);
  }
  if (!vocab_.clean_spaces || out.size() < 2) return out;

  // clean_up_tokenization_spaces (Hugging Face tokenizers), in llama.cpp's three passes; each pass
  // compacts the text in place, reading characters the pass has not overwritten.
  std::string& t = out;
  // 1: " ?", " !", " .", " ," lose the space
  size_t n = t.size(), w = 1;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --w;
    t[w++] = x;
  }
  t.resize(w);
  // 2: " ' " becomes "'"
  n = t.size(), w = 1;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
      --w;            // drop the space before
      t[++i] = '\0';  // skip the space after (llama.cpp marks it so it no longer reads as a space)
    }
    t[w++] = x;
  }
  t.resize(w);
  // 3: " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it)
  n = t.size(), w = 1;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
      const char x1 = t[i + 1];
      if (x1 == 's' || x1 == 'm') {
        --w;
      } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
        const char x2 = t[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --w;
      }
    }
    t[w++] = x;
  }
  t.resize(w);
  return out;
}

const std::string& TokenizerBase::token_text(int32_t id) const {
  check_id(id, "token_text");
  return vocab_.text[id];
}

bool TokenizerBase::is_end_of_generation(int32_t id) const {
  return id >= 0 && id < vocab_.n() && vocab_.end_of_generation[id];
}

bool TokenizerBase::is_control(int32_t id) const {
  return id >= 0 && id < vocab_.n() && (vocab_.attr[id] & kAttrControl);
}

// ---- loading ----------------------------------------------------------------------------------

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  const std::string& path = file.path();
  Vocab vocab;
  vocab.source = path;

  const std::optional<std::string> model = metadata([&] { return file.get_string(kKeyModel); });
  if (!model) throw ModelError(cat(path, ": metadata key '", kKeyModel, "' is missing (no tokenizer in this file)"));
  std::optional<PreTokenizer> pre;
  std::vector<std::string> merges;
  if (*model == "gpt2") {
    vocab.kind = VocabKind::kBpe;
    pre = PreTokenizer::for_name(metadata([&] { return file.get_string(kKeyPre); }).value_or(""));
    std::optional<std::vector<std::string>> m = metadata([&] { return file.get_string_array(kKeyMerges); });
    if (!m) throw ModelError(cat(path, ": metadata key '", kKeyMerges, "' is missing (a gpt2 tokenizer needs its merges)"));
    merges = std::move(*m);
    // llama.cpp BPE defaults; sinkstream has no BOS/EOS unless the file names them (llama.cpp
    // falls back to id 11, which in most BPE vocabularies is an ordinary token).
    vocab.add_space_prefix = false;
    vocab.clean_spaces = pre->clean_spaces();
    vocab.add_bos = pre->add_bos();
  } else if (*model == "llama") {
    vocab.kind = VocabKind::kSpm;
    vocab.add_space_prefix = true;
    vocab.clean_spaces = false;
    vocab.add_bos = true;
    vocab.add_eos = false;
  } else {
    throw ModelError(cat(path, ": metadata key '", kKeyModel, "' is '", *model,
                         "'; sinkstream reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece) tokenizers"));
  }
  if (auto v = metadata([&] { return file.get_bool(kKeyAddSpacePrefix); })) vocab.add_space_prefix = *v;

  // Tokens, scores and types.
  std::optional<std::vector<std::string>> tokens = metadata([&] { return file.get_string_array(kKeyTokens); });
  if (!tokens) throw ModelError(cat(path, ": metadata key '", kKeyTokens, "' is missing (no vocabulary)"));
  if (tokens->empty()) throw ModelError(cat(path, ": metadata key '", kKeyTokens, "' is an empty array"));
  if (tokens->size() > (size_t)INT32_MAX) throw ModelError(cat(path, ": metadata key '", kKeyTokens, "' is too long"));
  const int32_t n_vocab = (int32_t)tokens->size();
  vocab.text = std::move(*tokens);

  std::optional<std::vector<double>> scores = metadata([&] { return file.get_float_array(kKeyScores); });
  if (scores && scores->size() < (size_t)n_vocab)
    throw ModelError(cat(path, ": metadata key '", kKeyScores, "' has ", scores->size(), " entries for ", n_vocab, " tokens"));
  std::optional<std::vector<int64_t>> types = metadata([&] { return file.get_int_array(kKeyTokenType); });
  if (types && types->size() < (size_t)n_vocab)
    throw ModelError(cat(path, ": metadata key '", kKeyTokenType, "' has ", types->size(), " entries for ", n_vocab, " tokens"));

  vocab.score.resize(n_vocab, 0.0f);
  vocab.attr.resize(n_vocab, kAttrNormal);
  vocab.id_of.reserve((size_t)n_vocab * 2);
  for (int32_t id = 0; id < n_vocab; ++id) {
    std::string& text = vocab.text[id];
    if (text.empty()) text = cat("[EMPTY_", id, "]");  // as llama.cpp: an empty entry cannot be matched
    auto [it, inserted] = vocab.id_of.emplace(text, id);
    if (!inserted)
      throw ModelError(cat(path, ": metadata key '", kKeyTokens, "' lists '", text, "' twice (ids ", it->second,
                           " and ", id, ")"));
    if (scores) vocab.score[id] = (float)(*scores)[id];
    if (types) vocab.attr[id] = attr_of_token_type((*types)[id]);
  }

  // Special token ids: llama.cpp defaults per tokenizer family, then the file's keys.
  const bool spm = vocab.kind == VocabKind::kSpm;
  vocab.bos = special_id(file, kKeyBos, spm ? 1 : -1, n_vocab, true);
  vocab.eos = special_id(file, kKeyEos, spm ? 2 : -1, n_vocab, true);
  vocab.eot = special_id(file, kKeyEot, -1, n_vocab, true);
  vocab.eom = special_id(file, kKeyEom, -1, n_vocab, true);
  vocab.unk = special_id(file, kKeyUnk, spm ? 0 : -1, n_vocab, true);
  vocab.pad = special_id(file, kKeyPad, -1, n_vocab, false);

  if (auto v = metadata([&] { return file.get_bool(kKeyAddBos); })) vocab.add_bos = *v;
  if (auto v = metadata([&] { return file.get_bool(kKeyAddEos); })) vocab.add_eos = *v;
  if (vocab.add_bos && vocab.bos < 0)
    throw ModelError(cat(path, ": ", kKeyAddBos, " is true but there is no BOS token (", kKeyBos, ")"));
  if (vocab.add_eos && vocab.eos < 0)
    throw ModelError(cat(path, ": ", kKeyAddEos, " is true but there is no EOS token (", kKeyEos, ")"));

  // End-of-generation tokens: EOS, EOT, EOM and the texts llama.cpp recognises (made control).
  vocab.end_of_generation.assign(n_vocab, 0);
  for (const char* text : kEndOfGenerationTexts) {
    const int32_t id = vocab.find(text);
    if (id < 0) continue;
    vocab.end_of_generation[id] = 1;
    vocab.attr[id] |= kAttrControl;
  }
  for (const char* text : kAlwaysRenderedTexts) {
    const int32_t id = vocab.find(text);
    if (id >= 0) vocab.attr[id] = kAttrUserDefined;
  }
  for (int32_t id : {vocab.eos, vocab.eot, vocab.eom}) {
    if (id >= 0) vocab.end_of_generation[id] = 1;
  }
  // llama.cpp workarounds: with <|return|> and <|call|> (gpt-oss), or <|calls|>/<|call|> and
  // <|flush|> (solar-open), <|end|> ends a message, not the generation; with <|tool_response>
  // (gemma4), </s> is ordinary text.
  auto eog_has = [&](const char* text) {
    const int32_t id = vocab.find(text);
    return id >= 0 && vocab.end_of_generation[id];
  };
  if (eog_has("<|end|>") && ((eog_has("<|return|>") && eog_has("<|call|>")) ||
                             ((eog_has("<|call|>") || eog_has("<|calls|>")) && eog_has("<|flush|>")))) {
    const int32_t id = vocab.find("<|end|>");
    vocab.end_of_generation[id] = 0;
    vocab.attr[id] = kAttrUserDefined;
  }
  if (eog_has("<|tool_response>") && eog_has("</s>")) {
    const int32_t id = vocab.find("</s>");
    vocab.end_of_generation[id] = 0;
    vocab.attr[id] = kAttrNormal;
  }

  // Tokens matched in text before the algorithm runs, longest first (ties by id, for determinism).
  for (int32_t id = 0; id < n_vocab; ++id) {
    if (vocab.attr[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) vocab.specials.push_back(id);
  }
  std::stable_sort(vocab.specials.begin(), vocab.specials.end(), [&](int32_t a, int32_t b) {
    return vocab.text[a].size() > vocab.text[b].size();
  });

  if (spm) return make_spm_tokenizer(std::move(vocab));
  return make_bpe_tokenizer(std::move(vocab), merges, pre->name());
}

}  // namespace sinkstream
