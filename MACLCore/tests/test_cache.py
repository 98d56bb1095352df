"""The on-disk slice cache: same slices as in memory, streamed training equal to in-memory training, stale
caches rebuilt, and training from a carried cache without the images or SimpleITK."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from maclcore.data.cache import (SliceCache, build_cache, cached_cases, memory_budget, read_manifest, slice_bytes,
                                 stale_reason)
from maclcore.data.dataset import SliceData, load_cases, read_case_geometries
from maclcore.data.preprocessing import plan_preprocessing
from maclcore.data.stream import SliceStream, StreamedArray
from maclcore.io.pairing import find_images, pair_cases
from maclcore.labels import CARDIAC
from maclcore.training.loop import LoopConfig
from maclcore.training.pretrain import pretrain, pretrain_config
from maclcore.runtime.progress import Reporter
from maclcore.data.storage import SliceStorage

from phantom_data import images_of, labels_of

CHANNELS = (4, 8, 8, 16, 16)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Messages(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def labelled_cases(phantoms):
    return pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))


def build(cases, folder, schema=CARDIAC, dtype="float32", spacing=6.0):
    geometries = read_case_geometries(cases)
    plan = plan_preprocessing(geometries, spacing=spacing)
    build_cache(folder, cases, plan, [g.size[2] for g in geometries], schema, dtype, (spacing, None))
    return plan


def test_cache_holds_exactly_the_in_memory_slices(phantoms, tmp_path):
    cases = labelled_cases(phantoms)
    plan = build(cases, tmp_path / "c")
    expected = SliceData.from_volumes(load_cases(cases, plan, CARDIAC), plan.size, with_labels=True)
    cache = SliceCache.open(tmp_path / "c")
    assert cache.plan == plan and cache.names == [c.name for c in cases] and len(cache) == len(expected)
    for data in (cache.load("cpu"), cache.stream("cpu")):
        assert torch.equal(data.images[torch.arange(len(data))], expected.images)
        assert torch.equal(data.labels[torch.arange(len(data))], expected.labels)
        assert torch.equal(data.positions, expected.positions) and torch.equal(data.volumes, expected.volumes)
    assert cache.memory_bytes == slice_bytes(len(expected), plan.size, True) == \
        expected.images.nbytes + expected.labels.nbytes + 12 * len(expected)
    assert [c.name for c in cached_cases(tmp_path / "c")] == [c.name for c in cases]


def test_streamed_slices_index_like_tensors(phantoms, tmp_path):
    cases = labelled_cases(phantoms)
    build(cases, tmp_path / "c")
    memory, streamed = SliceCache.open(tmp_path / "c").load(), SliceCache.open(tmp_path / "c").stream()
    assert isinstance(streamed.images, StreamedArray) and streamed.stream is not None and memory.stream is None
    assert streamed.images.shape == memory.images.shape and streamed.images.dtype == torch.float32
    index = torch.tensor([5, 0, 5, len(memory) - 1])
    assert torch.equal(streamed.images[index], memory.images[index])
    assert torch.equal(streamed.images[2:7], memory.images[2:7]) and torch.equal(streamed.images[-1], memory.images[-1])
    assert torch.equal(streamed.labels.cpu(), memory.labels)
    # A staged batch (what the training loop announces a step ahead) gives the same rows.
    stream, reads = streamed.stream, []
    gather_host = stream.gather_host
    stream.gather_host = lambda names, rows: reads.append(list(names)) or gather_host(names, rows)
    staged = torch.tensor([3, 1, 4])
    streamed.prefetch(staged, staged.clone())
    assert torch.equal(streamed.images[staged], memory.images[staged])
    assert torch.equal(streamed.labels[staged], memory.labels[staged])
    assert reads == [["images", "labels"]]  # one background gather served both; no read at indexing time
    assert torch.equal(streamed.images[staged.clone()], memory.images[staged]) and len(reads) == 2  # not staged
    # Selecting volumes keeps the rows on disk and renumbers the volumes as for tensors in memory.
    names = [cases[2].name, cases[0].name]
    part, whole = streamed.select_volumes(names), memory.select_volumes(names)
    assert part.stream is not None and len(part) == len(whole)
    assert torch.equal(part.images[torch.arange(len(part))], whole.images)
    assert torch.equal(part.labels[torch.arange(len(part))], whole.labels)
    assert torch.equal(part.volumes, whole.volumes) and part.names == names
    with pytest.raises(IndexError):
        streamed.images[torch.tensor([len(memory)])]


def test_float16_cache_is_half_the_size_and_close(phantoms, tmp_path):
    cases = find_images([images_of(phantoms["train"])])
    build(cases, tmp_path / "f32", schema=None)
    build(cases, tmp_path / "f16", schema=None, dtype="float16")
    full, half = SliceCache.open(tmp_path / "f32"), SliceCache.open(tmp_path / "f16")
    assert half.images.dtype == np.float16 and half.labels is None
    assert os.path.getsize(tmp_path / "f16" / "images.npy") < 0.51 * os.path.getsize(tmp_path / "f32" / "images.npy")
    rows = torch.arange(len(full))
    close = half.stream().images[rows]
    assert close.dtype == torch.float32
    assert float((close - full.stream().images[rows]).abs().max()) <= 2 ** -11  # float16 rounding of [0, 1]


def test_stale_cache_is_detected(phantoms, tmp_path):
    source = tmp_path / "data"
    shutil.copytree(phantoms["train"], source)
    cases = pair_cases(images_of(source), labels_of(source))
    build(cases, tmp_path / "c")
    manifest = read_manifest(tmp_path / "c")
    assert stale_reason(manifest, cases, CARDIAC, "float32", 6.0, None) is None
    assert stale_reason(manifest, cases, None, None, 6.0, None) is None  # images serve pretraining too
    assert "float16" in stale_reason(manifest, cases, CARDIAC, "float16", 6.0, None)
    assert "built with" in stale_reason(manifest, cases, CARDIAC, None, 5.0, None)
    assert "other volumes" in stale_reason(manifest, cases[:2], CARDIAC, None, 6.0, None)
    # A cache written before a schema field existed still serves (the field takes its default); another
    # schema does not.
    older = {**manifest, "schema": {k: v for k, v in manifest["schema"].items() if k != "wall_encloses"}}
    assert stale_reason(older, cases, CARDIAC, "float32", 6.0, None) is None
    recoloured = {**manifest, "schema": {**manifest["schema"], "colors": [[0, 0, 0]] * 3}}
    assert "another schema" in stale_reason(recoloured, cases, CARDIAC, "float32", 6.0, None)
    stat = os.stat(cases[1].label)
    os.utime(cases[1].label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert "changed" in stale_reason(manifest, cases, CARDIAC, None, 6.0, None)
    assert stale_reason(manifest, cases, None, None, 6.0, None) is None  # labels do not matter without a schema
    assert stale_reason(manifest, cases, CARDIAC, None, check_sources=False) is None
    assert stale_reason(None, cases, None) == "no finished cache there"
    # An unfinished build (no manifest) is never used.
    os.remove(tmp_path / "c" / "manifest.json")
    assert read_manifest(tmp_path / "c") is None


def test_memory_budget():
    assert memory_budget(torch.device("cpu"), 0.5) == 500_000_000
    assert memory_budget(torch.device("cpu")) > 0


def tiny_pretrain(tmp_path, cases, name, storage, **loop):
    config = pretrain_config("macl", loop=LoopConfig(epochs=2, batch_size=4, steps_per_epoch=3, seed=3, **loop),
                             channels=CHANNELS, spacing=6.0)
    reporter = Messages()
    summary = pretrain(cases, tmp_path / f"{name}.pt", config, device="cpu", storage=storage, reporter=reporter)
    weights = torch.load(tmp_path / f"{name}.pt", weights_only=True)["state_dict"]
    return [h["loss"] for h in summary["history"]], weights, reporter.lines


def test_pretraining_streamed_from_the_cache_equals_in_memory(phantoms, tmp_path, monkeypatch):
    import threading

    cases = find_images([images_of(phantoms["train"])])
    loss, weights, _ = tiny_pretrain(tmp_path, cases, "memory", None)
    # A memory limit far below the data's size: the slices stream from an on-disk cache.
    readers = []
    gather_host = SliceStream.gather_host

    def recorded(self, names, rows):
        readers.append(threading.current_thread().name)
        return gather_host(self, names, rows)

    monkeypatch.setattr(SliceStream, "gather_host", recorded)
    streamed_loss, streamed_weights, lines = tiny_pretrain(tmp_path, cases, "streamed",
                                                           SliceStorage(cache_dir=str(tmp_path / "c"), max_memory=1e-5))
    assert any("streaming each batch" in line for line in lines)
    # Every batch (2 epochs x 3 steps) was gathered a step ahead in the background, none at indexing time.
    assert len(readers) == 6 and all(name.startswith("maclcore-stream") for name in readers)
    assert streamed_loss == loss
    assert all(torch.equal(weights[k], streamed_weights[k]) for k in weights)
    # The same cache, now within the budget: loaded into memory, not rebuilt, same result.
    created = read_manifest(tmp_path / "c")["created"]
    cached_loss, _, lines = tiny_pretrain(tmp_path, cases, "cached", SliceStorage(cache_dir=str(tmp_path / "c")))
    assert cached_loss == loss and read_manifest(tmp_path / "c")["created"] == created
    assert any("held in cpu memory" in line for line in lines)
    # No cache folder given and too little memory: a cache is made beside the output.
    auto_loss, _, lines = tiny_pretrain(tmp_path, cases, "auto", SliceStorage(max_memory=1e-5))
    assert auto_loss == loss and read_manifest(tmp_path / "auto.cache") is not None


def test_finetuning_streamed_from_the_cache_equals_in_memory(phantoms, tmp_path):
    """Labelled slices streamed from the cache (with a validation split) train exactly as in memory."""
    from maclcore.training.finetune import FinetuneConfig, finetune

    cases = labelled_cases(phantoms)
    config = FinetuneConfig(loop=LoopConfig(epochs=2, batch_size=2, steps_per_epoch=2), channels=CHANNELS,
                            spacing=6.0, min_val_groups=2, val_fraction=0.4)
    results = {}
    for name, storage in (("memory", None), ("streamed", SliceStorage(cache_dir=str(tmp_path / "c"), max_memory=1e-5))):
        reporter = Messages()
        summary = finetune(cases, tmp_path / f"{name}.pt", config, device="cpu", reporter=reporter, storage=storage)
        weights = torch.load(tmp_path / f"{name}.pt", weights_only=True)["state_dict"]
        results[name] = ([(h["loss"], h.get("val_dice")) for h in summary["history"]], weights, reporter.lines)
    assert summary["val_cases"], "the test needs a validation split"
    assert any("streaming each batch" in line for line in results["streamed"][2])
    assert results["streamed"][0] == results["memory"][0]
    assert all(torch.equal(results["memory"][1][k], results["streamed"][1][k]) for k in results["memory"][1])


BLOCK_SIMPLEITK = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "SimpleITK" or name.startswith("SimpleITK."):
                raise ImportError("SimpleITK is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    torch.set_num_threads(1)
    from maclcore.cli.main import main
    code = main(sys.argv[1:])
    assert "SimpleITK" not in sys.modules
    sys.exit(code)
""")


def test_training_from_a_carried_cache_needs_neither_images_nor_simpleitk(phantoms, tmp_path):
    source = tmp_path / "data"
    shutil.copytree(images_of(phantoms["train"]), source)
    cases = find_images([source])
    build(cases, tmp_path / "made_here", schema=None)
    shutil.move(str(tmp_path / "made_here"), tmp_path / "carried")  # to "another machine": sources gone
    shutil.rmtree(source)
    command = [sys.executable, "-c", BLOCK_SIMPLEITK, "pretrain", "--cache-dir", str(tmp_path / "carried"),
               "--out", str(tmp_path / "p.pt"), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
               "--channels", "4,8,8,16,16", "--device", "cpu", "--progress", "none", "--max-memory", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert saved["pretraining"]["cases"] == [c.name for c in cases]
    assert saved["preprocessing"]["spacing"] == 6.0
    # Without --images or a cache there is nothing to train on: a clear error.
    result = subprocess.run([sys.executable, "-m", "maclcore", "pretrain", "--out", str(tmp_path / "q.pt"),
                             "--progress", "none"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--cache-dir" in result.stderr


def _labelled_and_unlabelled_caches(phantoms, tmp_path, size):
    """A labelled cache of the train phantoms and an unlabelled one of the test phantoms, both at 6 mm and
    ``size`` pixels, as `maclcore cache` builds them; the cases of each."""
    from maclcore.cli.main import main

    for folder, images, labels in (("lab", images_of(phantoms["train"]), labels_of(phantoms["train"])),
                                   ("unl", images_of(phantoms["test"]), None)):
        args = ["cache", "--images", images, "--cache-dir", str(tmp_path / folder), "--spacing", "6",
                "--size", str(size), "--progress", "none"]
        assert main(args + (["--labels", labels] if labels else [])) == 0
    return labelled_cases(phantoms), find_images([images_of(phantoms["test"])])


def test_finetuning_from_caches_alone_equals_finetuning_from_the_files(phantoms, tmp_path):
    """Labelled and unlabelled slices from caches, without their source files, train exactly as the files do."""
    from maclcore.training.finetune import FinetuneConfig, UnlabelledConfig, finetune

    cases, unlabelled = _labelled_and_unlabelled_caches(phantoms, tmp_path, 48)
    config = FinetuneConfig(loop=LoopConfig(epochs=2, batch_size=2, steps_per_epoch=2, seed=5), channels=CHANNELS,
                            spacing=6.0, size=48, crop=32,
                            unlabelled_loss=UnlabelledConfig(passes=(0.25,), tta=False, share=0.5))
    files = finetune(cases, tmp_path / "files.pt", config, device="cpu", reporter=Messages(), unlabelled=unlabelled)
    reporter = Messages()
    cached = finetune([], tmp_path / "cached.pt", config, device="cpu", reporter=reporter,
                      storage=SliceStorage(cache_dir=str(tmp_path / "lab")), unlabelled_cache=tmp_path / "unl")
    assert any("using the slice cache" in line for line in reporter.lines)
    assert any("self-training on 2 unlabelled volumes" in line for line in reporter.lines)
    assert cached["unlabelled_cases"] == files["unlabelled_cases"] == [c.name for c in unlabelled]
    assert cached["train_cases"] == files["train_cases"] == [c.name for c in cases]
    assert [h["loss"] for h in cached["history"]] == [h["loss"] for h in files["history"]]
    ours, theirs = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("cached", "files"))
    assert ours["preprocessing"] == theirs["preprocessing"] == {"spacing": 6.0, "size": 48, "percentiles": [1.0, 99.0]}
    assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in theirs["state_dict"])


def test_finetuning_from_caches_refuses_mismatched_or_unlabelled_caches(phantoms, tmp_path):
    from maclcore.errors import InputError, MaclError
    from maclcore.training.finetune import FinetuneConfig, finetune

    _labelled_and_unlabelled_caches(phantoms, tmp_path, 48)
    config = FinetuneConfig(loop=LoopConfig(epochs=1, batch_size=2, steps_per_epoch=1), channels=CHANNELS, crop=32)
    other = tmp_path / "other"
    build(find_images([images_of(phantoms["test"])]), other, schema=None, spacing=5.0)
    with pytest.raises(InputError, match=r"other.*preprocessed as .*5\.0.*same --spacing and --size"):
        finetune([], tmp_path / "m.pt", config, device="cpu", storage=SliceStorage(cache_dir=str(tmp_path / "lab")),
                 unlabelled_cache=other)
    with pytest.raises(InputError, match=r"unl.* without labels.*--labels"):
        finetune([], tmp_path / "m.pt", config, device="cpu", storage=SliceStorage(cache_dir=str(tmp_path / "unl")))
    with pytest.raises(MaclError, match="cache_dir is not set and no volumes were given"):
        finetune([], tmp_path / "m.pt", config, device="cpu")
    assert not (tmp_path / "m.pt").exists()


def test_finetune_command_trains_from_carried_caches_without_simpleitk(phantoms, tmp_path):
    _labelled_and_unlabelled_caches(phantoms, tmp_path, 48)
    for name in ("lab", "unl"):
        shutil.move(str(tmp_path / name), tmp_path / f"carried_{name}")  # to "another machine"
    command = [sys.executable, "-c", BLOCK_SIMPLEITK, "finetune", "--cache-dir", str(tmp_path / "carried_lab"),
               "--unlabelled-cache", str(tmp_path / "carried_unl"), "--unlabelled-passes", "0.5",
               "--unlabelled-no-tta", "--out", str(tmp_path / "m.pt"), "--epochs", "2", "--steps-per-epoch", "2",
               "--batch-size", "2", "--crop", "32", "--channels", "4,8,8,16,16", "--device", "cpu",
               "--progress", "none"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    training = torch.load(tmp_path / "m.pt", weights_only=True)["training"]
    assert len(training["train_cases"]) == 3 and len(training["unlabelled_cases"]) == 2
    # Half of the labelled pair, or nothing to train on: told before any work.
    for args in (["--images", images_of(phantoms["train"])], []):
        result = subprocess.run([sys.executable, "-m", "maclcore", "finetune", *args, "--out",
                                 str(tmp_path / "q.pt"), "--progress", "none"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1 and "--images and --labels, or --cache-dir" in result.stderr


def test_cache_builder_command(phantoms, tmp_path, capsys):
    from maclcore.cli.main import main

    folder = str(tmp_path / "c")
    args = ["cache", "--images", images_of(phantoms["train"]), "--labels", labels_of(phantoms["train"]),
            "--cache-dir", folder, "--spacing", "6"]
    assert main(args) == 0
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["schema"]["names"] == list(CARDIAC.names) and manifest["requested"] == {"spacing": 6.0, "size": None}
    assert main(args) == 0 and "up to date" in capsys.readouterr().out


def test_an_interrupted_build_leaves_no_partial_arrays(phantoms, tmp_path):
    """Ctrl-C (or any failure) part-way through: no large .partial files, no manifest, and the error goes on."""
    from maclcore.data.cache import build_cache
    from maclcore.data.dataset import read_case_geometries
    from maclcore.data.preprocessing import plan_preprocessing
    from maclcore.io.pairing import pair_cases

    cases = pair_cases(images_of(phantoms["train"]), labels_of(phantoms["train"]))
    geometries = read_case_geometries(cases)
    plan = plan_preprocessing(geometries, spacing=6.0)

    def interrupt_after_first(index, count, name):
        assert os.path.exists(os.path.join(tmp_path, "c", "images.npy.partial"))  # the build was under way
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(str(tmp_path / "c"), cases, plan, [g.size[2] for g in geometries], CARDIAC, "float32",
                    (6.0, None), interrupt_after_first)
    assert sorted(os.listdir(tmp_path / "c")) == []


def test_ctrl_c_during_the_cache_command_is_one_line_and_exit_130(tmp_path):
    import signal

    from reliability_utils import finish, read_events, start_child, write_cases

    data = write_cases(tmp_path / "data", 24, slices=8)
    child = start_child(["cache", "--images", data / "imagesTr", "--labels", data / "labelsTr",
                         "--cache-dir", tmp_path / "c", "--spacing", "1", "--progress", "json"], tmp_path / "err")
    read_events(child, lambda event: event.get("event") == "progress", timeout=120)
    child.send_signal(signal.SIGINT)
    assert finish(child) == 130
    lines = [line for line in (tmp_path / "err").read_text().splitlines() if line.strip()]
    assert lines == ["maclcore cache: interrupted"]
    assert [n for n in os.listdir(tmp_path / "c") if n != ".lock" and not n.endswith(".lock")] == []
