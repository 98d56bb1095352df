"""A corpus of bad inputs fed to every entry point: each is refused with one line that names the file (or
option) and the problem, exit code 1, no traceback and nothing left behind; odd but valid inputs work.

Entry points: ``maclcore predict|finetune|pretrain|evaluate|demo`` (run in this process through ``main``, with
the file descriptors captured, so C++ messages of ITK count too; a few in a real process) and the API functions
they call (``predict_files``, ``pretrain``, ``finetune``, ``evaluate_folders``).
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from maclcore.data.phantom import make_phantom
from maclcore.errors import MaclError
from maclcore.evaluation.evaluate import evaluate_folders
from maclcore.inference.predict import predict_files
from maclcore.io.pairing import find_images, pair_cases
from maclcore.io.segmentation import label_geometry, write_label_map
from maclcore.io.volume import Geometry, read_geometry, write_volume
from maclcore.labels import CARDIAC
from maclcore.io.checkpoint import load_checkpoint, save_checkpoint
from maclcore.training.finetune import FinetuneConfig, finetune
from maclcore.training.loop import LoopConfig
from maclcore.training.pretrain import pretrain, pretrain_config
from reliability_utils import (TINY_NET, TINY_TRAIN, array_of, assert_one_line_error, leftovers,  # noqa: F401
                               one_thread, run_child, run_cli, temp_or_lock_files, write_case, write_cases)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_LOOP = LoopConfig(epochs=1, batch_size=2, steps_per_epoch=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """Two small labelled phantoms, a tiny segmentation model and a tiny pretrained model."""
    root = tmp_path_factory.mktemp("world")
    write_cases(root / "data", 2, seed=3)
    cases = pair_cases(root / "data" / "imagesTr", root / "data" / "labelsTr")
    finetune(cases, root / "model.pt", FinetuneConfig(loop=TINY_LOOP, channels=(4, 8, 8, 16, 16), spacing=6.0),
             device="cpu")
    pretrain(find_images([root / "data" / "imagesTr"]), root / "pretrained.pt",
             pretrain_config(loop=TINY_LOOP, channels=(4, 8, 8, 16, 16), spacing=6.0), device="cpu")
    return root


class Ctx:
    """A private copy of the data for one case, and an empty output folder."""

    def __init__(self, world: Path, tmp: Path, monkeypatch) -> None:
        self.world, self.tmp, self.monkeypatch = world, tmp, monkeypatch
        shutil.copytree(world / "data", tmp / "data")
        self.images, self.labels = tmp / "data" / "imagesTr", tmp / "data" / "labelsTr"
        self.model, self.pretrained = world / "model.pt", world / "pretrained.pt"
        self.out = tmp / "out"
        self.out.mkdir()
        self.bad = tmp / "bad"
        self.bad.mkdir()

    def check_nothing_left(self) -> None:
        assert leftovers(self.out) == [], "output left behind"
        assert temp_or_lock_files(self.tmp) == [], "temp or lock files left behind"


@pytest.fixture
def ctx(world, tmp_path, monkeypatch):
    return Ctx(world, tmp_path, monkeypatch)


# --- ways to spoil an image file --------------------------------------------------------------------------

PHANTOM = make_phantom(11, slices=4)


def _write(array, path: Path, spacing=(1.5, 1.5, 8.0), vector=False, compress=True) -> Path:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(tuple(spacing)[: image.GetDimension()])
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bytes(ext, data: bytes):
    def make(stem: Path, ctx: Ctx) -> Path:
        path = Path(f"{stem}{ext}")
        path.write_bytes(data)
        return path
    return make


def _with_value(value, ext):
    def make(stem: Path, ctx: Ctx) -> Path:
        array = PHANTOM.image.copy()
        array[1, 20, 20] = value
        return _write(array, Path(f"{stem}{ext}"))
    return make


def _unreadable(stem: Path, ctx: Ctx) -> Path:
    path = _write(PHANTOM.image, Path(f"{stem}.nii.gz"))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the permission check see what a user would
        real_access = os.access
        ctx.monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(path)
                                else real_access(p, mode, **kw))
    return path


def _fake_dicom(stem: Path, ctx: Ctx) -> Path:
    stem.mkdir()
    for index in range(3):
        (stem / f"IM{index}.dcm").write_bytes(b"not really DICOM" * 20)
    return stem


def _zero_spacing(stem: Path, ctx: Ctx) -> Path:
    raw = Path(f"{stem}.raw")
    np.zeros((2, 4, 4), np.float32).tofile(raw)
    header = Path(f"{stem}.nhdr")
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 2\n"
                      "space directions: (0,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
                      f"encoding: raw\ndata file: {raw.name}\n")
    return header


IMAGE_DEFECTS = {
    "missing": (lambda s, c: Path(f"{s}.nii.gz"), "does not exist"),
    "unreadable": (_unreadable, "permission denied"),
    "empty": (_bytes(".nii.gz", b""), "empty file"),
    "truncated-nii-gz": (lambda s, c: _truncate(_write(PHANTOM.image, Path(f"{s}.nii.gz"))), "truncated"),
    "truncated-nii": (lambda s, c: _truncate(_write(PHANTOM.image, Path(f"{s}.nii"))), "truncated"),
    "truncated-mha": (lambda s, c: _truncate(_write(PHANTOM.image, Path(f"{s}.mha"), compress=False)), "truncated"),
    "truncated-nrrd": (lambda s, c: _truncate(_write(PHANTOM.image, Path(f"{s}.nrrd"))), "truncated"),
    "text-as-nifti": (_bytes(".nii.gz", b"patient notes\n"), "not a readable image"),
    "random-bytes-nrrd": (_bytes(".nrrd", np.random.default_rng(0).bytes(4000)), "not a readable image"),
    "2d": (lambda s, c: _write(PHANTOM.image[0], Path(f"{s}.nii.gz")), "2D image"),
    "4d": (lambda s, c: _write(np.stack([PHANTOM.image] * 3), Path(f"{s}.nii.gz"), spacing=(1.5, 1.5, 8, 1)),
           "4D image"),
    "rgb": (lambda s, c: _write(np.stack([PHANTOM.image] * 3, -1), Path(f"{s}.nrrd"), vector=True),
            "components per voxel"),
    "complex": (lambda s, c: _write(PHANTOM.image.astype(np.complex64), Path(f"{s}.mha")), "components per voxel"),
    "nan": (_with_value(np.nan, ".nrrd"), "NaN"),
    "inf": (_with_value(np.inf, ".mha"), "infinite"),
    "huge-spacing": (lambda s, c: _write(PHANTOM.image, Path(f"{s}.nii.gz"), spacing=(900, 900, 8)), "spacing"),
    "tiny-spacing": (lambda s, c: _write(PHANTOM.image, Path(f"{s}.nii.gz"), spacing=(1e-4, 1e-4, 8)), "spacing"),
    "zero-spacing": (_zero_spacing, "spacing"),
    "fake-dicom-folder": (_fake_dicom, "DICOM"),
    # A Slicer segmentation given as the scan: ITK reads it as a volume of label values.
    "segmentation-as-image": (lambda s, c: _seg_as_image(Path(f"{s}.seg.nrrd")),
                              "is a Slicer segmentation"),
}


def _seg_as_image(path: Path) -> Path:
    write_label_map(PHANTOM.labels, PHANTOM.geometry, path, CARDIAC)
    return path


def _spoil_image(ctx: Ctx, kind: str, in_folder: bool) -> Path:
    """Replace case_001's image by a spoilt one (in the images folder, or alone in ctx.bad)."""
    maker, _ = IMAGE_DEFECTS[kind]
    if in_folder:
        (ctx.images / "case_001_0000.nii.gz").unlink()
        bad = maker(ctx.images / "case_001_0000", ctx)
        if kind in ("huge-spacing", "tiny-spacing"):  # keep the label map on the image's grid
            labels = sitk.GetImageFromArray(PHANTOM.labels)
            labels.CopyInformation(sitk.ReadImage(str(bad)))
            sitk.WriteImage(labels, str(ctx.labels / "case_001.nii.gz"))
        return bad
    return maker(ctx.bad / "case_001_0000", ctx)


@pytest.mark.parametrize("kind", sorted(IMAGE_DEFECTS))
def test_predict_refuses_bad_image(ctx, capfd, kind):
    bad = _spoil_image(ctx, kind, in_folder=False)
    code, out, err = run_cli(["predict", "--model", ctx.model, "--image", bad, "--out", ctx.out] + TINY_NET[4:], capfd)
    assert_one_line_error(code, out, err, [bad], IMAGE_DEFECTS[kind][1])
    ctx.check_nothing_left()


# In an images folder a .seg.nrrd is not taken for an image at all; given by name, it is refused (below).
IN_FOLDER = sorted(set(IMAGE_DEFECTS) - {"segmentation-as-image"})


@pytest.mark.parametrize("kind", sorted(set(IN_FOLDER) - {"missing"}))
def test_finetune_refuses_bad_image(ctx, capfd, kind):
    bad = _spoil_image(ctx, kind, in_folder=True)
    code, out, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels,
                              "--out", ctx.out / "model.pt"] + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [bad], IMAGE_DEFECTS[kind][1])
    ctx.check_nothing_left()


@pytest.mark.parametrize("kind", IN_FOLDER)
def test_pretrain_refuses_bad_image(ctx, capfd, kind):
    bad = _spoil_image(ctx, kind, in_folder=kind != "missing")
    sources = [ctx.images] if kind != "missing" else [ctx.images, bad]
    code, out, err = run_cli(["pretrain", "--images", *sources, "--out", ctx.out / "pre.pt"] + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [bad], IMAGE_DEFECTS[kind][1])
    ctx.check_nothing_left()


@pytest.mark.parametrize("kind", sorted(IMAGE_DEFECTS))
def test_api_refuses_bad_image(ctx, kind):
    """The API functions raise MaclError (the one-line errors the CLI prints) naming the file."""
    bad = _spoil_image(ctx, kind, in_folder=False)
    with pytest.raises(MaclError, match=IMAGE_DEFECTS[kind][1]) as raised:
        predict_files(ctx.model, [str(bad)], str(ctx.out), device="cpu")
    assert str(bad) in str(raised.value)
    if kind not in ("missing", "segmentation-as-image"):
        bad = _spoil_image(ctx, kind, in_folder=True)
        with pytest.raises(MaclError, match=IMAGE_DEFECTS[kind][1]) as raised:
            pretrain(find_images([ctx.images]), ctx.out / "pre.pt", pretrain_config(loop=TINY_LOOP), device="cpu")
        assert str(bad) in str(raised.value)
    ctx.check_nothing_left()


def test_a_segmentation_named_as_an_image_is_refused_by_every_command(ctx, capfd):
    seg = _seg_as_image(ctx.bad / "other_case.seg.nrrd")
    for argv in (["pretrain", "--images", ctx.images, seg, "--out", ctx.out / "pre.pt"] + TINY_TRAIN,
                 ["suggest", "--model", ctx.model, "--images", seg, "--json", ctx.out / "s.json"] + TINY_NET[4:]):
        code, out, err = run_cli(argv, capfd)
        assert_one_line_error(code, out, err, [seg], "is a Slicer segmentation")
    ctx.check_nothing_left()


# --- ways to spoil a label map ----------------------------------------------------------------------------

def _label_like(ctx: Ctx, values: np.ndarray, geometry=None) -> Path:
    path = ctx.labels / "case_001.nii.gz"
    reference = geometry or read_geometry(ctx.images / "case_001_0000.nii.gz")
    write_volume(values, reference, path)
    return path


def _label_values(ctx: Ctx):
    return array_of(ctx.labels / "case_001.nii.gz")


def _shifted(ctx: Ctx, **change) -> Path:
    g = read_geometry(ctx.images / "case_001_0000.nii.gz")
    values = _label_values(ctx)
    if "size" in change:
        values = values[:, :-3, :]
    geometry = Geometry(size=(values.shape[2], values.shape[1], values.shape[0]), spacing=g.spacing,
                        origin=tuple(o + change.get("shift", 0.0) for o in g.origin), direction=g.direction)
    return _label_like(ctx, values, geometry=geometry)


def _rgb_label(ctx: Ctx) -> Path:
    values = _label_values(ctx)
    (ctx.labels / "case_001.nii.gz").unlink()
    return _write(np.stack([values] * 3, -1), ctx.labels / "case_001.nrrd", vector=True)


def _seg_nrrd_unknown_segment(ctx: Ctx) -> Path:
    (ctx.labels / "case_001.nii.gz").unlink()
    path = ctx.labels / "case_001.seg.nrrd"
    path.write_bytes(b"NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nencoding: raw\n"
                     b"Segment0_Name:=Liver\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n\n" + bytes(8))
    return path


LABEL_DEFECTS = {
    "outside-schema": (lambda c: _label_like(c, np.where(_label_values(c) == 2, 7, _label_values(c)).astype(np.uint8)),
                       "outside the label schema"),
    "non-integer": (lambda c: _label_like(c, _label_values(c).astype(np.float32) * 0.5), "non-integer"),
    "negative": (lambda c: _label_like(c, _label_values(c).astype(np.int16) - 1), "outside the label schema"),
    "empty": (lambda c: _label_like(c, np.zeros_like(_label_values(c))), "no labelled voxels"),
    "grid-size-mismatch": (lambda c: _shifted(c, size=True), "different grid"),
    "grid-origin-mismatch": (lambda c: _shifted(c, shift=0.37), "different grid"),
    "truncated": (lambda c: _truncate(c.labels / "case_001.nii.gz"), "truncated"),
    "rgb": (_rgb_label, "components per voxel"),
    "seg-nrrd-unknown-segment": (_seg_nrrd_unknown_segment, "not in the label schema"),
}


@pytest.mark.parametrize("kind", sorted(LABEL_DEFECTS))
def test_finetune_refuses_bad_label_map(ctx, capfd, kind):
    bad = LABEL_DEFECTS[kind][0](ctx)
    code, out, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels,
                              "--out", ctx.out / "model.pt"] + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [bad], LABEL_DEFECTS[kind][1])
    ctx.check_nothing_left()
    with pytest.raises(MaclError, match=LABEL_DEFECTS[kind][1]):
        finetune(pair_cases(ctx.images, ctx.labels), ctx.out / "model.pt",
                 FinetuneConfig(loop=TINY_LOOP, channels=(4, 8, 8, 16, 16), spacing=6.0), device="cpu")
    ctx.check_nothing_left()


@pytest.mark.parametrize("kind", sorted(set(LABEL_DEFECTS) - {"empty"}))
def test_evaluate_refuses_bad_prediction(ctx, capfd, kind):
    """A spoilt prediction (the label folder holds the references): refused, naming the prediction file."""
    predictions = ctx.labels  # spoil a copy of the references, used as predictions
    references = ctx.tmp / "references"
    shutil.copytree(ctx.world / "data" / "labelsTr", references)
    bad = LABEL_DEFECTS[kind][0](ctx)
    report = ctx.out / "report.json"
    code, out, err = run_cli(["evaluate", "--pred", predictions, "--labels", references, "--json", report,
                              "--progress", "none", "--no-hd95"], capfd)
    assert_one_line_error(code, out, err, [bad], LABEL_DEFECTS[kind][1])
    ctx.check_nothing_left()
    with pytest.raises(MaclError, match=LABEL_DEFECTS[kind][1]):
        evaluate_folders(predictions, references, json_path=report, with_hd95=False)
    ctx.check_nothing_left()


def test_evaluate_accepts_empty_reference_and_prediction(ctx, capfd):
    """An empty label map is valid for evaluation (a structure absent from both): Dice 1, HD95 undefined."""
    empty = np.zeros_like(_label_values(ctx))
    _label_like(ctx, empty)
    references = ctx.tmp / "references"
    shutil.copytree(ctx.labels, references)
    code, out, err = run_cli(["evaluate", "--pred", ctx.labels, "--labels", references, "--json",
                              ctx.out / "report.json", "--progress", "none"], capfd)
    assert code == 0, err
    assert "Traceback" not in err
    assert leftovers(ctx.out) == ["report.json"]


# --- folders, pairing, models, options and outputs --------------------------------------------------------

def _model_file(ctx: Ctx, name: str, data) -> Path:
    path = ctx.bad / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        torch.save(data, path)
    return path


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/maclcore-should-not-exist",))


def _edited_model(ctx: Ctx, name: str, **changes) -> Path:
    data = load_checkpoint(ctx.model)
    data.update(changes)
    path = ctx.bad / name
    save_checkpoint(path, data.pop("kind"), {k: v for k, v in data.items() if k not in ("format", "format_version")})
    if "format_version" in changes:
        raw = torch.load(path, weights_only=True)
        raw["format_version"] = changes["format_version"]
        torch.save(raw, path)
    return path


MODEL_DEFECTS = {
    "missing": (lambda c: c.bad / "nothing.pt", "does not exist"),
    "folder": (lambda c: (c.bad / "folder.pt").mkdir() or c.bad / "folder.pt", "is a folder"),
    "empty": (lambda c: _model_file(c, "empty.pt", b""), "empty file"),
    "truncated": (lambda c: _model_file(c, "cut.pt", c.model.read_bytes()[:5000]), "truncated"),
    "text": (lambda c: _model_file(c, "notes.pt", b"these are not weights\n"), "not a MACLCore model file"),
    "foreign-tensor": (lambda c: _model_file(c, "tensor.pt", torch.zeros(3)), "not a MACLCore model file"),
    "crafted-pickle": (lambda c: _model_file(c, "evil.pt", pickle.dumps(RunsCode())), "run code"),
    "crafted-torch-save": (lambda c: _model_file(c, "evil2.pt", {"format": "maclcore", "x": RunsCode()}), "run code"),
    "newer-format": (lambda c: _edited_model(c, "newer.pt", format_version=99), "newer MACLCore"),
}


@pytest.mark.parametrize("kind", sorted(MODEL_DEFECTS))
def test_predict_refuses_bad_model(ctx, capfd, kind):
    bad = MODEL_DEFECTS[kind][0](ctx)
    image = ctx.images / "case_000_0000.nii.gz"
    code, out, err = run_cli(["predict", "--model", bad, "--image", image, "--out", ctx.out] + TINY_NET[4:], capfd)
    assert_one_line_error(code, out, err, [bad], MODEL_DEFECTS[kind][1])
    ctx.check_nothing_left()
    assert not os.path.exists("/tmp/maclcore-should-not-exist")


@pytest.mark.parametrize("kind", sorted(MODEL_DEFECTS))
def test_finetune_refuses_bad_init(ctx, capfd, kind):
    bad = MODEL_DEFECTS[kind][0](ctx)
    code, out, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels, "--init", bad,
                              "--out", ctx.out / "model.pt"] + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [bad], MODEL_DEFECTS[kind][1])
    ctx.check_nothing_left()
    assert not os.path.exists("/tmp/maclcore-should-not-exist")


def _duplicate_names(ctx: Ctx):
    shutil.copy(ctx.images / "case_001_0000.nii.gz", ctx.images / "case_001.nii.gz")
    return [ctx.images / "case_001_0000.nii.gz", "case_001.nii.gz"]


def _inconsistent_model(ctx: Ctx):
    return _edited_model(ctx, "three-names-two-outputs.pt",
                         labels={"names": ["a", "b"], "colors": [[1, 0, 0], [0, 1, 0]]})


# (id, argv builder returning (argv, names the error must contain), problem)
OTHER_CASES = [
    ("finetune-images-folder-missing", lambda c: (["finetune", "--images", c.tmp / "nope", "--labels", c.labels,
                                                   "--out", c.out / "m.pt"], [c.tmp / "nope"]), "does not exist"),
    ("finetune-labels-is-a-file", lambda c: (["finetune", "--images", c.images, "--labels", c.model,
                                              "--out", c.out / "m.pt"], [c.model]), "is not a folder"),
    ("finetune-empty-images-folder", lambda c: (["finetune", "--images", c.bad, "--labels", c.labels,
                                                 "--out", c.out / "m.pt"], [c.bad]), "holds no volumes"),
    ("pretrain-empty-folder", lambda c: (["pretrain", "--images", c.bad, "--out", c.out / "p.pt"], [c.bad]),
     "no volumes found"),
    ("predict-empty-folder", lambda c: (["predict", "--model", c.model, "--image", c.bad, "--out", c.out], [c.bad]),
     "no volumes found"),
    ("finetune-duplicate-case-names", lambda c: (["finetune", "--images", c.images, "--labels", c.labels,
                                                  "--out", c.out / "m.pt"], _duplicate_names(c)),
     "same case name"),
    ("pretrain-duplicate-case-names", lambda c: (["pretrain", "--images", c.images, "--out", c.out / "p.pt"],
                                                 _duplicate_names(c)), "same case name"),
    ("predict-duplicate-case-names", lambda c: (["predict", "--model", c.model, "--image", c.images,
                                                 "--out", c.out], _duplicate_names(c)), "same case name"),
    ("predict-same-name-two-folders", lambda c: (
        ["predict", "--model", c.model, "--image", c.images / "case_000_0000.nii.gz",
         shutil.copy(c.images / "case_000_0000.nii.gz", c.bad / "case_000.nii.gz"), "--out", c.out],
        [c.bad / "case_000.nii.gz"]), "same case name"),
    ("finetune-second-channel", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt"],
        [shutil.copy(c.images / "case_001_0000.nii.gz", c.images / "case_001_0001.nii.gz")]), "second image channel"),
    ("finetune-image-without-label", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt"],
        [c.labels, (c.labels / "case_001.nii.gz").unlink() or "case_001"]), "no label map"),
    ("finetune-label-without-image", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt"],
        [c.images, shutil.copy(c.labels / "case_001.nii.gz", c.labels / "case_009.nii.gz") and "case_009"]),
     "no image for label map"),
    ("evaluate-prediction-missing", lambda c: (
        ["evaluate", "--pred", c.bad, "--labels", c.labels, "--no-hd95"],
        [c.bad, shutil.copy(c.labels / "case_000.nii.gz", c.bad / "case_000.nii.gz") and "case_001"]),
     "no image for label map"),
    ("predict-wrong-kind-pretrained", lambda c: (
        ["predict", "--model", c.pretrained, "--image", c.images, "--out", c.out], [c.pretrained]),
     "a segmentation model (from maclcore finetune) is needed"),
    ("finetune-init-resume-state", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--init", _resume_state(c), "--out", c.out / "m.pt"],
        [c.bad / "old.resume.pt"]), "training state for --resume"),
    ("predict-model-labels-do-not-match-outputs", lambda c: (
        ["predict", "--model", _inconsistent_model(c), "--image", c.images, "--out", c.out],
        [c.bad / "three-names-two-outputs.pt"]), "foreground outputs"),
    ("finetune-init-other-channels", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--init", c.model, "--out", c.out / "m.pt",
         "--channels", "8,8,8,16,16"], [c.model, "--channels"]), "shape"),
    ("predict-folder-with-one-bad-image", lambda c: (
        ["predict", "--model", c.model, "--image", c.images, "--out", c.out], [_spoil_image(c, "2d", in_folder=True)]),
     "2D image"),
    ("finetune-schema-file-missing", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt", "--labels-schema",
         c.bad / "mine.json"], [c.bad / "mine.json"]), "cannot be read"),
    ("finetune-schema-file-not-json", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt", "--labels-schema",
         _bytes(".json", b"{names: [")(c.bad / "mine", c)], [c.bad / "mine.json"]), "not valid JSON"),
    ("finetune-schema-file-not-a-schema", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt", "--labels-schema",
         _bytes(".json", b'{"names": ["LV"]}')(c.bad / "mine", c)], [c.bad / "mine.json"]), "not a label schema"),
    ("demo-epochs-zero", lambda c: (["demo", "--out", c.out / "demo", "--finetune-epochs", "0"],
                                    ["--finetune-epochs"]), "must be >= 1"),
    ("demo-negative-count", lambda c: (["demo", "--out", c.out / "demo", "--unlabelled", "-1"], ["--unlabelled"]),
     "must be >= 0"),
    ("demo-out-is-a-file", lambda c: (["demo", "--out", c.model], [c.model]), "a file is in the way"),
    ("finetune-epochs-zero", lambda c: (["finetune", "--images", c.images, "--labels", c.labels, "--out",
                                         c.out / "m.pt", "--epochs", "0"], ["--epochs"]), "must be >= 1"),
    ("finetune-spacing-zero", lambda c: (["finetune", "--images", c.images, "--labels", c.labels, "--out",
                                          c.out / "m.pt", "--spacing", "0"], ["--spacing"]), "positive"),
    ("finetune-size-not-multiple", lambda c: (["finetune", "--images", c.images, "--labels", c.labels, "--out",
                                               c.out / "m.pt", "--size", "100"], ["--size"]), "multiple of 16"),
    ("finetune-val-fraction", lambda c: (["finetune", "--images", c.images, "--labels", c.labels, "--out",
                                          c.out / "m.pt", "--val-fraction", "1.5"], ["--val-fraction"]), "[0, 1)"),
    ("pretrain-batch-size-zero", lambda c: (["pretrain", "--images", c.images, "--out", c.out / "p.pt",
                                             "--batch-size", "0"], ["--batch-size"]), "must be >= 1"),
    ("pretrain-lambdas", lambda c: (["pretrain", "--images", c.images, "--out", c.out / "p.pt",
                                     "--lambdas", "1,2"], ["--lambdas"]), "three"),
    ("predict-batch-size-zero", lambda c: (["predict", "--model", c.model, "--image", c.images, "--out", c.out,
                                            "--batch-size", "0"], ["--batch-size"]), "must be >= 1"),
    ("predict-format", lambda c: (["predict", "--model", c.model, "--image", c.images, "--out", c.out,
                                   "--format", "png"], ["--format"]), "must be one of"),
    ("predict-out-overwrites-input", lambda c: (
        ["predict", "--model", c.model, "--image", c.images / "case_000_0000.nii.gz",
         "--out", c.images / "case_000_0000.nii.gz"], [c.images / "case_000_0000.nii.gz"]), "overwrite"),
    ("predict-out-file-for-two-images", lambda c: (
        ["predict", "--model", c.model, "--image", c.images, "--out", c.out / "one.nii.gz"],
        [c.out / "one.nii.gz"]), "2 images"),
    ("predict-out-below-a-file", lambda c: (
        ["predict", "--model", c.model, "--image", c.images, "--out", c.bad / "file.txt" / "preds"],
        [(c.bad / "file.txt").write_text("x") and c.bad / "file.txt"]), "a file is in the way"),
    ("finetune-out-is-a-folder", lambda c: (["finetune", "--images", c.images, "--labels", c.labels,
                                             "--out", c.bad], [c.bad]), "is a folder"),
    ("finetune-resume-nothing", lambda c: (["finetune", "--images", c.images, "--labels", c.labels,
                                            "--out", c.out / "m.pt", "--resume"], ["--resume", c.out / "m.resume.pt"]),
     "nothing to resume"),
    ("finetune-resume-truncated-state", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt", "--resume"],
        [_truncate(_resume_state(c, c.out / "m.resume.pt"), keep=0.5)]),
     "truncated"),
    ("finetune-resume-incomplete-state", lambda c: (
        ["finetune", "--images", c.images, "--labels", c.labels, "--out", c.out / "m.pt", "--resume"],
        [_resume_state(c, c.out / "m.resume.pt")]), "incomplete training state"),
    ("evaluate-json-below-a-file", lambda c: (
        ["evaluate", "--pred", c.labels, "--labels", c.labels, "--no-hd95", "--json", c.bad / "f.txt" / "r.json"],
        [(c.bad / "f.txt").write_text("x") and c.bad / "f.txt"]), "a file is in the way"),
]


def _resume_state(ctx: Ctx, path: Path = None) -> Path:
    path = path or ctx.bad / "old.resume.pt"
    save_checkpoint(path, "resume", {"stage": "finetune"})
    return path


@pytest.mark.parametrize("build, problem", [c[1:] for c in OTHER_CASES], ids=[c[0] for c in OTHER_CASES])
def test_other_bad_inputs(ctx, capfd, build, problem):
    argv, names = build(ctx)
    defaults = {"predict": TINY_NET[4:], "demo": TINY_NET[4:], "evaluate": ["--progress", "none"]}.get(argv[0],
                                                                                                    TINY_TRAIN)
    for flag, value in zip(defaults[::2], defaults[1::2]):
        if flag not in argv:
            argv += [flag, value]
    before = leftovers(ctx.tmp)
    code, out, err = run_cli(argv, capfd)
    assert_one_line_error(code, out, err, names, problem)
    assert leftovers(ctx.tmp) == before, "files were written or removed"
    assert not os.path.exists("/tmp/maclcore-should-not-exist")


def _real_process_case(ctx: Ctx, command: str):
    """(argv, names, problem) of one bad input for ``command``."""
    if command == "demo":
        return ["demo", "--out", ctx.out / "demo", "--unlabelled", "-2"] + TINY_NET[4:], ["--unlabelled"], ">= 0"
    if command == "evaluate":
        bad = LABEL_DEFECTS["truncated"][0](ctx)
        return (["evaluate", "--pred", ctx.labels, "--labels", ctx.world / "data" / "labelsTr", "--progress", "none"],
                [bad], "truncated")
    bad = _spoil_image(ctx, "truncated-mha", in_folder=command != "predict")
    return {"predict": ["predict", "--model", ctx.model, "--image", bad, "--out", ctx.out] + TINY_NET[4:],
            "finetune": ["finetune", "--images", ctx.images, "--labels", ctx.labels, "--out", ctx.out / "m.pt"],
            "pretrain": ["pretrain", "--images", ctx.images, "--out", ctx.out / "p.pt"]}[command] + (
        TINY_TRAIN if command != "predict" else []), [bad], "truncated"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "finetune", "pretrain", "evaluate", "demo"])
def test_a_real_process_prints_one_line_and_exits_1(ctx, command):
    """The same promise outside pytest's capture: Python warnings and C++ messages would show here."""
    argv, names, problem = _real_process_case(ctx, command)
    result = run_child(argv, timeout=120)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, names, problem)
    ctx.check_nothing_left()


def test_fresh_run_over_interrupted_state_is_refused(ctx, capfd):
    state = ctx.out / "m.resume.pt"
    save_checkpoint(state, "resume", {"stage": "finetune", "cases": []})
    code, out, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels, "--out", ctx.out / "m.pt"]
                             + TINY_TRAIN, capfd)
    assert_one_line_error(code, out, err, [state], "--resume")
    assert leftovers(ctx.out) == ["m.resume.pt"]


def test_json_progress_reports_the_error_as_an_event(ctx, capfd):
    bad = _spoil_image(ctx, "2d", in_folder=False)
    code, out, err = run_cli(["predict", "--model", ctx.model, "--image", bad, "--out", ctx.out, "--device", "cpu",
                              "--progress", "json"], capfd)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert '"event": "error"' in out.strip().splitlines()[-1] and "2D image" in out


# --- odd but valid inputs work, on the right grid ---------------------------------------------------------

def _odd_image(ctx: Ctx, kind: str) -> Path:
    folder = ctx.tmp / "odd data"
    if kind == "one-slice":
        write_case(folder, "one", 21, slices=1)
    elif kind == "oblique":
        write_case(folder, "tilted", 22, oblique=True)
    elif kind == "anisotropic":
        phantom = make_phantom(23, slices=3)
        geometry = Geometry(size=phantom.geometry.size, spacing=(0.9, 2.3, 11.0), origin=(5.0, -3.0, 40.0),
                            direction=phantom.geometry.direction)
        write_volume(phantom.image, geometry, folder / "imagesTr" / "aniso_0000.nrrd")
        write_volume(phantom.labels, geometry, folder / "labelsTr" / "aniso.nii.gz")
    elif kind == "constant":
        phantom = make_phantom(24, slices=3)
        write_volume(np.full_like(phantom.image, 42.0), phantom.geometry, folder / "imagesTr" / "flat_0000.mha")
        write_volume(phantom.labels, phantom.geometry, folder / "labelsTr" / "flat.nii.gz")
    elif kind == "integer-dtype":
        phantom = make_phantom(25, slices=3)
        write_volume(phantom.image.astype(np.int16), phantom.geometry, folder / "imagesTr" / "int_0000.nii")
        write_volume(phantom.labels, phantom.geometry, folder / "labelsTr" / "int.nii.gz")
    elif kind == "spaces-and-non-ascii":
        folder = ctx.tmp / "patient data" / "Müller Zoë 李 (copy)"
        write_case(folder, "cas é 1", 26, slices=3)
    return folder


ODD_KINDS = ["one-slice", "oblique", "anisotropic", "constant", "integer-dtype", "spaces-and-non-ascii"]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_but_valid_inputs_work_on_every_entry_point(ctx, capfd, kind):
    folder = _odd_image(ctx, kind)
    image = next((folder / "imagesTr").iterdir())
    out = ctx.tmp / "out folder é"
    code, _, err = run_cli(["predict", "--model", ctx.model, "--image", image, "--out", out, "--format", "seg.nrrd"]
                           + TINY_NET[4:], capfd)
    assert code == 0, err
    prediction = next(out.iterdir())
    assert label_geometry(prediction).matches(read_geometry(image)), "prediction is not on the input's grid"
    for name in os.listdir(folder / "imagesTr"):  # train on the odd case together with the normal ones
        shutil.copy(folder / "imagesTr" / name, ctx.images / name)
    for name in os.listdir(folder / "labelsTr"):
        shutil.copy(folder / "labelsTr" / name, ctx.labels / name)
    code, _, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels, "--out", out / "m é.pt"]
                           + TINY_TRAIN, capfd)
    assert code == 0, err
    code, _, err = run_cli(["pretrain", "--images", ctx.images, "--out", out / "p é.pt"] + TINY_TRAIN, capfd)
    assert code == 0, err
    code, _, err = run_cli(["evaluate", "--pred", out, "--labels", folder / "labelsTr",  # the .seg.nrrd prediction
                            "--json", out / "r é.json", "--progress", "none"], capfd)
    assert code == 0, err
    assert len(json.loads((out / "r é.json").read_text(encoding="utf-8"))["cases"]) == 1
    assert temp_or_lock_files(ctx.tmp) == []


def test_init_from_a_model_with_another_number_of_classes(ctx, capfd):
    """A segmentation model for 2 labels as --init of a 3-label finetune: all but the head is loaded."""
    two_labels = _edited_model(ctx, "two.pt")
    data = torch.load(two_labels, weights_only=True)
    data["labels"] = {"names": ["a", "b"], "colors": [[1, 0, 0], [0, 1, 0]]}
    data["model"]["num_classes"] = 3
    data["state_dict"] = {k: (v[:3] if k.startswith("head.") else v) for k, v in data["state_dict"].items()}
    torch.save(data, two_labels)
    code, _, err = run_cli(["finetune", "--images", ctx.images, "--labels", ctx.labels, "--init", two_labels,
                            "--out", ctx.out / "m.pt"] + TINY_TRAIN, capfd)
    assert code == 0, err
    info = load_checkpoint(ctx.out / "m.pt")["training"]["init"]
    assert info["random"] == ["head"] and "encoder" in info["loaded"]
