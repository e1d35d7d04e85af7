"""Fuzzed inputs: damaged checkpoint files and zoo files end in one line naming the file.

Real files (safetensors written by sne and by safetensors itself, PyTorch zip and legacy files) are
truncated, bit-flipped and spliced by hypothesis; reading one must either succeed or raise
:class:`SneError` whose message starts with the path and is one line: never another exception,
a hang, or an allocation the file cannot back. Cases are derandomised (the same on every run);
``SNE_FUZZ_EXAMPLES=2000`` runs more, with fresh randomness.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from sne.errors import SneError
from sne.weights import save_state_dict_file
from sne.weights import io as weights_io
from sne.weights.io import load_record, load_state_dict_file

EXAMPLES = int(os.environ.get("SNE_FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="SNE_FUZZ_EXAMPLES" not in os.environ,
    deadline=10_000,  # ms: a hang or a runaway allocation shows up as a deadline error
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _state_dict() -> dict[str, torch.Tensor]:
    """A chain MLP 1 -> 8 -> 8 -> 1 (SIREN-like keys): small, so mutations often hit the header."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"seq.0.weight": (8, 1), "seq.0.bias": (8,), "seq.1.weight": (8, 8), "seq.1.bias": (8,),
              "seq.2.weight": (1, 8), "seq.2.bias": (1,)}
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of one real file per format, by a name whose suffix is the file's."""
    folder = tmp_path_factory.mktemp("originals")
    state = _state_dict()
    save_state_dict_file(state, folder / "sne.safetensors")
    save_file(state, folder / "plain.safetensors", metadata={"format": "pt"})
    torch.save(state, folder / "zip.pt")
    torch.save({"state_dict": state, "epoch": 3}, folder / "checkpoint.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _check_read(path: Path) -> None:
    """Reading ``path`` succeeds, or fails with a one-line SneError that starts with the path."""
    for read in (load_state_dict_file, load_record):
        try:
            read(path)
        except SneError as error:
            message = str(error)
            assert message.startswith(str(path)), message
            assert len(message.splitlines()) == 1, message


# --- mutations -----------------------------------------------------------------------------------

NAMES = ["sne.safetensors", "plain.safetensors", "zip.pt", "checkpoint.pt", "legacy.pt"]


@st.composite
def truncated(draw, data: bytes) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def flipped(draw, data: bytes) -> bytes:
    out = bytearray(data)
    # Half of the flips fall in the first 512 bytes: headers, zip directories and pickles live there.
    for _ in range(draw(st.integers(1, 8))):
        limit = min(len(out), 512) if draw(st.booleans()) else len(out)
        out[draw(st.integers(0, limit - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@st.composite
def spliced(draw, data: bytes, other: bytes) -> bytes:
    start = draw(st.integers(0, len(data)))
    cut = draw(st.integers(0, min(256, len(data) - start)))
    begin = draw(st.integers(0, len(other) - 1))
    piece = other[begin : begin + draw(st.integers(1, 256))]
    return data[:start] + piece + data[start + cut :]


def _mutation(originals: dict[str, bytes]):
    return st.sampled_from(NAMES).flatmap(lambda name: st.tuples(st.just(name), st.one_of(
        truncated(originals[name]),
        flipped(originals[name]),
        st.sampled_from(NAMES).flatmap(lambda other: spliced(originals[name], originals[other])),
    )))


def test_the_originals_read(originals, tmp_path):
    for name, data in originals.items():
        path = tmp_path / name
        path.write_bytes(data)
        record = load_record(path)
        assert [layer.name for layer in record.layers] == ["seq.0", "seq.1", "seq.2"]


def test_damaged_checkpoints_give_one_line_errors(originals, tmp_path):
    @FUZZ
    @given(case=_mutation(originals))
    def check(case):
        name, data = case
        path = tmp_path / f"damaged-{name}"
        path.write_bytes(data)
        _check_read(path)

    check()


def test_damaged_checkpoints_with_another_suffix(originals, tmp_path):
    """A safetensors file named .pt and the other way round: the reader the suffix picks fails cleanly."""
    for name, data in originals.items():
        swapped = tmp_path / ("swapped.pt" if name.endswith(".safetensors") else "swapped.safetensors")
        swapped.write_bytes(data)
        _check_read(swapped)


# --- claims larger than the file: refused before anything is allocated ---------------------------

def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture
def no_reader(monkeypatch):
    """Make the real readers fail the test if reached: a refusal must come before them."""
    def reached(*args, **kwargs):
        raise AssertionError("the reader was reached: the claim was not refused up front")

    monkeypatch.setattr(weights_io, "safe_open", reached)
    monkeypatch.setattr(weights_io.torch, "load", reached)


@pytest.mark.parametrize("header", [
    {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
    {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}},
    {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 2**64]}},
    {"w": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}},
    {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}},
    {"w": {"dtype": "X99", "shape": [2, 2], "data_offsets": [0, 16]}},
    {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
    {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
    {"__metadata__": {"k": 5}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
], ids=["huge-beyond-file", "huge-shape-small-range", "offset-2^64", "negative-dim", "past-the-end",
        "unknown-dtype", "overlap", "gap-at-end", "metadata-not-strings"])
def test_a_safetensors_header_that_claims_what_the_file_lacks_is_refused_first(tmp_path, no_reader, header):
    path = tmp_path / "claims.safetensors"
    path.write_bytes(_safetensors_bytes(header, bytes(16)))
    started = time.perf_counter()
    with pytest.raises(SneError) as error:
        load_state_dict_file(path)
    assert time.perf_counter() - started < 1.0
    assert str(error.value).startswith(str(path)) and len(str(error.value).splitlines()) == 1


def test_a_valid_safetensors_header_passes_the_check(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_safetensors_bytes({"seq.0.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]},
                                         "seq.0.bias": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}},
                                        struct.pack("<4f", 1, 2, 3, 4)))
    assert list(load_state_dict_file(path)) == ["seq.0.weight", "seq.0.bias"]


def test_a_legacy_pytorch_file_claiming_huge_storage_is_refused_first(tmp_path, no_reader):
    path = tmp_path / "legacy.pt"
    torch.save({"a.weight": torch.ones(2, 2)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    marker = b"cpuq\x06K\x04N"  # the storage's location, then its size: 4 elements (BININT1 4)
    assert marker in data
    path.write_bytes(data.replace(marker, b"cpuq\x06\x8a\x05" + (10**11).to_bytes(5, "little") + b"N", 1))
    with pytest.raises(SneError, match="claim"):
        load_state_dict_file(path)


def test_a_zip_checkpoint_whose_directory_claims_a_huge_record_is_refused_first(tmp_path, no_reader):
    source = tmp_path / "zip.pt"
    torch.save({"a.weight": torch.ones(2, 2)}, source)
    with zipfile.ZipFile(source) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in entries:
            archive.writestr(name, payload)
    data = bytearray(buffer.getvalue())
    # Central directory entries: their uncompressed size (offset 24) now claims 3 GiB each.
    position = data.find(b"PK\x01\x02")
    while position >= 0:
        data[position + 24 : position + 28] = (3 << 30).to_bytes(4, "little")
        position = data.find(b"PK\x01\x02", position + 4)
    path = tmp_path / "claims.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(SneError, match="claims"):
        load_state_dict_file(path)


def test_legacy_files_with_shared_storages_still_read(tmp_path):
    """The size check counts a storage shared by tied weights once (no false refusal)."""
    weight = torch.randn(50, 50)
    path = tmp_path / "tied.pt"
    torch.save({"a.weight": weight, "b.weight": weight, "c.bias": torch.randn(3).double()}, path,
               _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict_file(path)["b.weight"], weight)


@pytest.mark.parametrize("case", ["sparse", "meta", "float8"])
def test_tensors_without_plain_data(tmp_path, case):
    state = _state_dict()
    if case == "sparse":
        state["seq.1.weight"] = state["seq.1.weight"].to_sparse()
    elif case == "meta":
        state["seq.1.weight"] = torch.empty(8, 8, device="meta")
    else:
        state = {key: value.to(torch.float8_e4m3fn) for key, value in state.items()}
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    if case == "float8":  # read exactly, as float32
        record = load_record(path)
        assert record.layers[1].weight.dtype == torch.float32
        return
    with pytest.raises(SneError, match="seq.1.weight"):
        load_record(path)


# --- zoo files ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> Path:
    from sne.zoo import generate_zoo

    out = tmp_path_factory.mktemp("fuzz-zoo") / "zoo"
    generate_zoo("sine-inr", out, n=6, seed=0, options={"init": "shared", "steps": 2}, command="test", progress=False)
    return out


def _open_zoo(root: Path, use: bool = False) -> None:
    """Open (and with ``use``, read from) the zoo at ``root``: success or a one-line SneError naming a file of it."""
    from sne.zoo import Zoo

    try:
        zoo = Zoo.open(root)
        if use:
            zoo.records(zoo.split_ids("test")[:2])
            zoo.target_values("frequency", [0])
    except SneError as error:
        message = str(error)
        assert str(root) in message, message
        assert len(message.splitlines()) == 1, message


def test_damaged_zoo_manifest_bytes_give_one_line_errors(tiny_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, root)
    original = (tiny_zoo / "manifest.json").read_bytes()

    @FUZZ
    @given(data=st.one_of(truncated(original), flipped(original)))
    def check(data):
        (root / "manifest.json").write_bytes(data)
        _open_zoo(root)

    check()


# Found by fuzzing (issue 17): Zoo.open trusted the manifest's values (n, shard_size, architecture,
# targets) and metadata.parquet's columns; a damaged but well-formed file ended in TypeError /
# KeyError / ZeroDivisionError, and a huge n allocated a range of that size. They are validated now.
NO_SHRINK = settings(FUZZ, max_examples=min(EXAMPLES, 60), phases=[Phase.explicit, Phase.generate])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def test_wrong_zoo_manifest_values_give_one_line_errors(tiny_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, root)
    manifest = json.loads((tiny_zoo / "manifest.json").read_text())
    paths = [p for p in _paths(manifest) if p]
    values = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**9), st.floats(allow_nan=False), st.text(max_size=5),
                       st.just([]), st.just({}))

    @NO_SHRINK
    @given(where=st.sampled_from(paths), value=values)
    def check(where, value):
        changed = json.loads(json.dumps(manifest))
        target = changed
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
        (root / "manifest.json").write_text(json.dumps(changed))
        _open_zoo(root, use=True)

    check()


def test_damaged_zoo_metadata_parquet_gives_one_line_errors(tiny_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, root)
    original = (tiny_zoo / "metadata.parquet").read_bytes()

    @NO_SHRINK
    @given(data=st.one_of(truncated(original), flipped(original)))
    def check(data):
        (root / "metadata.parquet").write_bytes(data)
        _open_zoo(root, use=True)

    check()
