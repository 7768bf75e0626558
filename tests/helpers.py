"""Small helpers shared by the tests (import as ``from tests import helpers``)."""

import importlib.util
import pathlib
import sys

import numpy as np


def split_leaves(x: np.ndarray) -> dict:
  """Splits an ``[R, d]`` array into a pytree of several leaves (d >= 6)."""
  r, d = x.shape
  a, b = d // 3, 2 * (d // 3)
  return {"a": x[:, :a], "b": {"c": x[:, a:b].reshape(r, 1, b - a)},
          "d": x[:, b:]}


def join_leaves(tree) -> np.ndarray:
  """Inverse of :func:`split_leaves` on an aggregate (no worker axis)."""
  return np.concatenate([np.asarray(tree["a"]).ravel(),
                         np.asarray(tree["b"]["c"]).ravel(),
                         np.asarray(tree["d"]).ravel()])


def np_geometric_median(x, weights=None, iters=20000, tol=1e-13):
  """Float64 Weiszfeld from the coordinate-wise median, run to convergence."""
  x = np.asarray(x, np.float64)
  w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
  z = np.median(x, axis=0)
  for _ in range(iters):
    d = np.sqrt(((x - z) ** 2).sum(axis=1))
    beta = w / np.maximum(d, 1e-12)
    z_new = (beta[:, None] * x).sum(axis=0) / beta.sum()
    if np.linalg.norm(z_new - z) <= tol * (1 + np.linalg.norm(z)):
      return z_new
    z = z_new
  return z


REPO = pathlib.Path(__file__).resolve().parents[1]


def load_script(relative_path: str, module_name: str):
  """Imports a script of the repository (e.g. ``experiments/ghosh.py``)."""
  spec = importlib.util.spec_from_file_location(module_name,
                                                REPO / relative_path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module
