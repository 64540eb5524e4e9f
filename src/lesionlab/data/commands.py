"""``lesionlab data summary | audit | split | cache``: argument parsing and printing only.

Every command points at data the same way: ``--config FILE`` (a data config, or a run config's ``data:`` section),
then ``key=value`` overrides (``split=lesion`` or ``data.split=lesion``), then flags (``--metadata``, ``--images``,
``--npz``, ``--split``). With none of them, ``source: auto``: the shared HAM10000 copy, else SYNTHETIC data.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lesionlab.config import CONFIG_SECTIONS, DataConfig, apply_overrides, build_config, read_extending_yaml
from lesionlab.core.argparsing import rich_table
from lesionlab.core.io import atomic_write_json


def _size(text: str) -> tuple[int, int]:
    """``64`` -> (64, 64); ``224x300`` -> (224, 300) as height x width."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW with positive values")
    return (values[0], values[-1])


def _source_args(parser: argparse.ArgumentParser, split: bool = True) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--config", type=Path, help="YAML data config (or a run config with a data: section)")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="data config overrides, e.g. split=lesion")
    g.add_argument("--source", choices=["auto", "ham10000", "npz", "isic", "synthetic"])
    g.add_argument("--metadata", type=Path, help="HAM10000 metadata CSV (or ISIC ground truth with --source isic)")
    g.add_argument("--images", type=Path, action="append", help="image folder (repeat for several)")
    g.add_argument("--npz", type=Path, help="MedMNIST-format .npz file")
    if split:
        g.add_argument("--split", help="dermamnist_c | dermamnist | lesion | path to a split CSV")
        g.add_argument("--fold", type=int, help="with a k-fold split CSV: the validation fold")
    g.add_argument("--convert-mode", action="store_true", help="convert non-RGB images instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def data_config(args: argparse.Namespace) -> DataConfig:
    """The DataConfig that the command-line arguments describe (file, then overrides, then flags)."""
    raw: dict[str, Any] = read_extending_yaml(args.config) if args.config else {}
    where = str(args.config or "command line")
    if isinstance(raw.get("data"), dict) and set(raw) <= set(CONFIG_SECTIONS):
        raw = raw["data"]
    overrides = [o[len("data."):] if o.startswith("data.") else o for o in args.overrides]
    raw = apply_overrides(raw, overrides, where)
    if args.metadata:
        raw["metadata_csv"] = str(args.metadata)
        raw.setdefault("source", "ham10000")
    if args.images:
        raw["image_dirs"] = [str(p) for p in args.images]
    if args.npz:
        raw["npz"] = str(args.npz)
        raw["source"] = "npz"
    if args.source:
        raw["source"] = args.source
    if getattr(args, "split", None):
        raw["split"] = args.split
    if getattr(args, "fold", None) is not None:
        raw["split_fold"] = args.fold
    if args.convert_mode:
        raw["convert_mode"] = True
    return build_config(DataConfig, raw, where)


def _console() -> Any:
    """A rich console (imported here so that `lesionlab --help` stays fast)."""
    from lesionlab.core.console import make_console

    return make_console(highlight=False)


def _header(console: Any, source: Any) -> None:
    style = "bold red" if source.synthetic else "bold green"
    console.print(f"[{style}]{source.describe()}[/]")


def _counts_table(table: Any, title: str) -> Any:
    from lesionlab.data.splits import class_split_counts

    counts = class_split_counts(table)
    out = rich_table(title, ["class", *map(str, counts.columns)], left=["class"])
    for name, row in counts.iterrows():
        out.add_row(str(name), *(f"{v:,}" for v in row), style="bold" if name == "total" else None)
    return out


# ------------------------------------------------------------------------------------------------------- commands
def cmd_summary(args: argparse.Namespace) -> int:
    """Class x split counts, rows without image, images without row, metadata missingness."""
    from lesionlab.data.metadata import missingness
    from lesionlab.data.sources import open_source

    source = open_source(data_config(args))
    console = _console()
    _header(console, source)
    console.print(_counts_table(source.table, "images present, by class and split"))
    meta = source.metadata
    console.print(f"metadata rows: {len(meta):,}; rows without image: {len(source.missing_images):,}; "
                  f"image files without row: {len(source.orphan_images):,}"
                  + (f" (e.g. {', '.join(source.orphan_images[:3])})" if source.orphan_images else ""))
    if len(meta) != len(source.table):
        console.print(_counts_table(meta, "all metadata rows, by class and split ('-' = no split)"))
    missing = rich_table("missing clinical metadata (images present)", ("field", "missing", "share"), left=["field"])
    for name, count in missingness(source.table).items():
        missing.add_row(name, f"{count:,}", f"{count / max(len(source.table), 1):.1%}")
    console.print(missing)
    for note in source.notes:
        console.print(f"note: {note}", style="yellow" if "WARNING" in note else None)
    return 0


def render_audit(console: Any, result: Any) -> None:
    """Print an AuditResult as rich tables and the verdict line."""
    sizes = ", ".join(f"{k} {v:,}" for k, v in result.split_sizes.items())
    console.print(f"split {result.split}: {sizes} (metadata rows)")
    overlap = rich_table("lesions shared between splits (from the metadata)", ("splits", "lesions", "image pairs",
                         "images involved", "examples"), left=("splits", "examples"))
    for p in result.pairs:
        overlap.add_row(f"{p.a}-{p.b}", f"{p.lesions:,}", f"{p.image_pairs:,}", f"{p.images:,}",
                        ", ".join(p.examples[:2]), style="red" if p.lesions else None)
    a = result.all_splits
    overlap.add_row("all three", f"{a['lesions']:,}", f"{a['image_triples']:,} (triples)", f"{a['images']:,}", "",
                    style="red" if a["lesions"] else None)
    console.print(overlap)
    console.print("image pairs: (image in A, image in B) of one lesion, the definition of the published DermaMNIST "
                  "figures", style="dim")
    if result.images_hashed:
        dup = rich_table(f"duplicates among the {result.images_hashed:,} images present (near: phash-256 Hamming <= "
                         f"{result.near_threshold})", ("kind", "within splits", "across splits", "examples across"),
                         left=("kind", "examples across"))
        for kind, pairs in (("exact (same pixels)", result.exact), ("near-duplicate", result.near)):
            across = [p for p in pairs if p.across]
            examples = ", ".join(f"{p.image_a}/{p.image_b} ({p.split_a}-{p.split_b}, d={p.distance})"
                                 for p in across[:2])
            dup.add_row(kind, f"{len(pairs) - len(across):,}", f"{len(across):,}", examples,
                        style="red" if across else None)
        console.print(dup)
    else:
        console.print("duplicates: not checked (--no-images)", style="yellow")
    if result.known:
        across = [k for k in result.known if k.across]
        both = [k for k in result.known if k.distance is not None]
        line = (f"known duplicate pairs (newly_discovered_duplicates.csv): {len(result.known)}, across splits: "
                f"{len(across)}, both images present: {len(both)}")
        if both:
            line += f" (phash distance {min(k.distance for k in both)}-{max(k.distance for k in both)})"
        console.print(line, style="yellow" if across else None)
    style = {"PASS": "bold green", "WARN": "bold yellow", "FAIL": "bold red"}[result.status]
    console.print(f"[{style}]VERDICT {result.status}: {result.verdict}[/]")


def cmd_audit(args: argparse.Namespace) -> int:
    """Leakage audit of the configured (or ``--split``) split."""
    from lesionlab.data.audit import NEAR_THRESHOLD, audit_split
    from lesionlab.data.sources import open_source

    source = open_source(data_config(args))
    console = _console()
    _header(console, source)
    threshold = NEAR_THRESHOLD if args.threshold is None else args.threshold
    result = audit_split(source, hash_images=not args.no_images, threshold=threshold, progress=not args.no_progress)
    render_audit(console, result)
    if args.json:
        atomic_write_json(args.json, result.to_dict())
        console.print(f"wrote {args.json}")
    return 1 if args.strict and result.status == "FAIL" else 0


def cmd_split(args: argparse.Namespace) -> int:
    """Write lesionlab's lesion-grouped split (or k folds) of the configured source to a CSV."""
    from lesionlab.data.audit import audit_split
    from lesionlab.data.sources import open_unsplit, with_split
    from lesionlab.data.splits import kfold_split, lesion_split, split_frame, split_hash, write_split_csv

    cfg = data_config(args)
    source = open_unsplit(cfg)
    seed = cfg.split_seed if args.seed is None else args.seed
    val = cfg.val_fraction if args.val is None else args.val
    test = cfg.test_fraction if args.test is None else args.test
    table = source.table
    if args.kfold:
        frame = kfold_split(table, args.kfold, test, seed, source.linked_pairs)
        name = f"lesion {args.kfold}-fold (seed {seed}, test {test:g}; fold 0 shown as val)"
    else:
        split = lesion_split(table, val, test, seed, source.linked_pairs)
        frame = table[["image_id", "lesion_id"]].assign(split=split.to_numpy())
        name = f"lesion (seed {seed}, val {val:g}, test {test:g})"
    split_source = with_split(source, frame, name, "new split")
    write_split_csv(split_frame(split_source.table), args.out)
    console = _console()
    _header(console, split_source)
    console.print(_counts_table(split_source.table, f"split written to {args.out}"))
    if args.kfold:
        folds = split_source.table.groupby("fold").size()
        console.print("images per fold: " + ", ".join(f"{k}: {v:,}" for k, v in folds.items() if k >= 0)
                      + f"; test: {int(folds.get(-1, 0)):,}")
    console.print(f"split hash (sha256 of image_id -> split): {split_hash(split_source.table)}")
    result = audit_split(split_source, hash_images=False)
    lesions = sum(p.lesions for p in result.pairs)
    console.print(f"lesions shared between splits: {lesions}", style="bold green" if lesions == 0 else "bold red")
    return 0 if lesions == 0 else 1


def cmd_cache(args: argparse.Namespace) -> int:
    """Build (or find) the decode-once cache; ``--benchmark`` times decoding against reading it."""
    import time

    from lesionlab.data.cache import benchmark, cache_path, cached_images
    from lesionlab.data.sources import open_source

    cfg = data_config(args)
    size = args.size or cfg.image_size
    resize = args.resize or cfg.resize
    source = open_source(cfg)
    console = _console()
    _header(console, source)
    if args.benchmark:
        result = benchmark(source, size, resize, progress=not args.no_progress)
        table = rich_table(f"{result['images']:,} images at {size[0]}x{size[1]} ({resize}), one at a time",
                           ("path", "seconds", "images / s"), left=["path"])
        for label, key in (("decode + resize (PIL)", "decode_s"), ("read from cache (mmap)", "cache_read_s")):
            table.add_row(label, f"{result[key]:.3f}", f"{result['images'] / result[key]:,.0f}")
        console.print(table)
        console.print(f"cache is {result['speedup']:.1f}x faster than decoding (every row checked equal)")
    else:
        start = time.perf_counter()
        arr = cached_images(source, size, resize, workers=args.workers, progress=not args.no_progress)
        console.print(f"{arr.shape[0]:,} images, {arr.shape[1]}x{arr.shape[2]} ({resize}), "
                      f"{arr.nbytes / 2**20:,.1f} MiB, ready in {time.perf_counter() - start:.2f} s")
    console.print(f"cache file: {cache_path(source, size, resize)}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``lesionlab data ...`` to the main parser."""
    parser = subparsers.add_parser("data", help="summarise, split, audit and cache datasets",
                                   description="Summarise, split, audit and cache datasets.")
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])
    sub = parser.add_subparsers(dest="data_command", metavar="<summary|audit|split|cache>")

    p = sub.add_parser("summary", help="class x split counts, missing images and metadata")
    _source_args(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("audit", help="leakage audit: shared lesions, exact and near-duplicate images")
    _source_args(p)
    p.add_argument("--json", type=Path, help="also write the audit as JSON (for reports and model cards)")
    p.add_argument("--no-images", action="store_true", help="metadata checks only (no image hashing)")
    p.add_argument("--threshold", type=int, help="near-duplicate phash Hamming distance of 256 bits "
                                                   "(default: lesionlab.data.audit.NEAR_THRESHOLD = 32)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the verdict is FAIL")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("split", help="write a lesion-grouped, class-stratified split CSV")
    _source_args(p, split=False)
    p.add_argument("--out", type=Path, required=True, help="split CSV to write")
    p.add_argument("--seed", type=int, help="split seed (default: data.split_seed)")
    p.add_argument("--val", type=float, help="validation fraction (default: data.val_fraction)")
    p.add_argument("--test", type=float, help="test fraction (default: data.test_fraction)")
    p.add_argument("--kfold", type=int, help="write K lesion-grouped folds of the non-test images instead")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("cache", help="decode and resize every image once into the on-disk cache")
    _source_args(p)
    p.add_argument("--size", type=_size, help="N or HxW (default: data.image_size)")
    p.add_argument("--resize", choices=["square", "aspect"], help="default: data.resize")
    p.add_argument("--workers", type=int, default=0, help="decode in this many processes")
    p.add_argument("--benchmark", action="store_true", help="time decoding vs reading the cache (same run)")
    p.set_defaults(func=cmd_cache)

