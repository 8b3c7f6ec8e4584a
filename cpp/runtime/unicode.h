// Unicode helpers for the tokenizer: code point classes (from the generated unicode_tables), lenient
// UTF-8 decoding with llama.cpp's error rule, and the GPT-2 byte-level alphabet.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sinkstream::unicode {

// Classes the pre-tokenizer patterns test (\p{L}, \p{N}, \p{P}, \s, ...). A code point has exactly
// one of the General_Category classes (letter .. other) and may also be whitespace.
enum CodepointFlag : uint8_t {
  kLetter = 1 << 0,       // L*
  kNumber = 1 << 1,       // N*
  kPunctuation = 1 << 2,  // P*
  kMark = 1 << 3,         // M*
  kSymbol = 1 << 4,       // S*
  kSeparator = 1 << 5,    // Z*
  kOther = 1 << 6,        // C* (controls, format, surrogates, private use, unassigned)
  kWhitespace = 1 << 7,   // White_Space (PropList.txt)
};

uint8_t codepoint_flags(uint32_t cp);      // code points above U+10FFFF: kOther
uint8_t general_category(uint32_t cp);     // a unicode_tables::GeneralCategory
inline bool is_letter(uint32_t cp) { return codepoint_flags(cp) & kLetter; }
inline bool is_number(uint32_t cp) { return codepoint_flags(cp) & kNumber; }
inline bool is_whitespace(uint32_t cp) { return codepoint_flags(cp) & kWhitespace; }

constexpr uint32_t kReplacementCharacter = 0xFFFD;

// Bytes of the UTF-8 sequence a lead byte announces, from its high nibble alone (1 for ASCII and
// for stray continuation bytes). The SPM and BPE symbol splitters cut text into characters this way.
size_t utf8_sequence_length(uint8_t lead);

// UTF-8 -> code points. Each byte that does not start a well-formed sequence becomes U+FFFD and
// decoding resumes at the next byte (llama.cpp unicode_cpts_from_utf8 does the same, so malformed
// input pre-tokenizes identically). Overlong forms decode to their value; values above U+10FFFF
// become U+FFFD.
std::vector<uint32_t> decode_utf8(std::string_view text);

void append_utf8(std::string& out, uint32_t cp);  // cp <= U+10FFFF

// GPT-2 byte-level BPE alphabet (openai/gpt-2 encoder.py bytes_to_unicode): every byte is shown as a
// printable code point; the printable Latin-1 bytes stand for themselves, the other 68 take
// U+0100.. in byte order.
uint32_t byte_to_codepoint(uint8_t byte);
const std::string& byte_to_utf8(uint8_t byte);  // UTF-8 of byte_to_codepoint(byte)
int codepoint_to_byte(uint32_t cp);             // the inverse; -1 for code points outside the alphabet

}  // namespace sinkstream::unicode
