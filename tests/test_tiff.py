"""djfs.fs.tiff: generated TIFF headers in front of stored frames, read by real TIFF readers."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from djfs.fs import tiff


def movie(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.random.default_rng(3).integers(0, 200, shape)
    return (values % 2 == 0) if dtype == "bool" else values.astype(dtype)


def write_view(path: Path, array: np.ndarray) -> tiff.TiffLayout:
    """The file the mount serves: the generated header, then the array's C-order bytes as stored."""
    layout = tiff.layout(array.dtype, array.shape)
    assert layout is not None
    header = layout.header()
    assert len(header) == layout.header_size and layout.header_size % tiff.ALIGN == 0
    path.write_bytes(header + array.tobytes())
    assert path.stat().st_size == layout.size
    return layout


IMAGEJ_CHECK = Path(__file__).parent / "imagej" / "ImageJCheck.java"


def imagej(path: Path, frame: int, virtual_only: bool = False) -> dict[str, str]:
    """What ImageJ 1.x (Debian's ``imagej``) makes of a TIFF, headless: see tests/imagej/ImageJCheck.java."""
    result = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar", str(IMAGEJ_CHECK),
                             str(path), str(frame), *(["virtual"] if virtual_only else [])],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        for part in line.split():
            name, _, value = part.partition("=")
            found.setdefault(name, value)
            if name == "pixel":
                found["virtual pixel" if "virtual=" in line else "pixel"] = value
    return found


def tiffinfo(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["tiffinfo", str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<f4"])
def test_stack_read_by_tifffile_tiffinfo_and_pillow(tmp_path: Path, dtype: str) -> None:
    array = movie(dtype, (120, 16, 24))
    path = tmp_path / "movie.tif"
    layout = write_view(path, array)
    assert not layout.big

    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_bigtiff
        assert tif.imagej_metadata["frames"] == 120 and tif.imagej_metadata["images"] == 120
        assert tif.series[0].shape == (120, 16, 24) and tif.series[0].dtype == array.dtype
        np.testing.assert_array_equal(tif.asarray(key=range(100, 110)), array[100:110])
        assert len(tif.pages) == 120  # every frame has its IFD, for readers that walk them
        assert tif.pages[0].dataoffsets[0] == layout.header_size
        np.testing.assert_array_equal(tif.series[0].asarray(), array)
    np.testing.assert_array_equal(tifffile.memmap(path)[100:110], array[100:110])  # contiguous frames

    result = tiffinfo(path)
    assert result.returncode == 0, result.stderr
    assert "Image Width: 24 Image Length: 16" in result.stdout
    assert result.stdout.count("TIFF Directory at offset") == 120
    assert "ImageJ=1.11a" in result.stdout

    with Image.open(path) as image:
        assert image.size == (24, 16) and image.n_frames == 120
        np.testing.assert_array_equal(np.asarray(image), array[0])
        image.seek(101)
        np.testing.assert_array_equal(np.asarray(image), array[101])

    # ImageJ decodes the first IFD only, takes the frame count from the description, opens a (virtual) stack
    found = imagej(path, 101)
    assert found["ifds"] == "1" and found["images"] == "120" and found["offset"] == str(layout.header_size)
    assert found["slices"] == "120" and found["bits"] == str(array.dtype.itemsize * 8) and found["virtual"] == "true"
    assert float(found["pixel"]) == float(found["virtual pixel"]) == float(array[101, 3, 5])


@pytest.mark.parametrize("dtype", ["bool", "i1", "<i2", "<u4", "<i4", "<f8", ">u2", ">f4", ">i4", "<i8", "<u8",
                                   "<f2", "<c8", ">c16"])
def test_every_tiff_sample_type(tmp_path: Path, dtype: str) -> None:
    array = movie(dtype, (12, 5, 7))
    path = tmp_path / "movie.tif"
    layout = write_view(path, array)
    assert path.read_bytes()[:2] == (b"MM" if dtype.startswith(">") else b"II")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej == layout.imagej
        assert tif.is_imagej == (dtype in ("bool", "i1", "<i2", "<u4", "<i4", "<f8", ">u2", ">f4", ">i4"))
        frames = tif.asarray(key=range(3, 6))
        np.testing.assert_array_equal(frames, array[3:6])
        expected = np.uint8 if dtype == "bool" else np.dtype(dtype).newbyteorder("=")
        assert frames.dtype == expected
    assert tiffinfo(path).returncode == 0


def test_single_image(tmp_path: Path) -> None:
    array = movie("<u2", (33, 17))
    path = tmp_path / "image.tif"
    write_view(path, array)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), array)
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), array)


@pytest.mark.parametrize(("dtype", "shape"), [
    ("U3", (4, 5, 6)), ("M8[s]", (4, 5, 6)), ("O", (4, 5)), ("<f4", (4, 5, 6, 7)), ("<f4", (30,)),
    ("<f4", (0, 5, 6)), ("<f4", (4, 0, 6)), ("<f4", ()), ("<f16", (4, 5)), ("V8", (4, 5)),
])
def test_no_tiff_view(dtype: str, shape: tuple[int, ...]) -> None:
    assert tiff.layout(np.dtype(dtype), shape) is None


def test_big_tiff_above_4_gib(tmp_path: Path) -> None:
    """A 4.3 GiB view, built sparsely: frames past 4 GiB are found through 64-bit offsets."""
    shape = (1100, 1024, 1024)  # uint32: 4 MiB frames
    layout = tiff.layout(np.dtype("<u4"), shape)
    assert layout is not None and layout.big and layout.size > 1 << 32
    frame = layout.frame_bytes
    path = tmp_path / "big.tif"
    written = {index: np.full((1024, 1024), index * 7 + 1, np.uint32) for index in (*range(100, 110), 1099)}
    with open(path, "wb") as file:
        file.write(layout.header())
        for index, values in written.items():
            file.seek(layout.header_size + index * frame)
            file.write(values.tobytes())
        file.truncate(layout.size)
    assert path.stat().st_blocks * 512 < 64 << 20  # sparse: the test writes ~44 MiB, not 4.3 GiB

    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.is_imagej and tif.imagej_metadata["frames"] == 1100
        assert len(tif.pages) == 1100
        np.testing.assert_array_equal(tif.asarray(key=range(100, 110)), np.stack([written[i] for i in range(100, 110)]))
        last = tif.pages[1099]
        assert last.dataoffsets[0] == layout.header_size + 1099 * frame > 1 << 32
        np.testing.assert_array_equal(last.asarray(), written[1099])
    with open(path, "rb") as file:
        description = layout.description()
        assert file.read(16 + len(description)) == b"II" + struct.pack("<HHHQ", 43, 8, 0, 16 + len(description)) \
            + description
    result = tiffinfo(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("TIFF Directory at offset") == 1100


def test_classic_tiff_up_to_4_gib() -> None:
    below = tiff.layout(np.dtype("u1"), (4095, 1024, 1024))  # 4095 MiB of frames + header: classic
    above = tiff.layout(np.dtype("u1"), (4096, 1024, 1024))  # 4 GiB of frames: BigTIFF
    assert below is not None and not below.big and below.size < 1 << 32
    assert above is not None and above.big


def test_long_movie_every_ifd_points_at_its_frame(tmp_path: Path) -> None:
    """IFDs 1..T-1 are stamped from a template: check the chain end to end on a sparse 20,000-frame file."""
    layout = tiff.layout(np.dtype("<u2"), (20_000, 64, 64))
    assert layout is not None
    path = tmp_path / "long.tif"
    with open(path, "wb") as file:
        file.write(layout.header())
        file.truncate(layout.size)
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        pages.useframes = False
        assert len(pages) == 20_000
        for index in (1, 2, 9_999, 19_999):
            assert pages[index].dataoffsets == (layout.header_size + index * layout.frame_bytes,)
            assert pages[index].databytecounts == (layout.frame_bytes,)


def test_very_long_movie_has_the_first_ifd_only(tmp_path: Path) -> None:
    """Past MAX_IFDS frames the header stays bounded: one IFD, the stack described for ImageJ and tifffile."""
    frames = tiff.MAX_IFDS + 1
    layout = tiff.layout(np.dtype("u1"), (frames, 4, 6))
    assert layout is not None and layout.ifds == 1 and layout.header_size < 4096
    assert tiff.layout(np.dtype("<i8"), (frames, 4, 6)) is None  # no description ImageJ reads: no view
    array = (np.arange(frames * 24) % 251).astype(np.uint8).reshape(frames, 4, 6)
    path = tmp_path / "long.tif"
    path.write_bytes(layout.header() + array.tobytes())
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.is_imagej and tif.series[0].shape == (frames, 4, 6)
        np.testing.assert_array_equal(tif.series[0].asarray()[99_990:100_001], array[99_990:100_001])
    found = imagej(path, frames - 1, virtual_only=True)
    assert found["ifds"] == "1" and found["slices"] == str(frames)
    assert float(found["pixel"]) == float(array[-1, 3, 5])
    assert tiffinfo(path).returncode == 0


def npy_spec(header: bytes, size: int, **changes) -> "views.FileSpec":
    from djfs.fs import views
    entry = {"view_header": header, "view_size": size}
    spec = views.FileSpec("movie.npy", "npy", size, 0.0, 7, "external", "movie", identity="h" * 43, entry=entry,
                          header=header, data_offset=len(header))
    return dataclasses.replace(spec, **changes)


def test_tif_file_only_for_a_consistent_c_order_npy_view() -> None:
    from djfs import blob
    from djfs.fs import views
    header = blob.npy_header(np.dtype("<u2"), (10, 4, 6), fortran_order=False)
    size = len(header) + 10 * 4 * 6 * 2
    tif = views.tiff_file(npy_spec(header, size))
    assert tif is not None and tif.name == "movie.tif" and tif.kind == "tif" and tif.ino != 7
    layout = tiff.layout(np.dtype("<u2"), (10, 4, 6))
    assert tif.size == layout.size and views.file_header(tif) == layout.header()
    assert tif.data_offset == len(header)  # the same stored frames
    fortran = blob.npy_header(np.dtype("<u2"), (10, 4, 6), fortran_order=True)
    assert views.tiff_file(npy_spec(fortran, size)) is None
    assert views.tiff_file(npy_spec(header, size + 2)) is None          # the header does not describe the file
    huge = blob.npy_header(np.dtype("u1"), (2**40, 2**20, 1), fortran_order=False)
    assert views.tiff_file(npy_spec(huge, size)) is None                # a forged shape: no view, nothing allocated
    assert views.tiff_file(npy_spec(b"junk", size)) is None
    assert views.tiff_file(npy_spec(header, size, data_offset=None)) is None  # compressed: no plain range
    assert views.tiff_file(npy_spec(header, size, source="inline")) is None
