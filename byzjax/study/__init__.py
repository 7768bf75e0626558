"""The robustness benchmark runner: ``byzjax run CONFIG --out DIR``.

A study is a grid of defenses x attacks x Byzantine counts x heterogeneity
settings x seeds (x learning rates, selected against the worst attack),
described by one TOML file (:mod:`byzjax.study.config`). Entry points:

* :func:`run` (``byzjax run``): runs the missing cells, each one compiled,
  ``vmap``-ped call over its seeds and learning rates, writes every finished
  cell to a crash-safe SQLite store in the results folder, and writes the
  report at the end.
* :func:`write_report` (``byzjax report DIR``): heatmaps, worst-case table,
  curves and ``report.md`` from the store.
* :func:`load_config`, :func:`expand`: the parsed config and its cells.
"""

from byzjax.study.config import ConfigError
from byzjax.study.config import load_config
from byzjax.study.config import StudyConfig
from byzjax.study.runner import Cell
from byzjax.study.runner import expand
from byzjax.study.runner import run
from byzjax.study.runner import write_report
from byzjax.study.store import Store
