"""Image data sets by name or path: ``load(name_or_path) -> (X, y)``.

``X`` is ``uint8`` (0..255) of shape (N, H, W) for grayscale or (N, C, H, W) for colour,
except ``.npy``/``.npz`` files, which keep their dtype (float images must be finite; an
(N, H, W, C) array is refused as channels-last); ``y`` is an ``int64`` label vector or ``None``:
integer labels only (integer-valued floats are converted exactly; NaN, non-integer or string
labels are refused, naming the file).

Named sets (files are looked for, in order, in ``data_home``, ``$NBCLUST_DATA``,
``~/.cache/nbclust`` and the system folders ``/usr/share/datasets``,
``/usr/local/share/datasets``; each folder directly and its sub-folder named after the set):

=================== ======= ======= ==========================================================
name                N       image   files
=================== ======= ======= ==========================================================
digits              1797    8x8     inside scikit-learn (0..16 scaled to 0..255, rounded)
mnist               60000   28x28   ``mnist_train.npz`` or the train IDX ``.gz`` pair
mnist-test          10000   28x28   ``mnist_test.npz`` or the t10k IDX ``.gz`` pair
mnist-full          70000   28x28   both of the above (train then test)
fashion-mnist       70000   28x28   the four IDX ``.gz`` (``apt-get install dataset-fashion-mnist``);
                                    ``fashion-mnist-train`` (60000), ``fashion-mnist-test`` (10000)
usps                9298    16x16   LIBSVM ``usps.bz2`` + ``usps.t.bz2`` (values -1..1), or ``usps.npz``
coil20              1440    128x128 folder ``coil-20-proc`` of ``objK__i.png`` (label K-1), or ``coil20.npz``
yaleb               2414    32x32   ``yaleb32.npz`` (Extended Yale B, 38 subjects)
=================== ======= ======= ==========================================================

``download=True`` fetches MNIST, Fashion-MNIST and USPS from their public URLs into
``~/.cache/nbclust/<set>/`` (or ``data_home``), checking each file's published digest and
renaming it into place only when complete.  ``MIRROR`` (or ``$NBCLUST_MIRROR``), when set,
replaces the URL by ``<MIRROR>/<set>/<file>``.

Paths: ``.npz`` (array ``x``, optional ``y``), ``.npy`` (memory-mapped), an IDX file (raw
or ``.gz``; labels are read from the matching ``labels-idx1`` file beside it when present) or a
folder of PNG images (one sub-folder per class gives labels; see :func:`load_png_folder`).
:func:`content_digest` is a data set's identity on ``--resume``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import re
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from nbclust.data.io import atomic_path, remove_stale
from nbclust.registry import DATASETS as NAMES

SYSTEM_DIRS = ("/usr/share/datasets", "/usr/local/share/datasets")
MIRROR: str | None = None

_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
# (set folder, file) -> (url, algorithm, digest); digests as published by the data providers
# (MNIST/Fashion: sha256 as used by TensorFlow Datasets; USPS: md5 as used by torchvision).
FILES = {
    ("mnist", "train-images-idx3-ubyte.gz"): (_MNIST, "sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    ("mnist", "train-labels-idx1-ubyte.gz"): (_MNIST, "sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ("mnist", "t10k-images-idx3-ubyte.gz"): (_MNIST, "sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    ("mnist", "t10k-labels-idx1-ubyte.gz"): (_MNIST, "sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ("fashion-mnist", "train-images-idx3-ubyte.gz"): (_FASHION, "sha256", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    ("fashion-mnist", "train-labels-idx1-ubyte.gz"): (_FASHION, "sha256", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    ("fashion-mnist", "t10k-images-idx3-ubyte.gz"): (_FASHION, "sha256", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    ("fashion-mnist", "t10k-labels-idx1-ubyte.gz"): (_FASHION, "sha256", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ("usps", "usps.bz2"): (_LIBSVM, "md5", "ec16c51db3855ca6c91edd34d0e9b197"),
    ("usps", "usps.t.bz2"): (_LIBSVM, "md5", "8ea070ee2aca1ac39742fdd1ef5ed118"),
}
_SPLITS = {
    "mnist": ("mnist", ("train",)),
    "mnist-test": ("mnist", ("t10k",)),
    "mnist-full": ("mnist", ("train", "t10k")),
    "fashion-mnist": ("fashion-mnist", ("train", "t10k")),
    "fashion-mnist-train": ("fashion-mnist", ("train",)),
    "fashion-mnist-test": ("fashion-mnist", ("t10k",)),
}
_NPZ = {"train": "mnist_train.npz", "t10k": "mnist_test.npz"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load(name_or_path, *, data_home=None, download=False):
    """``(X, y)`` for a set name from :data:`NAMES` or a file/folder path (see the module doc)."""
    key = str(name_or_path)
    if key in NAMES:
        return _load_named(key, data_home, download)
    path = Path(key).expanduser()
    if not path.exists():
        if os.sep not in key and "." not in key:
            raise ValueError(f"unknown dataset {key!r}; expected a path or one of {', '.join(NAMES)}")
        raise ValueError(f"{key}: no such file or folder")
    if path.is_dir():
        x, y = load_png_folder(path)
    elif path.name.endswith(".npz"):
        x, y = _load_npz(path)
    elif path.name.endswith(".npy"):
        x, y = _load_npy(path), None
    else:
        x, y = read_idx(path), None
        labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        if labels != path and labels.exists():
            y = read_idx(labels)
    return _checked(x, y, key)


# ----------------------------------------------------------------------------- named sets
def search_dirs(data_home=None) -> list[Path]:
    """Folders searched for named sets, in order."""
    dirs = [data_home, os.environ.get("NBCLUST_DATA"), Path.home() / ".cache" / "nbclust", *SYSTEM_DIRS]
    return [Path(d).expanduser() for d in dirs if d]


def _find(names, sub, data_home, *alternatives):
    """First folder holding every file of ``names`` (or of an alternative list), searched directly
    and in ``<folder>/<sub>``; ``(folder, index of the list found)`` or ``(None, None)``."""
    for d in search_dirs(data_home):
        for folder in (d / sub, d):
            for i, files in enumerate((names, *alternatives)):
                if all((folder / n).exists() for n in files):
                    return folder, i
    return None, None


def _missing(name, files, sub, data_home, hint=""):
    where = ", ".join(str(d) for d in search_dirs(data_home)[:3])
    return ValueError(
        f"dataset {name!r} not found: put {' + '.join(files)} in one of {where} "
        f"(or a '{sub}' sub-folder){hint}"
    )


def _load_named(name, data_home, download):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
        return x, d.target.astype(np.int64)
    if name in _SPLITS:
        sub, parts = _SPLITS[name]
        xs, ys = zip(*(_load_split(name, sub, p, data_home, download) for p in parts))
        return _checked(np.concatenate(xs), np.concatenate(ys), name)
    if name == "usps":
        return _load_usps(data_home, download)
    if name == "yaleb":
        folder, _ = _find(["yaleb32.npz"], "yaleb", data_home)
        if folder is None:
            raise _missing(name, ["yaleb32.npz"], "yaleb", data_home)
        return _checked(*_load_npz(folder / "yaleb32.npz"), name)
    folder, which = _find(["coil20.npz"], "coil20", data_home, ["coil-20-proc"])  # coil20
    if which == 0:
        return _checked(*_load_npz(folder / "coil20.npz"), name)
    if which == 1:
        return _checked(*_load_coil(folder / "coil-20-proc"), name)
    raise _missing(name, ["the folder coil-20-proc (from coil-20-proc.zip)"], "coil20", data_home,
                   "; download it from https://www.cs.columbia.edu/CAVE/software/softlib/coil-20.php")


def _load_split(name, sub, part, data_home, download):
    files = [f"{part}-images-idx3-ubyte.gz", f"{part}-labels-idx1-ubyte.gz"]
    npz = [_NPZ[part]] if sub == "mnist" else None
    folder, which = _find(files, sub, data_home, *([npz] if npz else []))
    if folder is None and download:
        folder, which = fetch(sub, files, data_home), 0
    if folder is None:
        hint = "; or run with --download (download=True)"
        if sub == "fashion-mnist":
            hint += "; on Debian/Ubuntu: apt-get install dataset-fashion-mnist"
        raise _missing(name, files + (["(or " + npz[0] + ")"] if npz else []), sub, data_home, hint)
    if which == 1:
        return _load_npz(folder / npz[0])
    return read_idx(folder / files[0]), read_idx(folder / files[1])


def _load_usps(data_home, download):
    files = ["usps.bz2", "usps.t.bz2"]
    folder, which = _find(files, "usps", data_home, ["usps.npz"])
    if which == 1:
        return _checked(*_load_npz(folder / "usps.npz"), "usps")
    if folder is None and download:
        folder = fetch("usps", files, data_home)
    if folder is None:
        raise _missing("usps", files, "usps", data_home, "; or run with --download (download=True)")
    xs, ys = zip(*(_read_libsvm_usps(folder / f) for f in files))
    return _checked(np.concatenate(xs), np.concatenate(ys), "usps")


def _read_libsvm_usps(path):
    """LIBSVM USPS: ``label i:v ...`` with labels 1..10 and 256 values in [-1, 1]."""
    try:
        lines = bz2.decompress(path.read_bytes()).decode().split("\n")
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable bz2 LIBSVM file ({exc})") from None
    rows = [ln.split() for ln in lines if ln.strip()]
    x = np.zeros((len(rows), 256))
    y = np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        y[i] = int(float(row[0])) - 1
        for item in row[1:]:
            j, v = item.split(":")
            x[i, int(j) - 1] = float(v)
    return np.rint((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8).reshape(-1, 16, 16), y


def _load_coil(folder):
    files = sorted(folder.glob("obj*__*.png"), key=lambda p: [int(s) for s in re.findall(r"\d+", p.name)])
    if not files:
        raise ValueError(f"{folder}: no objK__i.png images (the COIL-20 processed set)")
    y = np.array([int(re.match(r"obj(\d+)__", p.name).group(1)) - 1 for p in files], np.int64)
    return np.stack([read_png(p) for p in files]), y


def fetch(sub, files, data_home=None) -> Path:
    """Download ``files`` of set folder ``sub`` into the cache, verified; the folder holding them."""
    base = MIRROR or os.environ.get("NBCLUST_MIRROR")
    folder = Path(data_home or Path.home() / ".cache" / "nbclust").expanduser() / sub
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)  # partial downloads of killed processes
    for name in files:
        target = folder / name
        if target.exists():
            continue
        url, algorithm, digest = FILES[(sub, name)]
        url = f"{base.rstrip('/')}/{sub}/{name}" if base else url + name
        with atomic_path(target) as tmp:
            h = hashlib.new(algorithm)
            try:
                with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                    while chunk := r.read(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
            except OSError as exc:
                raise ValueError(f"download of {url} failed ({exc}); put {name} in {folder} by hand") from None
            if h.hexdigest() != digest:
                raise ValueError(f"download of {url}: {algorithm} mismatch (got {h.hexdigest()}, expected {digest})")
    return folder


# ----------------------------------------------------------------------------- file formats
def read_idx(path) -> np.ndarray:
    """An IDX array (raw or gzip), header validated: magic ``0 0 type ndim``, then big-endian dims."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES or not 1 <= data[3] <= 4:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX file has {len(data)} bytes, header says {expected} (truncated or corrupt)")
    a = np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(shape)
    return a.astype(dtype.newbyteorder("="))


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d.files:
                raise ValueError(f"{path}: no array 'x' in the .npz (found {', '.join(d.files) or 'none'})")
            return _npz_array(d, "x", path), (_npz_array(d, "y", path) if "y" in d.files else None)
    except ValueError:
        raise
    except Exception as exc:  # truncated zip, bad CRC, ...
        raise ValueError(f"{path}: truncated or corrupt .npz file ({exc})") from None


def _npz_array(d, name, path):
    try:
        return d[name]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise ValueError(f"{path}: array {name!r} holds Python objects (dtype object), which nbclust does not "
                         "load (it never unpickles); save it as a numeric array, e.g. np.stack(...)") from None


def _load_npy(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: truncated or corrupt .npy file ({exc})") from None


def load_png_folder(folder):
    """PNG images of ``folder`` (sorted); one sub-folder per class gives labels.  Hidden entries
    are ignored; images beside class sub-folders, or folders inside a class folder, are refused
    (nothing is dropped silently)."""
    folder = Path(folder)
    classes, top = _png_entries(folder)
    if classes and top:
        raise ValueError(f"{folder}: {len(top)} .png images at the top level beside {len(classes)} class "
                         f"sub-folders ({', '.join(c.name for c in classes[:3])}{', ...' if len(classes) > 3 else ''}); "
                         "move every image into a class sub-folder, or the sub-folders out")
    files = [(f, -1) for f in top]
    for k, c in enumerate(classes):
        nested, images = _png_entries(c)
        if nested:
            raise ValueError(f"{c}: a class folder holds sub-folders ({nested[0].name}); "
                             "nbclust reads one level of class folders")
        files += [(f, k) for f in images]
    if not files:
        raise ValueError(f"{folder}: no .png images found (empty dataset)")
    images = [read_png(f) for f, _ in files]
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"{folder}: images differ in size or channels; resize them to one size")
    y = np.array([k for _, k in files], np.int64) if classes else None
    return np.stack(images), y


def _png_entries(folder):
    """(sub-folders, .png files) of ``folder``, sorted, hidden entries skipped."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_dir()], [p for p in entries if p.suffix.lower() == ".png" and p.is_file()]


def read_png(path) -> np.ndarray:
    """A PNG as uint8 (H, W) or (3, H, W) (alpha dropped); matplotlib if present, else a small reader.
    An unreadable file is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        return _read_png(path)
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a readable PNG image ({exc})") from None
    except Exception as exc:  # PIL: SyntaxError "not a PNG file", UnidentifiedImageError, truncated data, ...
        raise ValueError(f"{path}: not a readable PNG image ({type(exc).__name__}: {exc})") from None


def _read_png(path):
    try:
        import matplotlib.image as mpimg
    except ImportError:
        return _read_png_zlib(path)
    a = mpimg.imread(path)
    if a.dtype != np.uint8:
        a = np.rint(a * 255).astype(np.uint8)
    if a.ndim == 3:
        a = a[..., :3].transpose(2, 0, 1) if not np.all(a[..., 0] == a[..., 1]) else a[..., 0]
    return a


def _read_png_zlib(path):
    """Pure-Python reader for 8-bit, non-interlaced grayscale(/alpha) or RGB(/alpha) PNG."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, head = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 21])
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    if head is None:
        raise ValueError(f"{path}: PNG without header")
    w, h, depth, color, _, _, interlace = head
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced gray/RGB PNG supported without matplotlib")
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as exc:
        raise ValueError(f"{path}: corrupt PNG data ({exc})") from None
    stride = w * channels
    if raw.size != h * (stride + 1):
        raise ValueError(f"{path}: truncated PNG data")
    rows = raw.reshape(h, stride + 1)
    out = np.zeros((h + 1, stride + channels), np.int32)  # row 0 and the left columns: zero padding
    for r in range(h):
        f, line = rows[r, 0], rows[r, 1:].astype(np.int32)
        up = out[r, channels:]
        if f in (0, 2):
            out[r + 1, channels:] = (line + (up if f == 2 else 0)) & 255
            continue
        cur = out[r + 1]
        for i in range(0, stride, channels):  # Sub, Average, Paeth depend on the left pixel
            a, b, c = cur[i : i + channels], out[r, i + channels : i + 2 * channels], out[r, i : i + channels]
            if f == 1:
                pred = a
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
            cur[i + channels : i + 2 * channels] = (line[i : i + channels] + pred) & 255
    img = out[1:, channels:].astype(np.uint8).reshape(h, w, channels)
    return img[..., 0] if channels <= 2 else img[..., :3].transpose(2, 0, 1)


def _checked(x, y, source):
    """Validate ``(x, y)`` shapes and values; the clear one-line ``ValueError`` otherwise."""
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{source}: images must be (N,H,W) or (N,C,H,W), got {x.ndim}-D shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{source}: empty dataset (0 images)")
    if x.dtype.kind not in "uif":
        raise ValueError(f"{source}: images must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{source}: images contain NaN or Inf pixels; clean or drop them")
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise ValueError(f"{source}: images of shape {x.shape} look channels-last (N, H, W, C); nbclust reads "
                         "(N, C, H, W): save x.transpose(0, 3, 1, 2)")
    return x, None if y is None else _labels(y, x.shape[0], source)


def _labels(y, n, source):
    """``y`` as int64: integer (or integer-valued float) labels only, one per image."""
    y = np.asarray(y)
    y = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{source}: {len(y) if y.ndim else 0} labels for {n} images")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise ValueError(f"{source}: labels must be integers, got dtype {y.dtype} (label 0 is {y[0].item()!r}); "
                         "number the classes 0..K-1")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) >= 2.0**63))
    if bad.size:
        raise ValueError(f"{source}: labels must be integers, label {bad[0]} is {y[bad[0]].item()!r} "
                         f"({bad.size} non-integer labels); number the classes 0..K-1")
    return y.astype(np.int64)


def content_digest(x) -> str:
    """SHA-256 of the images' dtype, shape and every pixel: the identity of a data set on ``--resume``."""
    h = hashlib.sha256(f"{x.dtype.str} {tuple(x.shape)}".encode())
    flat = x.reshape(len(x), -1)
    for i in range(0, len(flat), 4096):
        h.update(np.ascontiguousarray(flat[i : i + 4096]).tobytes())
    return h.hexdigest()
