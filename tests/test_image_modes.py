"""Every Pillow image mode reaches dalle as 8-bit RGB with its range kept, or is refused with one clear line.

Each case builds a small picture with known black, white, mid-grey or pure colours in one mode, in memory; where a
file format stores that mode it is also saved and read back through `load_image`. The defect this guards against:
a 16-bit greyscale PNG came out black at 0 and white everywhere else, and a float TIFF all black.
"""

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dalle_cli.cli import app
from dalle_cli.errors import UsageError
from dalle_cli.images import load_image, to_rgb

Pixel = tuple[int, int, int]
BLACK, WHITE, GREY = (0, 0, 0), (255, 255, 255), (128, 128, 128)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
COLOURS = [RED, GREEN, BLUE, WHITE, BLACK, GREY]


def row(mode: str, values: list[object]) -> Image.Image:
    """A one-row image of `values` (ints, floats or tuples, as `mode` takes them) in `mode`."""
    image = Image.new(mode, (len(values), 1))
    image.putdata(values)
    return image


def sixteen_bit(mode: str, values: list[int]) -> Image.Image:
    """A one-row image of unsigned 16-bit `values` in one of the I;16 modes, laid out in that mode's byte order."""
    order = ">" if mode == "I;16B" else "=" if mode == "I;16N" else "<"
    return Image.frombytes(mode, (len(values), 1), struct.pack(f"{order}{len(values)}H", *values))


def rgb_pixels(image: Image.Image) -> list[Pixel]:
    """The pixels of an 8-bit RGB image, checked to be one."""
    assert image.mode == "RGB"
    data = image.tobytes()
    return [tuple(data[i:i + 3]) for i in range(0, len(data), 3)]


def palette(mode: str, colours: list[tuple[int, ...]]) -> Image.Image:
    """A one-row P image (or PA, alpha 255) using palette entry i at pixel i."""
    image = Image.new("P", (len(colours), 1))
    image.putpalette([c for colour in colours for c in colour], "RGBA" if len(colours[0]) == 4 else "RGB")
    image.putdata(list(range(len(colours))))
    if mode == "PA":
        image = Image.merge("PA", (image, Image.new("L", image.size, 255)))
    return image


def with_info(image: Image.Image, transparency: object) -> Image.Image:
    """`image` with a transparent colour, grey or palette alphas, as Pillow's readers record them."""
    image.info["transparency"] = transparency
    return image


@dataclass
class Case:
    """A picture in some mode, what it must become, and the files that store that mode."""

    name: str
    build: Callable[[], Image.Image]
    expected: list[Pixel]
    tolerance: int = 0
    formats: tuple[str, ...] = ()  # Pillow format names that save and reopen this picture in the same mode


CASES = [
    Case("1", lambda: row("1", [0, 255, 0]), [BLACK, WHITE, BLACK], formats=("PNG", "TIFF")),
    Case("L", lambda: row("L", [0, 128, 255]), [BLACK, GREY, WHITE], formats=("PNG", "TIFF")),
    Case("L-transparent", lambda: with_info(row("L", [0, 128, 7]), 7), [BLACK, GREY, WHITE], formats=("PNG",)),
    Case("P", lambda: palette("P", COLOURS), COLOURS, formats=("PNG", "TIFF", "GIF")),
    Case("P-transparent-index", lambda: with_info(palette("P", COLOURS), 0), [WHITE, *COLOURS[1:]],
         formats=("PNG", "GIF")),
    Case("P-alpha-bytes", lambda: with_info(palette("P", [RED, BLUE, BLACK]), b"\x00\xff\x80"),
         [WHITE, BLUE, (127, 127, 127)], tolerance=1, formats=("PNG",)),
    Case("P-rgba-palette", lambda: palette("P", [(*RED, 0), (*BLUE, 255), (*BLACK, 128)]),
         [WHITE, BLUE, (127, 127, 127)], tolerance=1, formats=("PNG",)),
    Case("PA", lambda: palette("PA", COLOURS), COLOURS, formats=("TIFF",)),
    Case("LA", lambda: row("LA", [(0, 255), (0, 0), (0, 128), (255, 255)]), [BLACK, WHITE, (127, 127, 127), WHITE],
         tolerance=1, formats=("PNG", "TIFF")),
    # premultiplied: (0, 128) is black at half opacity, (128, 255) opaque mid-grey, (64, 128) mid-grey at half
    Case("La", lambda: row("La", [(0, 255), (0, 0), (0, 128), (128, 255), (64, 128)]),
         [BLACK, WHITE, (127, 127, 127), GREY, (191, 191, 191)]),
    Case("RGB", lambda: row("RGB", COLOURS), COLOURS, formats=("PNG", "TIFF", "BMP")),
    Case("RGB-transparent", lambda: with_info(row("RGB", COLOURS), RED), [WHITE, *COLOURS[1:]], formats=("PNG",)),
    Case("RGBA", lambda: row("RGBA", [(*RED, 255), (*RED, 0), (*BLUE, 128), (*BLACK, 255)]),
         [RED, WHITE, (127, 127, 255), BLACK], tolerance=1, formats=("PNG", "TIFF")),
    Case("RGBa", lambda: row("RGBa", [(255, 0, 0, 255), (0, 0, 0, 0), (128, 0, 0, 128), (0, 0, 255, 255)]),
         [RED, WHITE, (255, 127, 127), BLUE]),
    Case("RGBX", lambda: row("RGBX", [(*c, 0) for c in COLOURS]), COLOURS),
    Case("CMYK", lambda: row("RGB", COLOURS).convert("CMYK"), COLOURS, formats=("TIFF",)),
    Case("CMYK-key", lambda: row("CMYK", [(0, 0, 0, 255), (0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 127)]),
         [BLACK, WHITE, RED, GREY]),
    Case("YCbCr", lambda: row("RGB", COLOURS).convert("YCbCr"), COLOURS, tolerance=1, formats=("TIFF",)),
    Case("YCbCr-exact", lambda: row("YCbCr", [(0, 128, 128), (255, 128, 128), (128, 128, 128)]), [BLACK, WHITE, GREY]),
    # Pillow's 8-bit L*a*b*: L 0..255 for 0..100, a and b offset by 128; (138, 209, 198) is sRGB red
    Case("LAB", lambda: row("LAB", [(0, 128, 128), (255, 128, 128), (137, 128, 128), (138, 209, 198)]),
         [BLACK, WHITE, GREY, RED], tolerance=2, formats=("TIFF",)),
    Case("HSV", lambda: row("RGB", COLOURS).convert("HSV"), COLOURS),
    Case("HSV-hues", lambda: row("HSV", [(0, 255, 255), (85, 255, 255), (170, 255, 255), (0, 0, 128)]),
         [RED, GREEN, BLUE, GREY]),
    Case("I-8-bit-values", lambda: row("I", [0, 128, 255]), [BLACK, GREY, WHITE], formats=("TIFF",)),
    Case("I-16-bit-values", lambda: row("I", [0, 128 * 257, 65535, 255]), [BLACK, GREY, WHITE, (1, 1, 1)],
         formats=("TIFF",)),
    *[Case(mode, lambda mode=mode: sixteen_bit(mode, [0, 128 * 257, 65535, 255, 32768]),
           [BLACK, GREY, WHITE, (1, 1, 1), GREY], formats=formats)
      for mode, formats in [("I;16", ("PNG", "TIFF")), ("I;16L", ()), ("I;16B", ("TIFF",)), ("I;16N", ())]],
    # PNG's tRNS grey for 16-bit samples is a 16-bit value: 32896 must be see-through, its neighbour 32897 not
    Case("I;16-transparent", lambda: with_info(sixteen_bit("I;16", [0, 32896, 32897, 65535]), 32896),
         [BLACK, WHITE, GREY, WHITE], formats=("PNG",)),
    Case("F-unit-range", lambda: row("F", [0.0, 0.5, 1.0, 0.25]), [BLACK, GREY, WHITE, (64, 64, 64)],
         formats=("TIFF",)),
    Case("F-byte-range", lambda: row("F", [0.0, 127.6, 255.0, 1.5]), [BLACK, GREY, WHITE, (2, 2, 2)],
         formats=("TIFF",)),
]

REFUSALS = [
    ("I-negative", lambda: row("I", [-5, 0, 200]), "32-bit integer pixels outside 0..65535 (min -5, max 200)"),
    ("I-above-16-bit", lambda: row("I", [0, 70000]), "32-bit integer pixels outside 0..65535 (min 0, max 70000)"),
    ("F-outside", lambda: row("F", [-3.2, 0.5, 900.0]),
     "32-bit float pixels outside 0..1 and 0..255 (min -3.2, max 900.0)"),
    ("F-nan", lambda: row("F", [0.5, math.nan, 0.2]),
     "32-bit float pixels include NaN (dalle reads float pixels that all lie in 0..1 or in 0..255)"),
    ("F-inf", lambda: row("F", [0.0, math.inf]), "32-bit float pixels outside 0..1 and 0..255 (min 0.0, max inf)"),
    ("F-negative-inf", lambda: row("F", [-math.inf, 0.5]),
     "32-bit float pixels outside 0..1 and 0..255 (min -inf, max 0.5)"),
]


def _close(got: list[Pixel], expected: list[Pixel], tolerance: int) -> bool:
    return len(got) == len(expected) and all(abs(g - e) <= tolerance for gp, ep in zip(got, expected)
                                             for g, e in zip(gp, ep))


def test_every_pillow_mode_has_a_case() -> None:
    """A mode a new Pillow adds must get a deliberate decision here (and in `to_rgb`) before it is trusted."""
    covered = {case.build().mode for case in CASES} | {build().mode for _, build, _ in REFUSALS}
    assert covered == set(Image.MODES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_mode_converts_with_its_range_kept(case: Case) -> None:
    got = rgb_pixels(to_rgb(case.build()))
    assert _close(got, case.expected, case.tolerance), (got, case.expected)


FILE_CASES = [(case, fmt) for case in CASES for fmt in case.formats]


@pytest.mark.parametrize(("case", "fmt"), FILE_CASES, ids=[f"{case.name}-{fmt}" for case, fmt in FILE_CASES])
def test_saved_mode_reads_back_with_its_range_kept(case: Case, fmt: str, tmp_path: Path) -> None:
    image = case.build()
    path = tmp_path / f"picture.{fmt.lower()}"
    image.save(path, fmt)
    with Image.open(path) as reopened:
        assert reopened.mode == image.mode  # else this case would not exercise the mode it names
    got = rgb_pixels(load_image(path))
    assert _close(got, case.expected, case.tolerance), (got, case.expected)


@pytest.mark.parametrize(("build", "message"), [(b, m) for _, b, m in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_out_of_range_pixels_are_refused(build: Callable[[], Image.Image], message: str) -> None:
    with pytest.raises(UsageError) as refused:
        to_rgb(build())
    assert str(refused.value) == message


def test_sixteen_bit_scaling_is_round_of_v_over_257_for_every_value() -> None:
    values = list(range(65536))
    for mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        got = [r for r, _, _ in rgb_pixels(to_rgb(sixteen_bit(mode, values)))]
        assert got == [round(v / 257) for v in values], mode


def gradient(width: int = 256) -> list[int]:
    """8-bit grey levels 0..255 across `width` pixels."""
    return [round(x * 255 / (width - 1)) for x in range(width)]


def test_16_bit_greyscale_png_keeps_its_gradient(tmp_path: Path) -> None:
    """The defect: this PNG came out black at 0 and white everywhere else."""
    levels = gradient()
    Image.frombytes("I;16", (256, 1), struct.pack("<256H", *[v * 257 for v in levels])).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode == "I;16"
    assert rgb_pixels(load_image(tmp_path / "deep.png")) == [(v, v, v) for v in levels]


def test_float_tiff_keeps_its_gradient(tmp_path: Path) -> None:
    """The defect: this TIFF (values 0..1) came out all black."""
    levels = gradient()
    row("F", [v / 255 for v in levels]).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as reopened:
        assert reopened.mode == "F"
    assert rgb_pixels(load_image(tmp_path / "float.tif")) == [(v, v, v) for v in levels]


def test_refused_file_names_the_path_once(tmp_path: Path) -> None:
    path = tmp_path / "photo.tif"
    row("F", [-3.2, 0.5, 900.0]).save(path)
    with pytest.raises(UsageError) as refused:
        load_image(path)
    assert str(refused.value) == f"cannot read image {path}: 32-bit float pixels outside 0..1 and 0..255 " \
                                 "(min -3.2, max 900.0)"


def test_16_bit_png_keeps_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored pixels must be turned 90° clockwise to stand upright
    Image.frombytes("I;16", (2, 1), struct.pack("<2H", 0, 65535)).save(tmp_path / "turned.png", exif=exif)
    upright = load_image(tmp_path / "turned.png")
    assert upright.size == (1, 2) and rgb_pixels(upright) == [BLACK, WHITE]


def test_vary_reads_a_16_bit_png_as_its_8_bit_twin_and_refuses_a_bad_float_tiff(tiny_karlo: Path,
                                                                               tmp_path: Path) -> None:
    width, height = 32, 24
    levels = [(x * 8 + y * 3) % 256 for y in range(height) for x in range(width)]
    png16, png8 = tmp_path / "deep.png", tmp_path / "flat.png"
    Image.frombytes("I;16", (width, height), struct.pack(f"<{len(levels)}H", *[v * 257 for v in levels])).save(png16)
    Image.frombytes("L", (width, height), bytes(levels)).save(png8)
    assert load_image(png16).tobytes() == load_image(png8).tobytes()

    out = tmp_path / "out"
    # One image per batch: variations agree across batch sizes only to ~6e-8, which can flip a pixel's rounding.
    result = CliRunner().invoke(app, ["vary", str(png16), str(png8), "-m", str(tiny_karlo), "--decoder-steps", "2",
                                      "--sr-steps", "2", "--seed", "1", "--batch-size", "1", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    made = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert len(made) == 2
    with Image.open(made[0]) as deep, Image.open(made[1]) as flat:
        assert deep.tobytes() == flat.tobytes()

    bad = tmp_path / "bad.tif"
    row("F", [-3.2, 0.5, 900.0]).save(bad)
    result = CliRunner().invoke(app, ["vary", str(bad), "-m", str(tiny_karlo), "--decoder-steps", "2", "--sr-steps",
                                      "2", "--seed", "1", "-o", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr
    assert f"cannot read image {bad}: 32-bit float pixels outside 0..1 and 0..255 (min -3.2, max 900.0)" in errors[0]
