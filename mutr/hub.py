"""Named weights: where each one comes from, how it is checked, and where it lives once fetched.

`REGISTRY` maps a name (``mutr-r50``, ``vggish``, ...) to a `WeightsEntry`; `download` fetches an
entry (or a bare URL) into the cache and returns its local path; `resolve_checkpoint` turns a
registry name or a path into a local checkpoint folder without touching the network.

Cache layout (``$MUTR_HOME``, else ``$XDG_CACHE_HOME/mutr``, else ``~/.cache/mutr``)::

    <home>/<name>/config.json, model.safetensors, tokenizer.json   converted official checkpoint
    <home>/<name>/official/<name>.pth                                the official file it came from
    <home>/<name>/<file>                                             other URL entries (VGGish)
    <home>/downloads/<url-hash>/<file>                               `mutr download URL`

Files from the Hugging Face Hub stay in the Hub's own cache. URLs go through `mutr.fetch`
(resume, sha256, Drive's confirmation step); the hash a file had is kept in ``<file>.sha256``.
Tests point the engine at a local server through ``MUTR_GDRIVE_URL`` (Google Drive's base URL)
and ``MUTR_HF_ENDPOINT`` (the Hub's).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import inspect
import logging
import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

from mutr.errors import DownloadError, InputError
from mutr.fetch import fetch_url, gdrive_id, hash_matches, sha256_file

logger = logging.getLogger(__name__)

Progress = Callable[[int, Optional[int]], None]
"""``progress(done_bytes, total_bytes_or_None)``, called as bytes arrive (once per file)."""

Kind = Literal["official-mutr", "mutr", "backbone", "vggish", "tokenizer"]
KINDS: tuple[str, ...] = ("official-mutr", "mutr", "backbone", "vggish", "tokenizer")

_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class WeightFile:
    """One file of an entry: plain/Drive URLs tried in order, or a file on the Hugging Face Hub."""

    filename: str  # name on disk; for a Hub file, its path inside the repo
    urls: tuple[str, ...] = ()
    hf_repo: str | None = None
    revision: str = "main"
    sha256: str | None = None
    sha256_prefix: str | None = None  # torch.hub file-name suffix: the first 8 hex digits
    size: int | None = None

    @property
    def source(self) -> str:
        if self.hf_repo is not None:
            return f"hf:{self.hf_repo}@{self.revision}/{self.filename}"
        return self.urls[0]

    @property
    def check(self) -> str:
        """How much of the file is verified: ``"sha256"``, ``"prefix"`` or ``"none"``."""
        return "sha256" if self.sha256 else "prefix" if self.sha256_prefix else "none"


@dataclass(frozen=True)
class WeightsEntry:
    """A named set of weights and what mutr does with it once fetched."""

    name: str
    kind: Kind
    files: tuple[WeightFile, ...]
    preset: str | None = None  # the `MUTRConfig` preset an official checkpoint converts to (a backbone: feeds)
    description: str = ""
    licence: str = ""
    scores: tuple[tuple[str, float], ...] = ()  # as reported by the authors
    requires: tuple[str, ...] = ()  # other entries fetched first (the tokenizer of a checkpoint)

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    @property
    def verified(self) -> str:
        """``"sha256"`` when every file has a full hash, ``"prefix"``/``"none"`` otherwise."""
        checks = {f.check for f in self.files}
        return "sha256" if checks == {"sha256"} else "none" if "none" in checks else "prefix"

    @property
    def source(self) -> str:
        """The first source, short: ``gdrive:<id>``, ``hf:<repo>@<revision>`` or the URL; ``(+n)``
        counts fallback URLs."""
        first = self.files[0]
        if first.hf_repo is not None:
            return f"hf:{first.hf_repo}@{first.revision}"
        gid = gdrive_id(first.urls[0])
        more = f" (+{len(first.urls) - 1})" if len(first.urls) > 1 else ""
        return (f"gdrive:{gid}" if gid else first.urls[0]) + more


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


_MUTR_LICENCE = (
    "MIT (OpenGVLab/MUTR code); weights released with the paper, trained on Ref-COCO and "
    "Ref-YouTube-VOS, whose terms (research use) still apply"
)


def _official(name: str, preset: str, backbone: str, drive_id: str, docs_id: str,
              ytvos: tuple[float, float, float], davis: tuple[float, float, float]) -> WeightsEntry:
    # README ids are from the June 2025 README update (c5f5044); the docs/*.md ids are the May 2023
    # links, kept as a fallback (they may be the same file re-uploaded, or gone).
    urls = (_drive(drive_id),) if drive_id == docs_id else (_drive(drive_id), _drive(docs_id))
    return WeightsEntry(
        name=name,
        kind="official-mutr",
        files=(WeightFile(f"{name}.pth", urls=urls),),
        preset=preset,
        description=f"official MUTR {backbone}, Ref-YouTube-VOS (text); converted to a mutr checkpoint",
        licence=_MUTR_LICENCE,
        scores=(("Ref-YouTube-VOS J&F", ytvos[0]), ("Ref-YouTube-VOS J", ytvos[1]),
                ("Ref-YouTube-VOS F", ytvos[2]), ("Ref-DAVIS17 J&F", davis[0]),
                ("Ref-DAVIS17 J", davis[1]), ("Ref-DAVIS17 F", davis[2])),
        requires=("roberta-base-tokenizer",),
    )


def _backbone(name: str, preset: str, filename: str, url: str, what: str, licence: str) -> WeightsEntry:
    return WeightsEntry(name=name, kind="backbone", files=(WeightFile(filename, urls=(url,)),), preset=preset,
                        description=f"{what}: the backbone the official {preset} recipe trains from",
                        licence=licence)


_SWIN_STORAGE = "https://github.com/SwinTransformer/storage/releases/download/"
_VIDEO_SWIN_LICENCE = "Apache-2.0 (SwinTransformer/Video-Swin-Transformer); Kinetics terms apply"
_BACKBONE_FILES = (
    ("swin-l-in22k", "swin-l", "swin_large_patch4_window7_224_22k.pth",
     _SWIN_STORAGE + "v1.0.0/swin_large_patch4_window7_224_22k.pth", "Swin-L ImageNet-22k (224, window 7)",
     "MIT (microsoft/Swin-Transformer); ImageNet terms apply"),
    ("video-swin-t-k400", "video-swin-t", "swin_tiny_patch244_window877_kinetics400_1k.pth",
     _SWIN_STORAGE + "v1.0.4/swin_tiny_patch244_window877_kinetics400_1k.pth",
     "Video-Swin-T Kinetics-400 (ImageNet-1k init; named in MUTR docs/Ref-YouTube-VOS.md)", _VIDEO_SWIN_LICENCE),
    ("video-swin-s-k400", "video-swin-s", "swin_small_patch244_window877_kinetics400_1k.pth",
     _SWIN_STORAGE + "v1.0.4/swin_small_patch244_window877_kinetics400_1k.pth",
     "Video-Swin-S Kinetics-400 (ImageNet-1k init)", _VIDEO_SWIN_LICENCE),
    ("video-swin-b-k600", "video-swin-b", "swin_base_patch244_window877_kinetics600_22k.pth",
     _SWIN_STORAGE + "v1.0.4/swin_base_patch244_window877_kinetics600_22k.pth",
     "Video-Swin-B Kinetics-600 (ImageNet-22k init)", _VIDEO_SWIN_LICENCE),
    ("convnext-l-in22k", "convnext-l", "convnext_large_22k_224.pth",
     "https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth", "ConvNeXt-L ImageNet-22k (224)",
     "MIT (facebookresearch/ConvNeXt); ImageNet terms apply"),
    ("convmae-b-in1k", "convmae-b", "convmae_base_1600ep.pth", _drive("1AEPivXw0A0b_m5EwEi6fg2pOAoDr8C31"),
     "ConvMAE-B ImageNet-1k self-supervised, 1600 epochs (Alpha-VL/ConvMAE README)",
     "MIT (Alpha-VL/ConvMAE); ImageNet terms apply"),
)


_VGGISH_LICENCE = "Apache-2.0 (Google's AudioSet VGGish weights)"
_TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

# The model zoo of OpenGVLab/MUTR README.md (c5f5044): both tables (Ref-YouTube-VOS, Ref-DAVIS17,
# J&F / J / F). The README ids come first, the docs/Ref-YouTube-VOS.md ids (May 2023) second. No
# sha256 or size is published for any of them.
_ENTRIES: tuple[WeightsEntry, ...] = (
    _official("mutr-r50", "r50", "ResNet-50", "1W1hSYd1DDFdhl46rpE1Y1OgsG1N5Zh7B",
              "1bNkR4n7be3hYwtaYp75c2WNrbmyh-Ik2", (61.9, 60.4, 63.4), (65.3, 62.4, 68.2)),
    _official("mutr-r101", "r101", "ResNet-101", "1tIX6jmM9MjCxbMDh89e2LugY2ul12GD6",
              "1ZOev9AZM_GRpnsKjg0_gpRFKGrJcm0S5", (63.6, 61.8, 65.4), (65.3, 61.9, 68.6)),
    _official("mutr-swin-l", "swin-l", "Swin-L", "1PrWZjppjxEvJe2wQ7a3augG4iRQX1pLJ",
              "1e2-BXV3HGxPxWFKO-z34PZDBShCzEmz9", (68.4, 66.4, 70.4), (68.0, 64.8, 71.3)),
    _official("mutr-video-swin-t", "video-swin-t", "Video-Swin-T", "1-TkdQksTrmB253ao99NgnmsrsQkous2V",
              "1-TkdQksTrmB253ao99NgnmsrsQkous2V", (64.0, 62.2, 65.8), (66.5, 63.0, 70.0)),
    _official("mutr-video-swin-s", "video-swin-s", "Video-Swin-S", "1Z4ENlWAKIEp44HC0OH4CjsZXgQTMTvDK",
              "1gVeOE20nmZzONTQSdBhPHBg_hBZnXgxI", (65.1, 63.0, 67.1), (66.1, 62.6, 69.8)),
    _official("mutr-video-swin-b", "video-swin-b", "Video-Swin-B", "1-ezn8H2GPTc7o6cUGN1r3DI6sDLF2J5s",
              "11poAYPbJDB2R_DlsDhRrSYvgOzaihpTN", (67.5, 65.4, 69.6), (66.4, 62.8, 70.0)),
    _official("mutr-convnext-l", "convnext-l", "ConvNeXt-L", "1w4o392nrKEDd2JqlBcu5r1ZqoSAMtFwD",
              "1d6C73EmSpQZBIuhBDu1gnzibDXYxCYDz", (66.7, 64.8, 68.7), (69.0, 65.6, 72.4)),
    _official("mutr-convmae-b", "convmae-b", "ConvMAE-B", "1_hHPVici-RIcn7ocvn6RPDSMG4gJA5Pj",
              "1kM9VLjdzl_YKN09WD6iSzmvtxVYU_NiE", (66.9, 64.7, 69.1), (69.2, 65.6, 72.8)),
    # The backbone weights each official training recipe starts from (`--backbone_pretrained`),
    # for `mutr train` (model.backbone.pretrained); converted by the preset's backbone family
    # (`convert_pretrained`). MUTR's docs name only the Video-Swin-T file; the others are the
    # files of the same releases that the official loaders read (Swin: init_weights, checkpoint
    # ['model']; ConvNeXt: checkpoint_filter_fn; Video-Swin: ['state_dict'] with backbone.*;
    # ConvMAE: ['model']).
    *(_backbone(*spec) for spec in _BACKBONE_FILES),
    WeightsEntry(
        name="vggish",
        kind="vggish",
        files=(WeightFile("vggish-10086976.pth", urls=(_TORCHVGGISH + "vggish-10086976.pth",),
                          sha256_prefix="10086976"),),
        description="VGGish audio features, torchvggish layout (features.*, embeddings.*)",
        licence=_VGGISH_LICENCE + ", PyTorch port by harritaylor/torchvggish",
    ),
    WeightsEntry(
        name="vggish-pca",
        kind="vggish",
        files=(WeightFile("vggish_pca_params-970ea276.pth",
                          urls=(_TORCHVGGISH + "vggish_pca_params-970ea276.pth",),
                          sha256_prefix="970ea276"),),
        description="VGGish PCA/whitening parameters (pca_eigen_vectors, pca_means)",
        licence=_VGGISH_LICENCE + ", PyTorch port by harritaylor/torchvggish",
    ),
    WeightsEntry(
        name="vggish-torchaudio",
        kind="vggish",
        # torchaudio.prototype.pipelines.VGGISH: download_asset("models/vggish.pt"), no hash given
        files=(WeightFile("vggish.pt", urls=("https://download.pytorch.org/torchaudio/models/vggish.pt",)),),
        description="VGGish audio features, torchaudio layout (features_network.*, embedding_network.*)",
        licence=_VGGISH_LICENCE + ", redistributed by torchaudio (BSD-2-Clause code)",
    ),
    WeightsEntry(
        name="roberta-base-tokenizer",
        kind="tokenizer",
        files=tuple(WeightFile(f, hf_repo="FacebookAI/roberta-base")
                    for f in ("tokenizer.json", "vocab.json", "merges.txt", "config.json")),
        description="RoBERTa-base tokenizer (official checkpoints hold the RoBERTa weights themselves)",
        licence="MIT (FacebookAI/roberta-base)",
    ),
)

REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}


def list_entries() -> list[WeightsEntry]:
    """Every registered entry, in registry order."""
    return list(REGISTRY.values())


def get_entry(name: str) -> WeightsEntry:
    """The entry called `name`; an unknown name raises `DownloadError` with the nearest names."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(REGISTRY), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise DownloadError(f"no weights called {name!r}; {hint}see `mutr download --list`") from None


# --------------------------------------------------------------------------- local paths

DEMO_ENV = "MUTR_DEMO_CHECKPOINT"


def demo_checkpoint_dir() -> Path:
    """Where the bundled demo model lives: $MUTR_DEMO_CHECKPOINT or examples/demo/checkpoint.

    Here rather than in mutr.predictor so that finding it does not import torch (``mutr app``
    starts without torch); ``mutr.predictor.demo_checkpoint_dir`` is the same function."""
    env = os.environ.get(DEMO_ENV)
    if env:
        return Path(env).expanduser()
    import mutr

    return Path(mutr.__file__).resolve().parents[1] / "examples" / "demo" / "checkpoint"


def mutr_home() -> Path:
    """Root of mutr's cache: ``$MUTR_HOME``, else ``$XDG_CACHE_HOME/mutr``, else ``~/.cache/mutr``."""
    if os.environ.get("MUTR_HOME"):
        return Path(os.environ["MUTR_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mutr"


def _entry_dir(entry: WeightsEntry, dest_dir: str | os.PathLike | None) -> Path:
    return Path(dest_dir).expanduser() if dest_dir is not None else mutr_home() / entry.name


def _is_converted(folder: Path) -> bool:
    # config.json is moved in last, so its presence marks a complete checkpoint
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _hf_cached(wf: WeightFile, local_dir: Path | None) -> Path | None:
    if local_dir is not None:
        path = local_dir / wf.filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(wf.hf_repo, wf.filename, revision=wf.revision)  # type: ignore[arg-type]
    return Path(found) if isinstance(found, str) else None


def _local_path(entry: WeightsEntry, dest_dir: str | os.PathLike | None = None) -> Path | None:
    """Where `entry` is on disk, or None when (part of) it is missing."""
    folder = _entry_dir(entry, dest_dir)
    if entry.kind == "official-mutr":
        return folder if _is_converted(folder) else None
    if entry.files[0].hf_repo is not None:
        paths = [_hf_cached(wf, None if dest_dir is None else folder) for wf in entry.files]
    else:
        paths = [folder / wf.filename for wf in entry.files]
    if not all(p is not None and p.is_file() for p in paths):
        return None
    return paths[0].parent if _is_folder(entry) else paths[0]  # type: ignore[union-attr]


def _is_folder(entry: WeightsEntry) -> bool:
    """Checkpoints and tokenizers are used as folders; a single weight file as itself."""
    return entry.kind in ("official-mutr", "mutr", "tokenizer") or len(entry.files) > 1


def is_downloaded(entry: WeightsEntry | str, dest_dir: str | os.PathLike | None = None) -> bool:
    """Whether `entry` is fully on disk (never touches the network)."""
    return _local_path(get_entry(entry) if isinstance(entry, str) else entry, dest_dir) is not None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path for an existing file/folder or a downloaded registry entry (no network)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise DownloadError(f"{name!r} is neither an existing path nor a registry name{hint}; "
                            "see `mutr download --list`")
    local = _local_path(REGISTRY[name])
    if local is None:
        raise DownloadError(f"{name!r} is not downloaded yet; run `mutr download {name}` first")
    return local


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """The local checkpoint folder for a registry name that was downloaded, or an existing path."""
    name = str(name_or_path)
    if name in REGISTRY and REGISTRY[name].kind not in ("official-mutr", "mutr"):
        raise DownloadError(f"{name!r} is a {REGISTRY[name].kind} entry, not a MUTR checkpoint; "
                            "see `mutr download --list` for checkpoints")
    return resolve(name_or_path)


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class FileReport:
    """What `download` fetched or found: one per file. `verified` is False when no hash was known."""

    path: Path
    sha256: str | None
    verified: bool
    source: str


def download(
    name_or_url: str,
    *,
    sha256: str | None = None,
    dest_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    on_file: Callable[[FileReport], None] | None = None,
) -> Path:
    """Fetch a registry entry or a URL and return its local path.

    A registry name returns: a converted checkpoint folder (``official-mutr``; the ``.pth`` is
    converted with `mutr.convert.convert_checkpoint`), the file (single-file entries) or the folder
    holding the files. A URL returns the file. `sha256` checks (and overrides the registry's hash
    of) a single-file download; `dest_dir` replaces the cache folder of this entry; `progress`
    receives ``(done, total)`` bytes per file; `on_file` one `FileReport` per file.
    """
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _HEX64.fullmatch(sha256):
            raise InputError(f"sha256 must be 64 hex digits, got {sha256!r}; check the value given")
    if re.match(r"https?://", name_or_url):
        return _download_url(name_or_url, sha256, dest_dir, progress, on_file)
    entry = get_entry(name_or_url)
    if sha256 is not None and len(entry.files) != 1:
        raise InputError(f"a sha256 checks a single file, but {entry.name} has {len(entry.files)}; drop it")
    if entry.kind == "official-mutr":
        return _download_official(entry, sha256, dest_dir, progress, on_file)

    local_dir = None if dest_dir is None else Path(dest_dir).expanduser()
    folder = _entry_dir(entry, dest_dir)
    paths = []
    for wf in entry.files:
        if wf.hf_repo is not None:
            paths.append(_fetch_hf(wf, local_dir, sha256, progress, on_file))
        else:
            paths.append(_fetch_any(wf, folder / wf.filename, sha256, progress, on_file))
    return paths[0].parent if _is_folder(entry) else paths[0]


def _download_url(url: str, sha256: str | None, dest_dir: str | os.PathLike | None,
                  progress: Progress | None, on_file: Callable[[FileReport], None] | None) -> Path:
    gid = gdrive_id(url)
    filename = f"gdrive-{gid}" if gid else urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1]
    filename = filename or "download"
    if dest_dir is not None:
        folder = Path(dest_dir).expanduser()
    else:  # one folder per URL, so two URLs ending in the same name never share a cache entry
        folder = mutr_home() / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:12]
    return _fetch_any(WeightFile(filename, urls=(url,)), folder / filename, sha256, progress, on_file)


def _download_official(entry: WeightsEntry, sha256: str | None, dest_dir: str | os.PathLike | None,
                       progress: Progress | None, on_file: Callable[[FileReport], None] | None) -> Path:
    out = _entry_dir(entry, dest_dir)
    if _is_converted(out):
        return out
    extras = [download(req, progress=progress, on_file=on_file) for req in entry.requires]
    wf = entry.files[0]
    pth = _fetch_any(wf, out / "official" / wf.filename, sha256, progress, on_file)
    with _locked(out / "config.json"):
        if not _is_converted(out):  # another process may have finished it meanwhile
            _convert(entry, pth, out, extras)
    return out


def _convert(entry: WeightsEntry, pth: Path, out: Path, extras: list[Path]) -> None:
    """Convert into a scratch folder, then move the files in with config.json last."""
    from mutr.convert import convert_checkpoint  # written separately; imported only when needed

    for stale in out.glob(".converting-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    scratch = out / f".converting-{os.getpid()}"  # not created here: convert_checkpoint makes it
    try:
        convert_checkpoint(pth, scratch, preset=entry.preset)
        for extra in extras:  # interfaces.md: a checkpoint is config.json + model.safetensors + tokenizer.json
            tok = extra / "tokenizer.json" if extra.is_dir() else None
            if tok is not None and tok.is_file() and not (scratch / "tokenizer.json").exists():
                shutil.copyfile(tok, scratch / "tokenizer.json")
        for item in sorted(scratch.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- Hugging Face Hub


class _CallbackBar:
    """Stands in for tqdm inside `hf_hub_download`: forwards byte counts, prints nothing."""

    def __init__(self, progress: Progress | None, total: int | None = None, initial: int = 0,
                 **_: Any) -> None:
        self.progress, self.total, self.n = progress, total, initial
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(int(self.n), self.total)

    def update(self, n: int | float | None = 1) -> None:
        self.n += n or 0
        self._report()

    def close(self) -> None:
        pass

    def __enter__(self) -> _CallbackBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _fetch_hf(wf: WeightFile, local_dir: Path | None, sha256: str | None, progress: Progress | None,
              on_file: Callable[[FileReport], None] | None) -> Path:
    from huggingface_hub import constants, hf_hub_download

    kwargs: dict[str, Any] = {"revision": wf.revision,
                              "endpoint": os.environ.get("MUTR_HF_ENDPOINT") or None}
    if local_dir is not None:
        kwargs["local_dir"] = local_dir
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        kwargs["tqdm_class"] = lambda **kw: _CallbackBar(progress, **kw)
    what = f"{wf.filename} from {wf.hf_repo}@{wf.revision}"
    if not constants.is_offline_mode() and _hf_cached(wf, local_dir) is None:
        _check_reachable(kwargs["endpoint"] or constants.ENDPOINT, what)
    try:
        path = Path(hf_hub_download(wf.hf_repo, wf.filename, **kwargs))  # type: ignore[arg-type]
    except Exception as exc:  # huggingface_hub raises many types; each becomes one line
        name = type(exc).__name__
        if constants.is_offline_mode() and name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            msg = f"{what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; unset it to download"
        elif name in ("RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
                      "RemoteEntryNotFoundError", "GatedRepoError"):
            msg = f"{what} was not found on the Hugging Face Hub ({name}); check the repo, file and revision"
        elif name == "LocalEntryNotFoundError":
            msg = f"cannot reach the Hugging Face Hub for {what}; check the network connection (or HF_ENDPOINT)"
        else:
            first = (str(exc).strip().splitlines() or [name])[0]
            msg = f"downloading {what} failed: {first}"
        raise DownloadError(msg) from exc
    digest, verified = None, False
    expected = sha256 or wf.sha256
    if expected or wf.sha256_prefix:
        digest = sha256_file(path)
        if not hash_matches(digest, expected, wf.sha256_prefix):
            target = path.resolve()
            path.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise DownloadError(f"{what} has sha256 {digest}, expected {expected or wf.sha256_prefix + '…'};"
                                " the file was deleted; check the hash or the revision")
        verified = True
    if on_file is not None:
        on_file(FileReport(path, digest, verified, wf.source))
    return path


def _check_reachable(endpoint: str, what: str) -> None:
    """Fail fast when the Hub's host cannot be reached at all: `hf_hub_download` would retry with
    back-off for ~25 s before giving up on a file it has not cached. Skipped behind a proxy."""
    if urllib.request.getproxies():
        return
    parts = urllib.parse.urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise DownloadError(f"cannot reach {parts.hostname} for {what} ({exc}); check the network "
                            "connection (or HF_ENDPOINT)") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Keeps two processes from writing the same `.part` file at once."""
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock comes with huggingface_hub
        yield
        return
    # under the cache root, not beside the file: a --dir folder gets only the files themselves
    locks = mutr_home() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]) + ".lock"):
        yield


def _fetch_any(wf: WeightFile, final: Path, sha256: str | None, progress: Progress | None,
               on_file: Callable[[FileReport], None] | None) -> Path:
    """Try each URL of `wf` in turn; the first failure is the one reported."""
    expected, prefix = sha256 or wf.sha256, None if sha256 else wf.sha256_prefix
    errors: list[DownloadError] = []
    for url in wf.urls:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with _locked(final):
                digest = fetch_url(url, final, expected, prefix, wf.size, progress)
        except DownloadError as exc:
            errors.append(exc)
            if url != wf.urls[-1]:
                logger.warning("%s; trying the next source", exc)
            continue
        if on_file is not None:
            on_file(FileReport(final, digest, bool(expected or prefix), url))
        return final
    more = f" (and {len(errors) - 1} fallback source(s) failed too)" if len(errors) > 1 else ""
    raise DownloadError(f"{errors[0]}{more}") from errors[0]
