"""The ``mdm`` command line.

Module import stays light (no torch): ``mdm --help`` and ``mdm plugins`` must start fast.
Every user error is an ``MdmError``: printed as ``error: ...`` with its exit code, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mdm_core import __version__
from mdm_core.errors import MdmError
from mdm_core.kinds import KINDS


def _overrides_help() -> str:
    return "dotted overrides, e.g. trainer.max_steps=2000 time_sampler.name=bell"


# -- train / eval / sample ---------------------------------------------------------------------

TRAIN_EPILOG = """\
Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint, prints the
resume command and exits 130 (SIGINT) or 143 (SIGTERM). Other exit codes: 0 done, 1 other
errors, 2 bad spec or run directory (in use, already a run), 3 plug-in or checkpoint
problem, 4 diverged (NaN/Inf). See docs/training.md.
"""


def cmd_train(args: argparse.Namespace) -> int:
    from mdm_core import runs
    from mdm_core.interrupt import RunInterrupted
    from mdm_core.runlock import RunLock
    from mdm_core.spec import check_runnable, load_spec

    # Under torchrun only rank 0 claims the run directory, so only it checks it up front.
    main_rank = os.environ.get("RANK", "0") == "0"
    run_dir: Path | None
    if args.resume:
        run_dir = Path(args.resume)
        if args.run_dir and Path(args.run_dir) != run_dir:
            raise MdmError("train: --resume already names the run directory; drop --run-dir", exit_code=2)
        runs.check_resumable(run_dir)
        if main_rank:
            RunLock(run_dir).check_free()  # early; train() takes the lock
        # ``mdm train --resume RUN a=1 b=2``: the first override lands in ``spec``; keep the order.
        overrides = ([args.spec] if args.spec else []) + args.overrides
        spec = load_spec(run_dir / "resolved.yaml", overrides)
        runs.resume_changes(run_dir, spec)  # a change of what the run computes: exit 2 here
    else:
        if args.from_step is not None:
            raise MdmError("train: --from-step picks the checkpoint of a --resume", exit_code=2)
        if not args.spec:
            raise MdmError("train: give a spec file, e.g. mdm train specs/quickstart.yaml", exit_code=2)
        spec = load_spec(args.spec, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None and main_rank:  # early; train() checks again holding the lock
            RunLock(run_dir).check_free()
            runs.refuse_existing_run(run_dir)
    check_runnable(spec)  # before any data is read: a run this machine can never start is exit 2
    from mdm_core.trainer import train  # after the spec: spec errors come before heavy imports

    def announce(path: Path) -> None:
        print(f"run  {path}", flush=True)

    try:
        summary = train(
            spec,
            run_dir=run_dir,
            resume=bool(args.resume),
            quiet=args.quiet,
            on_start=announce if main_rank else None,
            from_step=args.from_step,
        )
    except RunInterrupted as exc:
        if main_rank:
            print(str(exc), file=sys.stderr)
        return exc.exit_code
    if main_rank:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    final = summary.get("final", {})
    run_dir = summary["run_dir"]
    for i, text in enumerate(summary.get("samples", [])):
        print(f"sample {i}: {text}")
    if "val/nll" in final:
        line = (
            f"done: val_nll {final['val/nll']:.4f} nats/token (ppl {final['val/ppl']:.3f}) "
            f"at step {summary['steps']} in {summary['elapsed']:.0f}s of training"
        )
        floor = summary.get("data", {}).get("floor_nats_per_token")
        if floor:
            line += f"; entropy floor {floor:.4f} (gap {100 * (final['val/nll'] / floor - 1):.1f}%)"
        print(line)
    others = {k: v for k, v in final.items() if k not in ("val/nll", "val/ppl", "val/bpt")}
    if others:
        print("      " + "  ".join(f"{k} {v:.4g}" for k, v in others.items()))
    print(f"run: {run_dir}  (curve: {run_dir}/curves.png, metrics: {run_dir}/metrics.jsonl)")


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from mdm_core.assembly import load_run  # rebuilds the run without re-reading its corpus
    from mdm_core.evaluation import eval_context, evaluate
    from mdm_core.pretrained import is_run_dir, load_pretrained

    if not is_run_dir(args.run):  # an exported model (a folder or a Hub id)
        if args.ckpt is not None or args.set:
            flag = "--ckpt" if args.ckpt is not None else "--set"
            raise MdmError(
                f"eval: {flag} is for run directories; an exported model has one checkpoint and spec", 2
            )
        model = load_pretrained(args.run)
        evaluators, ctx = model.evaluation(Path(args.data) if args.data else None)
        step = model.step
    elif args.data:
        raise MdmError("eval: --data is for exported models; a run evaluates on its own validation split", 2)
    else:
        if args.ckpt is not None:
            _check_ckpt_step(Path(args.run), args.ckpt)
        loaded = load_run(args.run, step=args.ckpt, overrides=args.set)  # verified like a resume
        parts = loaded.parts
        evaluators, step = parts.evaluators, loaded.step
        ctx = eval_context(parts, parts.model, loaded.spec.run.trainer, loaded.device)
    print(f"eval: {args.run} at step {step}, {len(evaluators)} evaluator(s)", file=sys.stderr, flush=True)
    metrics: dict[str, float] = {}
    for i, evaluator in enumerate(evaluators, 1):
        start = time.perf_counter()
        metrics.update(evaluate([evaluator], ctx, final=True))
        took = time.perf_counter() - start
        print(f"[{i}/{len(evaluators)}] {evaluator.name} in {took:.1f}s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(f"{'step':24s} {step}")
        for key, value in metrics.items():
            print(f"{key:24s} {value:.6g}")
    return 0


def _check_ckpt_step(run: Path, step: int) -> None:
    """``--ckpt STEP`` names a written checkpoint, else exit 2 listing the steps there are."""
    from mdm_core import checkpoint

    ckpt = run / "ckpt"
    steps = sorted(
        int(folder.name.removeprefix("step-"))
        for folder in ckpt.glob("step-*")
        if (folder / checkpoint.META).is_file() and folder.name.removeprefix("step-").isdigit()
    )
    if step not in steps:
        raise MdmError(
            f"eval --ckpt {step}: {run} has no checkpoint of step {step}; its checkpoints are of "
            f"steps {', '.join(map(str, steps)) or '(none)'}",
            exit_code=2,
        )


def _sample_sampler(args: argparse.Namespace, loaded: Any) -> Any:
    """The run's sampler, or the one ``--sampler``/``--steps`` ask for (validated like a spec)."""
    from pydantic import ValidationError

    from mdm_core.composition import check_composition
    from mdm_core.errors import SpecError
    from mdm_core.plugins import get_registry
    from mdm_core.spec import Component

    current = loaded.components["sampler"]
    if args.sampler is None and args.steps is None:
        return loaded.sampler
    name = args.sampler or current.name
    cls = get_registry().load("sampler", name, where="--sampler")
    params = current.params.model_dump() if name == current.name else {}
    if args.steps is not None:
        if "steps" not in cls.Params.model_fields:
            raise SpecError(f"--steps: sampler '{name}' has no steps parameter")
        params["steps"] = args.steps
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "sampler"
        flag = "--steps" if key == "steps" and args.steps is not None else f"sampler.{key}"
        raise SpecError(f"{flag}: {err['msg']} (got {err.get('input')!r}) for sampler '{name}'") from None
    chosen = Component("sampler", name, cls, validated, "--sampler")
    check_composition({"forward_process": loaded.components["forward_process"], "sampler": chosen}, "sample")
    return chosen.build(loaded.shape)


def cmd_sample(args: argparse.Namespace) -> int:
    from mdm_core.pretrained import open_model

    loaded = open_model(args.run)  # a run directory, an exported folder or a Hub id
    sampler = _sample_sampler(args, loaded)
    out = loaded.generate(args.num, args.seed, args.length, args.prompt, sampler)
    for i, text in enumerate(loaded.decode(out)):
        print(f"--- sample {i}\n{text}")
    print(f"(NFE {out.nfe}, sampler {type(sampler).name})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mdm_core.export import export_run

    result = export_run(
        args.run,
        args.dir,
        force=args.force,
        with_data=not args.no_data,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"exported {args.run} (step {result.step}) to {result.path}")
    if result.url:
        print(f"pushed: {result.url}")
    print(f"next: mdm sample {result.path}")
    return 0


# -- sweep / compare ---------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    import time

    from mdm_core.sweep import check_points, parse_grid, run_sweep

    grid, fixed = parse_grid(args.assignments)
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    total = check_points(args.spec, grid, fixed)  # a bad point: exit 2 before any run starts
    print(f"sweep: {total} points, {args.parallel} at a time, into {out} (logs: {out / 'logs'})", flush=True)
    started, done = time.perf_counter(), 0

    def report(point: Any) -> None:
        nonlocal done
        done += 1
        left = (time.perf_counter() - started) / done * (total - done)
        eta = f", about {left:.0f}s left" if done < total else ""
        if point.exit_code == 0:
            print(f"[{done}/{total}] {point.label}: ok in {point.seconds:.1f}s{eta}", flush=True)
            return
        print(
            f"[{done}/{total}] {point.label}: FAILED (exit {point.exit_code}) after {point.seconds:.1f}s"
            f"{eta}; last lines of {point.log}:",
            flush=True,
        )
        for line in point.log_tail():
            print(f"    {line}", flush=True)

    result = run_sweep(
        args.spec, grid, fixed, out, parallel=args.parallel, extra_args=["--quiet"], on_done=report
    )
    if result.failed:
        labels = "; ".join(p.label for p in result.failed)
        print(f"sweep: {len(result.failed)} of {total} runs FAILED in {out}: {labels}")
        return 1
    print(f"sweep: {total} runs in {out}, all finished")
    print(f"next: mdm compare {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mdm_core.compare import compare_runs

    paths = [Path(p) for p in args.runs]
    out = Path(args.out) if args.out else (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path("."))
    if args.target_nll is not None and args.metric != "val/nll":
        raise MdmError(f"compare: --target-nll is for val/nll; use --target with --metric {args.metric}", 2)
    target = args.target if args.target is not None else args.target_nll
    comparison = compare_runs(
        paths,
        baseline=args.baseline,
        target=target,
        out_dir=out,
        metric=args.metric,
        higher_is_better=args.higher_is_better,
        ci=args.ci,
        resamples=args.resamples,
        bootstrap_seed=args.bootstrap_seed,
    )
    if args.markdown:
        print(comparison.markdown(_compare_command(args)))
    else:
        print(comparison.table_text())
    extra = [f"{name}.png" for name in ("nll_by_t", "nll_by_context") if (out / f"{name}.png").is_file()]
    pictures = ", ".join(["compare.png", *extra])
    print(f"plots: {out} ({pictures})   table: {out / 'compare.json'}")
    return 0


def _compare_command(args: argparse.Namespace) -> str:
    """The ``mdm compare`` command line that reproduces this table (options as given)."""
    import shlex

    words = ["mdm", "compare", *args.runs]
    for flag in ("baseline", "metric", "target", "target_nll", "ci", "resamples", "bootstrap_seed", "out"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    if args.higher_is_better is not None:
        words.append("--higher-is-better" if args.higher_is_better else "--no-higher-is-better")
    return shlex.join([*words, "--markdown"])


# -- plug-ins, components, specs ---------------------------------------------------------------


def plugins_report() -> dict[str, Any]:
    from mdm_core.plugins import core_version, get_registry

    reg = get_registry()
    plugins = []
    for p in reg.plugins:
        comps: dict[str, list[str]] = {}
        for ref in p.components:
            comps.setdefault(ref.kind, []).append(ref.name)
        plugins.append(
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "module": p.module,
                "error": p.error,
                "components": comps,
                "sections": [section.name for section in p.sections],
            }
        )
    hooks: dict[str, list[str]] = {}
    for name, plugin in reg.pm.list_name_plugin():
        hooks[name] = sorted(h.name for h in reg.pm.get_hookcallers(plugin) or [])
    conflicts = [
        {"kind": kind, "name": name, "distributions": [p.distribution for p in owners]}
        for (kind, name), owners in reg.conflicts.items()
    ]
    return {"core_version": core_version(), "plugins": plugins, "conflicts": conflicts, "hooks": hooks}


def cmd_plugins(args: argparse.Namespace) -> int:
    from mdm_core.plugins import core_shadowing, get_registry, strict

    if args.available:
        return _plugins_available(args)
    report = plugins_report()
    report["shadowing"] = core_shadowing()
    if args.status:
        report["status"] = {}
        registry = get_registry()
        for plugin, result, error in registry.call_each(registry.pm.hook.mdm_status):
            report["status"].update({plugin: f"STATUS ERROR: {error}"} if error else result or {})
    if args.registry:
        from mdm_core.registry_catalog import compare_installed, load_catalog

        report["registry"] = compare_installed(load_catalog(Path(args.registry)), get_registry())
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(f"{'distribution':28s} {'version':9s} components")
        for p in report["plugins"]:
            label = p["distribution"] + (" (built-in)" if p["name"] == "core" else "")
            if p["error"]:
                desc = f"LOAD ERROR: {p['error']} (only runs naming its components fail)"
            else:
                parts = [f"{k}: {', '.join(v)}" for k, v in p["components"].items()]
                parts += [f"spec section: {', '.join(p['sections'])}"] if p["sections"] else []
                desc = " · ".join(parts) or "(hooks only)"
            print(f"{label:28s} {p['version']:9s} {desc}")
        for c in report["conflicts"]:
            print(f"CONFLICT: {c['kind']} '{c['name']}' registered by {' and '.join(c['distributions'])}")
        for line in report["shadowing"]:
            print(f"SHADOWED: {line}")
        for name, line in report.get("status", {}).items():
            print(f"status: {name}: {line}")
        for row in report.get("registry", []):
            print("registry: " + "  ".join(f"{k}={v}" for k, v in row.items()))
    bad = any(p["error"] for p in report["plugins"]) or report["conflicts"] or report["shadowing"]
    return 3 if (bad and strict()) else 0


def _plugins_available(args: argparse.Namespace) -> int:
    """``mdm plugins --available``: the catalogue (``--registry DIR``, else the one installed
    with the core) against what is installed."""
    from mdm_core.plugins import get_registry
    from mdm_core.registry_catalog import available, load_catalog, shipped_catalog_dir

    source = Path(args.registry) if args.registry else shipped_catalog_dir()
    rows = available(load_catalog(source), get_registry())
    if args.json:
        print(json.dumps({"catalogue": str(source), "plugins": rows}, indent=1))
        return 0
    print(f"{'distribution':26s} {'latest':8s} {'installed':13s} adds")
    for row in rows:
        installed = row["installed"] if row["installed"] != "-" else "not installed"
        parts = [f"{kind}: {', '.join(names)}" for kind, names in row["components"].items()]
        adds = " · ".join(
            parts + ([f"spec section: {', '.join(row['sections'])}"] if row["sections"] else [])
        )
        print(f"{row['distribution']:26s} {row['catalogued']:8s} {installed:13s} {adds}")
        notes = [row["summary"]]
        if row["status"] not in ("ok", "not installed"):
            notes.append(row["status"])
        if not row["supports_this_core"]:
            notes.append(f"declares {row['core']}, not this core")
        if row["status"] == "not installed":
            notes.append(row["install"])
        print(f"    {'; '.join(notes)}")
    print(f"(catalogue: {source})")
    return 0


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _component_row(reg: Any, kind: str, name: str, entry: Any) -> dict[str, Any]:
    """One component for ``mdm components``: its provider, summary and parameters."""
    row: dict[str, Any] = {"name": name, "distribution": entry.plugin.label, "summary": entry.ref.summary}
    try:
        cls = reg.load(kind, name)
        row["params"] = {
            field: {
                "default": repr(info.default) if not info.is_required() else "(required)",
                "type": _type_name(info.annotation),
                "description": info.description or "",
            }
            for field, info in cls.Params.model_fields.items()
        }
        row["doc"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else entry.ref.summary
    except MdmError as exc:
        row["error"] = str(exc)
    return row


def cmd_components(args: argparse.Namespace) -> int:
    from mdm_core.kinds import resolve_kind
    from mdm_core.plugins import get_registry

    resolved = resolve_kind(args.kind)
    if resolved is None:
        raise MdmError(f"components: unknown kind '{args.kind}'; kinds: {', '.join(KINDS)}", exit_code=2)
    kind = resolved.name
    reg = get_registry()
    rows = []
    for name in reg.names(kind):
        providers = reg.providers(kind, name)
        for entry in providers:  # a name two plug-ins register: both, each as a spec picks it
            chosen = name if len(providers) == 1 else f"{entry.plugin.distribution}:{name}"
            rows.append(_component_row(reg, kind, chosen, entry))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['name']}  ({row['distribution']})  {row.get('doc') or row['summary']}")
        if "error" in row:
            print(f"    LOAD ERROR: {row['error']}")
        for field, info in row.get("params", {}).items():
            desc = f"  # {info['description']}" if info["description"] else ""
            print(f"    {field}: {info['type']} = {info['default']}{desc}")
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from mdm_core.spec import check_runnable, load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.action == "validate":
        check_runnable(spec)
        names = ", ".join(f"{c.kind}={c.name}" for c in spec.components.values())
        sections = "".join(f"; section {key}" for key in spec.sections)
        print(f"ok: {args.spec} is valid ({names}{sections})")
    else:
        print(spec.to_yaml(), end="")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    """``mdm install`` and ``mdm uninstall``: pip's exit status is mdm's."""
    from mdm_core.install import run_pip

    return run_pip(args.pip_action, args.names)


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from mdm_core.scaffold import new_plugin

    path = new_plugin(args.name, args.kind, Path(args.dest))
    print(f"wrote {path}\nnext: pip install -e {path} && pytest {path}/tests")
    return 0


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdm", description="Train and evaluate masked diffusion language models."
    )
    from mdm_core.plugins import CORE_DISTRIBUTION  # pluggy only: --help stays fast

    parser.add_argument("--version", action="version", version=f"{CORE_DISTRIBUTION} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train from a YAML spec",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", nargs="?", help="spec file (omit with --resume)")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint (overrides: run-control keys only)",
    )
    p.add_argument(
        "--from-step",
        type=int,
        metavar="N",
        help="with --resume: continue from the checkpoint of step N instead of the latest",
    )
    p.add_argument(
        "--run-dir", help="write the run exactly here, a new or empty folder (default: runs/<name>-<time>)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a run's last checkpoint (EMA weights if any) or an exported model"
    )
    p.add_argument("run", help="run directory, exported model folder or Hub id")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="exported model: evaluate on this text file (default: its validation split)",
    )
    p.add_argument(
        "--ckpt", type=int, metavar="STEP", help="evaluate the checkpoint of this step (default: the latest)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decode or judge differently, e.g. --set sampler.steps=16 (sampler.*, evaluators, "
        "trainer.eval_batch_size only); repeatable",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="generate text from a run or an exported model")
    p.add_argument("run", help="run directory, exported model folder or Hub id")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--length", type=int)
    p.add_argument("--sampler", help="sampler name (default: the run's)")
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--prompt", help="text the samples start with")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a run as a self-contained model folder (Hugging Face layout)")
    p.add_argument("run", help="run directory")
    p.add_argument("dir", help="new (or empty) folder to write")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds files (never a run)")
    p.add_argument(
        "--no-data", action="store_true", help="leave out the validation split (eval then needs --data)"
    )
    p.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="also upload DIR to this Hugging Face Hub repository"
    )
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="run a grid of runs: key=a,b seed=0,1,2")
    p.add_argument("spec")
    p.add_argument(
        "assignments", nargs="+", help="key=a,b,c (grid) or key=v (fixed); seed=... means trainer.seed"
    )
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", help="sweep directory (default runs/sweep-<time>)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="compare runs: curves, steps and time to a target NLL, speed-up")
    p.add_argument("runs", nargs="+", help="run directories or sweep directories")
    p.add_argument("--baseline", help="a run directory or key=value selecting the baseline arm")
    p.add_argument("--metric", default="val/nll", help="eval metric to compare, e.g. val/puzzle_acc")
    p.add_argument(
        "--higher-is-better",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="direction of --metric (default: higher for metrics named *acc* or *exact*, lower otherwise)",
    )
    p.add_argument("--target", type=float, help="target value of --metric (default: baseline's final)")
    p.add_argument("--target-nll", type=float, help="the same as --target for val/nll")
    p.add_argument("--out", help="where compare.png / compare.json (/ nll_by_t.png, nll_by_context.png) go")
    p.add_argument("--ci", type=float, default=0.9, help="level of the bootstrap intervals over seeds")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (at least 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument(
        "--markdown", action="store_true", help="print a markdown table (with its command) for RESULTS.md"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plugins", help="list installed plug-ins (without importing their components)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--status", action="store_true", help="also ask plug-ins for run-time status (imports them)"
    )
    p.add_argument("--registry", metavar="DIR", help="compare with a registry catalogue, e.g. registry/")
    p.add_argument(
        "--available",
        action="store_true",
        help="list the catalogued plug-ins, installed or not (--registry DIR: another catalogue)",
    )
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "install",
        help="install plug-ins with pip into this environment: bell → mdm-plugin-bell",
        description="pip install, run by mdm's own interpreter; pip options pass through "
        "(-e PATH, --upgrade, --no-deps, ...)",
    )
    p.add_argument("names", nargs=argparse.REMAINDER, help="plug-in names, requirements, paths, pip options")
    p.set_defaults(func=cmd_install, pip_action="install")

    p = sub.add_parser(
        "uninstall",
        help="uninstall plug-ins with pip from this environment (no confirmation prompt)",
        description="pip uninstall --yes, run by mdm's own interpreter: bell → mdm-plugin-bell",
    )
    p.add_argument("names", nargs=argparse.REMAINDER, help="plug-in names and pip options")
    p.set_defaults(func=cmd_install, pip_action="uninstall")

    p = sub.add_parser("components", help="components of a kind with their parameters")
    p.add_argument("kind", help=", ".join(KINDS))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("spec", help="show or validate a spec")
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("new-plugin", help="scaffold a plug-in distribution that passes its own tests")
    p.add_argument("name")
    p.add_argument("--kind", default="time_sampler", help=", ".join(KINDS))
    p.add_argument("--dest", default=".")
    p.set_defaults(func=cmd_new_plugin)
    return parser


def _add_plugin_commands(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Plug-in sub-commands (``mdm_cli_commands``), so that ``mdm``, ``mdm --help`` and a plug-in's
    command all see them; a built-in command skips them to start without indexing plug-ins.

    Each plug-in adds its commands alone: one that raises (or reuses a taken name) is named on
    stderr and its commands are missing, the rest of ``mdm`` works (strict mode: exit 3).
    """
    from mdm_core.errors import PluginError
    from mdm_core.plugins import get_registry, strict

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and (argv[0] in subparsers.choices or argv[0] == "--version"):
        return
    registry = get_registry()
    for plugin, _, error in registry.call_each(registry.pm.hook.mdm_cli_commands, subparsers=subparsers):
        if error is not None:
            if strict():
                raise PluginError(f"plug-in {plugin}: {error}")
            print(f"warning: plug-in {plugin}: {error}; its sub-commands are unavailable", file=sys.stderr)


def _plugin_fault(exc: Exception) -> MdmError | None:
    """An exception raised inside a plug-in's component (``mdm sample``, ``mdm eval``, …) as a
    clear error naming it; None when the fault is not a plug-in's. Torch is imported only when
    something already went wrong, so ``mdm --help`` stays fast."""
    if "torch" not in sys.modules:
        return None
    from mdm_core import boundary

    return boundary.translate(exc)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _add_plugin_commands(parser, argv)
        args, extra = parser.parse_known_args(argv)
        if hasattr(args, "pip_action"):  # pip's options are pip's: everything after the command
            args.names, extra = argv[argv.index(args.pip_action) + 1 :], []
        if extra:
            # ``mdm train spec --quiet key=value``, ``mdm sweep spec a=1,2 --parallel 2 seed=0,1``:
            # key=value items may follow options (argparse stops collecting positionals at the
            # first option); anything else is still an error.
            collects = next((name for name in ("overrides", "assignments") if hasattr(args, name)), None)
            if collects is None or not all("=" in item and not item.startswith("-") for item in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            setattr(args, collects, [*getattr(args, collects), *extra])
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except MdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        clear = _plugin_fault(exc)
        if clear is None:
            raise  # a bug of the core itself keeps its traceback
        print(f"error: {clear}", file=sys.stderr)
        return clear.exit_code
    except KeyboardInterrupt:
        # Training handles its own signals (a checkpoint and the resume command); this is an
        # interrupt anywhere else, where nothing was being written.
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
