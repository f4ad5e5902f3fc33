"""The .mlip container: Python writes, C++ reads (mlipbias._core.ModelFile), every corruption
is a clear error, and the schema check names the record at fault."""

from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest

from mlipbias import _core
from mlipbias.modelfile import (
    FORMAT_VERSION,
    MAGIC,
    encode_model_file,
    read_model_file,
    validate_model_records,
    write_model_file,
)


def fnv1a64_reference(data: bytes) -> int:
    """FNV-1a 64 written from its definition (offset basis, prime), independent of the C++."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint64 if a.dtype == np.float64 else np.int64)


def sample_records() -> dict:
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, np.finfo(float).max, -1.5, np.pi])
    return {
        "f64/scalar0d": np.array(2.5),
        "f64/one": np.array([1.25]),
        "f64/vector": rng.normal(size=7),
        "f64/special": special,
        "f64/empty": np.zeros(0),
        "f64/matrix": rng.normal(size=(3, 4)),
        "f64/empty_rows": np.zeros((0, 3)),
        "f64/rank4": rng.normal(size=(2, 3, 1, 5)),
        "f64/fortran_order": np.asfortranarray(rng.normal(size=(4, 3))),
        "f64/from_float32": rng.normal(size=3).astype(np.float32),
        "i64/vector": np.array([0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, 42]),
        "i64/matrix": np.arange(12).reshape(4, 3),
        "i64/from_uint8": np.array([0, 255], dtype=np.uint8),
        "i64/empty": np.zeros(0, dtype=np.int64),
        "python/float": 6.5,
        "python/int": 3,
        "str/plain": "Si O",
        "str/empty": "",
        "str/unicode": "Å → eV/Å\nline two",
        "a name with spaces/and é": "ok",
    }


def expected_array(value) -> np.ndarray:
    if isinstance(value, (int, float)):
        value = np.array([value])
    value = np.asarray(value)
    return value.astype(np.float64 if value.dtype.kind == "f" else np.int64)


def test_fnv1a64_known_vectors_and_reference():
    assert _core.fnv1a64(b"") == 0xCBF29CE484222325
    assert _core.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert _core.fnv1a64(b"foobar") == 0x85944171F73967E8
    data = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    assert _core.fnv1a64(data) == fnv1a64_reference(data)


def test_python_write_cpp_read_round_trip(tmp_path):
    records = sample_records()
    path = write_model_file(tmp_path / "all.mlip", records)
    f = _core.ModelFile.load(str(path))
    assert f.version == FORMAT_VERSION == _core.ModelFile.format_version
    assert f.path == str(path)
    assert f.names() == list(records)
    assert len(f) == len(records)
    for name, value in records.items():
        if isinstance(value, str):
            assert f.dtype(name) == "string"
            assert f.str(name) == value
            assert f.get(name) == value
            assert f.shape(name) == [len(value.encode())]
            continue
        want = expected_array(value)
        got = f.get(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=name)  # bit-exact, NaN and -0 too
        assert f.shape(name) == list(want.shape)
        if want.dtype == np.float64:
            assert f.dtype(name) == "float64"
            np.testing.assert_array_equal(bits(f.f64(name, list(want.shape))), bits(want))
        else:
            assert f.dtype(name) == "int64"
            np.testing.assert_array_equal(f.i64(name, [-1] * want.ndim), want)
    assert f.f64_scalar("f64/scalar0d") == 2.5
    assert f.f64_scalar("python/float") == 6.5
    assert f.i64_scalar("python/int") == 3
    # The Python reader goes through the same C++ code.
    read = read_model_file(path)
    assert list(read) == list(records)
    np.testing.assert_array_equal(read["f64/matrix"], records["f64/matrix"])


def test_bytes_follow_the_documented_layout():
    """Builds the file of docs/model_file.md by hand with struct and compares byte for byte."""
    records = {"x": np.array([[1.0, 2.0]]), "n": np.array([7]), "s": "Si"}
    body = MAGIC + struct.pack("<II", 1, 3)
    body += struct.pack("<I", 1) + b"x" + struct.pack("<BIQQ", 1, 2, 1, 2) + struct.pack("<2d", 1.0, 2.0)
    body += struct.pack("<I", 1) + b"n" + struct.pack("<BIQ", 2, 1, 1) + struct.pack("<q", 7)
    body += struct.pack("<I", 1) + b"s" + struct.pack("<BIQ", 3, 1, 2) + b"Si"
    expected = body + struct.pack("<Q", fnv1a64_reference(body))
    assert encode_model_file(records) == expected
    assert _core.ModelFile.parse(expected).get("s") == "Si"


def test_typed_accessors_name_record_and_shapes(tmp_path):
    path = write_model_file(tmp_path / "m.mlip", {"w": np.zeros((2, 3)), "k": np.array([4]), "s": "x"})
    f = _core.ModelFile.load(str(path))
    with pytest.raises(ValueError, match=r"m\.mlip: record w has shape \[2, 3\], expected \[3, \*\]"):
        f.f64("w", [3, -1])
    with pytest.raises(ValueError, match=r"record w has shape \[2, 3\], expected \[2\]"):
        f.f64("w", [2])
    with pytest.raises(ValueError, match="record w has dtype float64, expected int64"):
        f.i64("w")
    with pytest.raises(ValueError, match="record s has dtype string, expected float64"):
        f.f64_scalar("s")
    with pytest.raises(ValueError, match=r"record w has shape \[2, 3\], expected \[1\]"):
        f.f64_scalar("w")
    with pytest.raises(ValueError, match="missing record member/0/O/W2"):
        f.get("member/0/O/W2")
    assert f.i64_scalar("k") == 4 and "k" in f and "q" not in f


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        read_model_file(tmp_path / "absent.mlip")
    with pytest.raises(ValueError, match="cannot open model file"):
        _core.ModelFile.load(str(tmp_path / "absent.mlip"))
    with pytest.raises(ValueError, match="cannot read model file"):
        _core.ModelFile.load(str(tmp_path))


# ------------------------------------------------------------------------------ corruption


def small_file() -> bytes:
    return encode_model_file({"elements": "Si O", "w": np.arange(6.0).reshape(2, 3), "n": np.array([2])})


def rehash(body: bytes) -> bytes:
    """A file whose checksum is right, so only the structure is wrong."""
    return body + struct.pack("<Q", fnv1a64_reference(body))


def test_bad_magic(tmp_path):
    data = bytearray(small_file())
    data[:8] = b"NOTMODEL"
    path = tmp_path / "bad.mlip"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.mlip: not an mlipbias model file"):
        read_model_file(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty file, not an mlipbias model file"):
        read_model_file(path)
    path.write_bytes(b"# LAMMPS data file\n")
    with pytest.raises(ValueError, match="not an mlipbias model file"):
        read_model_file(path)


def test_newer_version(tmp_path):
    path = tmp_path / "v99.mlip"
    path.write_bytes(encode_model_file({"x": 1.0}, version=99))
    with pytest.raises(ValueError, match=r"v99\.mlip: format version 99 is newer than this mlipbias \(1\)"):
        read_model_file(path)
    with pytest.raises(ValueError, match="invalid format version 0"):
        _core.ModelFile.parse(encode_model_file({"x": 1.0}, version=0))


def test_every_truncation_is_reported_as_truncated():
    data = small_file()
    for length in range(1, len(data)):
        with pytest.raises(ValueError, match="truncated") as info:
            _core.ModelFile.parse(data[:length], "cut.mlip")
        assert str(info.value).startswith("cut.mlip: ")


def test_every_flipped_byte_is_an_error():
    data = small_file()
    _core.ModelFile.parse(data)
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x5A
        with pytest.raises(ValueError):
            _core.ModelFile.parse(bytes(corrupt))
    # A flip inside a payload leaves the structure intact and is caught by the checksum.
    corrupt = bytearray(data)
    corrupt[-12] ^= 1
    with pytest.raises(ValueError, match="checksum mismatch"):
        _core.ModelFile.parse(bytes(corrupt))


def record_bytes(name: bytes, dtype: int, shape: list[int], payload: bytes) -> bytes:
    return (
        struct.pack("<I", len(name))
        + name
        + struct.pack(f"<BI{len(shape)}Q", dtype, len(shape), *shape)
        + payload
    )


def container(*records: bytes, n_records: int | None = None) -> bytes:
    header = MAGIC + struct.pack("<II", 1, len(records) if n_records is None else n_records)
    return rehash(header + b"".join(records))


@pytest.mark.parametrize(
    "data, message",
    [
        # A record that claims more data than the file holds.
        (
            container(record_bytes(b"w", 1, [1000], b"\0" * 16)),
            r"record 0 'w' of shape \[1000\] \(float64\) needs 8000 bytes at offset 34 but only 16 remain",
        ),
        # Shapes whose product overflows 64 bits must not allocate anything.
        (container(record_bytes(b"w", 1, [2**40, 2**40], b"")), r"record 0 'w' of shape \[1099511627776, "),
        (container(record_bytes(b"w", 2, [2**62], b"")), r"needs more than 2\^64 bytes"),
        (container(record_bytes(b"w", 1, [1] * 1000, b"")), "has 1000 dimensions"),
        (container(record_bytes(b"w", 7, [1], b"\0" * 8)), "unknown dtype 7"),
        (container(record_bytes(b"s", 3, [2, 1], b"ab")), "string record 0 's' has shape"),
        (container(record_bytes(b"", 1, [1], b"\0" * 8)), "record 0 has an empty name"),
        (
            container(record_bytes(b"w", 1, [1], b"\0" * 8), record_bytes(b"w", 1, [1], b"\0" * 8)),
            "duplicate",
        ),
        (
            container(record_bytes(b"w", 1, [1], b"\0" * 8), n_records=5),
            r"record 1 name length needs 4 bytes",
        ),
        (container(record_bytes(b"w", 1, [1], b"\0" * 16)), "8 unexpected bytes after the last record"),
        (MAGIC + struct.pack("<II", 1, 0) + b"\0" * 8, "checksum mismatch"),
    ],
    ids=[
        "over-length",
        "overflowing-shape",
        "huge-int64",
        "absurd-ndim",
        "unknown-dtype",
        "string-2d",
        "empty-name",
        "duplicate",
        "too-few-records",
        "trailing-bytes",
        "zero-hash",
    ],
)
def test_structural_corruption(data, message):
    with pytest.raises(ValueError, match=message):
        _core.ModelFile.parse(data, "x.mlip")


def test_invalid_utf8_string_names_record():
    data = container(record_bytes(b"elements", 3, [2], b"\xff\xfe"))
    with pytest.raises(ValueError, match="string record elements is not valid UTF-8"):
        _core.ModelFile.parse(data).get("elements")


# ------------------------------------------------------------------------------ writer


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "model.mlip"
    write_model_file(path, {"x": 1.0})
    write_model_file(path, {"x": 2.0})
    assert read_model_file(path)["x"][0] == 2.0
    # A failing write leaves the old file and no temporary file behind.
    with pytest.raises(ValueError, match="record bad: cannot store dtype complex128"):
        write_model_file(path, {"x": 3.0, "bad": np.array([1j])})
    assert read_model_file(path)["x"][0] == 2.0
    assert sorted(os.listdir(tmp_path)) == ["model.mlip"]
    # Readable like any file the user writes, not private like a temporary file.
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(FileNotFoundError, match="no such directory for the model file m.mlip"):
        write_model_file(tmp_path / "absent" / "m.mlip", {"x": 1.0})


@pytest.mark.parametrize(
    "records, message",
    [
        ({"b": True}, "record b: booleans are not a record dtype"),
        ({"o": np.array([object()])}, "record o: cannot store dtype object"),
        ({"": 1.0}, "record names must be non-empty strings"),
        ({"u": np.array([2**64 - 1], dtype=np.uint64)}, "record u: unsigned values beyond the int64 range"),
    ],
)
def test_writer_rejects_unstorable_values(records, message):
    with pytest.raises(ValueError, match=message):
        encode_model_file(records)


# ------------------------------------------------------------------------------ schema


def tiny_model_records(n_members: int = 2, k: int = 3) -> dict:
    """A valid two-element model (2 hidden layers of 4, 3 symmetry functions) with every
    uncertainty record of docs/model_file.md."""
    rng = np.random.default_rng(3)
    elements = ["Si", "O"]
    functions = np.array(
        [
            [2, 0, -1, 0.5, 0.0, 0, 0, 5.0],
            [2, 1, -1, 1.0, 1.0, 0, 0, 4.5],
            [4, 0, 1, 0.1, 0.0, 2.0, -1, 5.0],
        ]
    )
    sizes = [3, 4, 4, 1]
    r = {
        "meta/format": "mlipbias-model",
        "meta/mlipbias_version": "0.1.0",
        "meta/units": "eV Angstrom",
        "meta/description": "test model",
        "elements": " ".join(elements),
        "descriptor/cutoff": 5.0,
        "descriptor/functions": functions,
        "model/activation": "tanh",
        "model/n_members": n_members,
        "model/n_layers": len(sizes) - 1,
        "uq/methods": "ensemble posterior distance",
        "uq/gradient/k": k,
        "uq/gradient/lambda": 1e-3,
    }
    for el in elements:
        r[f"scaling/{el}/mean"] = rng.normal(size=3)
        r[f"scaling/{el}/std"] = rng.uniform(0.5, 2.0, size=3)
        for layer in range(1, len(sizes)):
            r[f"uq/gradient/{el}/R1_{layer}"] = rng.normal(size=(k, sizes[layer]))
            r[f"uq/gradient/{el}/R2_{layer}"] = rng.normal(size=(k, sizes[layer - 1] + 1))
    for m in range(n_members):
        r[f"member/{m}/energy_scale"] = 0.5
        r[f"member/{m}/energy_shift"] = np.array([-3.0, -1.5])
        for el in elements:
            for layer in range(1, len(sizes)):
                r[f"member/{m}/{el}/W{layer}"] = rng.normal(size=(sizes[layer], sizes[layer - 1]))
                r[f"member/{m}/{el}/b{layer}"] = rng.normal(size=sizes[layer])
    n_feat = len(elements) * (len(sizes) - 1) * k
    for name in ("precision_energy", "precision_atom"):
        g = rng.normal(size=(20, n_feat))
        r[f"uq/gradient/{name}"] = np.linalg.inv(g.T @ g + 1e-3 * np.eye(n_feat))
    r["uq/gradient/train_energy"] = rng.normal(size=(5, n_feat))
    r["uq/gradient/train_atom"] = rng.normal(size=(8, n_feat))
    r["calibration/alpha"] = 0.05
    r["calibration/energy/posterior"] = 2.5
    r["calibration/force/ensemble"] = 1.7
    r["calibration/nll/force/distance"] = np.array([0.3, 0.01, 0.01])
    r["member/0/Si/head_variance_W1"] = rng.normal(size=(1, 4))  # Python-only records are allowed
    return r


def test_valid_model_passes_and_survives_the_file(tmp_path):
    records = tiny_model_records()
    validate_model_records(records)
    validate_model_records(read_model_file(write_model_file(tmp_path / "m.mlip", records)))
    single = tiny_model_records(n_members=1)
    single["uq/methods"] = "posterior distance"
    del single["calibration/force/ensemble"]
    validate_model_records(single)


def edit(**changes):
    """Records of the tiny model with changes; None removes a record. Keys use __ for /."""
    records = tiny_model_records()
    for key, value in changes.items():
        name = key.replace("__", "/")
        if value is None:
            del records[name]
        else:
            records[name] = value
    return records


def _bad_table():
    table = tiny_model_records()["descriptor/functions"].copy()
    table[1, 0] = 3
    table[2, 2] = 5
    table[2, 6] = 0.5
    return table


@pytest.mark.parametrize(
    "records, message",
    [
        (edit(member__1__O__W2=None), "missing record member/1/O/W2"),
        (
            edit(member__0__Si__W1=np.zeros((4, 5))),
            r"record member/0/Si/W1 has shape \[4, 5\], expected \[\*, 3\]",
        ),
        (
            edit(member__0__O__W2=np.zeros((4, 5))),
            r"record member/0/O/W2 has shape \[4, 5\], expected \[\*, 4\]",
        ),
        (edit(member__1__Si__W3=np.zeros((2, 4))), r"member/1/Si/W3 has shape \[2, 4\], expected \[1, 4\]"),
        (edit(member__0__Si__b2=np.zeros(3)), r"record member/0/Si/b2 has shape \[3\], expected \[4\]"),
        (edit(model__n_layers=2), "record member/0/Si/W3 is present but model/n_layers is 2"),
        (edit(model__n_members=1), "record member/1/Si/W1 is present but model/n_members is 1"),
        (edit(model__n_members=3), r"model/n_members is 3 but member\(s\) 2 have no records"),
        (
            edit(model__n_members=10**12),
            r"model/n_members is 1000000000000 but member\(s\) 2, 3, 4, ... have no",
        ),
        (edit(member__1__energy_scale=None), "missing record member/1/energy_scale"),
        (edit(member__0__Fe__W1=np.zeros((4, 3))), "record member/0/Fe/W1 is for element 'Fe'"),
        (edit(member__0__energy_shift=np.zeros(3)), r"member/0/energy_shift has shape \[3\], expected \[2\]"),
        (edit(model__activation="relu"), "record model/activation is 'relu'"),
        (edit(model__n_members=1.0), "record model/n_members has dtype float64, expected int64"),
        (edit(elements="Si Xx"), "record elements: unknown element symbol"),
        (edit(elements="Si  O"), "must be symbols separated by single spaces"),
        (edit(elements="Si Si"), "lists an element twice"),
        (edit(meta__format="other"), "record meta/format is 'other'"),
        (edit(meta__units="kcal/mol"), "record meta/units is 'kcal/mol'"),
        (edit(scaling__O__std=np.array([1.0, 0.0, 1.0])), r"scaling/O/std has entries below 1e-12"),
        (edit(scaling__Si__mean=np.zeros(4)), r"scaling/Si/mean has shape \[4\], expected \[3\]"),
        (
            edit(descriptor__functions=np.zeros((3, 7))),
            r"descriptor/functions has shape \[3, 7\], expected \[\*, 8\]",
        ),
        (edit(descriptor__functions=_bad_table()), "row 1: kind 3 is not 2, 4 or 5"),
        (edit(descriptor__functions=_bad_table()), "row 2: neighbour element index b = 5"),
        (edit(descriptor__functions=_bad_table()), "row 2: lambda = 0.5"),
        (
            edit(descriptor__cutoff=6.0),
            "descriptor/cutoff is 6, expected the largest rc of descriptor/functions, 5",
        ),
        (edit(uq__methods="ensemble posterio"), "unknown method 'posterio'"),
        (edit(uq__gradient__precision_energy=None), "missing record uq/gradient/precision_energy"),
        (
            edit(uq__gradient__precision_atom=np.eye(4)),
            r"precision_atom has shape \[4, 4\], expected \[18, 18\]",
        ),
        (edit(uq__gradient__precision_atom=np.triu(np.ones((18, 18)))), "precision_atom is not symmetric"),
        (
            edit(uq__gradient__train_atom=np.zeros((3, 17))),
            r"train_atom has shape \[3, 17\], expected \[\*, 18\]",
        ),
        (
            edit(uq__gradient__O__R2_2=np.zeros((3, 4))),
            r"uq/gradient/O/R2_2 has shape \[3, 4\], expected \[3, 5\]",
        ),
        (edit(uq__gradient__k=0), "record uq/gradient/k is 0"),
        (edit(uq__gradient__lambda=None), "missing record uq/gradient/lambda"),
        (edit(calibration__alpha=None), "missing record calibration/alpha"),
        (edit(calibration__alpha=1.5), "record calibration/alpha is 1.5"),
        (edit(calibration__energy__posterior=-1.0), "record calibration/energy/posterior is -1.0"),
        (edit(calibration__energy__gmm=1.0), "calibrates method 'gmm', which is not in uq/methods"),
        (
            edit(calibration__nll__force__distance=np.ones(2)),
            r"calibration/nll/force/distance has shape \[2\]",
        ),
        (edit(calibration__stress__ensemble=1.0), "record calibration/stress/ensemble is not calibration/"),
        (edit(member__0__Si__W2=np.full((4, 4), np.nan)), "record member/0/Si/W2 contains NaN"),
    ],
)
def test_schema_problems_name_the_record(records, message):
    with pytest.raises(ValueError, match=message):
        validate_model_records(records)


def test_schema_lists_every_problem():
    records = edit(member__1__O__W2=None, model__activation="relu", calibration__alpha=None)
    with pytest.raises(ValueError) as info:
        validate_model_records(records)
    text = str(info.value)
    assert text.startswith("invalid model records:")
    for part in (
        "missing record member/1/O/W2",
        "model/activation is 'relu'",
        "missing record calibration/alpha",
    ):
        assert part in text


def test_ensemble_needs_two_members():
    records = tiny_model_records(n_members=1)
    with pytest.raises(ValueError, match="lists 'ensemble' but model/n_members is below 2"):
        validate_model_records(records)


# ------------------------------------------------------------------------------ hostile files


def test_random_bytes_after_the_header_are_corrupt_not_a_newer_version(tmp_path):
    """A valid magic followed by garbage: the version field reads as a large number, but the
    checksum fails, so the file is reported as corrupt, not as written by a newer mlipbias."""
    garbage = np.random.default_rng(5).integers(0, 256, 200, dtype=np.uint8).tobytes()
    assert struct.unpack("<I", garbage[:4])[0] > FORMAT_VERSION
    path = tmp_path / "garbage.mlip"
    path.write_bytes(MAGIC + garbage)
    with pytest.raises(ValueError, match=r"garbage\.mlip: corrupt file: checksum mismatch") as info:
        read_model_file(path)
    assert "newer" not in str(info.value)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("member/0/energy_scale", 1e307, r"record member/0/energy_scale has entry 0 = 1e\+307, beyond"),
        ("member/1/O/W2", np.full((4, 4), -3e13), r"record member/1/O/W2 has entry 0 = -3e\+13, beyond"),
        (
            "scaling/Si/std",
            np.array([1.0, 1e-300, 1.0]),
            r"record scaling/Si/std has entr(ies|y 1 = 1e-300) below",
        ),
    ],
)
def test_absurd_numbers_are_refused_by_both_readers(tmp_path, name, value, message):
    """Finite numbers that would overflow in evaluation (energy_scale 1e307 gives NaN forces):
    the Python schema check and the C++ model loader both name the record."""
    records = tiny_model_records()
    records[name] = value
    with pytest.raises(ValueError, match=message):
        validate_model_records(records)
    path = tmp_path / "absurd.mlip"
    path.write_bytes(encode_model_file(records))  # the container does not check the schema
    with pytest.raises(ValueError, match=rf"absurd\.mlip: {message}"):
        _core.Model(str(path))
    from mlipbias.models import load_model

    with pytest.raises(ValueError, match=rf"(?s)absurd\.mlip: .*{message}"):
        load_model(path)


def test_fuzzer_of_the_model_file_reader_runs_clean_under_sanitizers(tmp_path):
    """tests/cpp/fuzz_model_file.cpp under AddressSanitizer and UBSan: a few thousand mutated
    and truncated files each parse or throw mlipbias::Error (a crash or over-read fails)."""
    import shutil
    import subprocess
    from pathlib import Path

    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler (set CXX) to build tests/cpp/fuzz_model_file.cpp")
    root = Path(__file__).resolve().parents[1]
    binary = tmp_path / "fuzz_model_file"
    build = [compiler, "-std=c++17", "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    build += [
        f"-I{root / 'cpp'}",
        str(root / "tests/cpp/fuzz_model_file.cpp"),
        str(root / "cpp/model_file.cpp"),
    ]
    subprocess.run([*build, "-o", str(binary)], check=True, capture_output=True, timeout=300)
    seed = write_model_file(tmp_path / "seed.mlip", tiny_model_records())
    run = subprocess.run([str(binary), str(seed), "3000"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    parsed, rejected = (int(n) for n in re.search(r"(\d+) parsed, (\d+) rejected", run.stdout).groups())
    assert parsed + rejected == 3000 and rejected > 1000
