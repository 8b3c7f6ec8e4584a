// Temporary stand-in until the tokenizer lands: no tokenizer.
#include "runtime/tokenizer.h"

namespace sinkstream {
std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile&) { return nullptr; }
}  // namespace sinkstream
