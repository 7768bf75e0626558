"""Attacks (simulation only): gradient attacks and data attacks.

Gradient attacks rewrite the Byzantine workers' rows of the stacked updates;
each is a pure function ``attack(stacked, byzantine, **hparams)`` and an optax
transform ``<attack>_attack(**hparams)`` whose ``update`` takes the mask as the
extra argument ``byzantine=``. Data attacks are functions ``(key, x, y) ->
(x, y)`` on one worker's batch, applied to the Byzantine workers with
``apply_to_workers``. The adaptive gradient attacks (mimic, optimised
ALIE/IPM, MinMax/MinSum, Fang et al.'s) live in
:mod:`byzjax.attacks.adaptive`.
"""

from byzjax.attacks import adaptive
from byzjax.attacks import data
from byzjax.attacks import gradient
from byzjax.attacks.adaptive import fang_krum
from byzjax.attacks.adaptive import fang_krum_attack
from byzjax.attacks.adaptive import fang_trimmed_mean
from byzjax.attacks.adaptive import fang_trimmed_mean_attack
from byzjax.attacks.adaptive import FangKrumInfo
from byzjax.attacks.adaptive import mimic
from byzjax.attacks.adaptive import mimic_attack
from byzjax.attacks.adaptive import MimicState
from byzjax.attacks.adaptive import min_max
from byzjax.attacks.adaptive import min_max_attack
from byzjax.attacks.adaptive import min_sum
from byzjax.attacks.adaptive import min_sum_attack
from byzjax.attacks.adaptive import MinMaxInfo
from byzjax.attacks.adaptive import optimized_alie
from byzjax.attacks.adaptive import optimized_alie_attack
from byzjax.attacks.adaptive import optimized_ipm
from byzjax.attacks.adaptive import optimized_ipm_attack
from byzjax.attacks.adaptive import OptimizedScaleInfo
from byzjax.attacks.data import apply_to_worker
from byzjax.attacks.data import apply_to_workers
from byzjax.attacks.data import backdoor
from byzjax.attacks.data import feature_noise
from byzjax.attacks.data import impulse_noise
from byzjax.attacks.data import label_flip
from byzjax.attacks.data import label_shift
from byzjax.attacks.gradient import alie
from byzjax.attacks.gradient import alie_attack
from byzjax.attacks.gradient import alie_z_max
from byzjax.attacks.gradient import annulus
from byzjax.attacks.gradient import annulus_attack
from byzjax.attacks.gradient import bit_flip
from byzjax.attacks.gradient import bit_flip_attack
from byzjax.attacks.gradient import constant
from byzjax.attacks.gradient import constant_attack
from byzjax.attacks.gradient import gaussian_noise
from byzjax.attacks.gradient import gaussian_noise_attack
from byzjax.attacks.gradient import gradient_attack
from byzjax.attacks.gradient import GradientAttackState
from byzjax.attacks.gradient import ipm
from byzjax.attacks.gradient import ipm_attack
from byzjax.attacks.gradient import model_replacement
from byzjax.attacks.gradient import model_replacement_attack
from byzjax.attacks.gradient import random_gaussian
from byzjax.attacks.gradient import random_gaussian_attack
from byzjax.attacks.gradient import sign_flip
from byzjax.attacks.gradient import sign_flip_attack
from byzjax.attacks.gradient import silence
from byzjax.attacks.gradient import silence_attack
