"""The `latprune` command line: parses and checks arguments, calls the Python API, nothing more."""

from __future__ import annotations

import os

# The command sets its process's environment before anything imports torch: OpenMP
# busy-waiting makes torch/xgboost 20-180x slower on small shared CPUs, and nothing may
# download at run time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from .errors import LatpruneError  # noqa: E402
from .workload import METRICS  # noqa: E402

MODEL_HELP = "'default', a Hugging Face model directory, a .gguf file or a latprune output directory"


def _read_arch(path: str):
    from .architecture import Architecture

    p = Path(path)
    if not p.is_file():
        raise LatpruneError(f"architecture file '{path}' does not exist")
    try:
        return Architecture.from_json(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LatpruneError(f"architecture file '{path}' is not UTF-8 JSON") from None


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


# ---- commands ------------------------------------------------------------------
def cmd_space(args) -> int:
    from .models import load_config
    from .space import SearchSpace

    print(SearchSpace.from_config(load_config(args.model)).describe())
    return 0


def cmd_compress(args) -> int:
    from latprune.compress.workflow import compress

    if args.arch and args.keep is not None:
        raise LatpruneError("pass either --arch or --keep, not both")
    arch = _read_arch(args.arch) if args.arch else None
    summary = compress(args.model, args.out, arch=arch, keep=args.keep, text=args.text, eval_windows=args.windows)
    print(f"wrote {args.out}: {summary['parameters']:,} of {summary['parent_parameters']:,} parameters "
          f"({summary['parameters'] / summary['parent_parameters']:.0%}), held-out perplexity "
          f"{summary['perplexity']:.2f} (parent {summary['parent_perplexity']:.2f})")
    return 0


def cmd_eval(args) -> int:
    from latprune.compress.workflow import evaluate

    result = evaluate(args.model, text=args.text, windows=args.windows)
    print(f"{args.model}: held-out perplexity {result['perplexity']:.3f} over {result['windows']} windows of "
          f"{result['window']} tokens (second text, never trained on: {result['second_text_perplexity']:.3f}); "
          f"{result['parameters']:,} parameters")
    return 0


def cmd_devices(args) -> int:
    from latprune.profiling.devices import availability, load_devices

    if args.ray:
        from latprune.profiling.fleet import offered, resource

        nodes = offered(args.ray)
        for name in sorted({*load_devices(args.devices_file), *nodes}):
            print(f"{name:10s} {nodes.get(name, 0)} node(s) of the Ray cluster offer {resource(name)}")
        return 0
    for dev in load_devices(args.devices_file).values():
        ok, why = availability(dev)
        print(f"{dev.name:10s} {'usable' if ok else 'NOT usable':10s} {'+'.join(dev.providers):45s} {dev.dtype}  "
              f"{dev.description or ''}{'' if ok else '  -- ' + why}")
    return 0


def cmd_profile(args) -> int:
    from latprune.profiling.run import profile

    from .workload import Workload

    if (args.plan == "transfer") != bool(args.transfer_from):
        raise LatpruneError("--plan transfer and --transfer-from SOURCE go together: the plan spreads the samples "
                            "over the latency range the sources predict")
    if args.ray:
        return _fleet_profile(args)
    if "," in args.device:
        raise LatpruneError("several devices at once run on a Ray cluster: add --ray ADDRESS (or --ray auto)")

    out = profile(args.model, args.device, args.samples, Workload.parse(args.workload), out=args.out, seed=args.seed,
                  aim=args.aim, aim_metric=args.metric, transfer_from=args.transfer_from or (),
                  per_layer=args.plan == "per-layer",
                  devices_file=args.devices_file, keep_onnx=args.keep_onnx)
    print(f"wrote {out}")
    return 0


def _fleet_profile(args) -> int:
    from latprune.profiling.fleet import fleet_profile

    from .workload import Workload

    if args.plan != "spread" or args.aim is not None or args.keep_onnx:
        raise LatpruneError("--ray profiles the default plan: drop --plan, --aim and --keep-onnx")
    outs = fleet_profile(args.model, args.device.split(","), args.samples, Workload.parse(args.workload),
                         address=args.ray, out_dir=args.out, seed=args.seed, devices_file=args.devices_file)
    for name, path in outs.items():
        print(f"{name}: wrote {path}")
    return 0


def cmd_fit(args) -> int:
    from latprune.predictors.predictor import fit_profile

    predictor, out = fit_profile(args.profile, args.out, kind=args.kind, seed=args.seed,
                                 transfer_from=args.transfer_from or ())
    rows = predictor.meta["rows"]
    sources = predictor.meta.get("transfer", {}).get("sources", [])
    origin = f", transferred from {', '.join(repr(s['device']) for s in sources)}" if sources else ""
    print(f"{predictor.kind} predictor for device '{predictor.meta['device']}' on {rows['used']} rows{origin} "
          f"({rows['failed']} failed and {rows['drift_flagged']} drift-flagged rows excluded)")
    print(predictor.accuracy_table())
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from latprune.predictors.predictor import Predictor

    from .workload import Workload

    predictor = Predictor.load(args.predictor, allow_mismatch=args.allow_mismatch)
    workload = Workload.parse(args.workload) if args.workload else None
    if workload:
        predictor.check_workload(workload, args.allow_mismatch)
    row = predictor.predict([_read_arch(args.arch)], workload).iloc[0]
    _print_json({"prediction": True, "device": predictor.meta["device"],
                 **{k: round(float(v), 4) for k, v in row.items()}})
    return 0


def _search_options(args, latency_ms: float | None):
    """SearchOptions from the options this command has; the others keep SearchOptions' defaults."""
    from dataclasses import fields

    from latprune.search.options import SearchOptions

    given = {f.name: getattr(args, f.name, None) for f in fields(SearchOptions)}
    given.update(latency_ms=latency_ms, safety_margin=getattr(args, "margin", None))
    return SearchOptions(latency_ms, **{k: v for k, v in given.items() if v is not None and k != "latency_ms"})


def cmd_search(args) -> int:
    from latprune.search.workflow import search

    from .workload import Workload

    opts = _search_options(args, args.latency_ms)  # every option checked before any work
    workload = Workload.parse(args.workload) if args.workload else None
    summary = search(args.model, args.device, opts, args.out, predictor=args.predictor, text=args.text,
                     workload=workload, devices_file=args.devices_file, allow_mismatch=args.allow_mismatch,
                     supernet=args.supernet)
    if summary.get("parent_is_answer"):
        print(f"latprune: {summary['message']}")
        return 0
    _print_winner(summary, args.out)
    return 0


def _print_winner(summary: dict, out) -> None:
    w, p, m = summary["winner"], summary["parent"], summary["metric"]
    sp = summary["speedup"][m]
    print(f"winner {w['describe']} ({w['parameters']:,} of {p['parameters']:,} parameters)\n"
          f"  {m}: measured {w['measured'][m]:.2f} ms = {w['measured'][m] / summary['budget_ms']:.0%} of the "
          f"{summary['budget_ms']:g} ms budget (predicted {w['predicted'][m]:.2f} ms, upper bound "
          f"{w['predicted_upper'][m]:.2f} ms); parent measured {p['measured'][m]:.2f} ms\n"
          f"  device timings: {_timings(summary)}\n"
          f"  speedup: measured {sp['measured']:.2f}x, predicted {sp['predicted']:.2f}x\n"
          f"  held-out perplexity {w['heldout_perplexity']:.2f} (parent {p['heldout_perplexity']:.2f})")
    if "quality" in p:
        from latprune.search.report import quality_table

        print(quality_table(summary))
    print(f"wrote {out}")


def _timings(summary: dict) -> str:
    use = summary["budget_use"]
    return (f"{use['device_measurements']} ({use.get('in_refinement', 0)} in refinement, "
            f"{use.get('in_verification', use['device_measurements'])} in verification)")


def cmd_run(args) -> int:
    from latprune.search.pipeline import run_pipeline

    summary = run_pipeline(args.model, args.device, _search_options(args, args.latency_ms), samples=args.samples,
                           supernet_steps=args.supernet_steps, out=args.out)
    if summary.get("parent_is_answer"):
        return 0
    _print_winner(summary, args.out)
    print(f"report: {summary['report']['markdown']} and {summary['report']['html']} "
          f"(whole run {summary['wall_s'] / 60:.1f} min)")
    return 0


def cmd_supernet(args) -> int:
    from latprune.compress.workflow import supernet

    info = supernet(args.model, args.out, steps=args.steps, text=args.text, band=args.band, seed=args.seed,
                    eval_windows=args.windows)
    q = info["quality"]
    print(f"{'reused' if info['reused'] else 'wrote'} {info['folder']}: the parent's held-out perplexity "
          f"{q['parent_heldout_perplexity']:.2f}, its full-size slice after {info['config']['steps']} steps "
          f"{q['full_slice_heldout_perplexity']:.2f}; search its slices with --supernet {info['folder']}")
    return 0


def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI fractions of the parent's parameters, got '{text}'") from None
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI <= 1, got '{text}'")
    return lo, hi


def cmd_report(args) -> int:
    from latprune.search.report import build_report

    md, html = build_report(args.dir, predictor_dir=args.predictor, out=args.out)
    print(f"wrote {md} and {html}")
    return 0


def cmd_distill(args) -> int:
    from latprune.compress.workflow import distill_model

    info = distill_model(args.student, args.teacher, args.out, steps=args.steps, text=args.text, lr=args.lr,
                         seed=args.seed)
    before, after = info["quality_before"], info["quality_after"]
    print(f"distilled {args.steps} steps ({info['tokens']:,} tokens, {info['seconds_this_run']:.0f} s): held-out "
          f"perplexity {before['heldout_perplexity']:.2f} -> {after['heldout_perplexity']:.2f} "
          f"(parent {info['parent_heldout_perplexity']:.2f}); second text {before['second_text_perplexity']:.2f} -> "
          f"{after['second_text_perplexity']:.2f}; KL to the parent {before['kl_to_parent']:.3f} -> "
          f"{after['kl_to_parent']:.3f}; wrote {args.out}")
    return 0


# ---- parser --------------------------------------------------------------------
def _option_default(name: str):
    """The default of a SearchOptions field, so the parser does not repeat it."""
    from latprune.search.options import SearchOptions

    return SearchOptions.__dataclass_fields__[name].default


def _run_samples() -> int:
    from latprune.search.options import RUN_SAMPLES

    return RUN_SAMPLES


def _integer(lowest: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lowest}, got '{text}'") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lowest}, got {value}")
        return value

    return parse


def _number(lowest: float, highest: float = math.inf, strict: bool = True):
    """A finite float > lowest (>= when not strict) and < highest."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > lowest if strict else value >= lowest) and value < highest):
            bound = f"{'>' if strict else '>='} {lowest:g}" + (f" and < {highest:g}" if highest < math.inf else "")
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got '{text}'")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line, `latprune: error: ...`, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"latprune: error: {message} (see '{self.prog} --help')\n")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help=f"{MODEL_HELP} (default: the embedded SmolLM2-135M)")


def _metric_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=_option_default("metric"), choices=METRICS,
                   help="decode_ms (per generated token; default), prefill_ms or e2e_ms")


def _search_args(p: argparse.ArgumentParser) -> None:
    from latprune.search.options import STRATEGIES

    _evaluations_arg(p)
    _selection_args(p)
    p.add_argument("--margin", type=_number(0, 1, strict=False), default=_option_default("safety_margin"),
                   help="safety margin: predicted upper bound <= budget x (1 - margin)")
    p.add_argument("--strategy", default=_option_default("strategy"), choices=STRATEGIES,
                   help="auto (default: layers when some depth meets the budget, else nas), nas, random, uniform "
                        "or layers")
    _space_arg(p)
    p.add_argument("--optimizer", default=_option_default("optimizer"),
                   help="nevergrad optimizer for --strategy nas and --space per-layer (default chosen in "
                        "benchmarks/optimizer_choice.py: %(default)s)")
    p.add_argument("--pareto", type=_integer(0), default=_option_default("pareto"),
                   help="also report K points of the perplexity/latency front")


def _space_arg(p: argparse.ArgumentParser) -> None:
    from latprune.search.options import SPACES

    p.add_argument("--space", default=_option_default("space"), choices=SPACES,
                   help="uniform (default: every kept layer alike) or per-layer (a per-layer search seeded by the "
                        "strategy's best follows its last round; llama, mistral, qwen2, qwen3)")


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-measurements", type=_integer(0), default=_option_default("device_measurements"),
                   help="refinement: time up to N candidates near the budget on the device, refitting the predictor "
                        "after each, so the budget is spent (default %(default)s; 0: off)")
    p.add_argument("--finalists", type=_integer(1), default=_option_default("finalists"),
                   help="candidates verified on the device (3 paired rounds each); while none meets the budget there, "
                        "the next refined candidate and then the best safe one are timed as fallbacks; nothing over "
                        "budget on the device wins (default %(default)s)")
    p.add_argument("--finalist-steps", type=_integer(0), default=_option_default("finalist_steps"),
                   help="distillation steps that 2 x --finalists candidates near the budget (the search's best "
                        "and sub-networks of other depths) get before any device timing, so refinement and the "
                        "finalists take the best after them first; the winner is the passing finalist best after "
                        "them (default %(default)s; 0: zero-shot perplexity throughout)")


def _evaluations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--evaluations", type=_integer(1), default=_option_default("evaluations"),
                   help="perplexity evaluations in the search (default %(default)s)")


def _recovery_args(p: argparse.ArgumentParser) -> None:
    from latprune.search.options import DTYPES

    p.add_argument("--recover-minutes", type=_number(0, strict=False), default=_option_default("recover_minutes"),
                   help="distil the winner from the parent for this long (default %(default)g; 0 skips); resumable")
    p.add_argument("--dtype", choices=DTYPES, default=_option_default("dtype"),
                   help="dtype of the saved checkpoint (default %(default)s)")


def _subparsers(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    def add(name: str, func, help: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, formatter_class=fmt, epilog=epilog)
        p.set_defaults(func=func)
        return p

    return add


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="latprune", description="Compress a causal LM to a latency budget on a device.",
                     epilog="Run 'latprune COMMAND --help' for the options and an example of each command.")
    add = _subparsers(parser)
    seed = dict(type=_integer(0), default=0, help="random seed (>= 0)")
    windows = dict(type=_integer(1), default=40, help="held-out windows of 128 tokens to evaluate (default 40)")

    p = add("space", cmd_space, "print the search space of a model", "example:\n  latprune space --model default")
    _model_arg(p)

    p = add("compress", cmd_compress, "extract an importance-ordered sub-network and save it",
            "examples:\n  latprune compress --model default --keep 0.6 --out out/smol60\n"
            "  latprune compress --model default --arch arch.json --out out/mine\n"
            'arch.json: {"layers": 20, "heads": 6, "kv_groups": 2, "mlp": 1024, "hidden": 576}\n'
            "--out is replaced only when latprune wrote it; other directories are refused.")
    _model_arg(p)
    p.add_argument("--arch", help="architecture JSON file (layers may be a count or a list of parent indices)")
    p.add_argument("--keep", type=float, help="fraction of parameters to keep, in (0, 1] (default 0.6 when no --arch)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face checkpoint)")
    p.add_argument("--text", help="UTF-8 text file for calibration and evaluation (default: pydoc topics)")
    p.add_argument("--windows", **windows)

    p = add("eval", cmd_eval, "held-out perplexity of a model",
            "examples:\n  latprune eval --model default\n  latprune eval --model out/smol60 --text my_corpus.txt")
    _model_arg(p)
    p.add_argument("--text", help="UTF-8 text file (its held-out part is used; default: pydoc topics)")
    p.add_argument("--windows", **windows)

    p = add("devices", cmd_devices, "list devices and whether they are usable here",
            "examples:\n  latprune devices --devices-file my_devices.toml\n  latprune devices --ray auto")
    p.add_argument("--devices-file",
                   help="TOML file with [devices.NAME] tables (default ~/.config/latprune/devices.toml)")
    p.add_argument("--ray", metavar="ADDRESS", help="list the devices the nodes of this Ray cluster offer")

    p = add("profile", cmd_profile, "measure ONNX Runtime latency of sampled sub-architectures on a device",
            "examples:\n  latprune profile --device cpu --model default --samples 40\n"
            "  latprune profile --device a100 --samples 150 --workload batch=1,prompt=512\n"
            "  latprune profile --device cpu --samples 32 --aim 0.6   # half aimed at 60% of the parent's decode_ms\n"
            "  latprune profile --device cpu-1t --devices-file devices.toml --samples 20 --plan transfer \\\n"
            "      --transfer-from out/predictors/cpu   # a new device: 20 samples spread by a profiled one\n"
            "Rerunning the same command resumes: finished samples are kept and skipped.\n"
            "One process at a time per file: a second is refused (it would lose rows and disturb the timings).")
    p.add_argument("--device", default="cpu", help="cpu, a100, jetson or a device of --devices-file")
    _model_arg(p)
    p.add_argument("--samples", type=_integer(1), default=40, help="number of sampled architectures (default 40)")
    p.add_argument("--workload", help="batch=1,prompt=128,generate=32 (the default)")
    p.add_argument("--out", help="Parquet file (default profiles/DEVICE.parquet); appended to, resumable")
    p.add_argument("--seed", **seed)
    p.add_argument("--devices-file", help="TOML file with extra devices")
    p.add_argument("--ray", metavar="ADDRESS", help="profile on a Ray cluster ('auto': the local one); --device may "
                   "then name several devices, comma-separated, each run on the nodes offering latprune:NAME, "
                   "and --out is a folder (one NAME.parquet each)")
    p.add_argument("--keep-onnx", action="store_true", help="keep every exported graph in the cache")
    p.add_argument("--aim", type=_number(0, 1), help="aim half of the samples at this fraction of the parent's "
                                                    "latency (e.g. 0.6, your budget; default: all space-filling)")
    p.add_argument("--plan", choices=["spread", "transfer", "per-layer"], default="spread",
                   help="spread: space-filling by parameter count (default); transfer: spread over the latency range "
                        "that --transfer-from predicts, every other sample at >= 30%% of the parent's (where budgets "
                        "lie), for 'latprune fit --transfer-from'; per-layer: heterogeneous "
                        "architectures, held out to check per-layer latency predictions")
    p.add_argument("--transfer-from", nargs="+", metavar="SOURCE",
                   help="with --plan transfer: predictor directories or profiles of devices already profiled")
    _metric_arg(p)

    p = add("fit", cmd_fit, "fit per-device latency predictors on a profile",
            "examples:\n  latprune fit profiles/cpu.parquet\n"
            "  latprune fit profiles/cpu.parquet --kind roofline --out out/predictors/cpu-roofline\n"
            "  latprune fit profiles/cpu-1t.parquet --transfer-from out/predictors/cpu   # a new device, ~20 rows")
    p.add_argument("profile", help="Parquet file written by 'latprune profile'")
    p.add_argument("--out", help="predictor directory (default out/predictors/DEVICE)")
    p.add_argument("--kind", default="xgboost", choices=["xgboost", "roofline", "mlp"], help="surrogate kind")
    p.add_argument("--transfer-from", nargs="+", metavar="SOURCE",
                   help="predictor directories or profiles of other devices or workloads of the same model: fit a "
                        "transferred predictor from this profile's few rows (needs jax; --kind is ignored)")
    p.add_argument("--seed", **seed)

    p = add("predict", cmd_predict, "predicted latency of an architecture",
            "example:\n  latprune predict --predictor out/predictors/cpu --arch arch.json")
    p.add_argument("--predictor", required=True, help="directory written by 'latprune fit'")
    p.add_argument("--arch", required=True, help="architecture JSON file (uniform widths)")
    p.add_argument("--workload", help="batch=1,prompt=128,generate=32 (default: the profiled one)")
    p.add_argument("--allow-mismatch", action="store_true", help="use the predictor outside its range, with a warning")

    p = add("search", cmd_search, "best sub-network under a latency budget, verified on the device",
            "examples:\n  latprune search --device cpu --latency-ms 12\n"
            "  latprune search --device cpu --latency-ms 60 --metric prefill_ms --pareto 5\n"
            "  latprune search --device cpu --latency-ms 12 --strategy uniform --out out/uniform\n"
            "Needs a predictor (latprune profile + latprune fit) for the device.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--latency-ms", type=_number(0), required=True, help="latency budget of --metric, in ms")
    _metric_arg(p)
    _model_arg(p)
    p.add_argument("--predictor", help="predictor directory (default out/predictors/DEVICE)")
    p.add_argument("--supernet", help="cut sub-networks from this fine-tuned super-network ('latprune supernet')")
    _search_args(p)
    p.add_argument("--out", default="out/search", help="output directory (default out/search)")
    p.add_argument("--seed", **seed)
    p.add_argument("--text", help="UTF-8 text file for calibration and evaluation")
    p.add_argument("--workload", help="batch=1,prompt=128,generate=32 (default: the predictor's)")
    p.add_argument("--devices-file", help="TOML file with extra devices")
    p.add_argument("--allow-mismatch", action="store_true", help="use a predictor of another device/model")
    p.add_argument("--distill-steps", type=_integer(0), default=_option_default("distill_steps"),
                   help="recover the winner with exactly N distillation steps instead of --recover-minutes")
    _recovery_args(p)

    p = add("run", cmd_run, "the whole pipeline: profile, fit, search, verify, export, report",
            "examples:\n  latprune run                       # default model, this CPU, budget = 60% "
            "of the parent's measured decode_ms\n  latprune run --device cpu --latency-ms 12 --samples 80")
    p.add_argument("--device", default="cpu")
    p.add_argument("--latency-ms", type=_number(0), help="budget (default: 60%% of the parent's measured latency)")
    _metric_arg(p)
    _model_arg(p)
    p.add_argument("--samples", type=_integer(1), default=_run_samples(),
                   help="profiled architectures, half of them aimed at the budget (default %(default)s)")
    _evaluations_arg(p)
    _selection_args(p)
    _space_arg(p)
    p.add_argument("--supernet-steps", type=_integer(0), default=0,
                   help="fine-tune the super-network for N sandwich steps first (cached; default 0)")
    p.add_argument("--out", default="out/run")
    p.add_argument("--seed", **seed)
    _recovery_args(p)

    p = add("supernet", cmd_supernet, "fine-tune the super-network (sandwich rule, KD from the parent)",
            "example:\n  latprune supernet --model default --steps 30\n"
            "  latprune search --device cpu --latency-ms 12 --supernet DIR   # DIR as printed\n"
            "Interrupted runs resume when rerun with the same options; a finished one is reused.")
    _model_arg(p)
    p.add_argument("--steps", type=_integer(1), default=30, help="sandwich steps (each: largest, smallest and 2 "
                                                                  "random sub-networks; default 30)")
    p.add_argument("--band", type=_band, help="LO,HI: random sub-networks with this fraction of the parent's "
                                              "parameters (e.g. near your budget; default: the whole space)")
    p.add_argument("--text", help="UTF-8 text file (calibration part is used for training)")
    p.add_argument("--out", help="output directory (default: latprune's cache, keyed by model, text and settings)")
    p.add_argument("--seed", **seed)
    p.add_argument("--windows", **windows)

    p = add("report", cmd_report, "Markdown + HTML report of a search output directory",
            "example:\n  latprune report out/run --predictor out/predictors/cpu")
    p.add_argument("dir", help="output directory of 'latprune search' or 'latprune run'")
    p.add_argument("--predictor", help="predictor directory, for its accuracy table")
    p.add_argument("--out", help="report path (default DIR/report.md; report.html beside it)")

    p = add("distill", cmd_distill, "recover quality of a compressed model by distilling from its parent",
            "example:\n  latprune distill --student out/run/model --teacher default --steps 200 "
            "--out out/run/model-distilled\nInterrupted runs resume when rerun with the same options.")
    p.add_argument("--student", required=True, help="a latprune output model directory")
    p.add_argument("--teacher", default="default", help="its parent: 'default' or a model directory")
    p.add_argument("--steps", type=_integer(1), default=200,
                   help="optimizer steps, each 4 x 2 windows of 128 tokens (~6 s a step for SmolLM2 on 2 CPU cores)")
    p.add_argument("--lr", type=_number(0), default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--text", help="UTF-8 text file (calibration part is used for training)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", **seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LatpruneError as exc:
        print(f"latprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        said = str(exc) or ("nothing half-written was left; rerun the same command (profiles resume where they "
                            "stopped)")
        print(f"latprune: interrupted; {said}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
