"""What the command line shows while it works: a model build announced at once and timed, a progress bar while
class prompts are encoded, none of it with ``--quiet``; ``serve`` announces its address only once the model is
built."""
from __future__ import annotations

import numpy as np
import pytest

from zeroshot.cli import main


@pytest.fixture
def images(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    return path


def classify(images, model, cache, *extra) -> None:
    main(["classify", str(images), "--classes", "cat,dog,car", "--model", str(model), "--cache-dir", str(cache),
          "--device", "cpu", *extra])


def test_a_model_build_is_announced_at_once_and_timed_then_prompts_show_progress(images, tiny_model_dir, tmp_path,
                                                                                 capsys):
    classify(images, tiny_model_dir, tmp_path / "cache")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == f"loading model {tiny_model_dir} ..."
    assert lines[1].startswith(f"loaded model {tiny_model_dir} in ") and lines[1].endswith(" s")
    assert err.index("encoding tiny.npz") < err.index("encoding texts") and "3/3" in err  # 3 prompts, one bar


def test_quiet_shows_no_loading_lines_and_no_bars(images, tiny_model_dir, tmp_path, capsys):
    classify(images, tiny_model_dir, tmp_path / "cache", "--quiet")
    err = capsys.readouterr().err
    assert "loading model" not in err and "encoding" not in err


def test_a_fully_cached_run_never_builds_the_model(images, tiny_model_dir, tmp_path, capsys):
    classify(images, tiny_model_dir, tmp_path / "cache", "--quiet")
    capsys.readouterr()
    classify(images, tiny_model_dir, tmp_path / "cache")
    assert "loading model" not in capsys.readouterr().err


def test_serve_builds_the_model_before_it_announces_the_address(monkeypatch):
    """The first query must not wait for the model: it is built between binding the port and the address line."""
    from types import SimpleNamespace

    from zeroshot.retrieval import serve as serving

    events = []

    class Server:
        server_address = ("127.0.0.1", 8123)

        def serve_forever(self):
            events.append("serving")
            raise KeyboardInterrupt

        def server_close(self):
            events.append("closed")

    class Backbone:
        @property
        def model(self):
            events.append("model built")

    monkeypatch.setattr(serving, "make_server", lambda *args, **kwargs: events.append("bound") or Server())
    monkeypatch.setattr(serving.log, "info", lambda message, *args: events.append(message % args))
    serving.serve(SimpleNamespace(backbone=Backbone(), index=range(3)))
    assert events == ["bound", "model built", "serving 3 indexed images on http://127.0.0.1:8123/  (Ctrl-C stops)",
                      "serving", "closed"]
