// Python view of GgufFile: metadata as Python values, tensor infos, dequantized tensors as NumPy.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "bindings/bindings.h"
#include "core/error.h"
#include "gguf/gguf_file.h"

namespace nb = nanobind;

namespace sinkstream::bindings {

namespace {

nb::object value_to_python(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::UINT8: case GgufValueType::UINT16: case GgufValueType::UINT32:
    case GgufValueType::UINT64: return nb::int_(v.u);
    case GgufValueType::INT8: case GgufValueType::INT16: case GgufValueType::INT32:
    case GgufValueType::INT64: return nb::int_(v.i);
    case GgufValueType::FLOAT32: case GgufValueType::FLOAT64: return nb::float_(v.f);
    case GgufValueType::BOOL: return nb::bool_(v.u != 0);
    case GgufValueType::STRING: {
      // GGUF strings should be UTF-8; a file that breaks this still reads, with U+FFFD in place.
      PyObject* s = PyUnicode_DecodeUTF8(v.s.data(), (Py_ssize_t)v.s.size(), "replace");
      if (!s) throw nb::python_error();
      return nb::steal(s);
    }
    case GgufValueType::ARRAY: {
      nb::list out;
      for (const auto& e : v.array) out.append(value_to_python(e));
      return out;
    }
  }
  return nb::none();
}

}  // namespace

void bind_gguf(nb::module_& m) {
  nb::class_<GgufFile>(m, "GgufFile", "A memory-mapped, validated GGUF file (low level; see sinkstream.GGUFFile).")
      .def_static("open", &GgufFile::open, nb::arg("path"), nb::call_guard<nb::gil_scoped_release>(),
                  "Maps and validates a GGUF file; raises GGUFError naming the problem.")
      .def_static(
          "from_bytes",
          [](const std::string& name, nb::bytes data) { return GgufFile::from_bytes(name, data.c_str(), data.size()); },
          nb::arg("name"), nb::arg("data"), "Parses a GGUF image held in memory.")
      .def_prop_ro("path", &GgufFile::path)
      .def_prop_ro("version", &GgufFile::version)
      .def_prop_ro("alignment", &GgufFile::alignment)
      .def_prop_ro("data_offset", &GgufFile::data_offset)
      .def_prop_ro("file_size", &GgufFile::file_size)
      .def(
          "metadata",
          [](const GgufFile& f) {
            nb::dict out;
            for (const auto& [key, value] : f.metadata()) out[nb::str(key.c_str())] = value_to_python(value);
            return out;
          },
          "All metadata as a dict in file order (arrays as lists).")
      .def(
          "tensor_infos",
          [](const GgufFile& f) {
            nb::list out;
            for (const auto& t : f.tensors()) {
              nb::list dims;
              for (int64_t d : t.dims) dims.append(d);
              out.append(nb::make_tuple(t.name, dims, ggml_type_name(t.type), (uint32_t)t.type,
                                        f.data_offset() + t.offset, t.n_bytes));
            }
            return out;
          },
          "(name, dims in ggml order, type name, type id, absolute file offset, n_bytes) per tensor.")
      .def(
          "tensor_f32",
          [](const GgufFile& f, const std::string& name) {
            const GgufTensorInfo* t = f.find_tensor(name);
            if (!t) throw nb::key_error(cat(f.path(), ": no tensor named '", name, "'").c_str());
            auto owned = std::make_unique<std::vector<float>>();
            {
              nb::gil_scoped_release release;
              *owned = f.tensor_to_f32(*t);
            }
            std::vector<float>* values = owned.release();
            nb::capsule owner(values, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
            std::vector<size_t> shape(t->dims.rbegin(), t->dims.rend());  // numpy order
            return nb::ndarray<nb::numpy, float>(values->data(), shape.size(), shape.data(), owner);
          },
          nb::arg("name"), "The tensor dequantized to float32, in numpy axis order.");
}

}  // namespace sinkstream::bindings
