"""Losses and estimators for aligning language models with feedback.

Every function here is pure: tensors and scalars in, tensors out. No module
state, no trainer, no config objects. Algorithms pick a variant by name from
the two dicts at the bottom of their section (``KL_ESTIMATORS``,
``PREFERENCE_LOSSES``); that is the only indirection. ``ADVANTAGE_ESTIMATORS``
lists the advantage estimators' names for config validation.

Conventions
-----------
* Token-level tensors are ``[B, T]`` and aligned with *response* tokens:
  position ``t`` of ``logp`` is log π(y_t | x, y_<t).
* ``mask`` is a bool or float ``[B, T]`` tensor; a nonzero entry marks a token
  that counts (a response token), zero marks prompt or padding. Masks are used
  to *select* (``torch.where``), never to multiply, so whatever sits in a padded
  position (garbage, inf, NaN) cannot change a forward result.
* Token means are taken over all counted tokens of the batch at once
  ("token-level mean"), not per sequence and then over sequences.
* A mean over an empty mask is 0 (the count is clamped to 1), so a batch with
  no counted token gives a zero loss rather than NaN.
* Sequence-level tensors (scores, sequence log-probs, rewards) are ``[B]``.
* ``stats`` dicts hold detached 0-dim tensors; call ``.item()`` to log them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# Masked reductions
# ---------------------------------------------------------------------------


def _bool_mask(mask: Tensor) -> Tensor:
    """Nonzero entries count; returns a bool tensor of the same shape."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is nonzero.

    x, mask: same shape (e.g. [B, T]). dim=None sums everything (0-dim result).
    """
    selected = torch.where(_bool_mask(mask), x, torch.zeros_like(x))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is nonzero.

    x, mask: same shape (e.g. [B, T]). dim=None averages over every counted
    entry (token-level mean, 0-dim result); dim=1 gives a per-row mean [B].
    An empty mask (or an empty row) gives 0, not NaN.
    """
    bool_mask = _bool_mask(mask)
    count = bool_mask.sum() if dim is None else bool_mask.sum(dim=dim)
    return masked_sum(x, bool_mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the counted entries (0-dim).

    unbiased=True divides by n - 1 (Bessel), as TRL and verl do for advantage
    whitening; it needs at least two counted entries.
    """
    bool_mask = _bool_mask(mask)
    count = int(bool_mask.sum())
    if unbiased and count < 2:
        raise ValueError(f"unbiased masked_var needs >= 2 counted entries, got {count}")
    mean = masked_mean(x, bool_mask)
    sum_sq = masked_sum((x - mean) ** 2, bool_mask)
    return sum_sq / (count - 1 if unbiased else max(count, 1))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its counted entries.

    x, mask: [B, T] -> [B, T]. Statistics are taken over the whole batch of
    counted tokens. shift_mean=False adds the mean back (only rescales), as in
    TRL's ``whiten``. Uncounted positions are 0 in the result.
    Raises ValueError with fewer than two counted entries.
    """
    bool_mask = _bool_mask(mask)
    mean = masked_mean(x, bool_mask)
    var = masked_var(x, bool_mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(bool_mask, whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------
# Generalised advantage estimation
# ---------------------------------------------------------------------------


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

        δ_t = r_t + γ V_{t+1} − V_t
        A_t = δ_t + γλ A_{t+1}          (= Σ_l (γλ)^l δ_{t+l})
        R_t = A_t + V_t                 (the value target, "returns")

    token_rewards, values, mask: [B, T] -> advantages, returns: [B, T].

    Only counted tokens take part: an uncounted position is skipped (its
    reward and value are ignored, it does not discount), so the recursion
    runs over each row's counted tokens as if they were contiguous. The
    value after a row's last counted token is 0 (the episode ends there),
    which handles right padding. Advantages and returns are 0 where the mask
    is 0. The scan runs backwards over T and is vectorised over B; compare
    ``gae_reference``. Inputs are treated as constants (no gradient flows
    back into values through the targets).
    """
    bool_mask = _bool_mask(mask)
    token_rewards, values = token_rewards.detach(), values.detach()
    batch_size, num_tokens = values.shape
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(batch_size)  # V of the next counted token
    next_advantage = values.new_zeros(batch_size)  # A of the next counted token
    for t in reversed(range(num_tokens)):
        counted = bool_mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(counted, advantage, torch.zeros_like(advantage))
        next_value = torch.where(counted, values[:, t], next_value)
        next_advantage = torch.where(counted, advantage, next_advantage)
    returns = torch.where(bool_mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def gae_reference(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Slow, obvious GAE: per row, pick the counted tokens and run the
    textbook recursion in plain Python floats. Same contract as ``gae``;
    exists only to test it."""
    advantages = torch.zeros_like(values, dtype=torch.float64)
    returns = torch.zeros_like(values, dtype=torch.float64)
    for row in range(values.shape[0]):
        positions = [t for t in range(values.shape[1]) if mask[row, t] != 0]
        rewards_row = [float(token_rewards[row, t]) for t in positions]
        values_row = [float(values[row, t]) for t in positions] + [0.0]
        running = 0.0
        for k in reversed(range(len(positions))):
            delta = rewards_row[k] + gamma * values_row[k + 1] - values_row[k]
            running = delta + gamma * lam * running
            advantages[row, positions[k]] = running
            returns[row, positions[k]] = running + values_row[k]
    return advantages.to(values.dtype), returns.to(values.dtype)


# ---------------------------------------------------------------------------
# KL estimators and KL-penalised rewards
# ---------------------------------------------------------------------------
# Per-token estimators of KL(π || π_ref) from tokens sampled from π, with
# r = π_ref(y) / π(y) (J. Schulman, "Approximating KL divergence", 2020):
#   k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r  (≥ 0).


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log π − log π_ref (unbiased, can be negative). [B, T] -> [B, T]."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (log π − log π_ref)² (biased, ≥ 0, low variance). [B, T] -> [B, T]."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (unbiased, ≥ 0).

    [B, T] -> [B, T]. Written with expm1 so small differences keep precision.
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def logprob_gap(engine_logp: Tensor, learner_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the log-probs an engine returned with its samples are from the learner's, for the same weights:

        abs = token-mean |log π_engine − log π_learner|
        kl  = token-mean k3 estimate of KL(π_engine || π_learner) (the tokens were sampled from π_engine)

    engine_logp, learner_logp, mask: [B, T] -> 0-dim each; both 0 when they agree. The same numbers as
    `ppo_policy_loss`'s abs_log_ratio and approx_kl with logp = learner's, old_logp = engine's.
    """
    bool_mask = _bool_mask(mask)
    engine_logp, learner_logp = engine_logp.detach(), learner_logp.detach()
    return {"abs": masked_mean((engine_logp - learner_logp).abs(), bool_mask),
            "kl": masked_mean(kl_k3(engine_logp, learner_logp), bool_mask)}


def _last_counted_index(mask: Tensor) -> Tensor:
    """Index of the last nonzero of each row: [B, T] -> [B] (long).
    Raises ValueError if a row has no counted token."""
    bool_mask = _bool_mask(mask)
    if not bool(bool_mask.any(dim=1).all()):
        raise ValueError("every row of mask needs at least one counted token")
    positions = torch.arange(bool_mask.shape[1], device=bool_mask.device)
    return torch.where(bool_mask, positions, -1).max(dim=1).values


def kl_penalized_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards for PPO (Ziegler et al. 2019 §2.2; InstructGPT eq. 2):

        r_t = −β · KL_t                      for every counted token
        r_T += score                          on the last counted token

    scores: [B] sequence rewards; logp, ref_logp, mask: [B, T] -> [B, T].
    ``estimator`` names an entry of KL_ESTIMATORS. Uncounted positions are 0.
    Inputs are treated as constants (detached). Every row needs at least one
    counted token (ValueError otherwise), or its score would be lost.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; allowed: {sorted(KL_ESTIMATORS)}")
    bool_mask = _bool_mask(mask)
    kl = KL_ESTIMATORS[estimator](logp.detach(), ref_logp.detach())  # [B, T]
    rewards = torch.where(bool_mask, -kl_coef * kl, torch.zeros_like(kl))
    last = _last_counted_index(bool_mask)  # [B]
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.detach().to(rewards.dtype)
    return rewards


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, §2.2):

        e_t = clip((KL_t − KL_target) / KL_target, −0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t),   K_β = n_steps / horizon

    ``value`` is the current coefficient β.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move β towards the target after ``n_steps`` samples; returns new β."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """Constant KL coefficient; ``update`` changes nothing."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


# ---------------------------------------------------------------------------
# Critic-free advantage estimators
# ---------------------------------------------------------------------------
# Baselines built from the other samples of the same prompt (GRPO, RLOO) or
# from the batch (REINFORCE++) instead of a learned value function.
# ``group`` is a [B] integer tensor of prompt ids: the n samples of one
# prompt share an id; ids need not be contiguous, sorted or adjacent.


def _group_mean(values: Tensor, group_index: Tensor) -> Tensor:
    """Mean of ``values`` over each sample's group, gathered back: [B] -> [B].
    group_index: [B] long in 0..G-1 (from ``torch.unique(return_inverse=True)``)."""
    num_groups = int(group_index.max()) + 1
    sums = values.new_zeros(num_groups).index_add_(0, group_index, values)
    sizes = torch.bincount(group_index, minlength=num_groups).to(values.dtype)
    return (sums / sizes)[group_index]


def _group_centered(scores: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """r_i − mean of r_i's group, in float64: [B], [B] -> (centered [B], group_index [B]).

    A group whose scores are all equal (a single sample included) gets exactly
    0: the round-off in its mean (0.1 + 0.1 + 0.1 ≠ 0.3) would otherwise leave
    a ~1e-17 residue, which a division by std + eps turns into ~1e-11.
    """
    _, group_index = torch.unique(group, return_inverse=True)  # [B] in 0..G-1
    scores = scores.detach().to(torch.float64)  # ints allowed
    num_groups = int(group_index.max()) + 1
    per_group = scores.new_zeros(num_groups)
    group_max = per_group.scatter_reduce(0, group_index, scores, reduce="amax", include_self=False)
    group_min = per_group.scatter_reduce(0, group_index, scores, reduce="amin", include_self=False)
    tied = (group_max == group_min)[group_index]  # [B]
    centered = torch.where(tied, torch.zeros_like(scores), scores - _group_mean(scores, group_index))
    return centered, group_index


def _per_token(per_sequence: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Broadcast a [B] value over the counted tokens of [B, T]; 0 elsewhere."""
    per_token = per_sequence.to(dtype)[:, None].expand(mask.shape)
    return torch.where(_bool_mask(mask), per_token, torch.zeros_like(per_token))


def _float_dtype(scores: Tensor) -> torch.dtype:
    return scores.dtype if scores.is_floating_point() else torch.get_default_dtype()


def grpo_advantages(
    scores: Tensor, group: Tensor, response_mask: Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Group-relative outcome advantages (GRPO; Shao et al. 2024,
    "DeepSeekMath", §4.1.2), the same for every token of a response:

        A_i = (r_i − mean(r_group)) / (std(r_group) + eps)

    scores: [B] outcome rewards; group: [B] prompt ids; response_mask: [B, T]
    -> [B, T], 0 on uncounted positions. Example, one group r = [1, 0, 0, 1]:
    mean 0.5, deviations [0.5, −0.5, −0.5, 0.5], std √(4·0.25/4) = 0.5
    -> A = [1, −1, −1, 1] (each 0.5/(0.5 + 1e-6) = 0.999998 with the default eps).

    Choices:
      * std is the *population* std of the group (divide by k, unbiased=False).
        The paper says only "normalized by the group's std"; TRL and verl call
        torch.std, which is Bessel-corrected (k − 1), so their advantages are
        √((k − 1)/k) times these (e.g. 0.866× for k = 4).
      * normalize_std=False drops the division: A_i = r_i − mean(r_group),
        Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"),
        which removes the std's difficulty bias (groups with a small std, i.e.
        prompts nearly always solved or failed, get larger advantages).
        (Dr. GRPO's other change, no per-sequence length normalisation, is a
        loss reduction, not part of the advantage.)
      * A group with a single sample or all-equal rewards gets A = 0 exactly,
        for any eps (eps = 0 included).
    Scores are treated as constants (detached); integer scores are allowed.
    """
    advantages, group_index = _group_centered(scores, group)  # [B]
    if normalize_std:
        std = _group_mean(advantages**2, group_index).sqrt()  # [B], population std
        advantages = torch.where(std > 0, advantages / (std + eps), torch.zeros_like(advantages))  # eps=0 allowed
    return _per_token(advantages, response_mask, _float_dtype(scores))


def rloo_advantages(scores: Tensor, group: Tensor, response_mask: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to
    Basics"; Kool et al. 2019), the same for every token of a response:

        A_i = r_i − (1/(k−1)) Σ_{j≠i} r_j = k/(k−1) · (r_i − mean(r_group))

    (the identity: Σ_{j≠i} r_j = k·mean − r_i, so A_i = (k r_i − k·mean)/(k−1)).
    k is the size of sample i's group. scores: [B]; group: [B] prompt ids;
    response_mask: [B, T] -> [B, T], 0 on uncounted positions.
    Example, one group r = [1, 0, 0, 1] (k = 4, mean 0.5):
    A_0 = 1 − (0 + 0 + 1)/3 = 2/3 = 4/3 · 0.5; A_1 = 0 − 2/3 = −2/3
    -> A = [2/3, −2/3, −2/3, 2/3].
    A group of one sample (no other sample to compare with) or with all-equal
    rewards gets A = 0. Scores are treated as constants (detached).
    """
    centered, group_index = _group_centered(scores, group)  # [B]
    group_size = torch.bincount(group_index)[group_index].to(centered.dtype)  # [B], k
    advantages = centered * group_size / (group_size - 1).clamp(min=1)  # k = 1: centered is 0
    return _per_token(advantages, response_mask, _float_dtype(scores))


def reinforce_pp_advantages(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++"): no critic, γ = 1,
    the baseline is the whole batch:

        r_t = −β · KL_t,  r_T += score           (``kl_penalized_rewards``)
        G_t = Σ_{t' ≥ t} r_t'                    (reward-to-go, "returns")
        A_t = (G_t − mean G) / std G             (over all counted tokens of the batch)

    scores: [B]; logprobs, ref_logprobs, response_mask: [B, T]
    -> (advantages, returns): [B, T], 0 on uncounted positions. The whitening
    is ``masked_whiten`` (unbiased variance), so the batch needs at least two
    counted tokens (ValueError otherwise); every row needs at least one.
    Example, β = 0, two rows of three tokens with scores 1 and −1:
    G = [[1, 1, 1], [−1, −1, −1]]; mean 0, unbiased var 6/5
    -> A = ±1/√1.2 = ±0.9128709.
    With β = 0.5, score 1, KL_t = [0, −2, 1]: r = [0, 1, −0.5 + 1] = [0, 1, 0.5]
    -> G = [1.5, 1.5, 0.5]. Inputs are treated as constants (detached).
    """
    bool_mask = _bool_mask(response_mask)
    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, bool_mask, kl_coef, kl_estimator)  # [B, T]
    returns = rewards.flip(1).cumsum(1).flip(1)  # G_t; uncounted rewards are 0
    returns = torch.where(bool_mask, returns, torch.zeros_like(returns))
    return masked_whiten(returns, bool_mask), returns


# Names a config may choose for ``advantage_estimator`` (``check_choice``).
# A tuple, not a name -> function dict: the estimators take different inputs
# (GAE needs values, GRPO/RLOO need groups, REINFORCE++ needs log-probs).
ADVANTAGE_ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp")


# ---------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss:

        ρ_t = exp(log π − log π_old)
        L = token-mean of max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))

    logp, old_logp, advantages, mask: [B, T] -> loss: 0-dim.
    Gradient flows through ``logp`` only. Stats:
      clip_frac  — fraction of counted tokens where the clipped term is the
                   larger one (strictly), i.e. where the gradient is cut;
      approx_kl  — token-mean k3 estimate of KL(π_old || π) (the tokens were
                   sampled from π_old);
      abs_log_ratio — token-mean |log ρ_t|.
    Before the step's first update, π is the learner's and π_old the engine's
    that sampled: the last two are then their `logprob_gap`.
    """
    bool_mask = _bool_mask(mask)
    old_logp, advantages = old_logp.detach(), advantages.detach()
    log_ratio = torch.where(bool_mask, logp - old_logp, torch.zeros_like(logp))  # [B, T]
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), bool_mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(logp.dtype), bool_mask),
            "approx_kl": masked_mean(kl_k3(old_logp, logp.detach()), bool_mask),
            "abs_log_ratio": masked_mean(log_ratio.detach().abs(), bool_mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss (OpenAI baselines ppo2; Schulman et al. 2017 §5):

        V_clip = V_old + clip(V − V_old, −ε, ε)
        L = ½ · token-mean of max((V − R)², (V_clip − R)²)

    values, old_values, returns, mask: [B, T] -> loss: 0-dim.
    Stats: value_clip_frac — fraction of counted tokens where the clipped
    error is (strictly) the larger one.
    """
    bool_mask = _bool_mask(mask)
    old_values, returns = old_values.detach(), returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    error = (values - returns) ** 2
    error_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), bool_mask)
    with torch.no_grad():
        stats = {
            "value_clip_frac": masked_mean((error_clipped > error).to(values.dtype), bool_mask)
        }
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last axis: [B, T, V] -> [B, T] (fp32).

        H = logsumexp(z) − Σ_v softmax(z)_v z_v
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var[R − V] / Var[R] over counted tokens (0-dim).

    1 = perfect critic, 0 = no better than a constant, < 0 = worse.
    NaN when the returns have zero variance (undefined), as in baselines.
    """
    bool_mask = _bool_mask(mask)
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, bool_mask, unbiased=False)
    var_residual = masked_var(returns - values, bool_mask, unbiased=False)
    if float(var_returns) == 0.0:
        return torch.tensor(math.nan, dtype=values.dtype)
    return 1.0 - var_residual / var_returns


# ---------------------------------------------------------------------------
# RRHF
# ---------------------------------------------------------------------------


def rrhf_loss(
    logp: Tensor,
    mask: Tensor,
    rewards: Tensor,
    length_penalty: float = 1.0,
    rrhf_weight: float = 1.0,
    group: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RRHF loss (Yuan et al. 2023, "RRHF: Rank Responses to align Human
    Feedback", eq. 1–3):

        p_i    = Σ_t log π(y_i,t) / |y_i|^length_penalty            (eq. 1)
        L_rank = Σ_{r_i < r_j} max(0, p_i − p_j)                     (eq. 2)
        L_ft   = −(1/|y_b|) Σ_t log π(y_b,t),  b = argmax_i r_i      (eq. 3)
        L      = rrhf_weight · L_rank + L_ft

    logp, mask: [N, T] per-token log-probs of N responses; rewards: [N].
    group: optional [N] integer tensor naming the query each response
    answers. Pairs are formed only within a group; with group=None all N
    responses answer one query.

    Choices (the paper's, unless said):
      * L_rank is a *sum* over the ranked pairs of a query, as in the paper
        and its code (not a mean, so more candidates give a larger term).
      * Ties (r_i == r_j) give no rank term; a single response gives 0.
      * b is the first response with the best reward (ties: lowest index).
      * L_ft is the mean over the counted tokens of y_b. (The official code
        averages over all T positions, padding included — a departure.)
      * Several groups: the loss is the *mean over groups* of each group's
        L, so one batched call equals the mean of per-query calls.
    Stats: rank_loss and sft_loss (each a mean over groups), num_ranked_pairs
    (total over groups), and scores (p_i, [N]).
    """
    bool_mask = _bool_mask(mask)
    num_responses = logp.shape[0]
    if group is None:
        group = torch.zeros(num_responses, dtype=torch.long, device=logp.device)
    _, group_index = torch.unique(group, return_inverse=True)  # [N] in 0..G-1
    num_groups = int(group_index.max()) + 1
    rewards = rewards.detach().to(torch.float64)  # ints allowed; exact comparisons

    lengths = bool_mask.sum(dim=1).clamp(min=1).to(logp.dtype)  # [N]
    scores = masked_sum(logp, bool_mask, dim=1) / lengths**length_penalty  # [N]

    # Pair (i, j) is ranked when both answer the same query and r_i < r_j.
    same_group = group_index[:, None] == group_index[None, :]  # [N, N]
    ranked = same_group & (rewards[:, None] < rewards[None, :])  # [N, N]
    hinge = torch.relu(scores[:, None] - scores[None, :])  # [N, N], p_i − p_j
    pair_terms = torch.where(ranked, hinge, torch.zeros_like(hinge)).sum(dim=1)  # [N]
    rank_per_group = scores.new_zeros(num_groups).index_add(0, group_index, pair_terms)

    # Best response per group: highest reward, first index among ties.
    positions = torch.arange(num_responses, device=logp.device)
    best_reward = rewards.new_full((num_groups,), -math.inf).scatter_reduce(
        0, group_index, rewards, reduce="amax"
    )
    is_best = rewards == best_reward[group_index]
    best_index = torch.full((num_groups,), num_responses, device=logp.device).scatter_reduce(
        0, group_index, torch.where(is_best, positions, num_responses), reduce="amin"
    )  # [G]
    sft_per_group = -masked_mean(logp[best_index], bool_mask[best_index], dim=1)  # [G]

    loss = (rrhf_weight * rank_per_group + sft_per_group).mean()
    stats = {
        "rank_loss": rank_per_group.mean().detach(),
        "sft_loss": sft_per_group.mean().detach(),
        "num_ranked_pairs": ranked.sum().detach(),
        "scores": scores.detach(),
    }
    return loss, stats


# ---------------------------------------------------------------------------
# Preference losses (DPO family) and reward-model loss
# ---------------------------------------------------------------------------


def _implicit_rewards(
    chosen_log_ratio: Tensor, rejected_log_ratio: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """DPO's implicit rewards β (log π − log π_ref), detached: [B] -> ([B], [B])."""
    return beta * chosen_log_ratio.detach(), beta * rejected_log_ratio.detach()


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO loss (Rafailov et al. 2023, eq. 7):

        h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
        L = −log σ(β h)

    All inputs are sequence log-probs [B]. Returns (losses [B],
    chosen_rewards [B], rejected_rewards [B]); the implicit rewards
    β (log π − log π_ref) are detached. Reduce the losses with ``.mean()``.
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps.detach()  # [B]
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps.detach()  # [B]
    losses = -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))
    return losses, *_implicit_rewards(chosen_log_ratio, rejected_log_ratio, beta)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO loss (Azar et al. 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", §5, the empirical IPO
    loss on sampled pairs), with their τ played by β:

        L = (h − 1 / (2β))²,   h as in ``dpo_loss``

    Same inputs and outputs as ``dpo_loss``. The paper uses sums of token
    log-probs; TRL feeds per-token averages instead — that choice is the
    caller's (it decides what a "sequence log-prob" is).
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps.detach()  # [B]
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps.detach()  # [B]
    losses = (chosen_log_ratio - rejected_log_ratio - 1.0 / (2.0 * beta)) ** 2
    return losses, *_implicit_rewards(chosen_log_ratio, rejected_log_ratio, beta)


PREFERENCE_LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "sigmoid": dpo_loss,
    "ipo": ipo_loss,
}


def pairwise_reward_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Reward-model ranking loss (InstructGPT, Ouyang et al. 2022, eq. 1):

        L = mean over pairs of −log σ(r_chosen − r_rejected)

    chosen_rewards, rejected_rewards: [B] -> 0-dim. Uses logsigmoid, so
    large margins neither overflow nor underflow.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


# ---------------------------------------------------------------------------
# Token log-probs and supervised fine-tuning
# ---------------------------------------------------------------------------


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probs of ``labels`` under ``logits``, in fp32.

    logits: [B, T, V]; labels, mask: [B, T] -> [B, T].
    Already aligned: logits[:, t] is the distribution that predicts
    labels[:, t] (the caller does the usual shift by one). Computed as
    z_label − logsumexp(z), which equals log_softmax(z) gathered at the label
    without materialising a second [B, T, V] tensor. Uncounted positions are 0
    and their labels may be anything (e.g. −100).
    """
    bool_mask = _bool_mask(mask)
    logits = logits.float()
    safe_labels = torch.where(bool_mask, labels, torch.zeros_like(labels)).long()
    label_logits = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # [B, T]
    token_logps = label_logits - torch.logsumexp(logits, dim=-1)
    return torch.where(bool_mask, token_logps, torch.zeros_like(token_logps))


def sft_loss(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood, token-mean over counted tokens (0-dim).

    token_logps, mask: [B, T].
    """
    return -masked_mean(token_logps, mask)
