"""Inference (build, query, eval) runs without PyTorch, and the inference modules never import it."""

import ast
import subprocess
import sys

from tests.conftest import REPO, solid

TRAINING_PACKAGES = ("shitu/nn", "shitu/train")  # PyTorch lives here and only here


def inference_modules() -> list[str]:
    """cli.py and every module of the package outside the training packages, found by folder."""
    found = [p.relative_to(REPO).as_posix() for p in (REPO / "shitu").rglob("*.py")]
    return ["cli.py"] + sorted(p for p in found if not p.startswith(TRAINING_PACKAGES))


BLOCKER = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
from cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    assert "torch" not in sys.modules
    raise
"""


def run_blocked(*args):
    return subprocess.run([sys.executable, "-c", BLOCKER, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_build_query_eval_without_torch(colour_gallery, tiny_model, tmp_path):
    index = tmp_path / "idx"
    build = run_blocked("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q")
    assert build.returncode == 0, build.stderr
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    answer = run_blocked("query", photo, "--index", index, "--model", tiny_model, "--json")
    assert answer.returncode == 0, answer.stderr and '"red apple"' in answer.stdout
    metrics = run_blocked("eval", "--index", index, "--model", tiny_model, "--json")
    assert metrics.returncode == 0, metrics.stderr


def test_training_commands_say_torch_is_needed(tmp_path):
    result = run_blocked("export", tmp_path / "x.pt", "--out", tmp_path / "m.onnx")
    assert result.returncode == 1 and "needs PyTorch" in result.stderr


TRAINING_COMMANDS = {"train", "export", "require_torch"}  # shitu/cli.py imports these lazily, on purpose


def imported_names(tree):
    """Module names imported anywhere in ``tree`` except inside the CLI's training commands."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef) and node.name in TRAINING_COMMANDS:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        stack.extend(ast.iter_child_nodes(node))


def test_inference_modules_import_nothing_from_training():
    modules = inference_modules()
    assert {"cli.py", "shitu/cli.py", "shitu/embed.py", "shitu/gallery.py"} <= set(modules)
    assert not any(m.startswith(TRAINING_PACKAGES) for m in modules)
    for module in modules:
        for name in imported_names(ast.parse((REPO / module).read_text(encoding="utf-8"))):
            assert not name.startswith(("torch", "shitu.nn", "shitu.train")), f"{module} imports {name}"


def test_open_set_eval_calibrate_and_report_without_torch(colour_gallery, tiny_model, tmp_path):
    index = tmp_path / "idx"
    assert run_blocked("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q").returncode == 0
    known = tmp_path / "known"
    solid(known / "red apple" / "r.png", (220, 30, 30), fmt="PNG")
    unknown = solid(tmp_path / "unknown" / "green.png", (30, 200, 40), fmt="PNG").parent
    flags = ["--index", index, "--model", tiny_model, "--queries", known, "--unknown", unknown, "-q"]
    evaluated = run_blocked("eval", *flags, "--report", tmp_path / "r.html")
    assert evaluated.returncode == 0, evaluated.stderr
    calibrated = run_blocked("calibrate", *flags)
    assert calibrated.returncode == 0, calibrated.stderr
