"""HDF5 files that read only themselves.

HDF5 reaches other files by itself, as the file asks: an external link opens another
HDF5 file, a dataset with external storage reads its bytes from any named file (even
/etc/passwd), a virtual dataset maps datasets of other files, and a soft link can lead
into any of these. A source given to `prepare`, or a shard given to training whose
sha256 still matches, could so deliver pixels the checksum never covered
(docs/data.md, "Bad input"). An unknown filter id makes HDF5 search its plugin path
and load a shared library.

So an object is reached one path component at a time: `H5Lget_info` reads a link
without following it, hard links are followed, soft links are resolved inside the file
(bounded, as HDF5 bounds them), and anything else is refused. A dataset is then checked
for external storage, a virtual layout and non-built-in filters before a byte of it is
read. Every refusal names the file and the object.
"""

from __future__ import annotations

from typing import Optional, Union

import h5py
from h5py import h5l, h5z

from began_dist.data.dataset import DataError

MAX_SOFT_LINKS = 16  # HDF5's own default bound on soft links followed per path (H5L_NUM_LINKS)
BUILT_IN_FILTERS = {  # compiled into libhdf5 or registered by h5py itself: no plugin search
    h5z.FILTER_DEFLATE, h5z.FILTER_SHUFFLE, h5z.FILTER_FLETCHER32, h5z.FILTER_SZIP,
    h5z.FILTER_NBIT, h5z.FILTER_SCALEOFFSET, h5z.FILTER_LZF,
}
REFUSED = "refused: an HDF5 input may read only its own file"


def open_file(source: Union[str, object], where: str) -> h5py.File:
    """Open a path (the sec2 driver, whatever HDF5_DRIVER says) or a file object, read-only."""
    try:
        return h5py.File(source, "r", driver="sec2" if isinstance(source, str) else None)
    except OSError as error:
        raise DataError(f"{where}: unreadable HDF5 file: {error}") from None


def dataset(handle: h5py.File, name: str, where: str, required: bool = False) -> Optional[h5py.Dataset]:
    """The dataset `name`, checked to keep to the file; None if absent or not a dataset (DataError if required)."""
    found = _walk(handle, name, where, name, 0)
    if not isinstance(found, h5py.Dataset):
        if required:
            raise DataError(f"{where}: no dataset {name!r}")
        return None
    _check_storage(found, where, name)
    return found


def _walk(handle: h5py.File, path: str, where: str, name: str, depth: int, start: Optional[h5py.Group] = None):
    """The object at `path` (absolute, or relative to `start`), following only links that stay in the file."""
    group = handle if path.startswith("/") or start is None else start
    for part in [p for p in path.split("/") if p and p != "."]:
        if not isinstance(group, h5py.Group) or not group.id.links.exists(part.encode()):
            return None
        info = group.id.links.get_info(part.encode())
        if info.type == h5l.TYPE_HARD:
            group = group[part]
        elif info.type == h5l.TYPE_SOFT:
            if depth >= MAX_SOFT_LINKS:
                raise DataError(f"{where}: object {name!r}: more than {MAX_SOFT_LINKS} soft links; {REFUSED}")
            target = group.id.links.get_val(part.encode()).decode("utf-8", "replace")
            group = _walk(handle, target, where, name, depth + 1, start=group)
        elif info.type == h5l.TYPE_EXTERNAL:
            file, inner = (value.decode("utf-8", "replace") for value in group.id.links.get_val(part.encode()))
            raise DataError(f"{where}: object {name!r} leads through an external link to {file}:{inner}; {REFUSED}")
        else:
            raise DataError(f"{where}: object {name!r} leads through a user-defined link (type {info.type}); "
                            f"{REFUSED}")
    return group


def _check_storage(found: h5py.Dataset, where: str, name: str) -> None:
    plist = found.id.get_create_plist()
    if found.is_virtual:
        files = sorted({source.file_name for source in found.virtual_sources()})
        raise DataError(f"{where}: dataset {name!r} is a virtual dataset mapping {', '.join(files)}; {REFUSED}")
    if plist.get_external_count():
        files = [plist.get_external(i)[0].decode("utf-8", "replace") for i in range(plist.get_external_count())]
        raise DataError(f"{where}: dataset {name!r} stores its bytes in external file(s) {', '.join(files)}; "
                        f"{REFUSED}")
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        if code not in BUILT_IN_FILTERS:
            raise DataError(f"{where}: dataset {name!r} uses HDF5 filter {code} "
                            f"({label.decode('utf-8', 'replace') or 'unnamed'}), which HDF5 would load as a plugin "
                            f"library; refused")
