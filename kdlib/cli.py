"""``kdlib`` command line. Every bad input ends with one ``kdlib: error: ...`` line and exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from kdlib.errors import ConfigError, KdlibError


# ---- commands -----------------------------------------------------------------------------------
def cmd_sweep_validate(args: argparse.Namespace) -> int:
    from kdlib.sweep.plan import load_plan
    from kdlib.sweep.preflight import preflight

    plan = load_plan(args.sweep, smoke=args.smoke_test, overrides=args.set)
    if not args.no_data:
        preflight(plan, tracking=False)  # output folder and data; creates nothing
    cfg = plan.cfg
    dims = " × ".join(f"{k} {len(v)}" for k, v in cfg.search.dims().items())
    excluded = f", {len(cfg.search.exclude)} exclusion rule(s)" if cfg.search.exclude else ""
    print(f"{args.sweep}: OK — experiment '{cfg.experiment}', {len(cfg.search.points())} trial(s) "
          f"({dims}{' × repeats ' + str(cfg.search.repeats) if cfg.search.repeats > 1 else ''}{excluded}); "
          f"optuna knobs: {', '.join(cfg.search.optuna) or 'none'}; scheduler {cfg.scheduler.name}; "
          f"config hash {plan.config_hash}")
    return 0


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from kdlib.sweep.plan import load_plan

    plan = load_plan(args.sweep, smoke=args.smoke_test, overrides=args.set)
    from kdlib.sweep.runner import run_sweep

    outcome = run_sweep(plan, report=not args.no_report)
    return report_outcome(outcome)


def report_outcome(outcome) -> int:
    """Summary lines of a finished (or interrupted) sweep and its exit code: 130 when interrupted
    (resume it), 1 when trials errored in a smoke test or every trial errored, else 0."""
    unfinished = f", {outcome.unfinished} unfinished" if outcome.unfinished else ""
    print(f"[sweep] {outcome.trials} trial(s), {outcome.errored} errored{unfinished}, {outcome.seconds / 60:.1f} min; "
          f"MLflow experiment '{outcome.experiment}' (parent run {outcome.parent_run_id}) at {outcome.tracking_uri}")
    for name, path in outcome.report.items():
        print(f"[sweep] {name}: {path}")
    print(f"[sweep] browse: mlflow ui --backend-store-uri {outcome.tracking_uri} --workers 1")
    if outcome.experiment_id is not None:
        from kdlib.report.build import MLFLOW_UI_ENV
        from kdlib.report.html import DEFAULT_MLFLOW_UI, chart_view_url

        ui = os.environ.get(MLFLOW_UI_ENV) or DEFAULT_MLFLOW_UI
        print(f"[sweep] chart view (with mlflow ui running): {chart_view_url(outcome.experiment_id, ui)}")
    if outcome.unfinished:
        return 130
    # a real sweep survives crashed trials; in a smoke test any crash is a bug
    return 1 if outcome.errored and (outcome.smoke or outcome.errored == outcome.trials) else 0


def cmd_sweep_resume(args: argparse.Namespace) -> int:
    from kdlib.sweep.resume import resume_sweep

    outcome = resume_sweep(args.experiment, restart_errored=args.restart_errored,
                           report=False if args.no_report else None, output=args.output, address=args.address)
    return report_outcome(outcome)


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from kdlib.metrics.specs import metric_keys
    from kdlib.sweep import contract
    from kdlib.sweep.plan import load_plan
    from kdlib.sweep.preflight import preflight
    from kdlib.sweep.teachers import train_teacher

    plan = load_plan(args.sweep, smoke=args.smoke_test, overrides=args.set)
    cfg = plan.cfg
    names = [args.teacher] if args.teacher else cfg.teacher_names()
    if args.teacher and args.teacher not in cfg.teachers:
        declared = ", ".join(cfg.teachers) or "none declared"
        raise ConfigError(f"--teacher: no teacher '{args.teacher}' under teachers ({declared})")
    if args.out and len(names) > 1:
        raise ConfigError(f"--out: this sweep has {len(names)} teachers; pick one with --teacher")
    preflight(plan, tracking=False)
    keys = ("params", "macs", contract.SELECTION_METRIC, *metric_keys(contract.TEST_PREFIX),
            *metric_keys(contract.NOISY_PREFIX), "train_seconds", "audio_seconds_per_second")
    for name in names:
        meta = train_teacher(plan, args.out, name=name)
        print(json.dumps({"teacher": name, **{k: meta.get(k) for k in keys}}, indent=2))
    return 0


def _report_corpus(config: str, experiment: str):
    """``(primary test set, its label)`` of ``config`` for the listening examples; ``(None, None)`` (with a
    warning) when it cannot be built."""
    from kdlib.config import load_config
    from kdlib.errors import first_line
    from kdlib.sweep.contract import set_label
    from kdlib.sweep.plan import make_plan

    plan = make_plan(load_config(config), smoke=experiment.endswith("-smoke"), check=False)
    try:
        return plan.data_source().eval_sets()[1], set_label(plan.cfg.data.test)
    except Exception as exc:  # noqa: BLE001 - the report stands without the audio
        print(f"kdlib: warning: no listening examples ({type(exc).__name__}: {first_line(exc)})", file=sys.stderr)
        return None, None


def cmd_report(args: argparse.Namespace) -> int:
    from kdlib.report import write_report
    from kdlib.sweep.plan import resolve_output, resolve_tracking_uri

    out = Path(args.out) if args.out else resolve_output() / "reports" / args.experiment
    corpus, label = None, None
    if args.config:  # the sweep's YAML gives the test audio of the HTML report's listening examples
        corpus, label = _report_corpus(args.config, args.experiment)
    from kdlib.sweep.listening import examples_maker

    uri = resolve_tracking_uri(args.tracking_uri)
    paths = write_report(uri, args.experiment, out, args.run_id, examples=examples_maker(corpus, uri, test_set=label),
                         mlflow_ui=args.mlflow_ui)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kdlib.data import PairedCorpus
    from kdlib.evaluation import evaluate_model, evaluate_noisy, resolve_pesq_mode
    from kdlib.models import load_model
    from kdlib.sweep.artifacts import model_file
    from kdlib.sweep.contract import NOISY_PREFIX
    from kdlib.train import resolve_device

    device = resolve_device(args.device, key="--device")
    with model_file(args.checkpoint, args.tracking_uri) as path:
        model, meta = load_model(path, device)
    corpus = PairedCorpus(args.data, sample_rate=model.sample_rate)
    corpus = corpus.subset(args.speakers, args.max_utterances)
    mode = resolve_pesq_mode(args.pesq_mode, corpus)
    summary = evaluate_model(model, corpus, mode, num_workers=args.workers)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "utterances": len(corpus),
              "pesq_mode": mode, "sample_rate": corpus.sample_rate, **summary.as_flat_dict()}
    if args.noisy:
        result.update(evaluate_noisy(corpus, mode, num_workers=args.workers).as_flat_dict(NOISY_PREFIX))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    from kdlib.evaluation import enhance_path
    from kdlib.models import load_model
    from kdlib.sweep.artifacts import model_file
    from kdlib.train import resolve_device

    device = resolve_device(args.device, key="--device")
    with model_file(args.checkpoint, args.tracking_uri) as path:
        model, _ = load_model(path, device)
    channels = getattr(model, "n_channels", 1)
    pairs = enhance_path(model, args.input, args.output, device, progress=not args.quiet)
    target = pairs[0][1] if len(pairs) == 1 and Path(args.input).is_file() else Path(args.output)
    print(f"wrote {len(pairs)} file(s) to {target} ({model.sample_rate} Hz, "
          f"{channels}-channel input{'s' if channels > 1 else ''} → mono)")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from kdlib.profile import profile
    from kdlib.sweep.artifacts import model_file

    with model_file(args.model, args.tracking_uri) as path:
        rows = profile(path, args.ratios, args.seconds, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<24} {'params':>12} {'% teacher':>10} {'MMAC/s':>10} {'RTF (1 thread)':>15}")
    for r in rows:
        pct = f"{r['params_pct']:.1f}" if r["params_pct"] is not None else "—"
        print(f"{r['model']:<24} {r['params']:>12,} {pct:>10} {r['macs'] / 1e6:>10.1f} {r['rtf']:>15.4f}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from kdlib.kd import KD_METHODS

    for name, cls in KD_METHODS.items():
        print(f"{name}\n  source: {cls.source}")
        for knob, field in cls.Config.model_fields.items():
            default = field.get_default(call_default_factory=True)
            kind = getattr(field.annotation, "__name__", None) if isinstance(field.annotation, type) else None
            print(f"  {knob}: {kind or str(field.annotation).replace('typing.', '')} = {default!r}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import inspect

    import torch

    from kdlib.models import MODELS, count_params

    for name, cls in MODELS.items():
        with torch.device("meta"):
            params = count_params(cls())
        print(f"{name} ({cls.__name__}): {params:,} params with defaults")
        print("  source: " + " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split()))
        loss = getattr(cls, "task_loss", None)
        if loss:
            print(f"  task loss: {loss['name']}" + (f" {loss['kwargs']}" if loss.get("kwargs") else ""))
        for knob, what in cls.size_knobs.items():
            print(f"  size knob {knob}: {what}")
        sig = inspect.signature(cls.__init__)
        print("  args: " + ", ".join(f"{p.name}={p.default!r}" for p in list(sig.parameters.values())[1:]))
    return 0


# ---- parser -------------------------------------------------------------------------------------
class UsageError(KdlibError):
    """A bad command line (unknown option, a value out of range): ``kdlib: error: ...``, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as :class:`UsageError` (one line from :func:`main`), not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False):
    """An argparse ``type``: ``kind`` (int or float), finite, in ``[low, high]`` (``(low, high]`` with
    ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text[:40]}'") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got '{text[:40]}'")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text[:40]}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text[:40]}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _device(text: str) -> str:
    import re

    from kdlib.config.schema import DEVICE_PATTERN

    if not re.match(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got '{text[:40]}'")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdlib", description="Knowledge-distillation sweeps for speech enhancement.")
    sub = p.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser("sweep", help="run, validate or resume a sweep")
    sweep = sweep.add_subparsers(dest="sweep_cmd", required=True)
    run = sweep.add_parser("run", help="run a sweep: teacher, Ray Tune trials, MLflow, Pareto report")
    run.add_argument("sweep", help="sweep YAML (e.g. sweeps/quickstart.yaml)")
    run.add_argument("--smoke-test", action="store_true", help="tiny epochs/data: same code paths in ~1 min")
    run.add_argument("--no-report", action="store_true", help="skip the Pareto report at the end")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a YAML key, e.g. --set 'search.student_ratio=[0.1]' (repeatable)")
    run.set_defaults(func=cmd_sweep_run)
    res = sweep.add_parser("resume", help="continue an interrupted sweep from its saved Ray Tune state")
    res.add_argument("experiment", help="the sweep's Ray experiment dir (<output>/ray/NAME-RUNID), that dir's "
                                        "name, or the sweep name (its newest run)")
    res.add_argument("--restart-errored", action="store_true",
                     help="run errored trials again from scratch (default: from their last checkpoint)")
    res.add_argument("--no-report", action="store_true", help="skip the Pareto report at the end")
    res.add_argument("--output", help="output dir to look the name up in (default: $KDLIB_OUTPUT or runs)")
    res.add_argument("--address", help="Ray cluster to resume on, or 'local' for a fresh local instance "
                                       "(default: the sweep's ray.address, else $RAY_ADDRESS, else local)")
    res.set_defaults(func=cmd_sweep_resume)
    val = sweep.add_parser("validate", help="validate a sweep YAML and print its trial count")
    val.add_argument("sweep")
    val.add_argument("--smoke-test", action="store_true")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.add_argument("--no-data", action="store_true",
                     help="check the YAML only: skip the output-folder check and the data scan")
    val.set_defaults(func=cmd_sweep_validate)

    tt = sub.add_parser("train-teacher", help="train and save the sweep's teacher")
    tt.add_argument("sweep")
    tt.add_argument("--out", help="checkpoint path (default: the sweep's teacher path)")
    tt.add_argument("--teacher", help="one of the sweep's named teachers (default: all of them)")
    tt.add_argument("--smoke-test", action="store_true")
    tt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    tt.set_defaults(func=cmd_train_teacher)

    rep = sub.add_parser("report", help="Pareto plots, report.md and report.html of a sweep from MLflow")
    rep.add_argument("experiment", help="MLflow experiment (= sweep name; '<name>-smoke' for smoke runs)")
    rep.add_argument("--out", help="output dir (default: runs/reports/EXPERIMENT)")
    rep.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    rep.add_argument("--run-id", help="parent run of the sweep (default: the latest)")
    rep.add_argument("--config", metavar="SWEEP_YAML",
                     help="the sweep's YAML: report.html gets listening examples from its test set")
    rep.add_argument("--mlflow-ui", metavar="URL",
                     help="MLflow UI address of report.html's run links (default: $KDLIB_MLFLOW_UI or "
                          "http://127.0.0.1:5000)")
    rep.set_defaults(func=cmd_report)

    ev = sub.add_parser("eval", help="PESQ/STOI/ESTOI/SI-SDR of a checkpoint on a paired corpus")
    ev.add_argument("checkpoint", help="checkpoint file, or an MLflow run: runs:/<run id>[/<artifact>]")
    ev.add_argument("--tracking-uri", help="MLflow store of a runs:/ reference (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///<$KDLIB_OUTPUT or runs>/mlflow.db)")
    ev.add_argument("--data", required=True, help="paired corpus folder (pairs.csv, VB+DEMAND or NOIZEUS layout)")
    ev.add_argument("--pesq-mode", choices=["auto", "wb", "nb"], default="auto",
                    help="auto: nb for narrowband (NOIZEUS) material, else wb")
    ev.add_argument("--speakers", nargs="*", help="only these speakers")
    ev.add_argument("--max-utterances", type=_number(int, 1))
    ev.add_argument("--workers", type=_number(int, 1), default=1, help="processes for PESQ/STOI")
    ev.add_argument("--noisy", action="store_true", help="also score the unprocessed noisy input")
    ev.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    en = sub.add_parser("enhance", help="enhance a wav/flac file, or a folder of them, with a checkpoint")
    en.add_argument("checkpoint", help="checkpoint file, or an MLflow run: runs:/<run id>[/<artifact>]")
    en.add_argument("input", help="audio file, or folder (searched recursively); a multi-channel model "
                                  "takes files with its own channel count")
    en.add_argument("output", help="output wav file, or folder (same relative layout)")
    en.add_argument("--tracking-uri", help="MLflow store of a runs:/ reference (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///<$KDLIB_OUTPUT or runs>/mlflow.db)")
    en.add_argument("--device", type=_device, default="cpu", help="auto | cpu | cuda | cuda:N | mps")
    en.add_argument("--quiet", action="store_true", help="no progress bar")
    en.set_defaults(func=cmd_enhance)

    prof = sub.add_parser("profile", help="params, MACs per second of audio and real-time factor of a model")
    prof.add_argument("model", help="checkpoint (.pt), runs:/<run id>, model YAML {name, kwargs} or sweep YAML "
                                    "(its teacher)")
    prof.add_argument("--tracking-uri", help="MLflow store of a runs:/ reference (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///<$KDLIB_OUTPUT or runs>/mlflow.db)")
    prof.add_argument("--ratios", type=_number(float, 0, low_open=True), nargs="*", default=[1.0],
                      help="also profile students at these fractions of the params (YAML input)")
    prof.add_argument("--seconds", type=_number(float, 0, low_open=True), default=4.0,
                      help="utterance length for the RTF (s)")
    prof.add_argument("--repeats", type=_number(int, 1), default=5, help="timed runs; the median is reported")
    prof.add_argument("--json", action="store_true")
    prof.set_defaults(func=cmd_profile)

    sub.add_parser("methods", help="list KD methods with their knobs and sources").set_defaults(func=cmd_methods)
    sub.add_parser("models", help="list model families with their size knobs").set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KdlibError as exc:
        print(f"kdlib: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
