"""The CLI's error boundary: each anticipated failure is one ``error:`` line with exit code 2 (usage) or 1 (run
time), found before any expensive work; a traceback only with ``--debug``. Nothing here touches the network."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import shared, unit_rows
from zeroshot import FeatureSet, load_backbone
from zeroshot.cli import main
from zeroshot.retrieval.index import Index


def zeroshot(*argv, cwd, **env) -> subprocess.CompletedProcess:
    """``python -m zeroshot ARGV`` offline and without a GPU, as a user would run it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("ZEROSHOT_DEBUG", "ZEROSHOT_MODEL")}
    environ.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", ZEROSHOT_CACHE=str(cwd / "cache"), **env)
    return subprocess.run([sys.executable, "-m", "zeroshot", *map(str, argv)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def assert_one_error_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding 1,000 tiny images (.npz), a ``models/`` folder and a plain file."""
    folder = tmp_path_factory.mktemp("cli_errors")
    images = np.random.default_rng(0).integers(0, 255, (1000, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "tiny.npz", images=images)
    (folder / "models").mkdir()
    (folder / "a_file").write_text("not a folder")
    return folder


CLASSIFY = ["classify", "tiny.npz", "--classes", "cat,dog"]


@pytest.mark.parametrize("argv, code, fragment", [
    pytest.param([*CLASSIFY, "--model", "ViT-B-32/laion2b_s34b_b79k"], 1, "HF_HUB_OFFLINE is set; use --model default",
                 id="offline-hub-tag"),
    pytest.param([*CLASSIFY, "--model", "./no-such-model"], 2, "model folder ./no-such-model does not exist",
                 id="missing-model-folder"),
    pytest.param([*CLASSIFY, "--model", "models/mine"], 2, "model folder models/mine does not exist",
                 id="path-like-model"),
    pytest.param([*CLASSIFY, "--top-k", "0"], 2, "--top-k must be at least 1, got 0", id="top-k-0"),
    pytest.param([*CLASSIFY, "--top-k", "-1"], 2, "--top-k must be at least 1, got -1", id="top-k-negative"),
    pytest.param([*CLASSIFY, "--device", "cuda"], 2, "no CUDA GPU is available here; use --device cpu",
                 id="cuda-without-gpu"),
    pytest.param(["classify", "tiny.npz"], 2, "give --classes", id="no-classes"),
    pytest.param([*CLASSIFY, "--output", "a_file/out.csv"], 2, "a_file is a file", id="output-under-a-file"),
    pytest.param(["eval", "--dataset", "no-such-data", "--card", "cifar10"], 2, "dataset not found",
                 id="missing-dataset"),
    pytest.param(["index", "build", "tiny.npz", "--output", "idx", "--index", "IVF1024,Flat"], 2,
                 "IVF1024,Flat trains 1024 lists on 1000 rows", id="ivf-too-few-rows"),
    pytest.param(["index", "build", "tiny.npz", "--output", "idx", "--index", "IDMap,Flat"], 2, "drop the IDMap prefix",
                 id="idmap-factory"),
    pytest.param(["index", "build", "tiny.npz", "--output", "idx", "--index", "IVF1O,Flat"], 2, "could not parse",
                 id="unknown-factory"),
])
def test_each_failure_is_one_line_with_its_exit_code(workdir, argv, code, fragment):
    proc = zeroshot(*argv, cwd=workdir)
    assert proc.returncode == code, proc.stderr
    assert_one_error_line(proc.stderr, fragment)
    assert not (workdir / "idx").exists()


def test_a_mistyped_card_fails_in_seconds_naming_the_card(tmp_path):
    start = time.perf_counter()
    proc = zeroshot("eval", "--dataset", shared("tinyimagenet", "val"), "--card", "tinyimagenett", cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "unknown card 'tinyimagenett' (did you mean 'tinyimagenet'?)")
    assert seconds < 5, f"took {seconds:.1f} s"


@pytest.mark.parametrize("argv, env", [
    (["--debug", *CLASSIFY, "--top-k", "0"], {}),
    ([*CLASSIFY, "--top-k", "0", "--debug"], {}),
    ([*CLASSIFY, "--top-k", "0"], {"ZEROSHOT_DEBUG": "1"}),
], ids=["flag-first", "flag-after-command", "env"])
def test_debug_adds_the_traceback(workdir, argv, env):
    proc = zeroshot(*argv, cwd=workdir, **env)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: --top-k")


@pytest.mark.parametrize("spec, error, fragment", [
    ("ViT-B-32/nonsense", ValueError, "unknown pretrained tag 'nonsense' for ViT-B-32 (known tags: openai"),
    ("ViT-B-23", ValueError, "did you mean ViT-B-32"),
    ("hf-hub:org/repo", ConnectionError, "HF_HUB_OFFLINE is set"),
    ("RN50/openai", ConnectionError, "not in the local cache"),
    ("~/no-such-zeroshot-model", FileNotFoundError, "does not exist"),
    ("no-such-folder/", FileNotFoundError, "model folder no-such-folder/ does not exist"),
    ("local-dir:/no/such/folder", FileNotFoundError, "model folder /no/such/folder does not exist"),
])
def test_model_specs_fail_before_any_download(no_network, spec, error, fragment):
    with pytest.raises(error) as raised:
        load_backbone(spec, device="cpu")
    assert fragment in str(raised.value)


def test_an_unreachable_hub_is_decided_by_one_short_connect(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def unreachable(address, timeout=None, **kwargs):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ConnectionError, match="huggingface.co cannot be reached; use --model default"):
        load_backbone("ViT-B-32/laion2b_s34b_b79k", device="cpu")
    assert attempts == [(("huggingface.co", 443), 2.0)]


@pytest.mark.parametrize("failure, code, fragment", [
    (ZeroDivisionError("boom"), 1, "error: unexpected ZeroDivisionError: boom; rerun with --debug"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later"), 1,
     "error: CUDA error: out of memory CUDA kernel errors might be reported later; lower --batch-size"),
    (OSError(28, "No space left on device"), 1, "No space left on device; rerun with --debug"),
    (KeyboardInterrupt(), 130, "error: interrupted; rerun the same command to resume"),
])
def test_the_boundary_maps_run_time_failures(monkeypatch, capsys, failure, code, fragment):
    def fail(args):
        raise failure

    monkeypatch.delenv("ZEROSHOT_DEBUG", raising=False)
    monkeypatch.setattr("zeroshot.cli.classify.check_run_args", fail)
    with pytest.raises(SystemExit) as exited:
        main(CLASSIFY)
    assert exited.value.code == code
    assert_one_error_line(capsys.readouterr().err, fragment)


def test_a_closed_pipe_ends_quietly():
    """``zeroshot ... | head``: when the reader stops early the command exits 1 without an error line or traceback
    (a real process: the boundary redirects the real stdout)."""
    code = ("import zeroshot.cli as cli, zeroshot.cli.cache as verbs\n"
            "def closed(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "verbs.cmd_ls = closed\ncli.main(['cache', 'ls'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr == ""


@pytest.mark.parametrize("factory, rows, message", [
    ("IVF1024,Flat", 1000, "trains 1024 lists on 1000 rows"),
    ("IDMap,Flat", 1000, "drop the IDMap prefix"),
    ("PQ4", 100, "trains 256 centroids and needs at least that many rows, got 100"),
])
def test_index_build_checks_the_factory_against_the_rows(rng, factory, rows, message):
    with pytest.raises(ValueError, match=message):
        Index.build(unit_rows(rng.normal(size=(rows, 16))), factory=factory)


def test_warnings_are_one_line_too(workdir, tmp_path):
    """A usable but doubtful choice (an IVF index with few rows per list) warns once, on one line, and goes on."""
    features = FeatureSet(unit_rows(np.random.default_rng(0).standard_normal((100, 16))), np.zeros(100, np.int64),
                          np.array([f"r{i}" for i in range(100)]), {"fingerprint": "fp"})
    features.save(tmp_path / "features")
    out = zeroshot("index", "build", tmp_path / "features", "--index", "IVF3,Flat", "--output", tmp_path / "idx",
                   cwd=workdir)
    assert out.returncode == 0, out.stderr
    ours = [line for line in out.stderr.splitlines() if "3 lists on 100 rows" in line]
    assert ours == ["warning: IVF3,Flat trains 3 lists on 100 rows (faiss wants >= 39 per list); use 'auto' or Flat, "
                    "or at most IVF2 for 100 rows"]
    assert "warnings.warn" not in out.stderr and "Traceback" not in out.stderr


def test_version():
    from zeroshot import __version__

    proc = subprocess.run([sys.executable, "-m", "zeroshot", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"zeroshot {__version__}"


def test_library_notes_go_through_the_zeroshot_logger_and_the_cli_prints_them_once(capsys):
    """Notes are records of the ``zeroshot`` logger: the command line prints them on stderr (once, however often
    main runs), warnings with their level; the root logger is left as the user set it."""
    import logging

    from zeroshot.cli import show_notes

    root_level = logging.getLogger().level
    show_notes()
    show_notes()
    logging.getLogger("zeroshot.extraction").info("3 of 8 units already in the cache")
    logging.getLogger("zeroshot.train.distill").warning("skipped 1 training image")
    assert capsys.readouterr().err.splitlines() == ["3 of 8 units already in the cache",
                                                     "warning: skipped 1 training image"]
    assert logging.getLogger().level == root_level


def test_a_run_in_which_every_file_failed_exits_1_naming_them(tiny_model_dir, tmp_path, capsys):
    """Nothing decoded is a failed run (exit 1, one error line naming the files), not an empty result."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("this is not an image\n")
    with pytest.raises(SystemExit) as exited:
        main(["extract", str(bad), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert exited.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: none of the 2 file(s) of {bad} could be decoded: empty.jpg (empty file")
    assert "notes.png (not a decodable image); check that they are image files" in error
