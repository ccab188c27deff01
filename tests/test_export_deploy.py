"""The exported model as deployers run it: raw 8-bit RGB images of three sizes (one of them
non-square) through the ONNX file in plain onnxruntime and through the IR in OpenVINO Model
API's ``AnomalyDetection``, against our Scorer on the same pixels, for a global + local
model, a ``--preset cpu`` model (global + the defect model that keeps the aspect) and a
``--preset cpu-texture`` model (local + defect, the recipe for textures)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igd_fast.cli import main
from igd_fast.export.onnx import record_path
from igd_fast.export.pipeline import IR_OUTPUTS, ONNX_OUTPUTS, aspect_size
from igd_fast.export.resize import VERTICAL_FIRST, pillow_resize
from igd_fast.score import Scorer

ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")
pytest.importorskip("onnxscript")
model_api = pytest.importorskip("model_api")

SIZES = [(80, 80), (72, 120), (150, 101)]  # (H, W): the training size, wide, tall and larger
TOL_SCORE = 1e-4  # pred_score, absolute
TOL_MAP = 1e-3  # anomaly_map in [0, 1] (a fraction of the heat-map range)


def _images(files) -> list[np.ndarray]:
    """Raw uint8 H×W×3 images of each of :data:`SIZES`, from the test files."""
    out = []
    for f, (h, w) in zip(files, SIZES, strict=False):
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC)))
    return out


def _export(model_dir: Path, out: Path) -> tuple[Path, Path]:
    """The ONNX file (igd-fast export, with its parity check) and the IR converted from it."""
    from igd_fast.export import export_openvino

    onnx_file = out / "m.onnx"
    assert main(["export", "--model", str(model_dir), "--format", "onnx", "--out", str(onnx_file)]) == 0
    export_openvino(model_dir, out / "m.xml", onnx_file=onnx_file)
    return onnx_file, out / "m.xml"


@pytest.fixture(scope="module")
def pair(tiny_pair, tmp_path_factory):
    onnx_file, xml = _export(tiny_pair["model"], tmp_path_factory.mktemp("deploy_pair"))
    return {"model": tiny_pair["model"], "onnx": onnx_file, "xml": xml, "images": _images(tiny_pair["test"][1:])}


def _tiny_preset(root: Path, preset: str, image_size: int, seed: int) -> dict:
    """A tiny model of ``train --preset PRESET`` on generated data, exported both ways."""
    from igd_fast.data import make_synthetic_mvtec

    data, model = root / "data", root / "m"
    make_synthetic_mvtec(data, "cat", n_train=8, n_test_good=2, n_test_bad=2, size=96, seed=seed)
    assert main(["train", "--data", str(data), "--category", "cat", "--out", str(model), "--preset", preset,
                 "--image-size", str(image_size), "--width", "8", "--epochs", "1", "--defect-size", "32",
                 "--defect-steps", "2", "--val-fraction", "0.25", "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    onnx_file, xml = _export(model, root / "export")
    files = sorted((data / "cat" / "test").rglob("*.png"))
    return {"model": model, "onnx": onnx_file, "xml": xml, "images": _images(files[1:])}


@pytest.fixture(scope="module")
def cpu_preset(tmp_path_factory):
    """A tiny ``--preset cpu`` model: the global model and the defect model (its map, at the image's aspect)."""
    return _tiny_preset(tmp_path_factory.mktemp("deploy_cpu"), "cpu", 96, seed=0)


@pytest.fixture(scope="module")
def texture_preset(tmp_path_factory):
    """A tiny ``--preset cpu-texture`` model: the local model (its residual's Mahalanobis map, the
    image scored by the map's excess) and the defect model, the larger standardised term."""
    return _tiny_preset(tmp_path_factory.mktemp("deploy_texture"), "cpu-texture", 64, seed=1)


@pytest.fixture(params=["pair", "cpu_preset", "texture_preset"])
def exported(request):
    return request.getfixturevalue(request.param)


def _reference(model_dir: Path, images: list[np.ndarray]):
    """Our Scorer's predictions of the same pixels (fast kernels, as ``igd-fast score`` runs)."""
    scorer = Scorer(model_dir, device="cpu")
    return scorer, scorer.predict(list(images))


def _check_masks(got_mask: np.ndarray, ref, post) -> None:
    # equal wherever the raw map is not within float rounding of the pixel threshold
    clear = np.abs(ref.anomaly_map - post.pixel_threshold) > 1e-4 * post.pixel_scale
    assert (got_mask.astype(bool) == ref.pred_mask)[clear].all()


def test_onnxruntime_scores_raw_images_as_the_scorer(exported):
    scorer, refs = _reference(exported["model"], exported["images"])
    post = scorer.post_processor
    # plain onnxruntime, as docs/deployment.md shows it
    sess = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ONNX_OUTPUTS
    for img, ref in zip(exported["images"], refs, strict=True):
        x = img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # N×3×H×W RGB in [0, 1]
        pred_score, pred_label, anomaly_map, pred_mask, score = sess.run(None, {"input": x})
        assert anomaly_map.shape == pred_mask.shape == (1, 1, *img.shape[:2])
        assert abs(float(pred_score[0]) - ref.pred_score) <= TOL_SCORE
        assert int(pred_label[0]) == ref.pred_label
        assert abs(float(score[0]) - ref.score) <= TOL_SCORE * max(1.0, abs(ref.score))
        want = post.map_01(torch.from_numpy(ref.anomaly_map)).numpy()
        assert np.abs(anomaly_map[0, 0] - want).max() <= TOL_MAP
        _check_masks(pred_mask[0, 0], ref, post)
    # a pixel the Scorer would refuse (NaN, inf) makes that image anomalous, never normal; the
    # other image of the batch scores as before
    img = exported["images"][0]
    x = np.repeat(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, 2, axis=0)
    for bad in (np.nan, np.inf):
        x[0, 2, 5, 7] = bad
        pred_score, pred_label, _, _, score = sess.run(None, {"input": x})
        assert np.isnan(score[0]) and int(pred_label[0]) == 1
        assert abs(float(pred_score[1]) - refs[0].pred_score) <= TOL_SCORE and int(pred_label[1]) == refs[0].pred_label


def _model_api_check(model_dir: Path, xml: Path, images: list[np.ndarray]) -> None:
    from model_api.adapters import OpenvinoAdapter, create_core
    from model_api.models import AnomalyDetection

    scorer, refs = _reference(model_dir, images)
    post = scorer.post_processor
    # float32: the CPU plugin's default on a CPU with avx512_bf16 / AMX is bf16 (docs/deployment.md)
    adapter = OpenvinoAdapter(create_core(), str(xml), device="CPU",
                              plugin_config={"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    model = AnomalyDetection.create_model(adapter)
    assert model.params.image_threshold == pytest.approx(post.threshold, rel=1e-12)
    assert model.params.pixel_threshold == pytest.approx(post.pixel_threshold, rel=1e-12)
    assert model.params.normalization_scale == pytest.approx(post.scale, rel=1e-12)
    for img, ref in zip(images, refs, strict=True):
        r = model(img)  # H×W×3 uint8 RGB, any size: no resize or normalisation outside the graph
        assert abs(r.pred_score - ref.pred_score) <= TOL_SCORE
        assert int(r.pred_label) == ref.pred_label
        assert r.anomaly_map.shape == r.pred_mask.shape == img.shape[:2]
        # Model API hands the map back as uint8 (map·255 rounded): within one step of ours
        want = np.round(post.map_01(torch.from_numpy(ref.anomaly_map)).numpy() * 255)
        assert np.abs(r.anomaly_map.astype(np.int64) - want).max() <= 1
        _check_masks(r.pred_mask, ref, post)


def test_model_api_anomaly_detection_scores_raw_images_as_the_scorer(exported):
    # In a fresh interpreter: Model API's OpenVINO inference in a process that has also run
    # onnxruntime (the test above) and trained with DataLoader workers corrupted the Python
    # heap now and then (a segfault in a later test, about 2 runs in 3; each runtime alone
    # never did). Deployers run one runtime per process.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_model_api_check, exported["model"], exported["xml"], exported["images"]).result()


def test_the_files_carry_their_thresholds_and_records(pair):
    import onnx

    rec = json.loads(record_path(pair["onnx"]).read_text())
    meta = {p.key: p.value for p in onnx.load(str(pair["onnx"])).metadata_props}
    assert meta["model_type"] == "AnomalyDetection" and meta["task"] == "segmentation"
    assert float(meta["image_threshold"]) == rec["threshold"]
    assert float(meta["pixel_threshold"]) == rec["pixel_threshold"]
    assert float(meta["normalization_scale"]) == rec["score_scale"]
    assert meta["mean_values"] == "0 0 0" and meta["scale_values"] == "255 255 255"
    xml_model = ov.Core().read_model(str(pair["xml"]))
    info = xml_model.get_rt_info()["model_info"]
    assert float(info["image_threshold"].astype(str)) == rec["threshold"]
    assert [o.get_any_name() for o in xml_model.outputs] == IR_OUTPUTS
    assert xml_model.inputs[0].get_partial_shape().is_dynamic
    # an ONNX and an IR export to one stem keep a side-car each
    assert json.loads(record_path(pair["xml"]).read_text())["format"] == "openvino" and rec["format"] == "onnx"
    assert rec["contract"] == "raw-images" and rec["outputs"] == ONNX_OUTPUTS


def test_an_ir_exported_to_the_onnx_files_stem_keeps_both_side_cars(pair, tmp_path):
    from igd_fast.export import export_openvino

    onnx_file, xml = tmp_path / "m.onnx", tmp_path / "m.xml"
    onnx_file.write_bytes(pair["onnx"].read_bytes())
    record_path(onnx_file).write_text(record_path(pair["onnx"]).read_text())
    export_openvino(pair["model"], xml, check=False, onnx_file=onnx_file)
    assert json.loads(record_path(onnx_file).read_text())["format"] == "onnx"
    assert json.loads(record_path(xml).read_text())["format"] == "openvino"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.onnx.json", "m.xml", "m.xml.json"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_scores_jsonl_from_exported_runtimes_is_strict_json(pair, tmp_path, runtime):
    inp = tmp_path / "in"
    inp.mkdir()
    for i, img in enumerate(pair["images"]):
        Image.fromarray(img).save(inp / f"{i}.png")
    target = pair["xml"] if runtime == "openvino" else pair["onnx"]
    assert main(["score", "--runtime", runtime, "--model", str(target), "--input", str(inp), "--out",
                 str(tmp_path / "o"), "--jsonl", "--no-progress", "--workers", "0", "--no-overlays"]) == 0  # fmt: skip

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    lines = (tmp_path / "o" / "scores.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=refuse) for line in lines]
    assert len(rows) == 3 and all(r["s_global"] is None and math.isfinite(r["score"]) for r in rows)
    _, refs = _reference(pair["model"], pair["images"])
    for r, ref in zip(sorted(rows, key=lambda r: r["path"]), refs, strict=True):
        assert abs(r["pred_score"] - ref.pred_score) <= TOL_SCORE


def test_the_graph_resizes_as_pillow():
    """Equal to Pillow's 8-bit BILINEAR resize, pixel for pixel: both pass orders (Pillow 13
    runs the vertical pass first when the height shrinks much more), up and down, odd sizes."""
    rng = np.random.default_rng(0)
    pairs = [((129, 65), (64, 64)), ((150, 101), (64, 64)), ((64, 64), (64, 64)), ((30, 70), (41, 96)),
             ((1000, 777), (96, 96))] + [(tuple(rng.integers(8, 300, 2)), tuple(rng.integers(8, 160, 2)))
                                         for _ in range(30)]  # fmt: skip
    for hw, out in pairs:
        a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(a).resize((int(out[1]), int(out[0])), Image.BILINEAR))
        got = pillow_resize(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0, (int(out[0]), int(out[1])))
        assert np.array_equal(np.rint(got[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), want), (hw, out)


def test_the_graphs_map_resize_equals_torchs_bilinear():
    """The map to the input's size as two MatMuls (OpenVINO runs them faster than its
    Interpolate): F.interpolate's bilinear values, up and down, odd sizes and ratios, to float32
    rounding of the map's magnitude."""
    from igd_fast.reference.resize import bilinear_matmul

    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(3)
    sizes = [((128, 128), (512, 512)), ((7, 5), (7, 5)), ((1, 3), (9, 4))] + [
        (tuple(rng.integers(1, 200, 2)), tuple(rng.integers(1, 500, 2))) for _ in range(20)]  # fmt: skip
    for (h, w), (hh, ww) in sizes:
        m = torch.randn(2, 1, int(h), int(w), generator=g) * 100
        want = torch.nn.functional.interpolate(m, size=(int(hh), int(ww)), mode="bilinear", align_corners=False)
        got = bilinear_matmul(m, (int(hh), int(ww)))
        assert got.shape == want.shape, (h, w, hh, ww)
        assert float((got - want).abs().max()) <= 1e-5 * float(m.abs().max()), (h, w, hh, ww)


def test_an_exported_graph_resizes_maps_by_matmul_and_eager_by_interpolate():
    """``reference.resize.bilinear``: F.interpolate when run, two MatMuls when exported (the
    MS-SSIM scale maps and the component maps; OpenVINO's Interpolate was 9 ms of the demo)."""
    from igd_fast.reference.resize import bilinear
    from igd_fast.reference.ssim import upsample_scale_map

    class Up(torch.nn.Module):
        def forward(self, m):
            return bilinear(upsample_scale_map(m, 11, 40, 40), (57, 31))

    m = torch.randn(2, 3, 10, 10)
    ops = {str(n.target) for n in torch.export.export(Up(), (m,)).graph.nodes if n.op == "call_function"}
    assert not any("upsample_bilinear" in o for o in ops) and any("matmul" in o or "mm" in o for o in ops), ops
    want = torch.nn.functional.interpolate(torch.nn.functional.pad(m, (5,) * 4, mode="replicate"), size=(40, 40),
                                           mode="bilinear", align_corners=False)  # fmt: skip
    want = torch.nn.functional.interpolate(want, size=(57, 31), mode="bilinear", align_corners=False)
    assert torch.equal(Up()(m), want)  # eager: the very same calls
    got = torch.export.export(Up(), (m,)).module()(m)
    assert float((got - want).abs().max()) <= 1e-5 * float(m.abs().max())


class _Resize(torch.nn.Module):
    """The graph's resize alone: to a fixed 64×48, or to a longer side of 64 (aspect kept)."""

    def __init__(self, keep_aspect: bool) -> None:
        super().__init__()
        self.keep_aspect = keep_aspect

    def forward(self, x):
        h, w = x.shape[-2:]
        return pillow_resize(x, aspect_size(h, w, 64) if self.keep_aspect else (64, 48))


@pytest.mark.parametrize("keep_aspect", [False, True], ids=["fixed", "aspect"])
def test_the_exported_resize_equals_pillow_in_both_runtimes(tmp_path, keep_aspect):
    """The resize as exported (a fixed size: one pass order chosen by an ONNX If; a size that
    follows the input: both orders and a Where), in onnxruntime and OpenVINO: Pillow's pixels,
    for either pass order (tall images shrink vertically first), down and up."""
    import contextlib
    import io

    import onnx

    f = tmp_path / "resize.onnx"
    dims = {0: torch.export.Dim("n", min=1, max=16), 2: torch.export.Dim("h", min=2, max=4096),
            3: torch.export.Dim("w", min=2, max=4096)}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        torch.onnx.export(_Resize(keep_aspect), (torch.rand(2, 3, 141, 157),), str(f), input_names=["input"],
                          dynamic_shapes={"x": dims}, opset_version=18, dynamo=True, external_data=False)  # fmt: skip
    # Pillow <= 12 has one pass order: nothing to choose
    assert ("If" in {n.op_type for n in onnx.load(str(f)).graph.node}) is (VERTICAL_FIRST and not keep_aspect)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(f), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(1)
    for hw in [(300, 90), (90, 300), (211, 97), (64, 48), (40, 30), (97, 211)]:
        a = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
        h, w = _Resize(keep_aspect)(torch.zeros(1, 3, *hw)).shape[-2:]
        want = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in a])
        x = np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        for name, got in (("onnxruntime", sess.run(None, {"input": x})[0]), ("openvino", compiled(x)[0])):
            got = np.rint(got.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
            assert np.array_equal(got, want), (name, hw, int(np.abs(got.astype(int) - want).max()))
    # an image with one NaN or infinite pixel comes out all NaN (the rounding's Clip alone could
    # turn it into a number: +inf into 255); the other image of the batch is untouched
    for bad in (np.nan, np.inf):
        x[0, 1, 3, 5] = bad
        for name, got in (("onnxruntime", sess.run(None, {"input": x})[0]), ("openvino", compiled(x)[0])):
            assert np.isnan(got[0]).all() and not np.isnan(got[1]).any(), (name, bad)
            assert np.array_equal(np.rint(got[1].transpose(1, 2, 0) * 255).astype(np.uint8), want[1]), name


def test_scipy_is_a_runtime_dependency():
    """--precision auto (scipy.stats) and AUPRO (scipy.ndimage) need it at run time."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "scipy" in deps
