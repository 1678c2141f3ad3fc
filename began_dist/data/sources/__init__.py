"""Image sources, one module per source family; images are uint8 arrays (N, H, W, C).

- glyphs: CJK characters rendered with Pillow from one or more fonts (by default the
  bundled Noto Sans CJK of the `noto-cjk-sans-otc` package), white ink on black;
  characters a font lacks (its .notdef box, or no ink) are detected and skipped.
- shapes: the CRS toy data of docs/multigen.md (square, cross, square+cross) with per-component masks.
- folder / celeba: an image folder, recursive, cropped (the known CelebA presets) and resized.
- cifar10: the CIFAR-10 python archive, read with a restricted unpickler.
- hdf5-flat: artcg/BEGAN's single HDF5 file (seed 001, docs/design.md) of flattened uint8 rows.
- cns: the CNS 11643 glyph bitmaps of Debian's fonts-cns11643-pixmaps (planes 1-3).
- fashion-mnist: the IDX files of Debian's dataset-fashion-mnist.

glyphs.py holds glyphs and cns, shapes.py the CRS and four-shape sets, folder.py folder/celeba
(and the resizing all share), archives.py cifar10, hdf5-flat and fashion-mnist; this package
re-exports their names, so callers write `sources.<name>`.

Resizing is always Pillow's LANCZOS, after the crop. Nothing downloads.
"""

from began_dist.data.sources.archives import (  # noqa: F401
    CIFAR_CLASSES,
    CIFAR_MEMBER_BYTES,
    CIFAR_MEMBERS,
    FASHION_ROOT,
    FASHION_SPLITS,
    IDX_DTYPES,
    IDX_MAX_BYTES,
    RestrictedUnpickler,
    hdf5_flat_shape,
    read_cifar10,
    read_fashion_mnist,
    read_hdf5_flat,
    read_idx,
)
from began_dist.data.sources.folder import (  # noqa: F401
    CROPS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    crop_resize,
    folder_classes,
    image_folder,
    list_images,
    load_image,
    pixel_limit,
    resize_image,
    resize_images,
    to_channels,
)
from began_dist.data.sources.glyphs import (  # noqa: F401
    CNS_PLANES,
    CNS_ROOT,
    FIRST_CJK,
    LAST_CJK,
    cns_files,
    default_font,
    euc_tw_to_unicode,
    font_codepoints,
    glyph_characters,
    glyph_pixel_size,
    is_real_glyph,
    load_cns_glyph,
    load_font,
    notdef_glyph,
    parse_charset,
    parse_fonts,
    render_font_glyphs,
    render_glyph,
    render_glyphs,
)
from began_dist.data.sources.shapes import (  # noqa: F401
    CRS_ANGLES,
    CRS_CENTRES,
    CRS_HALF_SIZES,
    CRS_LABELS,
    CRS_SIZE,
    CRS_THICKNESSES,
    FOUR_COUNT,
    FOUR_SHAPES,
    FOUR_SPLITS,
    crs_components,
    crs_grid,
    crs_image,
    crs_render,
    crs_shapes,
    four_combinations,
    four_components,
    four_render,
    four_variants,
    render_parts,
)
