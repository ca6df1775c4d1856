"""Closed-form tests for rlcore.core.losses.

Each test works its arithmetic out in its docstring; fast paths are checked
against slow references (gae vs gae_reference, sequence_logprobs vs
log_softmax, batched RRHF vs one call per query, RLOO vs a leave-one-out loop).
"""

import math

import pytest
import torch

from rlcore.core.losses import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    AdaptiveKLController,
    FixedKLController,
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    gae_reference,
    grpo_advantages,
    ipo_loss,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    logprob_gap,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    pairwise_reward_loss,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    rrhf_loss,
    sequence_logprobs,
    sft_loss,
)


def close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.as_tensor(actual).dtype)
    torch.testing.assert_close(torch.as_tensor(actual), expected, atol=atol, rtol=0)


GARBAGE = 1.0e3  # what padded positions hold in the mask tests


# --------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------


def test_masked_sum_and_mean():
    """x = [[1, 2, 9], [3, 9, 9]], mask = [[1, 1, 0], [1, 0, 0]].
    Counted: 1, 2, 3 -> sum 6, mean 6/3 = 2.
    Per row (dim=1): sums [3, 3], means [1.5, 3]."""
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(masked_sum(x, mask), 6.0)
    close(masked_mean(x, mask), 2.0)
    close(masked_sum(x, mask, dim=1), [3.0, 3.0])
    close(masked_mean(x, mask, dim=1), [1.5, 3.0])
    close(masked_mean(x, mask.bool()), 2.0)


def test_masked_mean_ignores_nan_padding_and_empty_mask_is_zero():
    """A NaN in a padded slot must not leak (masks select, never multiply):
    mean of [1, 3] = 2. An all-zero mask gives 0 (count clamped to 1)."""
    x = torch.tensor([[1.0, float("nan"), 3.0]])
    mask = torch.tensor([[1, 0, 1]])
    close(masked_mean(x, mask), 2.0)
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)


def test_masked_var_and_whiten():
    """x = [2, 4, 6] counted, one padded slot.
    mean 4; squared deviations 4, 0, 4; unbiased var = 8/2 = 4, std 2
    -> whitened [-1, 0, 1]; shift_mean=False adds the mean back: [3, 4, 5].
    Biased var = 8/3. Padded slot -> 0."""
    x = torch.tensor([[2.0, 4.0, 6.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(masked_var(x, mask), 4.0)
    close(masked_var(x, mask, unbiased=False), 8.0 / 3.0)
    close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], atol=1e-5)
    close(masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]], atol=1e-5)


def test_masked_whiten_needs_two_entries():
    """Unbiased variance of one entry divides by 0: refuse loudly."""
    with pytest.raises(ValueError):
        masked_whiten(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))


# --------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------


def test_gae_closed_form():
    """T = 3, γ = 0.9, λ = 0.8 (γλ = 0.72), r = [0, 0, 1], V = [0.5, 0.6, 0.7],
    V after the last token = 0.
      δ2 = 1 + 0.9·0   − 0.7 = 0.3
      δ1 = 0 + 0.9·0.7 − 0.6 = 0.03
      δ0 = 0 + 0.9·0.6 − 0.5 = 0.04
      A2 = 0.3
      A1 = 0.03 + 0.72·0.3   = 0.246
      A0 = 0.04 + 0.72·0.246 = 0.21712
      R  = A + V = [0.71712, 0.846, 1.0]"""
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.21712, 0.246, 0.3]])
    close(returns, [[0.71712, 0.846, 1.0]])


def test_gae_padding_and_prompt_positions_are_skipped():
    """The same three response tokens placed after a prompt slot and before
    two padding slots, all holding garbage: same numbers at the counted
    positions, 0 elsewhere. The value after the last counted token is 0,
    not the garbage value of the padding that follows it."""
    rewards = torch.tensor([[GARBAGE, 0.0, 0.0, 1.0, GARBAGE, GARBAGE]])
    values = torch.tensor([[GARBAGE, 0.5, 0.6, 0.7, GARBAGE, GARBAGE]])
    mask = torch.tensor([[0, 1, 1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.0, 0.21712, 0.246, 0.3, 0.0, 0.0]])
    close(returns, [[0.0, 0.71712, 0.846, 1.0, 0.0, 0.0]])


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    """γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t (the values telescope).
    r = [1, 2, 3], V = [1, 1, 1]: reward-to-go [6, 5, 3] -> A = [5, 4, 2],
    R = reward-to-go = [6, 5, 3]."""
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(advantages, [[5.0, 4.0, 2.0]])
    close(returns, [[6.0, 5.0, 3.0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_on_random_padded_batches(seed):
    """Random rewards/values, each row a random prompt length (leading zeros)
    and response length (trailing zeros), some rows with a hole in the
    middle. gae (vectorised over B) must equal gae_reference (a per-row
    Python loop over the counted tokens)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, num_tokens = 7, 11
    rewards = torch.randn(batch_size, num_tokens, generator=generator, dtype=torch.float64)
    values = torch.randn(batch_size, num_tokens, generator=generator, dtype=torch.float64)
    mask = torch.zeros(batch_size, num_tokens)
    for row in range(batch_size):
        start = int(torch.randint(0, 4, (1,), generator=generator))
        end = int(torch.randint(start + 1, num_tokens + 1, (1,), generator=generator))
        mask[row, start:end] = 1
        if row % 3 == 0 and end - start > 2:
            mask[row, start + 1] = 0
    advantages, returns = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    ref_advantages, ref_returns = gae_reference(rewards, values, mask, gamma=0.97, lam=0.9)
    torch.testing.assert_close(advantages, ref_advantages)
    torch.testing.assert_close(returns, ref_returns)


# --------------------------------------------------------------------------
# KL estimators and penalised rewards
# --------------------------------------------------------------------------


def test_kl_estimators_closed_form():
    """logp = −1, ref = −1.5: d = logp − ref = 0.5.
      k1 = 0.5
      k2 = ½·0.25 = 0.125
      k3 = exp(−0.5) − (−0.5) − 1 = 0.6065307 − 0.5 = 0.1065307
    Swapped (d = −0.5): k1 = −0.5, k2 = 0.125, k3 = e^{0.5} − 1.5 = 0.1487213."""
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    close(kl_k1(logp, ref), [0.5])
    close(kl_k2(logp, ref), [0.125])
    close(kl_k3(logp, ref), [math.exp(-0.5) - 0.5])
    close(kl_k1(ref, logp), [-0.5])
    close(kl_k2(ref, logp), [0.125])
    close(kl_k3(ref, logp), [math.exp(0.5) - 1.5])
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def test_kl_estimators_zero_when_equal_and_k3_nonnegative():
    """Equal log-probs -> every estimator is 0. k3 = e^x − x − 1 ≥ 0 for all
    x, including tiny differences where expm1 keeps it from rounding below 0."""
    generator = torch.Generator().manual_seed(0)
    logp = -torch.rand(1000, generator=generator) * 5
    for estimator in KL_ESTIMATORS.values():
        close(estimator(logp, logp), torch.zeros(1000))
    ref = logp + torch.randn(1000, generator=generator) * torch.logspace(-8, 1, 1000)
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()


def test_kl_penalized_rewards_closed_form():
    """Row 0: response tokens at t = 0, 1, padding at t = 2; score 2.
      logp = [−1, −2], ref = [−1.5, −1.5]: k1 = [0.5, −0.5]
      β = 0.1: −β·k1 = [−0.05, 0.05]; score on the last token -> [−0.05, 2.05, 0].
    Row 1: prompt slot at t = 0, one response token at t = 1, padding at t = 2;
      score −1; logp = ref -> KL 0 -> [0, −1, 0].
    With k2: row 0 KL = [0.125, 0.125] -> [−0.0125, 2 − 0.0125, 0]."""
    scores = torch.tensor([2.0, -1.0])
    logp = torch.tensor([[-1.0, -2.0, GARBAGE], [GARBAGE, -0.3, GARBAGE]])
    ref_logp = torch.tensor([[-1.5, -1.5, -GARBAGE], [-GARBAGE, -0.3, -GARBAGE]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    rewards = kl_penalized_rewards(scores, logp, ref_logp, mask, kl_coef=0.1)
    close(rewards, [[-0.05, 2.05, 0.0], [0.0, -1.0, 0.0]])
    rewards_k2 = kl_penalized_rewards(scores, logp, ref_logp, mask, kl_coef=0.1, estimator="k2")
    close(rewards_k2, [[-0.0125, 1.9875, 0.0], [0.0, -1.0, 0.0]])


def test_kl_penalized_rewards_rejects_bad_input():
    """An unknown estimator name, or a row with no response token (its score
    would have nowhere to go), is an error."""
    ones = torch.ones(1, 2)
    with pytest.raises(ValueError, match="k4"):
        kl_penalized_rewards(torch.ones(1), ones, ones, ones, 0.1, estimator="k4")
    with pytest.raises(ValueError):
        kl_penalized_rewards(torch.ones(1), ones, ones, torch.zeros(1, 2), 0.1)


def test_adaptive_kl_controller():
    """β0 = 0.1, target 6, horizon 10000, n_steps = 256 (K = 0.0256).
      KL = 9:   e = 9/6 − 1 = 0.5 -> clipped 0.2;  β = 0.1·(1 + 0.2·0.0256) = 0.100512
      KL = 3:   e = −0.5 -> −0.2 (from 0.1):        β = 0.1·(1 − 0.00512) = 0.099488
      KL = 6.6: e = 0.1 (inside the clip):          β = 0.1·(1 + 0.00256) = 0.100256
      KL = 6:   e = 0 -> β unchanged."""
    for current_kl, expected in [(9.0, 0.100512), (3.0, 0.099488), (6.6, 0.100256), (6.0, 0.1)]:
        controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
        assert controller.update(current_kl, n_steps=256) == pytest.approx(expected, abs=1e-12)
        assert controller.value == pytest.approx(expected, abs=1e-12)
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, n_steps=256) == 0.05 and fixed.value == 0.05


# --------------------------------------------------------------------------
# critic-free advantage estimators
# --------------------------------------------------------------------------

# Four responses to one prompt, T = 3, with right and left padding.
GROUP_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
# What r = [1, 0, 0, 1] per response becomes once broadcast over GROUP_MASK.
GROUP_SIGNS = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [0.0, 1.0, 1.0]])


def test_grpo_closed_form():
    """One group r = [1, 0, 0, 1]: mean 0.5, deviations [0.5, −0.5, −0.5, 0.5],
    population std √(4·0.25/4) = 0.5 -> A = [1, −1, −1, 1]
    (with eps = 1e-6: 0.5/0.500001 = 0.999998, inside float32 tolerance; eps = 0 is exact).
    Dr. GRPO (normalize_std=False): A = r − mean = [0.5, −0.5, −0.5, 0.5].
    Each row's value fills its counted tokens; padding is 0."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    group = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(grpo_advantages(scores, group, GROUP_MASK), GROUP_SIGNS)
    torch.testing.assert_close(grpo_advantages(scores, group, GROUP_MASK, eps=0.0), GROUP_SIGNS, atol=0, rtol=0)
    torch.testing.assert_close(grpo_advantages(scores, group, GROUP_MASK, normalize_std=False), 0.5 * GROUP_SIGNS)
    # integer rewards and a bool mask give the same float32 result
    torch.testing.assert_close(grpo_advantages(scores.long(), group, GROUP_MASK.bool()), GROUP_SIGNS)


def test_rloo_closed_form():
    """One group r = [1, 0, 0, 1], k = 4. Leave-one-out baselines:
      A_0 = 1 − (0 + 0 + 1)/3 = 2/3      A_1 = 0 − (1 + 0 + 1)/3 = −2/3
    -> A = [2/3, −2/3, −2/3, 2/3] = 4/3 · (r − 0.5). Padding is 0."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    group = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(rloo_advantages(scores, group, GROUP_MASK), 2.0 / 3.0 * GROUP_SIGNS)


def test_group_estimators_keep_interleaved_groups_apart():
    """Group 7: r = [2, 4, 6] (mean 4, deviations [−2, 0, 2]); group 3: r = [1, 0, 0, 1].
    Listed interleaved: ids [7, 3, 3, 7, 3, 7, 3].
      GRPO  group 7: population std √(8/3) = 1.6329932 -> [−1.2247449, 0, 1.2247449]
            group 3: [1, −1, −1, 1] as above.
      RLOO  group 7 (k = 3): 2 − (4 + 6)/2 = −3, 4 − (2 + 6)/2 = 0, 6 − (2 + 4)/2 = 3
            group 3 (k = 4): [2/3, −2/3, −2/3, 2/3].
    (One pooled group would have mean 2 and give r = 2 an advantage of 0.)"""
    group = torch.tensor([7, 3, 3, 7, 3, 7, 3])
    scores = torch.tensor([2.0, 1.0, 0.0, 4.0, 0.0, 6.0, 1.0])
    mask = torch.ones(7, 2)
    a = 1.2247449
    grpo_expected = torch.tensor([-a, 1.0, -1.0, 0.0, -1.0, a, 1.0])[:, None].expand(7, 2)
    rloo_expected = torch.tensor([-3.0, 2 / 3, -2 / 3, 0.0, -2 / 3, 3.0, 2 / 3])[:, None].expand(7, 2)
    torch.testing.assert_close(grpo_advantages(scores, group, mask), grpo_expected)
    torch.testing.assert_close(rloo_advantages(scores, group, mask), rloo_expected)


def test_group_estimators_single_sample_and_tied_groups_are_zero():
    """Group 0: one sample (r = 5): nothing to compare with -> 0.
    Group 1: r = [0.1, 0.1, 0.1], tied: std 0 -> exactly 0 (in float64
    0.1 + 0.1 + 0.1 = 0.30000000000000004, so r − mean is −1.4e-17, not 0;
    divided by eps it would leave −1.4e-11).
    Group 2: r = [1, 0]: mean 0.5, std 0.5 -> GRPO [1, −1]; RLOO (k = 2) [1 − 0, 0 − 1] = [1, −1].
    Everything finite, with eps = 0 too; a batch of one single sample gives 0."""
    scores = torch.tensor([0.1, 5.0, 0.1, 1.0, 0.1, 0.0], dtype=torch.float64)
    group = torch.tensor([1, 0, 1, 2, 1, 2])
    mask = torch.ones(6, 2)
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[:, None].expand(6, 2)
    zero_rows = torch.tensor([0, 1, 2, 4])
    for advantages in (
        grpo_advantages(scores, group, mask),
        grpo_advantages(scores, group, mask, eps=0.0),
        grpo_advantages(scores, group, mask, normalize_std=False) * 2,
        rloo_advantages(scores, group, mask),
    ):
        assert torch.isfinite(advantages).all()
        assert torch.equal(advantages[zero_rows], torch.zeros(4, 2, dtype=torch.float64))
        torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=0)  # eps = 1e-6 gives 0.999998
    single = (torch.tensor([3.0]), torch.tensor([0]), torch.ones(1, 2))
    assert torch.equal(grpo_advantages(*single), torch.zeros(1, 2))
    assert torch.equal(rloo_advantages(*single), torch.zeros(1, 2))


def test_rloo_matches_leave_one_out_reference():
    """Random rewards in groups of sizes 1, 2, 3 and 5, shuffled. Slow reference:
    A_i = r_i − mean of the *other* samples of i's group (0 if none), a Python
    loop. The fast path uses A_i = k/(k−1)·(r_i − mean), so it also equals
    k/(k−1) times Dr. GRPO."""
    generator = torch.Generator().manual_seed(0)
    group = torch.tensor([4] + [9] * 2 + [2] * 3 + [5] * 5)[torch.randperm(11, generator=generator)]
    scores = torch.randn(11, generator=generator)
    reference = torch.zeros(11)
    for i in range(11):
        others = [float(scores[j]) for j in range(11) if j != i and group[j] == group[i]]
        reference[i] = float(scores[i]) - sum(others) / len(others) if others else 0.0
    mask = torch.ones(11, 1)
    rloo = rloo_advantages(scores, group, mask)
    torch.testing.assert_close(rloo, reference[:, None])
    k = (group[:, None] == group[None, :]).sum(dim=1).float()
    dr_grpo = grpo_advantages(scores, group, mask, normalize_std=False)
    torch.testing.assert_close(rloo, (k / (k - 1).clamp(min=1))[:, None] * dr_grpo)


# Two rows, T = 4: row 0 counts tokens 0–2, row 1 tokens 1–2 (left and right padding).
REINFORCE_MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0]])
REINFORCE_LOGP = torch.tensor([[-1.0, -3.0, -1.0, GARBAGE], [GARBAGE, -2.0, -1.0, GARBAGE]])
REINFORCE_REF = torch.tensor([[-1.0, -1.0, -2.0, -GARBAGE], [-GARBAGE, -2.0, -2.0, GARBAGE]])
REINFORCE_SCORES = torch.tensor([1.0, 0.0])


def test_reinforce_pp_without_kl_is_whitened_reward_to_go():
    """β = 0: r = score on the last token. Row 0 (score 1): G = [1, 1, 1];
    row 1 (score 0): G = [0, 0]. Counted returns {1, 1, 1, 0, 0}:
    mean 0.6, deviations 0.4 (×3), −0.6 (×2), Σ² = 0.48 + 0.72 = 1.2,
    unbiased var 1.2/4 = 0.3, std 0.5477226
    -> A = 0.4/0.5477226 = 0.7302967 and −0.6/0.5477226 = −1.0954451."""
    advantages, returns = reinforce_pp_advantages(
        REINFORCE_SCORES, REINFORCE_LOGP, REINFORCE_REF, REINFORCE_MASK, kl_coef=0.0
    )
    close(returns, [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    high, low = 0.7302967, -1.0954451
    torch.testing.assert_close(advantages, torch.tensor([[high, high, high, 0.0], [0.0, low, low, 0.0]]))


def test_reinforce_pp_with_kl_closed_form():
    """β = 0.5, k1 = log π − log π_ref.
      Row 0 (score 1): KL = [0, −2, 1] -> r = [0, 1, −0.5 + 1] = [0, 1, 0.5]
                       G = [0 + 1 + 0.5, 1 + 0.5, 0.5] = [1.5, 1.5, 0.5]
      Row 1 (score 0): KL = [0, 1] on tokens 1–2 -> r = [0, −0.5], G = [−0.5, −0.5]
    Counted returns {1.5, 1.5, 0.5, −0.5, −0.5}: mean 0.5, deviations
    [1, 1, 0, −1, −1], unbiased var 4/4 = 1 -> A = the deviations.
    The returns equal GAE's advantages with V = 0 and γ = λ = 1."""
    advantages, returns = reinforce_pp_advantages(
        REINFORCE_SCORES, REINFORCE_LOGP, REINFORCE_REF, REINFORCE_MASK, kl_coef=0.5, kl_estimator="k1"
    )
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.5, 0.5, 0.0], [0.0, -0.5, -0.5, 0.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, -1.0, -1.0, 0.0]]))
    rewards = kl_penalized_rewards(REINFORCE_SCORES, REINFORCE_LOGP, REINFORCE_REF, REINFORCE_MASK, 0.5)
    gae_advantages, _ = gae(rewards, torch.zeros(2, 4), REINFORCE_MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, gae_advantages)


def test_advantage_estimator_names():
    """A config validates its choice against these names."""
    assert ADVANTAGE_ESTIMATORS == ("gae", "grpo", "rloo", "reinforce_pp")


# --------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------


def test_ppo_policy_loss_clip_cases():
    """ε = 0.2; five tokens, ratios ρ and advantages A:
      1. ρ = 1.1, A = +1: inside          -> −1.1, grad ∂/∂logp = −Aρ/5 = −0.22
      2. ρ = 1.5, A = +1: max(−1.5, −1.2) = −1.2, clipped, grad 0
      3. ρ = 0.5, A = +1: max(−0.5, −0.8) = −0.5, not clipped (pessimistic
         side), grad −0.5/5 = −0.1
      4. ρ = 1.5, A = −1: max(1.5, 1.2) = 1.5, not clipped, grad 1.5/5 = 0.3
      5. ρ = 0.5, A = −1: max(0.5, 0.8) = 0.8, clipped, grad 0
    loss = (−1.1 − 1.2 − 0.5 + 1.5 + 0.8)/5 = −0.1; clip_frac = 2/5 = 0.4.
    approx_kl = mean of ρ − log ρ − 1:
      ρ = 1.1: 0.0046898, ρ = 1.5: 0.0945349, ρ = 0.5: 0.1931472
      -> (0.0046898 + 2·0.0945349 + 2·0.1931472)/5 = 0.1160108.
    abs_log_ratio = (ln 1.1 + 2 ln 1.5 + 2 |ln 0.5|)/5 = (0.0953102 + 0.8109302 + 1.3862944)/5 = 0.4585070."""
    ratios = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]])
    old_logp = torch.full((1, 5), -2.0)
    logp = (old_logp + ratios.log()).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, torch.ones(1, 5), clip_eps=0.2)
    close(loss.detach(), -0.1)
    close(stats["clip_frac"], 0.4)
    close(stats["approx_kl"], 0.1160108)
    close(stats["abs_log_ratio"], 0.4585070)
    loss.backward()
    close(logp.grad, [[-0.22, 0.0, -0.1, 0.3, 0.0]])


def test_ppo_policy_loss_on_policy_equals_minus_mean_advantage():
    """ρ = 1 everywhere (first PPO epoch): loss = −mean A over counted tokens.
    A = [2, 4, garbage] with the last slot padded -> −3; nothing clipped, KL 0."""
    logp = torch.tensor([[-1.0, -1.0, GARBAGE]])
    old_logp = torch.tensor([[-1.0, -1.0, -GARBAGE]])
    advantages = torch.tensor([[2.0, 4.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    close(loss, -3.0)
    close(stats["clip_frac"], 0.0)
    close(stats["approx_kl"], 0.0)


def test_logprob_gap_is_ppo_stats_before_an_update():
    """Engine log-probs [−1, −2, pad] against the learner's [−1.5, −1.5, pad]: Δ = ±0.5 ->
    abs = 0.5; kl = mean of k3 = e^{∓0.5} ± 0.5 − 1 = (0.1065307 + 0.1487213)/2 = 0.1276260; and the same
    numbers as ppo_policy_loss's abs_log_ratio and approx_kl with the learner's as logp."""
    engine = torch.tensor([[-1.0, -2.0, GARBAGE]])
    learner = torch.tensor([[-1.5, -1.5, -GARBAGE]])
    mask = torch.tensor([[1, 1, 0]])
    gap = logprob_gap(engine, learner, mask)
    close(gap["abs"], 0.5)
    close(gap["kl"], 0.1276260)
    _, stats = ppo_policy_loss(learner, engine, torch.zeros(1, 3), mask, clip_eps=0.2)
    close(stats["abs_log_ratio"], gap["abs"])
    close(stats["approx_kl"], gap["kl"])
    close(logprob_gap(engine, engine, mask)["kl"], 0.0)


def test_ppo_value_loss_clipping():
    """ε = 0.2, V_old = 0, R = 1:
      V = 0.1:  V_clip = 0.1;  (0.9)² = 0.81 both          -> 0.81, not clipped
      V = 0.5:  V_clip = 0.2;  0.25 vs 0.64                -> 0.64, clipped
      V = −0.5: V_clip = −0.2; 2.25 vs 1.44                -> 2.25, not clipped
    loss = ½·(0.81 + 0.64 + 2.25)/3 = ½·3.7/3 = 0.6166667; clip frac 1/3.
    Gradient ∂/∂V = ½·2(V − R)/3 where unclipped, 0 where clipped:
      [−0.9/3, 0, −1.5/3] = [−0.3, 0, −0.5]. Fourth slot padded (garbage)."""
    values = torch.tensor([[0.1, 0.5, -0.5, GARBAGE]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.0, 0.0, -GARBAGE]])
    returns = torch.tensor([[1.0, 1.0, 1.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_eps=0.2)
    close(loss.detach(), 3.7 / 6)
    close(stats["value_clip_frac"], 1.0 / 3.0)
    loss.backward()
    close(values.grad, [[-0.3, 0.0, -0.5, 0.0]])


def test_entropy_from_logits():
    """Uniform over 4 -> ln 4 = 1.3862944.
    logits [ln 3, 0] -> p = (0.75, 0.25):
      H = −(0.75 ln 0.75 + 0.25 ln 0.25) = 0.2157616 + 0.3465736 = 0.5623351.
    A near one-hot (logit 100 vs 0) -> ≈ 0."""
    close(entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    close(entropy_from_logits(torch.tensor([[[math.log(3.0), 0.0]]])), [[0.5623351]])
    close(entropy_from_logits(torch.tensor([[[100.0, 0.0]]])), [[0.0]], atol=1e-5)
    assert entropy_from_logits(torch.zeros(2, 3, 5, dtype=torch.bfloat16)).dtype == torch.float32


def test_explained_variance():
    """R = [1, 2, 3] (biased var 2/3), padding slot ignored.
      V = R            -> 1 − 0/(2/3) = 1
      V = [2, 2, 2]    -> R − V = [−1, 0, 1], var 2/3 -> 0
      V = [1, 2, 4]    -> R − V = [0, 0, −1]: mean −1/3,
                          var (1/9 + 1/9 + 4/9)/3 = 2/9 -> 1 − (2/9)/(2/3) = 2/3
      constant R       -> undefined: NaN."""
    returns = torch.tensor([[1.0, 2.0, 3.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(explained_variance(returns.clone(), returns, mask), 1.0)
    close(explained_variance(torch.tensor([[2.0, 2.0, 2.0, 0.0]]), returns, mask), 0.0)
    close(explained_variance(torch.tensor([[1.0, 2.0, 4.0, 0.0]]), returns, mask), 2.0 / 3.0)
    assert math.isnan(float(explained_variance(returns, torch.ones(1, 4), mask)))


# --------------------------------------------------------------------------
# RRHF
# --------------------------------------------------------------------------

# Three responses to one query, T = 3 (slots beyond |y_i| are padding):
#   y0: logp [−1, −1]        |y0| = 2, Σ = −2
#   y1: logp [−0.5]*3        |y1| = 3, Σ = −1.5
#   y2: logp [−3]            |y2| = 1, Σ = −3
RRHF_LOGP = torch.tensor(
    [[-1.0, -1.0, GARBAGE], [-0.5, -0.5, -0.5], [-3.0, GARBAGE, -GARBAGE]]
)
RRHF_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])


def test_rrhf_closed_form():
    """length_penalty 1: p = [−2/2, −1.5/3, −3/1] = [−1, −0.5, −3].
    rewards r = [1, 0, 2]; ranked pairs (r_i < r_j) and their hinge p_i − p_j:
      (1, 0): −0.5 + 1 = 0.5
      (1, 2): −0.5 + 3 = 2.5
      (0, 2): −1   + 3 = 2.0
    L_rank = 5 (a sum). Best reward: y2 -> L_ft = −(−3)/1 = 3.
    L = 5 + 3 = 8; with rrhf_weight 0.5: 2.5 + 3 = 5.5."""
    rewards = torch.tensor([1.0, 0.0, 2.0])
    loss, stats = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards)
    close(loss, 8.0)
    close(stats["rank_loss"], 5.0)
    close(stats["sft_loss"], 3.0)
    close(stats["scores"], [-1.0, -0.5, -3.0])
    assert int(stats["num_ranked_pairs"]) == 3
    loss_half, _ = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards, rrhf_weight=0.5)
    close(loss_half, 5.5)
    loss_int, _ = rrhf_loss(RRHF_LOGP, RRHF_MASK, torch.tensor([1, 0, 2]))  # integer rewards
    close(loss_int, 8.0)


def test_rrhf_length_penalty():
    """Same data, r = [1, 0, 2].
    length_penalty 0 (plain sums): p = [−2, −1.5, −3];
      hinges (1,0) 0.5, (1,2) 1.5, (0,2) 1.0 -> L_rank = 3, L = 3 + 3 = 6.
    length_penalty 2: p = [−2/4, −1.5/9, −3/1] = [−1/2, −1/6, −3];
      hinges (1,0) −1/6 + 1/2 = 1/3, (1,2) −1/6 + 3 = 17/6, (0,2) 5/2
      -> L_rank = 2/6 + 17/6 + 15/6 = 17/3; L = 17/3 + 3 = 26/3.
    (L_ft is a plain token mean and does not depend on length_penalty.)"""
    rewards = torch.tensor([1.0, 0.0, 2.0])
    loss_0, stats_0 = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards, length_penalty=0.0)
    close(stats_0["rank_loss"], 3.0)
    close(loss_0, 6.0)
    loss_2, stats_2 = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards, length_penalty=2.0)
    close(stats_2["rank_loss"], 17.0 / 3.0)
    close(loss_2, 26.0 / 3.0)


def test_rrhf_ties():
    """r = [2, 2, 0], p = [−1, −0.5, −3].
    Pair (0, 1) is tied: no term (were it ranked either way it would add
    max(0, −1 + 0.5) = 0 or max(0, −0.5 + 1) = 0.5, so 0 shows it is skipped).
    (2, 0): max(0, −3 + 1) = 0; (2, 1): max(0, −3 + 0.5) = 0 -> L_rank = 0.
    Best reward is shared by y0 and y1; the first, y0, is used:
    L_ft = −(−1 − 1)/2 = 1 (y1 would give 0.5). L = 1."""
    rewards = torch.tensor([2.0, 2.0, 0.0])
    loss, stats = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards)
    close(loss, 1.0)
    close(stats["rank_loss"], 0.0)
    assert int(stats["num_ranked_pairs"]) == 2
    _, stats_reversed = rrhf_loss(RRHF_LOGP, RRHF_MASK, torch.tensor([2.0, 2.0, 3.0]))
    close(stats_reversed["rank_loss"], 2.5 + 2.0)  # (0,2): −1+3, (1,2): −0.5+3


def test_rrhf_single_response():
    """One response: no pairs, L_rank = 0; L = L_ft = −mean(−0.5·3) = 0.5."""
    loss, stats = rrhf_loss(RRHF_LOGP[1:2], RRHF_MASK[1:2], torch.tensor([7.0]))
    close(loss, 0.5)
    close(stats["rank_loss"], 0.0)
    assert int(stats["num_ranked_pairs"]) == 0


def test_rrhf_groups_equal_mean_of_separate_calls():
    """Query A: the three responses above with r = [1, 0, 2] -> L_A = 8.
    Query B: two responses, y3 logp [−2, −2] (p = −2), y4 logp [−1] (p = −1),
      r = [5, 1]: pair (4, 3): max(0, −1 + 2) = 1; best y3: L_ft = 2 -> L_B = 3.
    Pairs across queries never form (y1 with reward 0 vs y3 with 5 would add
    max(0, −0.5 + 2) = 1.5). Batched with group ids [7, 7, 7, 3, 3], listed in
    any order: L = (8 + 3)/2 = 5.5 — the mean over queries."""
    logp_b = torch.tensor([[-2.0, -2.0, GARBAGE], [-1.0, GARBAGE, GARBAGE]])
    mask_b = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards_a, rewards_b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([5.0, 1.0])
    loss_a, _ = rrhf_loss(RRHF_LOGP, RRHF_MASK, rewards_a)
    loss_b, _ = rrhf_loss(logp_b, mask_b, rewards_b)
    close(loss_a, 8.0)
    close(loss_b, 3.0)

    order = torch.tensor([3, 0, 4, 2, 1])  # interleave the queries
    logp = torch.cat([RRHF_LOGP, logp_b])[order]
    mask = torch.cat([RRHF_MASK, mask_b])[order]
    rewards = torch.cat([rewards_a, rewards_b])[order]
    group = torch.tensor([7, 7, 7, 3, 3])[order]
    loss, stats = rrhf_loss(logp, mask, rewards, group=group)
    close(loss, 5.5)
    close(stats["rank_loss"], (5.0 + 1.0) / 2)
    close(stats["sft_loss"], (3.0 + 2.0) / 2)
    assert int(stats["num_ranked_pairs"]) == 4


def test_rrhf_gradient_signs():
    """Pair (1, 0) violates the ranking (p1 = −0.5 > p0 = −1 but r1 < r0):
    the rank term pushes p1 down and p0 up, so ∂L/∂logp1 > 0 and the SFT +
    rank terms give ∂L/∂logp0 < 0 on y0's counted tokens. Padding gets 0.
    r = [1, 0]: L = max(0, p1 − p0) + (−mean logp0);
      ∂L/∂logp0,t = −1/2 − 1/2 = −1 (t < 2), ∂L/∂logp1,t = 1/3."""
    logp = RRHF_LOGP[:2].clone().requires_grad_()
    loss, _ = rrhf_loss(logp, RRHF_MASK[:2], torch.tensor([1.0, 0.0]))
    loss.backward()
    close(logp.grad, [[-1.0, -1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


# --------------------------------------------------------------------------
# DPO / IPO / reward model
# --------------------------------------------------------------------------


def test_dpo_all_zero_is_log_two():
    """All log-ratios 0: h = 0, −log σ(0) = log 2 = 0.6931472; rewards 0."""
    zeros = torch.zeros(3)
    losses, chosen_rewards, rejected_rewards = dpo_loss(zeros, zeros, zeros, zeros, beta=0.1)
    close(losses, [math.log(2.0)] * 3)
    close(chosen_rewards, [0.0] * 3)
    close(rejected_rewards, [0.0] * 3)


def test_dpo_closed_form_and_gradient_signs():
    """π(y_w) = −1, π(y_l) = −2, ref both −1.5, β = 0.5:
      chosen log-ratio +0.5, rejected −0.5 -> h = 1
      loss = −log σ(0.5) = log(1 + e^{−0.5}) = log 1.6065307 = 0.4740770
      chosen reward 0.5·0.5 = 0.25, rejected −0.25
      ∂L/∂logπ(y_w) = −β σ(−βh) = −0.5·0.3775407 = −0.1887703 (< 0: raise y_w)
      ∂L/∂logπ(y_l) = +0.1887703 (> 0: lower y_l)."""
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    ref = torch.tensor([-1.5])
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref, ref, beta=0.5)
    close(losses.detach(), [0.4740770])
    close(chosen_rewards, [0.25])
    close(rejected_rewards, [-0.25])
    losses.sum().backward()
    close(chosen.grad, [-0.1887703])
    close(rejected.grad, [0.1887703])


def test_ipo_closed_form():
    """L = (h − 1/(2β))².
      β = 0.5, h = 1 (the DPO example): 1/(2β) = 1 -> 0; rewards ±0.25.
      β = 0.5, h = 0: (0 − 1)² = 1.   β = 0.1, h = 0: (0 − 5)² = 25.
      Gradient at β = 0.5, h = 0: ∂L/∂logπ(y_w) = 2(h − 1) = −2, ∂/∂logπ(y_l) = +2."""
    chosen, rejected, ref = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])
    losses, chosen_rewards, rejected_rewards = ipo_loss(chosen, rejected, ref, ref, beta=0.5)
    close(losses, [0.0])
    close(chosen_rewards, [0.25])
    close(rejected_rewards, [-0.25])
    zero_chosen = torch.zeros(1, requires_grad=True)
    zero_rejected = torch.zeros(1, requires_grad=True)
    losses, _, _ = ipo_loss(zero_chosen, zero_rejected, torch.zeros(1), torch.zeros(1), beta=0.5)
    close(losses.detach(), [1.0])
    losses.sum().backward()
    close(zero_chosen.grad, [-2.0])
    close(zero_rejected.grad, [2.0])
    zeros = torch.zeros(1)
    close(ipo_loss(zeros, zeros, zeros, zeros, beta=0.1)[0], [25.0], atol=1e-4)
    assert PREFERENCE_LOSSES == {"sigmoid": dpo_loss, "ipo": ipo_loss}


def test_preference_losses_do_not_backprop_into_reference():
    """The reference is frozen: even if its log-probs carry grad, none flows."""
    ref = torch.zeros(2, requires_grad=True)
    for loss_fn in PREFERENCE_LOSSES.values():
        losses, _, _ = loss_fn(torch.zeros(2, requires_grad=True), torch.zeros(2), ref, ref)
        losses.sum().backward()
        assert ref.grad is None


def test_pairwise_reward_loss():
    """Pairs (0, 0) and (2, 0):
      −log σ(0) = log 2 = 0.6931472; −log σ(2) = log(1 + e^{−2}) = 0.1269280
      mean = 0.4100376.
    Stable at extremes: margin +1000 -> 0, margin −1000 -> 1000 (finite).
    Gradient w.r.t. r_c is −σ(−margin)/B < 0: raising the chosen reward helps."""
    chosen = torch.tensor([0.0, 2.0], requires_grad=True)
    loss = pairwise_reward_loss(chosen, torch.zeros(2))
    close(loss.detach(), 0.4100376)
    loss.backward()
    close(chosen.grad, [-0.25, -(1 - torch.sigmoid(torch.tensor(2.0)).item()) / 2])
    close(pairwise_reward_loss(torch.tensor([500.0]), torch.tensor([-500.0])), 0.0)
    close(pairwise_reward_loss(torch.tensor([-500.0]), torch.tensor([500.0])), 1000.0)


# --------------------------------------------------------------------------
# token log-probs and SFT
# --------------------------------------------------------------------------


def test_sequence_logprobs_closed_form():
    """V = 2. logits [0, 0], label 0 -> log ½ = −0.6931472.
    logits [ln 3, 0]: label 0 -> log ¾ = −0.2876821, label 1 -> log ¼ = −1.3862944.
    Padded slot with label −100 -> 0 (and no index error)."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[0, 0, 1, -100]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(sequence_logprobs(logits, labels, mask), [[math.log(0.5), math.log(0.75), math.log(0.25), 0.0]])


def test_sequence_logprobs_matches_log_softmax_gather():
    """Random logits (bf16 in, fp32 out): the logsumexp path equals
    log_softmax(fp32 logits).gather(labels) on counted positions."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=generator) * 4).to(torch.bfloat16)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    reference = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    reference = reference * mask
    result = sequence_logprobs(logits, labels, mask)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference)


def test_sft_loss():
    """token log-probs [[−1, −3, pad], [−2, pad, pad]] -> NLL mean = (1 + 3 + 2)/3 = 2.
    Gradient −1/3 on each counted token, 0 on padding."""
    token_logps = torch.tensor([[-1.0, -3.0, GARBAGE], [-2.0, GARBAGE, GARBAGE]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss = sft_loss(token_logps, mask)
    close(loss.detach(), 2.0)
    loss.backward()
    close(token_logps.grad, [[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]])


def test_padding_values_never_change_results():
    """Overwrite every uncounted slot with different garbage: every loss and
    its stats stay the same."""
    generator = torch.Generator().manual_seed(3)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])

    def randomise(x):
        noise = torch.randn(x.shape, generator=generator) * 100
        return torch.where(mask.bool(), x, noise)

    logp, old_logp, ref_logp, advantages, values, returns = (
        -torch.rand(6, 2, 5, generator=generator)
    ).unbind(0)
    scores = torch.tensor([1.0, -1.0])

    def everything(logp, old_logp, ref_logp, advantages, values, returns):
        return [
            ppo_policy_loss(logp, old_logp, advantages, mask, 0.2),
            ppo_value_loss(values, 0.5 * returns, returns, mask, 0.2),
            kl_penalized_rewards(scores, logp, ref_logp, mask, 0.1, "k3"),
            gae(advantages, values, mask, 0.99, 0.95),
            sft_loss(logp, mask),
            masked_whiten(advantages, mask),
            explained_variance(values, returns, mask),
            rrhf_loss(logp, mask, scores),
            grpo_advantages(scores, torch.tensor([0, 0]), mask),
            rloo_advantages(scores, torch.tensor([0, 0]), mask),
            reinforce_pp_advantages(scores, logp, ref_logp, mask, 0.1, "k3"),
        ]

    first = everything(logp, old_logp, ref_logp, advantages, values, returns)
    second = everything(*(randomise(x) for x in (logp, old_logp, ref_logp, advantages, values, returns)))
    torch.testing.assert_close(first, second)
