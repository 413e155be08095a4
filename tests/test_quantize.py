"""``shitu quantize``: an int8 model that loads, says what it is, is small, and embeds close to fp32.

Two networks: a random PP-LCNet-2.5x (the shipped architecture) for the mechanics, and EfficientNet-Lite0
with its ImageNet weights for quality, since a random network is chaotic: it amplifies any small
perturbation, rounding included, so its cosine to fp32 says little about a trained model.
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from cli import app  # noqa: E402
from shitu.embed import Embedder, set_shitu_metadata  # noqa: E402
from shitu.errors import ShituError  # noqa: E402
from shitu.gallery import GalleryItem, read_gallery  # noqa: E402
from shitu.train.export import Normalized, export_onnx  # noqa: E402
from shitu.quantize import integer_hard_sigmoid, pick_calibration, quantize_model  # noqa: E402
from shitu.index import Index  # noqa: E402
from shitu.index.folder import FolderStorage  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402
from shitu.train.checkpoint import build_model  # noqa: E402
from tests.conftest import MEAN, REPO, STD, Recorder  # noqa: E402

SIZE = 96
DEMO = REPO / "tests" / "synthetic" / "demo"
QUERIES = REPO / "tests" / "synthetic" / "queries"


def demo_inputs(embedder: Embedder) -> np.ndarray:
    """Held-out shelf snapshots and the gallery shots, preprocessed as the model prescribes."""
    paths = sorted(QUERIES.glob("*.jpg")) + [item.path for item in read_gallery(DEMO)]
    return np.stack([embedder.preprocess(path) for path in paths])


def cosines(fp32: Path, int8: Path) -> np.ndarray:
    reference, quantized = Embedder(fp32, threads=1), Embedder(int8, threads=1)
    inputs = demo_inputs(reference)
    return (reference.embed_arrays(inputs) * quantized.embed_arrays(inputs)).sum(axis=1)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    """A random PP-LCNet-2.5x whose batch-norm statistics come from the demo photos.

    Statistics from a few momentum updates on noise (as in test_export.py) leave activations growing
    layer by layer until every photo embeds to the same direction, which would make any cosine pass.
    """
    torch.manual_seed(0)
    config = TrainConfig(data="unused", export_size=SIZE)
    model = build_model(config)
    photos = torch.from_numpy(demo_inputs(Embedder(tiny_shitu_onnx(tmp_path_factory.mktemp("pre")), 1)))
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model(photos)
    folder = tmp_path_factory.mktemp("fp32")
    checkpoint = folder / "last.pt"
    torch.save({"config": asdict(config), "model": model.eval().state_dict(), "ema": None, "epoch": 4},
               checkpoint)
    return export_onnx(checkpoint, folder / "model.onnx", input_size=SIZE)


def tiny_shitu_onnx(folder: Path) -> Path:
    """A one-node model with shitu metadata at ``SIZE``: just enough for ``Embedder.preprocess``."""
    return write_shitu_onnx(Normalized(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1),
                                                           torch.nn.Flatten())), folder / "pool.onnx", 3)


def write_shitu_onnx(network: torch.nn.Module, path: Path, embedding_size: int) -> Path:
    """Export ``network`` at ``SIZE`` with the metadata ``Embedder`` requires."""
    torch.onnx.export(network.eval(), (torch.zeros(2, 3, SIZE, SIZE),), str(path), input_names=["images"],
                      output_names=["embeddings"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    graph = onnx.load(str(path))
    metadata = {"shitu.model_name": network.__class__.__name__, "shitu.model_version": "test",
                "shitu.embedding_size": str(embedding_size), "shitu.input_size": str(SIZE),
                "shitu.mean": json.dumps(MEAN), "shitu.std": json.dumps(STD)}
    set_shitu_metadata(graph, metadata)
    onnx.save(graph, str(path))
    return path


@pytest.fixture(scope="module")
def int8_model(fp32_model) -> Path:
    """Quantized through the CLI, as a user would."""
    out = fp32_model.with_name("model.int8.onnx")
    result = CliRunner().invoke(app, ["quantize", str(fp32_model), "--out", str(out), "--calibration",
                                      str(DEMO), "--images", "36", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "calibrated on 36 images" in result.output
    return out


@pytest.mark.slow
def test_int8_model_loads_with_the_fp32_metadata(fp32_model, int8_model):
    fp32, int8 = Embedder(fp32_model), Embedder(int8_model)
    meta32 = fp32.session.get_modelmeta().custom_metadata_map
    meta8 = int8.session.get_modelmeta().custom_metadata_map
    assert meta8["shitu.model_version"] == "epoch5-int8" == int8.info.version
    assert meta8["shitu.quantized"] == "int8"
    settings = json.loads(meta8["shitu.quantization"])
    assert settings["reduce_range"] is True
    # 28 h-swish activations and 2 squeeze-excite gates, all rewritten to int8 Adds
    assert settings["integer_hard_sigmoid"] == 30
    assert "HardSigmoid" not in {node.op_type for node in onnx.load(str(int8_model)).graph.node}
    for key in ("shitu.model_name", "shitu.embedding_size", "shitu.input_size", "shitu.mean", "shitu.std",
                "shitu.scale"):
        assert meta8[key] == meta32[key]
    vectors = int8.embed_arrays(np.zeros((3, 3, SIZE, SIZE), np.float32))
    assert vectors.shape == (3, 512)


@pytest.mark.slow
def test_int8_file_is_small(fp32_model, int8_model):
    assert int8_model.stat().st_size < 0.40 * fp32_model.stat().st_size  # measured: 26 %


@pytest.mark.slow
def test_random_lcnet_embeddings_stay_close(fp32_model, int8_model):
    cosine = cosines(fp32_model, int8_model)
    # Measured on AMD Zen 3 (AVX2): mean 0.79 (held-out queries 0.97, gallery shots 0.67; with the
    # earlier MinMax calibration 0.81). Without reduce_range the int8 kernels saturate on this CPU and
    # the mean fell to 0.28.
    assert cosine.mean() >= 0.70


@pytest.mark.slow
def test_trained_network_embeddings_stay_close(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from shitu.nn.teacher import Teacher

    fp32 = write_shitu_onnx(Normalized(Teacher("efficientnet_lite0")), tmp_path / "lite0.onnx", 1280)
    int8 = quantize_model(fp32, tmp_path / "lite0.int8.onnx", read_gallery(DEMO)).path
    cosine = cosines(fp32, int8)
    # Measured on AMD Zen 3 (AVX2): mean 0.968, min 0.895 (MinMax calibration: 0.967, 0.875; without
    # reduce_range: 0.883, 0.676).
    assert cosine.mean() >= 0.93 and cosine.min() >= 0.75


@pytest.mark.slow
def test_index_of_the_fp32_model_is_refused_for_the_int8_one(fp32_model, int8_model, tmp_path):
    Index(tmp_path / "index", fp32_model).build(read_gallery(DEMO))
    with pytest.raises(ShituError, match="epoch5-int8"):
        FolderStorage(tmp_path / "index").open(Embedder(int8_model).info)


@pytest.mark.slow
def test_refuses_to_quantize_twice_or_over_itself(fp32_model, int8_model, tmp_path):
    items = read_gallery(DEMO)[:2]
    with pytest.raises(ShituError, match="already quantized"):
        quantize_model(int8_model, tmp_path / "again.onnx", items)
    with pytest.raises(ShituError, match="new file"):
        quantize_model(fp32_model, fp32_model, items)


def test_no_readable_calibration_image_is_an_error(tmp_path):
    model = tiny_shitu_onnx(tmp_path)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    reporter = Recorder()
    with pytest.raises(ShituError, match="none of the 1 calibration images"):
        quantize_model(model, tmp_path / "out.onnx", [GalleryItem(junk, "x/junk.jpg", "x")], reporter=reporter)
    assert len(reporter.warnings) == 1 and not (tmp_path / "out.onnx").exists()


def test_calibration_takes_labels_in_turn():
    items = [GalleryItem(Path(f"{label}{n}"), f"{label}/{n}", label) for label in "abc" for n in range(3)]
    picked = pick_calibration(items, 5)
    assert [item.label for item in picked] == ["a", "b", "c", "a", "b"]
    assert picked == pick_calibration(items, 5)  # the same photos every time
    assert sorted(item.relpath for item in pick_calibration(items, 100)) == [item.relpath for item in items]


def gate_graph(scale: float, zero_point: int, alpha: float = 1 / 6, beta: float = 0.5):
    """uint8 codes -> DequantizeLinear -> HardSigmoid -> QuantizeLinear(1/255, 0): one quantized gate."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.array(v, dtype), name) for v, dtype, name in [
        (scale, np.float32, "x_scale"), (zero_point, np.uint8, "x_zero"),
        (1 / 255, np.float32, "gate_scale"), (0, np.uint8, "gate_zero")]]
    nodes = [helper.make_node("DequantizeLinear", ["codes", "x_scale", "x_zero"], ["x"]),
             helper.make_node("HardSigmoid", ["x"], ["gate"], alpha=alpha, beta=beta),
             helper.make_node("QuantizeLinear", ["gate", "gate_scale", "gate_zero"], ["gate_codes"])]
    codes_in = helper.make_tensor_value_info("codes", TensorProto.UINT8, [256])
    codes_out = helper.make_tensor_value_info("gate_codes", TensorProto.UINT8, [256])
    graph = helper.make_graph(nodes, "gate", [codes_in], [codes_out], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_gate(model, tmp_path: Path, name: str) -> tuple[np.ndarray, set[str]]:
    """The gate's output for every uint8 code, and the operators onnxruntime actually ran."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    codes = session.run(None, {"codes": np.arange(256, dtype=np.uint8)})[0]
    operators = {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    return codes.astype(int), operators


# input ranges that reach both clipping ends, the top one only, both
@pytest.mark.parametrize("scale, zero_point", [(0.05, 128), (0.03, 40), (0.1, 200)])
def test_integer_hard_sigmoid_gives_the_float_gates_codes(tmp_path, scale, zero_point):
    float_gate = gate_graph(scale, zero_point)
    x = scale * (np.arange(256) - zero_point)
    expected = np.round(np.clip(x / 6 + 0.5, 0, 1) * 255)
    before, _ = run_gate(float_gate, tmp_path, "before")
    assert np.abs(before - expected).max() <= 1
    rewritten = gate_graph(scale, zero_point)
    assert integer_hard_sigmoid(rewritten) == 1
    after, operators = run_gate(rewritten, tmp_path, "after")
    assert "QLinearAdd" in operators and "HardSigmoid" not in operators  # the gate runs in int8
    assert np.abs(after - expected).max() <= 1  # one code of rounding at most
    assert (after[x <= -3] == 0).all() and (after[x >= 3] == 255).all()  # saturation clips like the gate


def test_integer_hard_sigmoid_leaves_a_gate_it_cannot_rewrite():
    model = gate_graph(0.05, 128)
    model.graph.initializer[3].CopyFrom(onnx.numpy_helper.from_array(np.array(7, np.uint8), "gate_zero"))
    assert integer_hard_sigmoid(model) == 0  # zero point 7: saturation would not clip at 0
    operators = [node.op_type for node in model.graph.node]
    assert operators == ["DequantizeLinear", "HardSigmoid", "QuantizeLinear"]


def test_quantize_takes_the_name_fp32_and_refuses_a_folder_as_out_before_any_work(tmp_path, monkeypatch):
    import shitu.embed

    model = tiny_shitu_onnx(tmp_path)
    monkeypatch.setattr(shitu.embed, "default_model_path", lambda int8=False: model)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    with pytest.raises(ShituError, match="none of the 1 calibration images"):  # got past the fp32 model's size
        quantize_model("fp32", tmp_path / "out.onnx", [GalleryItem(junk, "x/junk.jpg", "x")])
    folder = tmp_path / "models"
    folder.mkdir()
    reporter = Recorder()
    with pytest.raises(ShituError, match="is a folder"):
        quantize_model(model, folder, [GalleryItem(junk, "x/junk.jpg", "x")], reporter=reporter)
    assert reporter.warnings == [] and list(folder.iterdir()) == [] and not list(tmp_path.glob(".models*"))
