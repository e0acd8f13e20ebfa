"""Hub names checked before any download: known open_clip architectures and pretrained tags, weights already in
the local cache, and a hub that can be reached. Offline, a hub name fails at once with the offline alternatives
instead of a minute of retries; with a hub, the download itself stays open_clip's."""
from __future__ import annotations

import difflib
import os
import re
import socket
import urllib.parse
from pathlib import Path

HF_HUB_PREFIX = "hf-hub:"
HUB_TIMEOUT_S = 2.0  # one TCP connect decides whether the hub is reachable (instead of a minute of retries)
OFFLINE_ALTERNATIVES = ("use --model default (the shipped offline model), a model folder (or local-dir:PATH), "
                        "or NAME/PATH with a weights file on disk (pretrained= in Python)")


def hub_offline() -> bool:
    """True when the user switched the Hugging Face hub off (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a download from ``url`` can start: False offline, else one short TCP connect to its host."""
    if hub_offline():
        return False
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _hf_cached(repo: str, filenames: list[str]) -> bool:
    """True when any of ``filenames`` of hub repo ``repo`` is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in filenames)


def _weight_names(filename: str) -> list[str]:
    """The weight files open_clip tries for ``filename`` (it prefers a safetensors twin)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    twins = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return [filename, *twins, *([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else [])]


def _weights_source(name: str, pretrained: str) -> tuple[str, bool]:
    """(download URL, already cached?) of an open_clip pretrained tag, resolved the way open_clip downloads it."""
    from huggingface_hub import constants
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, pretrained)
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        return f"{constants.ENDPOINT}/{repo}", _hf_cached(repo, _weight_names(filename))
    url = cfg.get("url", "")
    return url, (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()


def _check_downloadable(spec: str, url: str, cached: bool) -> None:
    """Fail at once, naming the offline alternatives, when weights are not cached and their host is unreachable."""
    if cached or hub_reachable(url):
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{urllib.parse.urlsplit(url).hostname} cannot be reached"
    raise ConnectionError(f"cannot download {spec}: its weights are not in the local cache and {why}; "
                          + OFFLINE_ALTERNATIVES)


def check_architecture(name: str, spec: str | None = None) -> None:
    """Refuse an unknown open_clip architecture, naming close ones; ``spec`` is the ``NAME/TAG`` it was split from,
    which may have been meant as a model folder."""
    import open_clip

    if open_clip.get_model_config(name) is not None:
        return
    close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    if spec is not None:
        raise FileNotFoundError(f"model folder {spec} does not exist, and {name!r} is not an open_clip "
                                f"architecture{hint}; give an existing model folder, 'default' or an open_clip "
                                "NAME/TAG")
    raise ValueError(f"unknown model {name!r}{hint}; give a model folder, 'default', an open_clip name "
                     "(open_clip.list_models(), e.g. ViT-B-32) or hf-hub:org/repo")


def check_open_clip_spec(name: str, pretrained: str | None, spec: str | None = None) -> None:
    """Refuse, before any download, an unknown open_clip architecture or tag, or uncached weights while offline."""
    import open_clip

    check_architecture(name, spec)
    if pretrained is None or Path(pretrained).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not open_clip.is_pretrained_cfg(name, pretrained):
        known = f"known tags: {', '.join(tags[:6])}{' ...' if len(tags) > 6 else ''}" if tags else "it has none"
        raise ValueError(f"unknown pretrained tag {pretrained!r} for {name} ({known}); give one of its tags or a "
                         "weights file that exists")
    _check_downloadable(f"{name}/{pretrained}", *_weights_source(name, pretrained))


def check_hf_hub_spec(spec: str) -> None:
    """Refuse, before any download, an ``hf-hub:org/repo`` whose config or weights are not cached while offline."""
    from huggingface_hub import constants
    from open_clip.constants import HF_CONFIG_NAME

    repo = spec[len(HF_HUB_PREFIX):]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"{spec!r} is not a hub model name; write it as hf-hub:org/repo")
    cached = _hf_cached(repo, [HF_CONFIG_NAME]) and _hf_cached(repo, _weight_names(""))
    _check_downloadable(spec, f"{constants.ENDPOINT}/{repo}", cached)
