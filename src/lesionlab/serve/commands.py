"""Command-line entry points of the service: ``serve``, ``export``, ``predict`` and ``serve-bench``.

Argument parsing and printing only; the work is done by the pure functions of :mod:`lesionlab.serve`. The run
directory is the first positional argument of each, and ``--onnx [PATH]`` means the same everywhere: ONNX Runtime
with the file PATH (default ``RUN/model.onnx``, exported when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lesionlab.core.argparsing import Deprecated, rich_table
from lesionlab.core.errors import MissingFileError, UsageError
from lesionlab.core.io import atomic_write

DEFAULT_PORT = 8000


def _limit_args(p: argparse.ArgumentParser) -> None:
    from lesionlab.serve.settings import ServeSettings

    d = ServeSettings()
    p.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest upload per image (bytes)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest width x height decoded per image (default: 256 x the model's input pixels; JPEGs "
                        "are decoded scaled down first)")
    p.add_argument("--image-modes", choices=["convert", "refuse"], default=d.image_modes,
                   help="greyscale, alpha, palette and 16-bit uploads: convert with a note in the answer (default), "
                        "or refuse them (415)")
    p.add_argument("--max-decodes", type=int, default=d.max_decodes, help="images decoded at the same time")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds a request body may pause before 408")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="use a run whose training did not finish (every answer then carries a warning)")
    p.add_argument("--allow-synthetic", action="store_true",
                   help="use a run trained on synthetic images (every answer then carries a warning)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most images per batch request")
    p.add_argument("--content-types", default=",".join(d.content_types), help="accepted image content types")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"default referral threshold when the run has none fitted (default {d.default_threshold})")
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads for inference")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-averaged predictions (default: as the run was validated)")
    p.add_argument("--source-size", type=int, default=None, metavar="PX",
                   help="squash uploads to PX x PX first, as the training images were stored (default: the size "
                        "the run recorded, e.g. 64 for the shared 64 px HAM10000 images; 0: never)")


def _settings(args: argparse.Namespace, onnx_path: str | None = None) -> Any:
    from lesionlab.config import build_config
    from lesionlab.serve.settings import ServeSettings

    values: dict[str, Any] = {"max_bytes": args.max_bytes, "max_pixels": args.max_pixels,
                              "max_batch": args.max_batch, "content_types": args.content_types,
                              "threads": args.threads, "onnx_path": onnx_path, "tta": args.tta,
                              "image_modes": args.image_modes, "max_decodes": args.max_decodes,
                              "read_timeout_s": args.read_timeout, "allow_unfinished": args.allow_unfinished,
                              "allow_synthetic": args.allow_synthetic}
    if args.threshold is not None:
        values["default_threshold"] = args.threshold
    if args.source_size is not None:
        values["source_size"] = args.source_size
    return build_config(ServeSettings, values, where="command-line options")


def _onnx_for(run: Any, flag: str | None) -> str | None:
    """The ONNX file to serve with: ``--onnx PATH``, or ``<run>/model.onnx`` (exported now if missing)."""
    if flag is None:
        return None
    if flag != "auto":
        return flag
    from lesionlab.serve.onnx_export import OnnxError, check_onnx_matches, export_onnx

    path = Path(run.path) / "model.onnx"
    if not path.is_file():
        print(f"exporting {path} (first use of --onnx)", file=sys.stderr)
        export_onnx(run, path)
    else:
        try:
            check_onnx_matches(path, run)
        except OnnxError as err:
            print(f"re-exporting {path}: {err}", file=sys.stderr)
            export_onnx(run, path)
    return str(path)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API and the clinician page under uvicorn."""
    import uvicorn

    from lesionlab.runs import load_run
    from lesionlab.serve.app import create_app

    run = load_run(args.run)
    app = create_app(run, _settings(args, _onnx_for(run, args.onnx)))
    print(f"serving {args.run} on http://{args.host}:{args.port}/  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write ``model.onnx`` and check it against PyTorch on real images (synthetic ones when none are present)."""
    from lesionlab.core.console import make_console
    from lesionlab.runs import load_run
    from lesionlab.serve.onnx_export import (
        PARITY_TOL,
        OnnxError,
        calibration_feeds,
        export_onnx,
        parity,
        quantize_int8,
        run_uses_meta,
    )
    from lesionlab.serve.samples import parity_images

    if not args.onnx and not args.out:
        raise UsageError("choose an export format: --onnx [PATH] (the only one so far)")
    run = load_run(args.run)
    path = export_onnx(run, args.out or (None if args.onnx in (None, "auto") else args.onnx))
    images, source = parity_images(args.check_images, limit=args.check_limit)
    results = {path: parity(run, path, images, threads=args.threads)}
    if args.int8:
        q_path = path.with_name(path.stem + ".int8.onnx")
        quantize_int8(path, q_path, calibration_feeds(run.preprocessing, images,
                                                      run.meta_encoder if run_uses_meta(run) else None))
        results[q_path] = parity(run, q_path, images, threads=args.threads)
    make_console(stderr=True).print(_table(
        f"ONNX export, parity with PyTorch on {len(images)} images ({source})",
        ("file", "max |p diff|", "max |logit diff|", "top-1 agreement"),
        [[file.name, f"{r['max_abs_prob_diff']:.2e}", f"{r['max_abs_logit_diff']:.2e}", f"{r['top1_agreement']:.3f}"]
         for file, r in results.items()]))
    if results[path]["max_abs_prob_diff"] > PARITY_TOL:
        raise OnnxError(f"{path}: ONNX probabilities differ from PyTorch by "
                        f"{results[path]['max_abs_prob_diff']:.2e} > {PARITY_TOL:g}; do not serve this file")
    if args.int8:
        print("int8: probabilities differ from PyTorch by the amounts above (calibrated on the same images); "
              "check the run's metrics with it before serving it", file=sys.stderr)
    for file in results:
        print(file)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score images into a CSV; rows that cannot be scored carry their error and make the exit status 1."""
    from lesionlab.runs import load_run
    from lesionlab.serve.predict_cli import input_table, predict_table, read_input_csv
    from lesionlab.serve.service import Predictor

    if args.csv and (args.images or args.age or args.sex or args.site):
        raise UsageError("give either --csv FILE or IMAGE... with --age/--sex/--site, not both")
    if not args.csv and not args.images:
        raise UsageError("nothing to predict: give image files or --csv FILE")
    table = read_input_csv(args.csv) if args.csv else input_table(args.images, args.age, args.sex, args.site)
    run = load_run(args.run)
    predictor = Predictor(run, _settings(args, _onnx_for(run, args.onnx)))
    result = predict_table(predictor, table)
    if args.out == "-":
        result.to_csv(sys.stdout, index=False)
    else:
        atomic_write(args.out, lambda tmp: result.to_csv(tmp, index=False))
        print(f"wrote {len(result)} rows to {args.out}", file=sys.stderr)
    failed = result[result["error"] != ""]
    for message in failed["error"]:
        print(f"lesionlab predict: {message}", file=sys.stderr)
    return 1 if len(failed) else 0


def _table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> Any:
    table = rich_table(title, columns)
    for row in rows:
        table.add_row(*row)
    return table


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency (eager vs ONNX Runtime), service overhead, or a loopback load test; prints a table and JSON."""
    from lesionlab.core.console import make_console

    if args.old_run and args.run and args.old_run != args.run:
        raise UsageError(f"serve-bench: two runs given ({args.run} and --run {args.old_run}); give one")
    args.run = args.run or args.old_run
    console = make_console(stderr=True)
    if args.what == "latency":
        result = _bench_latency(args)
        rows = [[name, *(f"{result[key][q]:.2f}" for q in ("p50", "p95", "min"))] for key, name in
                (("eager_ms", "PyTorch eager"), ("onnxruntime_ms", "ONNX Runtime"),
                 ("onnxruntime_int8_ms", "ONNX Runtime int8")) if key in result]
        console.print(_table(f"batch-1 latency, {result['model']} at {result['size']}, {args.threads} threads (ms)",
                             ("backend", "p50", "p95", "min"), rows))
    elif args.what == "overhead":
        result = _bench_overhead(args)
        console.print(_table("service overhead per image, in-process (ms)", ("stage", "p50", "p95"),
                             [[stage, f"{r['p50']:.2f}", f"{r['p95']:.2f}"] for stage, r in result["stages"].items()]))
    elif args.what == "soak":
        from lesionlab.serve.soak import print_soak

        result = _bench_soak(args)
        print_soak(console, result, _table)
    else:
        result = _bench_load(args)
        r = result["load"]
        console.print(_table(f"load test: {args.requests} requests, {args.concurrency} clients, loopback",
                             ("ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "server overhead p50 ms"),
                             [[str(r["ok"]), str(r["errors"]), f"{r['throughput']:.1f}", f"{r['p50']:.1f}",
                               f"{r['p95']:.1f}", f"{r['p99']:.1f}",
                               f"{r['server_overhead_p50']:.2f}" if r["server_overhead_p50"] else "-"]]))
        for sample in r["error_samples"]:
            console.print(f"error: {sample}")
    print(json.dumps(result, indent=2))
    if args.what == "soak":
        return 0 if result["soak"]["passed"] else 1
    return 1 if args.what == "load" and result["load"]["errors"] else 0


def _bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    from lesionlab.serve.bench import model_latency

    if args.run:
        from lesionlab.runs import load_run
        from lesionlab.serve.onnx_export import input_shape, meta_width, run_uses_meta

        run = load_run(args.run)
        model, size = run.model, input_shape(run)
        meta_dim = meta_width(run) if run_uses_meta(run) else 0
        name = f"run {Path(args.run).name} ({(run.info.get('model') or {}).get('name')})"
    else:
        from lesionlab.config import ModelConfig
        from lesionlab.models import create_model

        model = create_model(ModelConfig(name=args.arch, pretrained=False), num_classes=7)
        size, meta_dim, name = (args.size, args.size), 0, f"{args.arch} (random weights)"
        run = None
    feeds = None
    if args.int8:
        feeds = _int8_feeds(run, model, size, args.calibration)
    result = model_latency(model, size, meta_dim, runs=args.runs, threads=args.threads, int8_feeds=feeds)
    return {"model": name, **result}


def _int8_feeds(run: Any, model: Any, size: tuple[int, int], count: int) -> list[Any]:
    """Calibration inputs for int8: real images through the run's preprocessing (or the model's normalisation)."""
    from lesionlab.data.transforms import Preprocessing
    from lesionlab.serve.onnx_export import calibration_feeds, run_uses_meta
    from lesionlab.serve.samples import parity_images

    images, _ = parity_images(limit=count)
    if run is None:
        return calibration_feeds(Preprocessing(size=size, mean=model.data_config["mean"],
                                               std=model.data_config["std"]), images)
    return calibration_feeds(run.preprocessing, images, run.meta_encoder if run_uses_meta(run) else None)


def _bench_image(args: argparse.Namespace) -> tuple[bytes, str]:
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise MissingFileError(f"benchmark image not found: {path}")
        return path.read_bytes(), path.name
    from lesionlab.serve.samples import jpeg_bytes, parity_images

    images, _ = parity_images(None, limit=1, full_size_only=True)
    return jpeg_bytes(images[0]), "image.jpg"


def _bench_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from lesionlab.runs import load_run
    from lesionlab.serve.bench import service_overhead
    from lesionlab.serve.service import Predictor

    if not args.run:
        raise UsageError("serve-bench overhead needs a run: lesionlab serve-bench overhead RUN")
    data, name = _bench_image(args)
    predictor = Predictor(load_run(args.run), _settings(args))
    return {"run": args.run, "image": name, "bytes": len(data),
            "stages": service_overhead(predictor, data, runs=args.runs)}


def _server(args: argparse.Namespace) -> Any:
    """``lesionlab serve`` for ``args.run`` in a subprocess: a context manager yielding its URL and pid."""
    from lesionlab.serve.bench import serve_subprocess

    onnx = [] if args.onnx is None else ["--onnx"] + ([] if args.onnx == "auto" else [args.onnx])
    allow = [f for f, on in (("--allow-unfinished", args.allow_unfinished), ("--allow-synthetic", args.allow_synthetic))
             if on]
    return serve_subprocess(args.run, args.threads, [*onnx, *allow])


def _bench_load(args: argparse.Namespace) -> dict[str, Any]:
    """Start ``lesionlab serve`` in a subprocess and load it with one image at fixed concurrency."""
    from lesionlab.serve.bench import load_test

    if not args.run:
        raise UsageError("serve-bench load needs a run: lesionlab serve-bench load RUN")
    data, name = _bench_image(args)
    with _server(args) as (base, _):
        fields = {"age": "55", "sex": "female", "site": "back"}
        load_test(f"{base}/v1/predict", data, requests=min(10, args.requests), concurrency=1, filename=name,
                  fields=fields)  # warm-up, not reported
        result = load_test(f"{base}/v1/predict", data, requests=args.requests, concurrency=args.concurrency,
                           filename=name, fields=fields, max_seconds=args.max_seconds)
    return {"run": args.run, "image": name, "backend": "torch" if args.onnx is None else "onnxruntime",
            "load": result.as_dict()}


def _bench_soak(args: argparse.Namespace) -> dict[str, Any]:
    """A bounded soak against a served run: real images mixed with bad inputs, RSS sampled (serve.soak)."""
    from lesionlab.serve.soak import shared_images, soak

    if not args.run:
        raise UsageError("serve-bench soak needs a run: lesionlab serve-bench soak RUN")
    real = shared_images()
    with _server(args) as (base, pid):
        result = soak(base, pid, real, args.seconds, args.concurrency, args.sample_every,
                      progress=lambda m: print(m, file=sys.stderr))
    return {"run": args.run, "real_images": len(real), "backend": "torch" if args.onnx is None else "onnxruntime",
            "concurrency": args.concurrency, "soak": result}


def _onnx_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--onnx", nargs="?", const="auto", default=None, metavar="PATH",
                   help=f"{what} (file PATH, default <run>/model.onnx)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``export``, ``predict`` and ``serve-bench``."""
    p = sub.add_parser("serve", help="run the decision-support API and clinician page",
                       description="Serve a run: POST /v1/predict, /v1/predict/batch, GET /v1/model, /healthz, page /.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    _onnx_arg(p, "score with ONNX Runtime, exporting the file when missing")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _limit_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a run's model (ONNX) and check parity with PyTorch")
    p.add_argument("run", help="run directory")
    _onnx_arg(p, "write ONNX (image and metadata inputs, dynamic batch)")
    p.add_argument("--out", action=Deprecated, new="--onnx PATH")
    p.add_argument("--int8", action="store_true",
                   help="also write <name>.int8.onnx, statically quantised on the parity images (faster on CPU)")
    p.add_argument("--check-images", default=None, metavar="DIR",
                   help="folder of images for the parity check (default ../shared/data images, else synthetic)")
    p.add_argument("--check-limit", type=int, default=32, help="at most this many parity images")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="score image files into a CSV")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--age", default=None)
    p.add_argument("--sex", default=None, help="male, female or unknown")
    p.add_argument("--site", default=None, help="HAM10000 localization")
    p.add_argument("--csv", default=None, help="CSV with columns image[,age,sex,site] instead of IMAGE...")
    p.add_argument("--out", default="predictions.csv", help="output CSV ('-' for standard output)")
    _onnx_arg(p, "score with ONNX Runtime")
    _limit_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve-bench", help="latency (eager vs ONNX Runtime), service overhead, loopback load test, "
                                           "soak")
    p.add_argument("what", choices=["latency", "overhead", "load", "soak"])
    p.add_argument("run", nargs="?", default=None, help="run directory (latency: instead of --arch)")
    p.add_argument("--run", dest="old_run", action=Deprecated, new="lesionlab serve-bench WHAT RUN")
    p.add_argument("--arch", default="resnet50", help="latency without a run: this architecture, random weights")
    p.add_argument("--size", type=int, default=224, help="latency without a run: input size")
    p.add_argument("--runs", type=int, default=50, help="timed calls per measurement")
    p.add_argument("--image", default=None, help="image for overhead/load (default: a real 600x450 HAM10000 image)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=300.0, help="load test wall-clock bound")
    p.add_argument("--seconds", type=float, default=600.0, help="soak: how long (default 10 minutes)")
    p.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds between RSS samples")
    _onnx_arg(p, "load test: serve with ONNX Runtime")
    p.add_argument("--int8", action="store_true", help="latency: also an int8 ONNX Runtime model (static quantisation)")
    p.add_argument("--calibration", type=int, default=32, help="latency --int8: calibration images")
    _limit_args(p)
    p.set_defaults(func=cmd_bench)
