// Python view of the tokenizer: _core.Tokenizer (from a GgufFile) and _core.pre_tokenize.
// Text goes in as str (or bytes, taken as UTF-8 as is); pieces come out as bytes, exact, so that a
// streaming caller can decode UTF-8 incrementally across token boundaries.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "bindings/bindings.h"
#include "core/error.h"
#include "gguf/gguf_file.h"
#include "runtime/pre_tokenizer.h"
#include "runtime/tokenizer.h"
#include "runtime/unicode_tables.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

nb::bytes to_bytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

}  // namespace

void bind_tokenizer(nb::module_& m) {
  nb::class_<Tokenizer>(m, "Tokenizer", "Tokenizer built from GGUF metadata (tokenizer.ggml.*), exact with llama.cpp.")
      .def_static(
          "from_gguf", [](const GgufFile& file) { return Tokenizer::from_gguf(file); }, nb::arg("file"),
          "Builds the tokenizer of a GGUF file; raises ModelError naming a missing or bad metadata key.")
      .def(
          "encode",
          [](const Tokenizer& t, std::string_view text, bool add_bos, bool parse_special) {
            return t.encode(text, add_bos, parse_special);
          },
          nb::arg("text"), nb::arg("add_bos") = false, nb::arg("parse_special") = true,
          nb::call_guard<nb::gil_scoped_release>(),
          "Text -> token ids. parse_special: special-token text (e.g. <|im_end|>) becomes its token; "
          "otherwise it is tokenized as plain text.")
      .def(
          "encode",
          [](const Tokenizer& t, nb::bytes text, bool add_bos, bool parse_special) {
            std::string_view view(text.c_str(), text.size());
            nb::gil_scoped_release release;
            return t.encode(view, add_bos, parse_special);
          },
          nb::arg("text"), nb::arg("add_bos") = false, nb::arg("parse_special") = true,
          "UTF-8 bytes -> token ids (malformed sequences are read as U+FFFD, as llama.cpp does).")
      .def(
          "token_to_piece",
          [](const Tokenizer& t, int32_t id, bool render_special) { return to_bytes(t.token_to_piece(id, render_special)); },
          nb::arg("id"), nb::arg("render_special") = true,
          "The exact bytes a token stands for (may be part of a UTF-8 sequence). Control tokens give "
          "their text when render_special, else b''.")
      .def(
          "decode",
          [](const Tokenizer& t, const std::vector<int32_t>& ids, bool render_special) {
            std::string out;
            {
              nb::gil_scoped_release release;
              out = t.decode(ids, render_special);
            }
            return to_bytes(out);
          },
          nb::arg("ids"), nb::arg("render_special") = true,
          "Token ids -> bytes, as llama.cpp detokenizes (SPM: the prefix space of the first piece is dropped).")
      .def(
          "token_text", [](const Tokenizer& t, int32_t id) { return to_bytes(t.token_text(id)); }, nb::arg("id"),
          "The raw vocabulary entry of a token.")
      .def_prop_ro("n_vocab", &Tokenizer::n_vocab)
      .def_prop_ro("bos_id", &Tokenizer::bos_id, "BOS token id, -1 if none.")
      .def_prop_ro("eos_id", &Tokenizer::eos_id, "EOS token id, -1 if none.")
      .def_prop_ro("add_bos_default", &Tokenizer::add_bos_default, "tokenizer.ggml.add_bos_token (or its default).")
      .def_prop_ro("add_eos_default", &Tokenizer::add_eos_default, "tokenizer.ggml.add_eos_token (or its default).")
      .def("is_end_of_generation", &Tokenizer::is_end_of_generation, nb::arg("id"),
           "EOS, EOT, EOM and tokens llama.cpp treats like them.")
      .def("is_control", &Tokenizer::is_control, nb::arg("id"));

  m.def(
      "pre_tokenize",
      [](const std::string& pre, std::string_view text) { return PreTokenizer::for_name(pre).split(text); },
      nb::arg("pre"), nb::arg("text"),
      "The words byte-level BPE merges within, for the pre-tokenizer tokenizer.ggml.pre = pre.");
  m.attr("unicode_version") = nb::str(unicode_tables::kUnicodeVersion);
}

}  // namespace sinkstream::bindings
