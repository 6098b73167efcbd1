"""Ensembles: members' logits combined by a rule, scored next to every member.

Pure functions of stacked logits [M, N, C] (members, examples, classes), so
members of one architecture come from one vmapped `predict_members` call and
heterogeneous ensembles (B3: two MLPs, B6: two CNNs) concatenate the logits of
several runs (`fmnist_jax/runs.py`). Rules:

  softmax_sum  argmax of the sum of the members' softmax probabilities (the studies')
  mean_logit   argmax of the mean of the members' logits
  vote         majority vote of the members' predictions; ties go to the tied
               class with the largest summed probability
"""

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import metrics, platform

RULES = ("softmax_sum", "mean_logit", "vote")
# The studies' rule (B3, B6), used for headline numbers and gains.
STUDY_RULE = "softmax_sum"


def combine(logits_MxNxC: jax.Array, rule: str) -> jax.Array:
  """The ensemble's predicted class per example, [N] int32."""
  probabilities_N_C = jax.nn.softmax(logits_MxNxC, axis=-1).sum(axis=0)
  if rule == "softmax_sum":
    return probabilities_N_C.argmax(-1)
  if rule == "mean_logit":
    return logits_MxNxC.mean(axis=0).argmax(-1)
  if rule == "vote":
    num_members, num_classes = logits_MxNxC.shape[0], logits_MxNxC.shape[-1]
    votes_N_C = jax.nn.one_hot(logits_MxNxC.argmax(-1), num_classes).sum(axis=0)
    # Summed probabilities are < num_members + 1, so they only break ties between votes.
    return (votes_N_C * (num_members + 1) + probabilities_N_C).argmax(-1)
  raise ValueError(f"unknown ensemble rule {rule!r}; choose one of {list(RULES)}")


@partial(jax.jit, compiler_options=platform.cheap_program_options())  # runs once per run
def _confusions_by_split(logits_by_split, labels_by_split):
  """Per split: every member's confusion matrix and loss sum, and every rule's confusion matrix.

  The splits are concatenated and counted by (split, true, predicted) cell, so
  a run compiles one small program whatever its number of splits and their sizes.
  """
  names = list(logits_by_split)
  logits_MxNxC = jnp.concatenate([logits_by_split[n] for n in names], axis=1)
  labels_N = jnp.concatenate([labels_by_split[n].astype(jnp.int32) for n in names])
  split_N = jnp.concatenate(
    [jnp.full(labels_by_split[n].shape, i, jnp.int32) for i, n in enumerate(names)]
  )
  num_splits, num_classes = len(names), logits_MxNxC.shape[-1]

  def confusions(predictions_N):  # [S, C, C]
    return metrics.confusion_matrix(
      labels_N, predictions_N, num_classes, groups=split_N, num_groups=num_splits
    )

  member_confusions = jax.vmap(lambda logits: confusions(logits.argmax(-1)))(logits_MxNxC)
  member_losses = jax.vmap(
    lambda logits: jax.ops.segment_sum(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels_N), split_N, num_splits
    )
  )(logits_MxNxC)
  rule_confusions = {rule: confusions(combine(logits_MxNxC, rule)) for rule in RULES}
  return {
    name: (
      member_confusions[:, i],
      member_losses[:, i],
      {rule: rule_confusions[rule][i] for rule in RULES},
    )
    for i, name in enumerate(names)
  }


def score(
  logits_by_split: Mapping[str, jax.Array], labels_by_split: Mapping[str, Any]
) -> dict[str, Any]:
  """Members' and every rule's metrics on each split.

  Args:
    logits_by_split: split -> [M, N, C] logits of the M members.
    labels_by_split: split -> [N] true classes.

  Returns:
    {"members": [{split: `metrics.summarize` output}] (one per member, loss
    included), "rules": {rule: {split: metrics}}}.
  """
  num_members = next(iter(logits_by_split.values())).shape[0]
  members: list[dict] = [{} for _ in range(num_members)]
  rules: dict[str, dict] = {rule: {} for rule in RULES}
  labels_by_split = {split: jnp.asarray(labels_by_split[split]) for split in logits_by_split}
  confusions = jax.device_get(_confusions_by_split(dict(logits_by_split), labels_by_split))
  for split in logits_by_split:
    member_confusions, member_losses, rule_confusions = confusions[split]
    for index in range(num_members):
      members[index][split] = metrics.summarize(
        member_confusions[index], member_losses[index], labels_by_split[split].shape[0]
      )
    for rule in RULES:
      rules[rule][split] = metrics.summarize(rule_confusions[rule])
  return {"members": members, "rules": rules}


def format_report(scored: Mapping[str, Any], names: Sequence[str], split: str = "test") -> str:
  """Each member's and each rule's accuracy and macro F1 on every split, as a text table."""
  splits = metrics.ordered_splits(list(scored["rules"][STUDY_RULE]))
  rows = [(name, member) for name, member in zip(names, scored["members"], strict=True)]
  rows += [(f"ensemble: {rule}", scored["rules"][rule]) for rule in RULES]
  header = ["Model", *(f"{s} acc" for s in splits), f"{split} F1"]
  body = [
    [
      name,
      *(f"{by_split[s]['accuracy']:.6f}" for s in splits),
      f"{by_split[split]['f1_macro']:.6f}",
    ]
    for name, by_split in rows
  ]
  return metrics.render_table(header, body, title=None)


def best_member_gain(scored: Mapping[str, Any], split: str = "test") -> float:
  """softmax_sum accuracy minus the best member's: what the ensemble adds."""
  best = max(member[split]["accuracy"] for member in scored["members"])
  return float(np.float64(scored["rules"][STUDY_RULE][split]["accuracy"]) - best)
