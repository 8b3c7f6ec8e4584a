#include "runtime/unicode.h"

#include <algorithm>
#include <array>

#include "runtime/unicode_tables.h"

namespace sinkstream::unicode {

namespace tables = sinkstream::unicode_tables;

namespace {

uint8_t flags_of_category(uint8_t category) {
  switch (category) {
    case tables::Lu: case tables::Ll: case tables::Lt: case tables::Lm: case tables::Lo:
      return kLetter;
    case tables::Nd: case tables::Nl: case tables::No:
      return kNumber;
    case tables::Pc: case tables::Pd: case tables::Ps: case tables::Pe: case tables::Pi:
    case tables::Pf: case tables::Po:
      return kPunctuation;
    case tables::Mn: case tables::Mc: case tables::Me:
      return kMark;
    case tables::Sm: case tables::Sc: case tables::Sk: case tables::So:
      return kSymbol;
    case tables::Zs: case tables::Zl: case tables::Zp:
      return kSeparator;
    default:
      return kOther;
  }
}

uint8_t category_by_search(uint32_t cp) {
  // The last run whose first code point is <= cp.
  const tables::CategoryRun* begin = tables::kCategoryRuns;
  const tables::CategoryRun* end = begin + tables::kCategoryRunCount;
  const tables::CategoryRun* run =
      std::upper_bound(begin, end, cp, [](uint32_t value, const tables::CategoryRun& r) { return value < r.first; });
  return (run - 1)->category;
}

// Flags of the Basic Multilingual Plane, one byte per code point (64 KiB), built once; the
// supplementary planes (rare in text) use a binary search over the runs.
struct BmpFlags {
  std::array<uint8_t, 0x10000> flags{};
  std::array<uint8_t, 0x10000> category{};
  BmpFlags() {
    for (size_t i = 0; i < tables::kCategoryRunCount; ++i) {
      uint32_t first = tables::kCategoryRuns[i].first;
      uint32_t last = i + 1 < tables::kCategoryRunCount ? tables::kCategoryRuns[i + 1].first : 0x110000;
      if (first >= 0x10000) break;
      last = std::min<uint32_t>(last, 0x10000);
      uint8_t cat = tables::kCategoryRuns[i].category;
      for (uint32_t cp = first; cp < last; ++cp) {
        category[cp] = cat;
        flags[cp] = flags_of_category(cat);
      }
    }
    for (size_t i = 0; i < tables::kWhiteSpaceCount; ++i) flags[tables::kWhiteSpace[i]] |= kWhitespace;
  }
};

const BmpFlags& bmp() {
  static const BmpFlags table;
  return table;
}

struct ByteAlphabet {
  std::array<uint32_t, 256> codepoint{};
  std::array<std::string, 256> utf8;
  std::array<int16_t, 512> byte_of{};  // the alphabet lies below U+0200
  ByteAlphabet() {
    auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    uint32_t next = 256;
    byte_of.fill(-1);
    for (int b = 0; b < 256; ++b) {
      codepoint[b] = printable(b) ? (uint32_t)b : next++;
      append_utf8(utf8[b], codepoint[b]);
      byte_of[codepoint[b]] = (int16_t)b;
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace

uint8_t codepoint_flags(uint32_t cp) {
  if (cp < 0x10000) return bmp().flags[cp];
  if (cp > 0x10FFFF) return kOther;
  return flags_of_category(category_by_search(cp));  // no White_Space outside the BMP
}

uint8_t general_category(uint32_t cp) {
  if (cp < 0x10000) return bmp().category[cp];
  if (cp > 0x10FFFF) return tables::Cn;
  return category_by_search(cp);
}

size_t utf8_sequence_length(uint8_t lead) {
  static const uint8_t by_high_nibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return by_high_nibble[lead >> 4];
}

std::vector<uint32_t> decode_utf8(std::string_view text) {
  std::vector<uint32_t> out;
  out.reserve(text.size());
  const size_t n = text.size();
  auto byte = [&](size_t i) { return (uint8_t)text[i]; };
  auto continuation = [&](size_t i) { return i < n && (byte(i) & 0xC0) == 0x80; };
  size_t i = 0;
  while (i < n) {
    const uint8_t b0 = byte(i);
    if (b0 < 0x80) {
      out.push_back(b0);
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && continuation(i + 1)) {
      out.push_back(((uint32_t)(b0 & 0x1F) << 6) | (byte(i + 1) & 0x3F));
      i += 2;
    } else if ((b0 & 0xF0) == 0xE0 && continuation(i + 1) && continuation(i + 2)) {
      out.push_back(((uint32_t)(b0 & 0x0F) << 12) | ((uint32_t)(byte(i + 1) & 0x3F) << 6) | (byte(i + 2) & 0x3F));
      i += 3;
    } else if ((b0 & 0xF8) == 0xF0 && continuation(i + 1) && continuation(i + 2) && continuation(i + 3)) {
      uint32_t cp = ((uint32_t)(b0 & 0x07) << 18) | ((uint32_t)(byte(i + 1) & 0x3F) << 12) |
                    ((uint32_t)(byte(i + 2) & 0x3F) << 6) | (byte(i + 3) & 0x3F);
      out.push_back(cp <= 0x10FFFF ? cp : kReplacementCharacter);
      i += 4;
    } else {
      out.push_back(kReplacementCharacter);  // stray continuation, truncated sequence, 0xF8..0xFF
      i += 1;
    }
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back((char)cp);
  } else if (cp < 0x800) {
    out.push_back((char)(0xC0 | (cp >> 6)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back((char)(0xE0 | (cp >> 12)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  } else {
    out.push_back((char)(0xF0 | (cp >> 18)));
    out.push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back((char)(0x80 | (cp & 0x3F)));
  }
}

uint32_t byte_to_codepoint(uint8_t byte) { return byte_alphabet().codepoint[byte]; }
const std::string& byte_to_utf8(uint8_t byte) { return byte_alphabet().utf8[byte]; }
int codepoint_to_byte(uint32_t cp) { return cp < 512 ? byte_alphabet().byte_of[cp] : -1; }

}  // namespace sinkstream::unicode
