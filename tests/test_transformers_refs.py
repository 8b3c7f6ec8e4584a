"""The engine's logits on tiny random GGUF fixtures vs transformers' own forward pass.

For every family that transformers can load from a GGUF file, scripts/make_transformers_refs.py
wrote the fixture (tests/tiny_models.py, fixed seed, F32 weights), ran transformers' forward over a
fixed token sequence once (float32, eager attention, dense, positions 0..n-1) and stored the logits
in tests/data/transformers_refs/<name>.npz (one per family or variant: phi3_short for LongRoPE's
short factors, falcon_new for Falcon-40B's layout, stablelm_2 for StableLM 2's q/k/v biases) with the
writer's arguments, the engine session they are for and a digest of the fixture; manifest.json says
why a family has none and what transformers needed set by hand. These tests rebuild each fixture
from the stored arguments, check that it is still the file the reference was made from, and compare
the engine's dense f32 logits with transformers'.

For the paper's families whose GGUF transformers does not load (gptneox, mpt, phi2), the script built
the tiny model in transformers' own classes (GPTNeoXForCausalLM, MptForCausalLM, PhiForCausalLM) from
a fixed torch seed, stored its logits, and exported the same weights to a small GGUF with the gguf
package the way llama.cpp's converter does (tests/data/transformers_refs/exported/<name>.gguf and
.npz). Those tests load the committed GGUF (its sha256 must be the recorded one), compare the engine
and the NumPy reference with transformers, and check that the export is laid out exactly as
tests/tiny_models.py writes that family (same metadata, same tensor names, types and shapes).
Neither torch nor transformers is needed here: only numpy, gguf and the engine.

gpt-oss: transformers lists the architecture but its GGUF loader does not load llama.cpp's gpt-oss
layout (rope.scaling.* read with a TypeError; no mapping of ffn_*_exps experts or attn_sinks), so
scripts/make_gptoss_transformers_ref.py builds the tiny model in GptOssForCausalLM (learned sinks,
alternating sliding window, YaRN, top-k router, clamped SwiGLU) and exports it the way llama.cpp's
converter does (exported/gptoss: float32 experts; MXFP4 experts are checked against the NumPy
reference in test_family_streaming / test_gptoss).

Regenerate (after a change to tests/tiny_models.py) with the commands in the script's docstring.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

REF_DIR = Path(__file__).parent / "data" / "transformers_refs"
REFS = sorted(REF_DIR.glob("*.npz"))
MANIFEST = REF_DIR / "manifest.json"
EXPORTED_DIR = REF_DIR / "exported"          # transformers-built models, exported to GGUF
EXPORTED = sorted(EXPORTED_DIR.glob("*.npz"))
STALE = "reference stale: rerun scripts/make_transformers_refs.py"

# f32 engine (f32 cache) vs f32 torch on 2-6 layer, 32-64-wide models: the two differ only in the
# order of float32 sums and in exp/tanh/erf/sin/cos, a few 1e-6 of logits up to ~35 in size. Seen when
# the references were made: transformers vs tests/reference_forward.py (float64) <= 7.1e-5, the engine
# vs transformers <= 1.1e-4 (the paper's families, GGUF-loaded and exported alike: <= 5.1e-5 and
# <= 6.6e-5). A wrong feature (a window, a RoPE factor, a soft-cap, a scale, the GELU kind, a clamp,
# an ALiBi slope) moves logits by 1e-1 or more (test_the_comparison_can_fail shows the bound
# separates by 100x).
ATOL = 1e-3     # max |engine - transformers|


def fixture_digest(path: str | Path) -> str:
    """sha256 over what a reader sees: every metadata key, its types and value bytes, and every
    tensor's name, type, shape and data, in sorted order. Unlike the file's own sha256, it does not
    change with the gguf package's layout choices (key order, padding, alignment defaults), only
    with what the fixture contains. The GGUF.* pseudo-keys (version, counts) are left out."""
    reader = gguf.GGUFReader(str(path))
    h = hashlib.sha256()
    for name in sorted(reader.fields):
        if name.startswith("GGUF."):
            continue
        field = reader.fields[name]
        h.update(b"K" + name.encode() + repr([int(t) for t in field.types]).encode())
        for i in field.data:
            h.update(np.ascontiguousarray(field.parts[i]).tobytes())
    for tensor in sorted(reader.tensors, key=lambda t: t.name):
        h.update(b"T" + tensor.name.encode() + tensor.tensor_type.name.encode())
        h.update(repr([int(d) for d in tensor.shape]).encode())
        h.update(np.ascontiguousarray(tensor.data).tobytes())
    return h.hexdigest()


def write_fixture(path: str | Path, family: str, seed: int, weight_type: str, overrides: dict) -> Path:
    """The fixture exactly as the reference's writer call made it."""
    return tiny_models.write_family_model(Path(path), family, seed=seed, weight_type=weight_type, **overrides)


def load_reference(npz: Path) -> dict:
    with np.load(npz, allow_pickle=False) as data:
        return {
            "family": str(data["family"]),
            "seed": int(data["seed"]),
            "weight_type": str(data["weight_type"]),
            "overrides": json.loads(str(data["overrides"])),
            "session": json.loads(str(data["session"])),
            "digest": str(data["fixture_digest"]),
            "tokens": data["tokens"].astype(np.int64),
            "logits": data["logits"].astype(np.float32),
            "notes": json.loads(str(data["notes"])),
        }


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_exported(npz: Path) -> dict:
    """An exported reference: the committed GGUF next to it and transformers' logits on its weights."""
    with np.load(npz, allow_pickle=False) as data:
        return {
            "name": npz.stem,
            "family": str(data["family"]),
            "path": npz.parent / str(data["gguf_file"]),
            "sha256": str(data["gguf_sha256"]),
            "weight_type": str(data["weight_type"]),
            "fixture_overrides": json.loads(str(data["fixture_overrides"])),
            "session": json.loads(str(data["session"])),
            "tokens": data["tokens"].astype(np.int64),
            "logits": data["logits"].astype(np.float32),
            "notes": json.loads(str(data["notes"])),
        }


def compare(logits: np.ndarray, reference: np.ndarray) -> tuple[float, list[int]]:
    """(max |diff|, positions whose top-1 token differs)."""
    diff = float(np.abs(logits.astype(np.float64) - reference.astype(np.float64)).max())
    mismatched = np.nonzero(logits.argmax(axis=-1) != reference.argmax(axis=-1))[0].tolist()
    return diff, mismatched

def assert_engine_matches(path, session_options, tokens, expected, name):
    """The engine (dense, f32 cache) against transformers' logits: top-1 equal everywhere, max |diff|
    within ATOL."""
    import sinkstream

    model = sinkstream.Model(str(path), n_threads=2)
    assert model.n_vocab == expected.shape[1]
    session = model.session(**session_options, kv_type="f32")
    logits = np.asarray(session.eval(tokens.tolist(), logits="all"))
    assert logits.shape == expected.shape
    assert np.isfinite(logits).all()
    diff, mismatched = compare(logits, expected)
    assert not mismatched, f"{name}: top-1 differs from transformers at positions {mismatched}"
    assert diff <= ATOL, f"{name}: max |engine - transformers| = {diff:.3g} > {ATOL:g}"



@pytest.fixture(scope="module", params=REFS, ids=[p.stem for p in REFS])
def reference(request, tmp_path_factory) -> dict:
    ref = load_reference(request.param)
    path = tmp_path_factory.mktemp("transformers_refs") / f"{ref['family']}.gguf"
    write_fixture(path, ref["family"], ref["seed"], ref["weight_type"], ref["overrides"])
    ref["path"] = path
    return ref


def test_reference_files_exist():
    assert REFS, f"no reference arrays in {REF_DIR}: run scripts/make_transformers_refs.py"


def test_fixture_is_the_one_the_reference_was_made_from(reference):
    digest = fixture_digest(reference["path"])
    assert digest == reference["digest"], (
        f"{STALE} ({reference['family']}: tests/tiny_models.py now writes a different fixture for "
        f"seed={reference['seed']}, overrides={reference['overrides']}; digest {digest[:16]} != stored "
        f"{reference['digest'][:16]})")


def assert_numpy_matches(path, session_options, tokens, expected, name):
    """tests/reference_forward.py's logits against transformers': top-1 equal, max |diff| within ATOL."""
    reference_forward = pytest.importorskip("reference_forward")
    logits = np.asarray(reference_forward.ReferenceModel(str(path)).logits(tokens.tolist(), **session_options))
    diff, mismatched = compare(logits, expected)
    assert not mismatched, f"{name}: top-1 differs at positions {mismatched}"
    assert diff <= ATOL, f"{name}: max |numpy - transformers| = {diff:.3g}"


def test_engine_matches_transformers(reference):
    if fixture_digest(reference["path"]) != reference["digest"]:
        pytest.fail(f"{STALE} ({reference['family']})")
    assert_engine_matches(reference["path"], reference["session"], reference["tokens"], reference["logits"],
                          reference["family"])


def test_numpy_reference_matches_transformers(reference):
    """tests/reference_forward.py (the NumPy forward written from the architectures' definitions)
    against transformers: two independent readings of each family agree."""
    if fixture_digest(reference["path"]) != reference["digest"]:
        pytest.fail(f"{STALE} ({reference['family']})")
    assert_numpy_matches(reference["path"], reference["session"], reference["tokens"], reference["logits"],
                         reference["family"])


@pytest.fixture(scope="module", params=EXPORTED, ids=[p.stem for p in EXPORTED])
def exported(request) -> dict:
    return load_exported(request.param)


def test_exported_gguf_is_the_committed_one(exported):
    assert exported["path"].is_file(), f"{exported['path']} is missing: {STALE}"
    digest = file_sha256(exported["path"])
    assert digest == exported["sha256"], (
        f"{STALE} ({exported['path'].name}: sha256 {digest[:16]} != recorded {exported['sha256'][:16]})")


def test_engine_matches_transformers_on_exported_weights(exported):
    if file_sha256(exported["path"]) != exported["sha256"]:
        pytest.fail(f"{STALE} ({exported['name']})")
    assert_engine_matches(exported["path"], exported["session"], exported["tokens"], exported["logits"],
                          exported["name"])


def test_numpy_reference_matches_transformers_on_exported_weights(exported):
    """Checks the exporter too: the NumPy forward reads the GGUF as llama.cpp lays it out ([Q; K; V]
    rows, llama.cpp's tensor names), transformers ran the weights in its own layout."""
    if file_sha256(exported["path"]) != exported["sha256"]:
        pytest.fail(f"{STALE} ({exported['name']})")
    assert_numpy_matches(exported["path"], exported["session"], exported["tokens"], exported["logits"],
                         exported["name"])


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.name":
            continue
        fields[name] = ([int(t) for t in field.types], [np.asarray(field.parts[i]).tobytes() for i in field.data])
    tensors = [(t.name, t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors]
    return {"fields": fields, "tensors": tensors}


def test_exported_gguf_follows_the_fixture_layout(exported, tmp_path):
    """The export is laid out exactly as tests/tiny_models.py writes the family with the same sizes
    (llama.cpp's converter conventions): every metadata key with the same type and value (general.name
    aside), the same tensors in the same order with the same types and shapes. Only the numbers differ."""
    fixture = write_fixture(tmp_path / "fixture.gguf", exported["family"], 0, exported["weight_type"],
                            exported["fixture_overrides"])
    ours, theirs = _fields(exported["path"]), _fields(fixture)
    assert sorted(ours["fields"]) == sorted(theirs["fields"])
    for key in theirs["fields"]:
        assert ours["fields"][key] == theirs["fields"][key], f"{exported['name']}: metadata {key} differs"
    assert ours["tensors"] == theirs["tensors"]


def test_the_bound_tells_the_gelu_kinds_apart(tmp_path):
    """The paper's GELU families: the NumPy forward with the other GELU (exact erf <-> tanh
    approximation) misses transformers by more than ATOL (1.2e-3 to 7.7e-3 when the references were
    made), so an engine with the wrong GELU kind fails test_engine_matches_transformers*."""
    reference_forward = pytest.importorskip("reference_forward")
    models = []
    for p in REFS:
        ref = load_reference(p)
        if reference_forward.GELU_MLP_ARCHS.get(tiny_models.family_config(ref["family"])["arch"]):
            path = write_fixture(tmp_path / f"{p.stem}.gguf", ref["family"], ref["seed"], ref["weight_type"],
                                 ref["overrides"])
            models.append((p.stem, path, ref))
    models += [(f"exported/{p.stem}", ref["path"], ref) for p in EXPORTED for ref in [load_exported(p)]]
    checked = 0
    for name, path, ref in models:
        model = reference_forward.ReferenceModel(str(path))
        if model.gelu_kind is None:
            continue
        model.gelu_kind = {"erf": "tanh", "tanh": "erf"}[model.gelu_kind]
        diff, _ = compare(np.asarray(model.logits(ref["tokens"].tolist(), **ref["session"])), ref["logits"])
        assert diff > ATOL, f"{name}: the other GELU is only {diff:.3g} from transformers"
        checked += 1
    if not checked:
        pytest.skip("no GELU family among the references")


def _all_logits() -> dict[str, np.ndarray]:
    """Every stored reference's logits: the fixtures' and the exported models'."""
    logits = {p.stem: load_reference(p)["logits"] for p in REFS}
    logits.update({f"exported/{p.stem}": load_exported(p)["logits"] for p in EXPORTED})
    return logits


def test_the_comparison_can_fail():
    """The bound and the top-1 check reject a wrong answer by far: the logits one position off, and
    every other reference (another family, or the same weights with one feature changed: llama /
    mistral / llama3 share their weights, phi3 / phi3_short differ only in LongRoPE's factors,
    exported mpt / mpt_clip only in MPT's clip_qkv)."""
    refs = {name: {"logits": logits} for name, logits in _all_logits().items()}
    if not refs:
        pytest.skip("no reference arrays")
    for name, ref in refs.items():
        expected = ref["logits"]
        diff, mismatched = compare(expected[1:], expected[:-1])      # position t+1's logits at t
        assert diff > 100 * ATOL and len(mismatched) > len(expected) // 4, name
        for other_name, other in refs.items():
            if other_name != name:
                n = min(len(expected), len(other["logits"]))
                diff, mismatched = compare(other["logits"][:n], expected[:n])
                assert diff > 100 * ATOL and mismatched, (name, other_name, diff)


def test_top1_is_decided_by_more_than_the_bound():
    """At every position transformers' best token leads the second by more than 2 * ATOL, so an
    answer within the bound has the same top-1: the top-1 check can't flip on a near tie."""
    for name, logits in _all_logits().items():
        top2 = np.sort(logits, axis=-1)[:, -2:]
        gap = float((top2[:, 1] - top2[:, 0]).min())
        assert gap > 2 * ATOL, f"{name}: top-1 leads by only {gap:.3g}: choose other TOKENS or seed"


def test_another_seed_changes_the_digest(tmp_path):
    if not REFS:
        pytest.skip("no reference arrays")
    ref = load_reference(REFS[0])
    path = write_fixture(tmp_path / "other.gguf", ref["family"], ref["seed"] + 1, ref["weight_type"], ref["overrides"])
    assert fixture_digest(path) != ref["digest"]


def test_every_family_has_a_reference_or_a_reason():
    """Each family of tests/tiny_models.py (FAMILIES and the paper's PAPER_FAMILIES) has a stored
    reference (on its fixture, or on a transformers-built model exported to GGUF), or the manifest
    says why transformers could not make one (for example: it does not load that architecture from
    GGUF and has no class of its own for it)."""
    families = tiny_models.FAMILIES + tiny_models.PAPER_FAMILIES
    manifest = json.loads(MANIFEST.read_text())
    stored = {load_reference(p)["family"] for p in REFS} | {load_exported(p)["family"] for p in EXPORTED}
    for family in families:
        if family in stored:
            continue
        reason = manifest.get("skipped", {}).get(family)
        assert reason, f"{family}: no reference and no reason in {MANIFEST.name}: {STALE}"
