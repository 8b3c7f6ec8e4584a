#include "runtime/pre_tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "runtime/unicode.h"
#include "runtime/unicode_tables.h"

namespace sinkstream {

namespace {

using unicode::codepoint_flags;

bool letter(uint32_t cp) { return codepoint_flags(cp) & unicode::kLetter; }
bool number(uint32_t cp) { return codepoint_flags(cp) & unicode::kNumber; }
bool space(uint32_t cp) { return codepoint_flags(cp) & unicode::kWhitespace; }
// [^\s\p{L}\p{N}]
bool other(uint32_t cp) { return !(codepoint_flags(cp) & (unicode::kWhitespace | unicode::kLetter | unicode::kNumber)); }
bool cr_or_lf(uint32_t cp) { return cp == '\r' || cp == '\n'; }
uint32_t ascii_lower(uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + ('a' - 'A') : cp; }

// 's|'t|'re|'ve|'m|'ll|'d at pos (case-insensitively for ASCII when ignore_case): its length or 0.
size_t contraction(const std::vector<uint32_t>& cps, size_t pos, size_t end, bool ignore_case) {
  if (cps[pos] != '\'' || pos + 1 >= end) return 0;
  auto fold = [&](uint32_t cp) { return ignore_case ? ascii_lower(cp) : cp; };
  const uint32_t a = fold(cps[pos + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= end) return 0;
  const uint32_t b = fold(cps[pos + 2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

template <typename Pred>
size_t run_length(const std::vector<uint32_t>& cps, size_t pos, size_t end, Pred pred) {
  size_t p = pos;
  while (p < end && pred(cps[p])) ++p;
  return p - pos;
}

// The GPT-2 pattern. llama.cpp lists it without the final \s+ and runs its own matcher
// (unicode_regex_split_custom_gpt2), which emits a lone whitespace run anyway: the same pieces as
// the full pattern. Every code point is matched by one alternative.
size_t match_gpt2(const std::vector<uint32_t>& cps, size_t pos, size_t end) {
  if (size_t n = contraction(cps, pos, end, /*ignore_case=*/false)) return n;
  // " ?X+" for X in \p{L}, \p{N}, [^\s\p{L}\p{N}]: an optional leading space (U+0020 only).
  const size_t lead = (cps[pos] == ' ' && pos + 1 < end) ? 1 : 0;
  const uint32_t first = cps[pos + lead];
  if (letter(first)) return lead + run_length(cps, pos + lead, end, letter);
  if (number(first)) return lead + run_length(cps, pos + lead, end, number);
  if (other(first)) return lead + run_length(cps, pos + lead, end, other);
  // \s+(?!\S): the whitespace run, less its last code point when a non-space follows it (that one
  // is left to prefix the next word); \s+ takes a run of one.
  const size_t n = run_length(cps, pos, end, space);
  if (n > 1 && pos + n < end) return n - 1;
  return n;
}

// The Llama 3 pattern (max_digits 3) and Qwen2's (max_digits 1), alternative by alternative.
size_t match_llama3(const std::vector<uint32_t>& cps, size_t pos, size_t end, size_t max_digits) {
  const uint32_t c = cps[pos];
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)  (llama.cpp writes it as '[sS]|'[tT]|...: ASCII case folding)
  if (size_t n = contraction(cps, pos, end, /*ignore_case=*/true)) return n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!cr_or_lf(c) && !letter(c) && !number(c)) {
    if (pos + 1 < end && letter(cps[pos + 1])) return 1 + run_length(cps, pos + 1, end, letter);
  } else if (letter(c)) {
    return run_length(cps, pos, end, letter);
  }
  // \p{N}{1,3}
  if (number(c)) {
    size_t n = run_length(cps, pos, end, number);
    return n < max_digits ? n : max_digits;
  }
  // " ?[^\s\p{L}\p{N}]+[\r\n]*"
  const size_t lead = (c == ' ' && pos + 1 < end && other(cps[pos + 1])) ? 1 : 0;
  if (other(cps[pos + lead])) {
    size_t p = pos + lead;
    p += run_length(cps, p, end, other);
    p += run_length(cps, p, end, cr_or_lf);
    return p - pos;
  }
  // Only whitespace is left. \s*[\r\n]+: up to and including the run's last CR or LF.
  const size_t n = run_length(cps, pos, end, space);
  for (size_t k = n; k > 0; --k) {
    if (cr_or_lf(cps[pos + k - 1])) return k;
  }
  // \s+(?!\S) then \s+
  if (n > 1 && pos + n < end) return n - 1;
  return n;
}

// The o200k pattern (tiktoken's o200k_base, Hugging Face's tokenizer.json of GPT-4o and gpt-oss;
// llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT4O), alternative by alternative, leftmost-first with the
// backtracking a regex engine does.
using unicode_tables::GeneralCategory;
bool o200k_upper(uint32_t cp) {  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
  const uint8_t c = unicode::general_category(cp);
  return c == GeneralCategory::Lu || c == GeneralCategory::Lt || c == GeneralCategory::Lm ||
         c == GeneralCategory::Lo || c == GeneralCategory::Mn || c == GeneralCategory::Mc || c == GeneralCategory::Me;
}
bool o200k_lower(uint32_t cp) {  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
  const uint8_t c = unicode::general_category(cp);
  return c == GeneralCategory::Ll || c == GeneralCategory::Lm || c == GeneralCategory::Lo ||
         c == GeneralCategory::Mn || c == GeneralCategory::Mc || c == GeneralCategory::Me;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d): ASCII case folding, and U+017F (long s) folds to s as well.
size_t o200k_contraction(const std::vector<uint32_t>& cps, size_t pos, size_t end) {
  if (pos < end && cps[pos] == '\'' && pos + 1 < end && cps[pos + 1] == 0x17F) return 2;
  return pos < end ? contraction(cps, pos, end, /*ignore_case=*/true) : 0;
}

// One letter alternative from `start` (after the optional prefix): upper_min = 0 is U*L+, 1 is U+L*.
size_t o200k_word(const std::vector<uint32_t>& cps, size_t start, size_t end, bool upper_plus) {
  const size_t u = run_length(cps, start, end, o200k_upper);
  if (upper_plus) {
    if (u == 0) return 0;
    const size_t p = start + u + run_length(cps, start + u, end, o200k_lower);
    return p - start + o200k_contraction(cps, p, end);
  }
  for (size_t k = u + 1; k-- > 0;) {  // U* as long as L+ still finds one after it
    const size_t l = run_length(cps, start + k, end, o200k_lower);
    if (l > 0) return k + l + o200k_contraction(cps, start + k + l, end);
  }
  return 0;
}

size_t match_o200k(const std::vector<uint32_t>& cps, size_t pos, size_t end) {
  const uint32_t c = cps[pos];
  const bool prefix = !cr_or_lf(c) && !letter(c) && !number(c);  // [^\r\n\p{L}\p{N}]
  for (bool upper_plus : {false, true}) {
    if (prefix && pos + 1 < end)
      if (size_t n = o200k_word(cps, pos + 1, end, upper_plus)) return 1 + n;
    if (size_t n = o200k_word(cps, pos, end, upper_plus)) return n;
  }
  if (number(c)) return std::min<size_t>(run_length(cps, pos, end, number), 3);  // \p{N}{1,3}
  // " ?[^\s\p{L}\p{N}]+[\r\n/]*"
  const size_t lead = (c == ' ' && pos + 1 < end && other(cps[pos + 1])) ? 1 : 0;
  if (other(cps[pos + lead])) {
    size_t p = pos + lead;
    p += run_length(cps, p, end, other);
    p += run_length(cps, p, end, [](uint32_t cp) { return cr_or_lf(cp) || cp == '/'; });
    return p - pos;
  }
  // Whitespace: \s*[\r\n]+, \s+(?!\S), \s+ as in the Llama 3 pattern.
  const size_t n = run_length(cps, pos, end, space);
  for (size_t k = n; k > 0; --k)
    if (cr_or_lf(cps[pos + k - 1])) return k;
  if (n > 1 && pos + n < end) return n - 1;
  return n;
}

bool punctuation_run_char(uint32_t cp, bool backtick) {
  if (codepoint_flags(cp) & unicode::kPunctuation) return true;
  switch (cp) {
    case '$': case '+': case '<': case '=': case '>': case '^': case '~': case '|': return true;
    case '`': return backtick;
    default: return false;
  }
}

bool ascii_digit(uint32_t cp) { return cp >= '0' && cp <= '9'; }

}  // namespace

size_t PreTokenizer::match(Stage stage, const std::vector<uint32_t>& cps, size_t pos, size_t end) {
  switch (stage) {
    case Stage::kEachNumber:
      return number(cps[pos]) ? 1 : 0;
    case Stage::kNumberRuns:
      return run_length(cps, pos, end, number);
    case Stage::kAsciiDigitTriples:
      return (pos + 3 <= end && ascii_digit(cps[pos]) && ascii_digit(cps[pos + 1]) && ascii_digit(cps[pos + 2])) ? 3 : 0;
    case Stage::kPunctuationRuns:
      return run_length(cps, pos, end, [](uint32_t cp) { return punctuation_run_char(cp, false); });
    case Stage::kPunctuationRunsTick:
      return run_length(cps, pos, end, [](uint32_t cp) { return punctuation_run_char(cp, true); });
    case Stage::kGpt2:
      return match_gpt2(cps, pos, end);
    case Stage::kLlama3:
      return match_llama3(cps, pos, end, 3);
    case Stage::kQwen2:
      return match_llama3(cps, pos, end, 1);
    case Stage::kO200k:
      return match_o200k(cps, pos, end);
  }
  return 0;
}

namespace {

// llama-vocab.cpp: tokenizer.ggml.pre name -> regex list and per-name flags. Only names whose
// regexes are implemented here are listed.
struct Preset {
  const char* name;
  int stages;  // index into kStageLists
  bool ignore_merges;
  bool clean_spaces;
  bool add_bos;
};

enum StageList { kDefault, kGpt2Only, kDigitsThenGpt2, kLlama3Only, kQwen2Only, kFalcon, kO200kOnly };

const Preset kPresets[] = {
    {"default", kDefault, false, true, false},
    // LLAMA_VOCAB_PRE_TYPE_LLAMA3
    {"llama3", kLlama3Only, true, true, true},
    {"llama-v3", kLlama3Only, true, true, true},
    {"llama-bpe", kLlama3Only, true, true, true},
    {"falcon3", kLlama3Only, true, true, true},
    {"falcon-h1", kLlama3Only, true, true, true},
    {"pixtral", kLlama3Only, true, true, true},
    {"midm-2.0", kLlama3Only, true, true, true},
    {"lfm2", kLlama3Only, true, true, true},
    // DBRX, SMAUG: the Llama 3 regex, merges applied
    {"dbrx", kLlama3Only, false, true, false},
    {"smaug-bpe", kLlama3Only, false, true, false},
    // CHATGLM4: the Llama 3 regex (llama.cpp also drops the default BOS; sinkstream's BPE default is none)
    {"glm4", kLlama3Only, false, true, false},
    {"chatglm-bpe", kLlama3Only, false, true, false},
    // GPT2 (and MPT, OLMO, JAIS, TRILLION, GRANITE_DOCLING: the same regex)
    {"gpt-2", kGpt2Only, false, true, false},
    {"phi-2", kGpt2Only, false, true, false},
    {"jina-es", kGpt2Only, false, true, false},
    {"jina-de", kGpt2Only, false, true, false},
    {"gigachat", kGpt2Only, false, true, false},
    {"jina-v2-es", kGpt2Only, false, true, false},
    {"jina-v2-de", kGpt2Only, false, true, false},
    {"a.x-4.0", kGpt2Only, false, true, false},
    {"mellum", kGpt2Only, false, true, false},
    {"modern-bert", kGpt2Only, false, true, false},
    {"exaone4", kGpt2Only, false, true, false},
    {"mpt", kGpt2Only, false, true, false},
    {"olmo", kGpt2Only, false, true, false},
    {"jais", kGpt2Only, false, true, false},
    {"trillion", kGpt2Only, false, false, false},
    {"granite-docling", kGpt2Only, false, false, false},
    // STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2:
    // every digit on its own, then the GPT-2 regex
    {"starcoder", kDigitsThenGpt2, false, true, false},
    {"refact", kDigitsThenGpt2, false, true, false},
    {"command-r", kDigitsThenGpt2, false, false, false},
    {"smollm", kDigitsThenGpt2, false, false, false},
    {"codeshell", kDigitsThenGpt2, false, true, false},
    {"exaone", kDigitsThenGpt2, false, true, false},
    {"minerva-7b", kDigitsThenGpt2, false, true, false},
    {"mellum2", kDigitsThenGpt2, false, true, false},
    // QWEN2, STABLELM2, HUNYUAN, SOLAR_OPEN
    {"qwen2", kQwen2Only, false, false, false},
    {"deepseek-r1-qwen", kQwen2Only, false, false, false},
    {"kormo", kQwen2Only, false, false, false},
    {"f2llmv2", kQwen2Only, false, false, false},
    {"megrez", kQwen2Only, false, true, false},
    {"stablelm2", kQwen2Only, false, true, false},
    {"hunyuan", kQwen2Only, false, false, false},
    {"solar-open", kQwen2Only, false, false, false},
    // FALCON
    {"falcon", kFalcon, false, true, false},
    // GPT4O: o200k (gpt-oss's converter writes "gpt-4o"; Llama 4 uses the same pattern)
    {"gpt-4o", kO200kOnly, false, false, false},
    {"llama4", kO200kOnly, false, false, false},
};

}  // namespace

PreTokenizer PreTokenizer::for_name(const std::string& name) {
  const std::string key = name.empty() ? "default" : name;
  for (const Preset& preset : kPresets) {
    if (key != preset.name) continue;
    PreTokenizer pre;
    pre.name_ = key;
    pre.ignore_merges_ = preset.ignore_merges;
    pre.clean_spaces_ = preset.clean_spaces;
    pre.add_bos_ = preset.add_bos;
    switch (preset.stages) {
      case kDefault:
        pre.stages_ = {Stage::kPunctuationRuns, Stage::kGpt2, Stage::kNumberRuns, Stage::kAsciiDigitTriples};
        break;
      case kGpt2Only: pre.stages_ = {Stage::kGpt2}; break;
      case kDigitsThenGpt2: pre.stages_ = {Stage::kEachNumber, Stage::kGpt2}; break;
      case kLlama3Only: pre.stages_ = {Stage::kLlama3}; break;
      case kQwen2Only: pre.stages_ = {Stage::kQwen2}; break;
      case kFalcon: pre.stages_ = {Stage::kPunctuationRunsTick, Stage::kGpt2, Stage::kAsciiDigitTriples}; break;
      case kO200kOnly: pre.stages_ = {Stage::kO200k}; break;
    }
    return pre;
  }
  std::string known;
  for (const Preset& preset : kPresets) known += std::string(known.empty() ? "" : ", ") + preset.name;
  throw ModelError(cat("tokenizer.ggml.pre = '", name, "' is not a pre-tokenizer sinkstream implements (known: ",
                       known, ")"));
}

std::vector<std::string> PreTokenizer::known_names() {
  std::vector<std::string> names;
  for (const Preset& preset : kPresets) names.push_back(preset.name);
  return names;
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  const std::vector<uint32_t> cps = unicode::decode_utf8(text);
  // Pieces as lengths in code points; each stage splits every piece further (unicode_regex_split).
  std::vector<size_t> pieces;
  if (!cps.empty()) pieces.push_back(cps.size());
  std::vector<size_t> next;
  for (Stage stage : stages_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    size_t begin = 0;
    for (size_t length : pieces) {
      const size_t end = begin + length;
      // std::regex_iterator: find the leftmost match, keep the unmatched text before it as a piece.
      size_t gap_begin = begin;
      size_t pos = begin;
      while (pos < end) {
        const size_t n = match(stage, cps, pos, end);
        if (n == 0) {
          ++pos;
          continue;
        }
        if (gap_begin < pos) next.push_back(pos - gap_begin);
        next.push_back(n);
        pos += n;
        gap_begin = pos;
      }
      if (gap_begin < end) next.push_back(end - gap_begin);
      begin = end;
    }
    pieces.swap(next);
  }
  std::vector<std::string> words;
  words.reserve(pieces.size());
  size_t begin = 0;
  for (size_t length : pieces) {
    std::string word;
    for (size_t i = begin; i < begin + length; ++i) unicode::append_utf8(word, cps[i]);
    words.push_back(std::move(word));
    begin += length;
  }
  return words;
}

}  // namespace sinkstream
