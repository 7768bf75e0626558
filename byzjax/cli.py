"""The ``byzjax`` command.

::

  byzjax run CONFIG --out DIR [--dry-run] [--overwrite] [--memory GB]
                               [--devices N] [--cache DIR | --no-cache]
  byzjax report DIR

``run`` runs the robustness grid described by CONFIG (TOML; see
:mod:`byzjax.study.config` and ``experiments/configs/``), writing each
finished cell to ``DIR/results.sqlite``; rerunning the same command resumes
with the missing cells only. ``report`` (also run at the end of ``run``)
writes heatmaps, the worst-case table, curves, ``report.md`` and
``results.csv`` into DIR.

On several hosts, start the same command on every host after setting the
``jax.distributed`` environment (coordinator address, number of processes,
process id; see the README); ``--devices`` then counts global devices.
"""

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="byzjax",
      description="Byzantine-robust distributed SGD in JAX: run robustness "
      "benchmarks (defenses x attacks x f x heterogeneity x seeds).")
  sub = p.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run", help="run (or resume) a study from a TOML config")
  r.add_argument("config", help="the study's TOML file, e.g. "
                 "experiments/configs/quickstart.toml")
  r.add_argument("--out", required=True,
                 help="results folder (created; an earlier run of the same "
                 "config in it is resumed)")
  r.add_argument("--dry-run", action="store_true",
                 help="print the cells, the compiled programs and an "
                 "estimated time; run nothing")
  r.add_argument("--overwrite", action="store_true",
                 help="discard earlier results in --out first")
  r.add_argument("--memory", type=float, default=None, metavar="GB",
                 help="memory budget for the vmapped runs of one cell "
                 "(chunked to fit)")
  r.add_argument("--devices", type=int, default=1,
                 help="shard the worker axis over this many devices")
  r.add_argument("--cache", default="default", metavar="DIR",
                 help="JAX persistent compilation cache folder (default: "
                 "~/.cache/byzjax/jax)")
  r.add_argument("--no-cache", action="store_true",
                 help="do not use the persistent compilation cache")
  r.add_argument("--no-progress", action="store_true",
                 help="no progress bar (per-cell lines only)")
  r.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first (multi-host)")
  rep = sub.add_parser("report", help="write the report of a results folder")
  rep.add_argument("out", help="a results folder written by `byzjax run`")
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  # Imported here so that `byzjax --help` answers without loading JAX.
  from byzjax import study  # pylint: disable=g-import-not-at-top
  try:
    if args.command == "report":
      path = study.write_report(args.out)
      print(f"[byzjax] wrote {path}")
      return 0
    if args.memory is not None and not args.memory > 0:
      raise ValueError(f"--memory must be a positive number of GB, got "
                       f"{args.memory}.")
    if args.distributed:
      import jax  # pylint: disable=g-import-not-at-top
      jax.distributed.initialize()
    study.run(args.config, args.out, overwrite=args.overwrite,
              dry_run=args.dry_run, memory_gb=args.memory,
              devices=args.devices,
              cache_dir=None if args.no_cache else args.cache,
              progress=not args.no_progress, as_dataframe=False)
  except (ValueError, FileNotFoundError) as e:
    print(f"byzjax: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("\nbyzjax: interrupted; finished cells are saved in "
          f"{getattr(args, 'out', '?')} and a rerun of the same command "
          "resumes.", file=sys.stderr)
    return 130
  return 0

