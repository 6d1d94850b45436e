"""The command line: ``invpbr run | render | check | batch | gradcheck | gradients | report
| view | schema``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from .guarded import main_run

    return main_run(args)


def _cmd_render(args) -> int:
    from ..render.photos import simulate_capture

    folder = Path(args.scene_dir)
    if not (folder / "truth.xml").is_file():
        raise FileNotFoundError(f"{folder / 'truth.xml'}: no such file; `invpbr render` makes "
                                "photos of synthetic scenes from their truth.xml")
    out = simulate_capture(
        folder, spp=args.spp, format=args.format, jpeg_quality=args.jpeg_quality,
        noise=args.noise, exposure=args.exposure, white_balance=args.white_balance,
        perturb_rotation=args.perturb_rotation, perturb_translation=args.perturb_translation,
        seed=args.seed, variant=args.variant)
    for path in out["photos"]:
        print(f"wrote {path}")
    if args.exposure > 0 or args.white_balance > 0:
        for sid, gain in out["gains"].items():
            print(f"  {sid}: gain {', '.join(f'{g:.4f}' for g in gain)}")
    for key in ("transforms_truth", "transforms"):
        if out[key] is not None:
            print(f"wrote {out[key]}")
    if args.perturb_rotation > 0 or args.perturb_translation > 0:
        print(f"  cameras perturbed by {args.perturb_rotation:g} deg and "
              f"{args.perturb_translation:g} x scene diagonal ({out['scene_diagonal']:.4g})")
    for path in out["removed"]:
        print(f"removed {path} (from an earlier simulation)")
    return 0


def _cmd_check(args) -> int:
    from ..problem.folder import check_folder

    problems = check_folder(args.scene_dir, variant=args.variant)
    if problems:
        print(f"{args.scene_dir}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.scene_dir}: ok")
    return 0


def _cmd_batch(args) -> int:
    from .batch import BatchStop, run_batch

    out = Path(args.out) if args.out else Path("out")

    def show(row):
        errs = ", ".join(f"{k}={v:.4g}" for k, v in row["errors"].items() if v is not None)
        print(f"{row['scene']}: {row['status']} ({row['seconds']:.1f} s) {errs} {row['message']}",
              flush=True)

    stop = BatchStop()  # SIGINT / SIGTERM: running jobs stop at a step, write partial results
    rows = run_batch(args.scenes_dir, out, iterations=args.iterations, spp=args.spp, jobs=args.jobs,
                     timeout=args.timeout, on_row=show, engine=args.engine, address=args.address,
                     resume=args.resume, variant=args.variant, backend=args.backend,
                     threads=args.threads, gpus=args.gpus, retries=args.retries,
                     stop=stop)
    print(f"wrote {out / 'summary.csv'} and {out / 'summary.json'}")
    if stop.signum is not None:
        return 128 + int(stop.signum)
    return 0 if all(r["status"] == "completed" for r in rows) else 1


def _cmd_gradcheck(args) -> int:
    import json

    from ..optimization.gradcheck import check_gradients, format_checks
    from ..problem.folder import load_problem

    problem = load_problem(args.scene_dir, variant=args.variant)
    if args.integrator:
        problem.config.render.integrator = args.integrator
    checks = check_gradients(problem, args.keys, views=args.views, spp=args.spp,
                             fd_spp=args.fd_spp, epsilon=args.epsilon)
    print(format_checks(checks))
    fd = [p.key for p in problem.estimates if p.finite_differences]
    if fd:
        print("note: invpbr estimates " + ", ".join(fd) + " with finite differences of the loss "
              "(Mitsuba's gradient is known to be biased there)")
    if args.json:
        Path(args.json).write_text(json.dumps([c.as_dict() for c in checks], indent=2))
    return 0


def _cmd_gradients(args) -> int:
    from ..optimization.gradient_images import write_scene_gradients
    from ..problem.folder import load_problem

    problem = load_problem(args.scene_dir, variant=args.variant)
    out = Path(args.out) if args.out else Path("out") / f"gradients_{problem.name}"
    index = write_scene_gradients(problem, out, keys=args.key, views=args.views, spp=args.spp,
                                  n_views=args.n_views)
    print(f"wrote {index} and {out / 'index.html'}")
    if args.screenshot:
        from .browser import screenshot

        print(f"wrote {screenshot(out / 'index.html', args.screenshot, width=args.width, height=args.height)}")
    return 0


def _cmd_report(args) -> int:
    from ..results.report import rebuild_reports

    written = rebuild_reports(args.out_dir)
    for path in written:
        print(f"wrote {path}")
    if args.screenshot:
        from .browser import screenshot

        shot = screenshot(written[-1], args.screenshot, width=args.width, height=args.height)
        print(f"wrote {shot}")
    return 0


def _cmd_view(args) -> int:
    from ..results.view import view_result

    written = view_result(args.result_dir, args.cameras, spp=args.spp, envmap=args.envmap,
                          width=args.width, height=args.height, out=args.out,
                          variant=args.variant, appearance=args.appearance, time=args.time)
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_schema(args) -> int:
    import json

    from ..config import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def load_plugins(specs: list[str]) -> None:
    """Import plug-in modules (estimate kinds registered with
    ``invpbr.estimates.register_kind``): module names, or paths of .py files.

    Raises:
        FileNotFoundError: a .py file that does not exist.
        ValueError: a module that cannot be imported (its error is kept).
    """
    import importlib
    import importlib.util

    for spec in specs:
        try:
            if spec.endswith(".py"):
                path = Path(spec)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such plug-in file (--plugin)")
                module_spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[path.stem] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except ImportError as e:
            raise ValueError(f"--plugin {spec}: cannot import it: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invpbr", description=(
        "Physically based inverse rendering: estimate materials of a Mitsuba 3 scene from photos."))
    parser.add_argument("--variant", default=None,
                        help="Mitsuba variant (default: cuda_ad_rgb if a GPU works, else llvm_ad_rgb)")
    parser.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto",
                        help="force the CPU (llvm_ad_rgb) or GPU (cuda_ad_rgb) variant")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import a module (or .py file) that registers estimate kinds "
                        "(invpbr.estimates.register_kind) before the command; repeatable; "
                        "also INVPBR_PLUGINS (comma-separated)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="estimate the parameters of one scene folder")
    run.add_argument("scene_dir")
    run.add_argument("--out", help="result folder (default: out/<scene name>)")
    run.add_argument("--iterations", type=int, help="override [optimize] iterations")
    run.add_argument("--spp", type=int, help="override [render] spp")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", action="store_true",
                     help="continue from the checkpoint in OUT/checkpoint (a run killed, "
                     "interrupted or failed); without one, start from the beginning")
    run.add_argument("--watch", action="store_true",
                     help="serve a live view of the run (loss, renders, errors) on this machine")
    run.add_argument("--port", type=int, default=8765,
                     help="port of the live view (--watch; 0: any free port)")
    run.set_defaults(func=_cmd_run)

    render = sub.add_parser(
        "render", help="render truth.xml into photos/ (synthetic scenes), optionally as "
        "simulated real captures (noise, exposure, white balance, 8-bit, JPEG, camera errors)")
    render.add_argument("scene_dir")
    render.add_argument("--spp", type=int, default=256)
    render.add_argument("--format", choices=["exr", "png", "jpg"], default="exr",
                        help="exr: linear float; png: 8-bit sRGB; jpg: JPEG (sRGB)")
    render.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality, 1-100")
    render.add_argument("--noise", type=float, default=0.0,
                        help="sensor noise std at linear value 1 "
                        "(std = noise * sqrt(value + 0.01))")
    render.add_argument("--exposure", type=float, default=0.0,
                        help="std of each photo's exposure change, stops")
    render.add_argument("--white-balance", type=float, default=0.0,
                        help="std of each photo's per-channel log gain")
    render.add_argument("--perturb-rotation", type=float, default=0.0,
                        help="rotation error of the cameras in transforms.json, degrees")
    render.add_argument("--perturb-translation", type=float, default=0.0,
                        help="position error of the cameras in transforms.json, fraction of "
                        "the scene's bounding-box diagonal")
    render.add_argument("--seed", type=int, default=0, help="seed of the simulated effects")
    render.set_defaults(func=_cmd_render)

    check = sub.add_parser("check", help="validate a scene folder and list every problem")
    check.add_argument("scene_dir")
    check.set_defaults(func=_cmd_check)

    grad = sub.add_parser("gradcheck", help="compare AD gradients with finite differences")
    grad.add_argument("scene_dir")
    grad.add_argument("--keys", nargs="+", help="parameter keys (default: all estimated)")
    grad.add_argument("--views", nargs="+", help="sensor ids (default: the first)")
    grad.add_argument("--integrator", help="override [render] integrator")
    grad.add_argument("--spp", type=int, default=256, help="spp of the AD render")
    grad.add_argument("--fd-spp", type=int, default=1024, help="spp of each finite-difference render")
    grad.add_argument("--epsilon", type=float, default=0.02, help="finite-difference step")
    grad.add_argument("--json", help="also write the checks to this JSON file")
    grad.set_defaults(func=_cmd_gradcheck)

    grads = sub.add_parser("gradients", help="gradient images of a scene folder's starting "
                           "guess (dLoss/dpixel, dI/dθ and each pixel's pull), without a run")
    grads.add_argument("scene_dir")
    grads.add_argument("--key", nargs="+", help="estimates (default: all)")
    grads.add_argument("--views", nargs="+", help="sensor ids (default: the first fitted view)")
    grads.add_argument("--n-views", type=int, default=1,
                       help="how many fitted views when --views is not given")
    grads.add_argument("--spp", type=int, default=16, help="samples per pixel of the renders")
    grads.add_argument("--out", help="output folder (default: out/gradients_<scene>)")
    grads.add_argument("--screenshot", help="also save a screenshot of its index.html (PNG)")
    grads.add_argument("--width", type=int, default=1000, help="screenshot width, pixels")
    grads.add_argument("--height", type=int, default=1500, help="screenshot height, pixels")
    grads.set_defaults(func=_cmd_gradients)

    report = sub.add_parser("report", help="(re)build report.html of a result folder, or the "
                            "reports and index.html of a folder of result folders (a batch)")
    report.add_argument("out_dir")
    report.add_argument("--screenshot", help="also save a screenshot of the page (PNG; needs "
                        "Chromium)")
    report.add_argument("--width", type=int, default=1200, help="screenshot width, pixels")
    report.add_argument("--height", type=int, default=1600, help="screenshot height, pixels")
    report.set_defaults(func=_cmd_report)
    view = sub.add_parser("view", help="render a result folder from the cameras of a camera "
                          "file (linear RGBA EXR + sRGB PNG per frame)")
    view.add_argument("result_dir")
    view.add_argument("--cameras", required=True,
                      help="transforms.json, a COLMAP model folder or poses_bounds.npy")
    view.add_argument("--spp", type=int, default=64)
    view.add_argument("--envmap", help="relight: this environment map replaces the lighting")
    view.add_argument("--width", type=int, help="render width (default: the camera file's)")
    view.add_argument("--height", type=int, help="render height (default: the camera file's)")
    view.add_argument("--out", help="output folder (default: RESULT_DIR/views)")
    view.add_argument("--appearance", help="a radiance field fitted with [field] appearance: "
                      "render at this fitted photo's appearance (default: the neutral one)")
    view.add_argument("--time", type=float, help="a radiance field fitted with [field] time: "
                      "render this moment in [0, 1] (default: each frame's time, else 0.5)")
    view.set_defaults(func=_cmd_view)

    schema = sub.add_parser("schema", help="print the JSON schema of invpbr.toml (for editors)")
    schema.set_defaults(func=_cmd_schema)

    batch = sub.add_parser("batch", help="run every scene folder in a folder")
    from .batch import add_batch_arguments

    add_batch_arguments(batch)
    batch.set_defaults(func=_cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..backend import LLVMError
    from ..config import ConfigError

    args = build_parser().parse_args(argv)
    if args.backend != "auto":
        forced = {"cpu": "llvm_ad_rgb", "gpu": "cuda_ad_rgb"}[args.backend]
        if args.variant not in (None, forced):
            print(f"invpbr: error: --backend {args.backend} contradicts --variant {args.variant}",
                  file=sys.stderr)
            return 2
        args.variant = forced
    try:
        import os

        load_plugins([p for p in os.environ.get("INVPBR_PLUGINS", "").split(",") if p]
                     + args.plugin)
        return args.func(args)
    except (FileNotFoundError, ValueError, ConfigError, LLVMError, OSError) as e:
        print(f"invpbr {args.command}: error: {e}", file=sys.stderr)
    # A run refused half-way (a checkpoint of other settings) is held by reference cycles
    # through the traceback; while it lives, its latents' AD graph breaks forward-mode
    # derivatives elsewhere in the process (dr.isolate_grad() errors in Mitsuba's prb, seen
    # in tests/test_discontinuities.py after a refused --resume). Free it now.
    import gc

    gc.collect()
    return 2


if __name__ == "__main__":
    sys.exit(main())
