"""One verified writer (issue 18): a write that fails (here: a real file-size limit, RLIMIT_FSIZE) raises an
error naming the file and the problem, and leaves the earlier file untouched; long names stay writable."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from maclcore.errors import InputError
from maclcore.io import atomic
from maclcore.io.atomic import atomic_path, remove_partials, sidecar_path, write_json, write_text_atomic
from maclcore.io.checkpoint import load_checkpoint, save_checkpoint
from maclcore.io.naming import MAX_NAME_BYTES, resume_path
from maclcore.io.segmentation import read_label_map, write_label_map
from maclcore.io.volume import Geometry, read_volume, write_volume
from maclcore.labels import CARDIAC
from maclcore.runtime.control import RunLock
from reliability_fixtures import run_python

GEOMETRY = Geometry(size=(40, 30, 6), spacing=(1.5, 1.5, 8.0), origin=(1.0, 2.0, 3.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

# The child writes under a 1 KB file-size limit with SIGXFSZ ignored (so write() fails with EFBIG instead of
# killing the process): what a full disk does to a writer, for real, without filling a disk.
LIMITED = """
import resource, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from maclcore.errors import InputError
from maclcore.io.volume import Geometry
geometry = Geometry(size=(40, 30, 6), spacing=(1.5, 1.5, 8.0), origin=(1.0, 2.0, 3.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
noise = np.random.default_rng(1).integers(0, 4, size=geometry.shape).astype(np.uint8)  # does not compress to 1 KB
{prepare}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    {write}
except InputError as exc:
    print("REFUSED", exc)
    sys.exit(3)
print("WROTE")
"""

WRITERS = {
    "nii.gz": ("from maclcore.io.volume import write_volume", "write_volume(noise, geometry, {target!r})"),
    "nii": ("from maclcore.io.volume import write_volume", "write_volume(noise, geometry, {target!r})"),
    "nrrd": ("from maclcore.io.volume import write_volume", "write_volume(noise, geometry, {target!r})"),
    "mha": ("from maclcore.io.volume import write_volume", "write_volume(noise, geometry, {target!r})"),
    "seg.nrrd": ("from maclcore.io.segmentation import write_label_map\nfrom maclcore.labels import CARDIAC",
                 "write_label_map(noise, geometry, {target!r}, CARDIAC)"),
    "pt": ("import torch\nfrom maclcore.io.checkpoint import save_checkpoint",
           "save_checkpoint({target!r}, 'resume', {{'weights': torch.randn(4000)}})"),
    "json": ("from maclcore.io.atomic import write_json", "write_json({target!r}, {{'values': noise.ravel().tolist()}})"),
    "txt": ("from maclcore.io.atomic import write_text_atomic", "write_text_atomic({target!r}, 'x' * 5000)"),
}


def _partials(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(".partial-")]


@pytest.mark.parametrize("ext", sorted(WRITERS))
def test_write_beyond_a_file_size_limit_fails_loudly_and_keeps_the_old_file(tmp_path, ext):
    target = tmp_path / f"out.{ext}"
    old = b"the earlier file, which must survive\n"
    target.write_bytes(old)
    prepare, write = WRITERS[ext]
    code = LIMITED.format(tests=str(Path(__file__).parent), prepare=prepare,
                          write=write.format(target=str(target)))
    result = run_python(code, timeout=120)
    assert result.returncode == 3, (result.stdout, result.stderr)
    message = result.stdout
    assert str(target) in message
    assert "could not be written completely" in message
    assert "file-size limit" in message or "file too large" in message, message
    assert "left as it was" in message
    assert target.read_bytes() == old
    assert _partials(tmp_path) == []


def test_write_within_the_limit_succeeds(tmp_path):
    """The same child writes a small file under the limit: the check does not refuse good writes."""
    target = tmp_path / "small.txt"
    code = LIMITED.format(tests=str(Path(__file__).parent), prepare="from maclcore.io.atomic import write_text_atomic",
                          write=f"write_text_atomic({str(target)!r}, 'small')")
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_text() == "small"


def test_a_writer_that_reports_nothing_is_caught_by_reading_back(tmp_path):
    """A writer that 'succeeds' but leaves a short or wrong file (as ITK's NIfTI writer does) is caught."""
    target = tmp_path / "v.nii.gz"
    write_volume(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY, target)
    before = target.read_bytes()

    def verify(tmp: str) -> None:
        raise atomic.WriteCheckError("the voxels read back differ")

    with pytest.raises(InputError) as info:
        with atomic_path(target, verify) as tmp:
            Path(tmp).write_bytes(b"\x1f\x8b half a file")
    assert str(target) in str(info.value) and "could not be written completely" in str(info.value)
    assert target.read_bytes() == before
    with pytest.raises(InputError, match="nothing reached the disk"):
        with atomic_path(tmp_path / "empty.json") as tmp:
            Path(tmp).write_bytes(b"")
    assert not (tmp_path / "empty.json").exists()
    assert _partials(tmp_path) == []


def test_every_writer_reads_back_what_it_wrote(tmp_path):
    """Round trips through the verified writers (the verification accepts what is right)."""
    labels = np.random.default_rng(0).integers(0, 4, size=GEOMETRY.shape).astype(np.uint8)
    for ext in ("nii.gz", "nii", "nrrd", "mha"):
        write_volume(labels, GEOMETRY, tmp_path / f"l.{ext}")
        assert np.array_equal(read_volume(tmp_path / f"l.{ext}").array, labels)
    image = np.random.default_rng(1).normal(size=GEOMETRY.shape).astype(np.float32)
    write_volume(image, GEOMETRY, tmp_path / "i.nii.gz")
    assert np.array_equal(read_volume(tmp_path / "i.nii.gz").array, image)
    write_label_map(labels, GEOMETRY, tmp_path / "s.seg.nrrd", CARDIAC)
    assert np.array_equal(read_label_map(tmp_path / "s.seg.nrrd", CARDIAC, GEOMETRY), labels)
    state = {"w": torch.randn(3, 3), "nan": torch.tensor([math.nan]), "step": 3, "opt": {0: {"m": torch.ones(2)}}}
    save_checkpoint(tmp_path / "r.pt", "resume", state)
    assert load_checkpoint(tmp_path / "r.pt")["opt"][0]["m"].tolist() == [1.0, 1.0]
    write_text_atomic(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"


def test_json_is_strict_non_finite_becomes_null(tmp_path):
    write_json(tmp_path / "r.json", {"a": math.nan, "b": [math.inf, 1.5, -math.inf], "c": np.float64("nan"),
                                     "d": np.float32(2.0)})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda t: pytest.fail(t)) == {"a": None, "b": [None, 1.5, None],
                                                                          "c": None, "d": 2.0}


def test_write_errors_name_the_file(tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    with pytest.raises(InputError, match="a file is in the way"):
        write_text_atomic(blocked / "sub" / "r.txt", "x")
    with pytest.raises(InputError, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    if os.geteuid() != 0:  # root writes into read-only folders
        readonly = tmp_path / "ro"
        readonly.mkdir()
        readonly.chmod(0o500)
        try:
            with pytest.raises(InputError) as info:
                write_volume(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY, readonly / "p.nii.gz")
            assert str(readonly / "p.nii.gz") in str(info.value)
        finally:
            readonly.chmod(0o700)


@pytest.mark.parametrize("ext", ["nii.gz", "seg.nrrd", "pt", "json"])
def test_long_legal_names_are_written(tmp_path, ext):
    """A name of 250 bytes is legal; the temp file and the lock beside it must stay within 255 bytes."""
    name = "é" * 60 + "x" * (MAX_NAME_BYTES - 120 - len(ext) - 1 - 5) + "." + ext  # multi-byte characters count
    assert len(os.fsencode(name)) <= MAX_NAME_BYTES - 5
    target = tmp_path / name
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    if ext == "nii.gz":
        write_volume(labels, GEOMETRY, target)
    elif ext == "seg.nrrd":
        write_label_map(labels, GEOMETRY, target, CARDIAC)
    elif ext == "pt":
        save_checkpoint(target, "resume", {"x": 1})
        assert len(os.fsencode(os.path.basename(resume_path(target)))) <= MAX_NAME_BYTES
        with RunLock(target) as lock:
            assert os.path.exists(lock.path) and len(os.fsencode(os.path.basename(lock.path))) <= MAX_NAME_BYTES
    else:
        write_json(target, {"x": 1})
    assert target.exists()
    assert _partials(tmp_path) == []


def test_partials_of_long_names_are_found_again(tmp_path):
    target = tmp_path / ("m" * 250 + ".pt")
    leftover = Path(atomic._temp_name(str(target)))
    assert len(os.fsencode(leftover.name)) <= MAX_NAME_BYTES and leftover.name.endswith(".pt")
    leftover.write_bytes(b"killed mid-write")
    remove_partials(target)
    assert not leftover.exists()
    assert sidecar_path(target, ".lock") == sidecar_path(target, ".lock")  # stable: the same lock for the same run
