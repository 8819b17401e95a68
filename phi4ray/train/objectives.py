"""Training objectives as modules, so DeepSpeed wraps the loss computation with the model.

`CausalLM` computes next-token cross-entropy only at positions whose loss mask is set: the
100352-wide output layer is applied to those hidden states alone, which for SFT (assistant
tokens only) and DPO (completion tokens only) skips most of the cost of the output layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    return model.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state


def document_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 where each document (segment) of a packed row begins.

    Given these and no attention mask, transformers keeps attention inside documents: it builds
    a block-diagonal causal mask for eager/SDPA attention and calls flash-attn's varlen kernel
    with `flash_attention_2` (`masking_utils.find_packed_sequence_indices`)."""
    idx = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    prev = torch.nn.functional.pad(segment_ids, (1, 0), value=-1)[:, :-1]
    starts = torch.where(segment_ids != prev, idx, torch.zeros_like(idx))
    return idx - torch.cummax(starts, dim=1).values


class CausalLM(nn.Module):
    """Mean cross-entropy over the target tokens whose `loss_mask` is 1.

    `input_ids` rows hold seq_len+1 tokens; position t predicts token t+1, and
    `loss_mask[:, t+1]` says whether that target counts.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> dict:
        """`position_ids` (from `document_positions`) keep attention inside documents."""
        inputs, targets = input_ids[:, :-1], input_ids[:, 1:]
        weights = loss_mask[:, 1:].bool()
        hidden = _hidden(self.model, inputs, position_ids=None if position_ids is None else position_ids[:, :-1])
        logits = self.model.lm_head(hidden[weights]).float()
        n = weights.sum()
        loss = F.cross_entropy(logits, targets[weights], reduction="sum") / n.clamp(min=1)
        return {"loss": loss, "tokens": n}


def sequence_logps(model, input_ids: torch.Tensor, completion_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the completion tokens (mask 1) of each row, given what precedes them."""
    hidden = _hidden(model, input_ids[:, :-1], attention_mask[:, :-1])
    targets = input_ids[:, 1:]
    sel = completion_mask[:, 1:].bool()
    logits = model.lm_head(hidden[sel]).float()
    tok_logps = logits.log_softmax(-1).gather(-1, targets[sel].unsqueeze(-1)).squeeze(-1)
    row = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(sel)[sel]
    return torch.zeros(input_ids.shape[0], device=input_ids.device, dtype=tok_logps.dtype).index_add(0, row, tok_logps)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict]:
    """Sigmoid DPO loss (Rafailov et al. 2023), as TRL computes it with label_smoothing 0."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
    return losses.mean(), metrics


class DPO(nn.Module):
    """Policy with a frozen reference. Chosen and rejected rows run through the policy as one batch.

    Reference log-probs come from the batch when the pairs table carries them (columns
    `ref_chosen_logp`, `ref_rejected_logp`), else from the frozen reference model, which is kept
    out of the optimizer.
    """

    def __init__(self, policy, reference, beta: float):
        super().__init__()
        self.model = policy
        self.beta = beta
        self._ref = [reference] if reference is not None else []  # a list hides it from parameters()
        if reference is not None:
            reference.requires_grad_(False).eval()

    def forward(self, input_ids, completion_mask, attention_mask, ref_logps: torch.Tensor | None = None) -> dict:
        half = input_ids.shape[0] // 2
        logps = sequence_logps(self.model, input_ids, completion_mask, attention_mask)
        if ref_logps is None:
            with torch.no_grad():
                ref_logps = sequence_logps(self._ref[0], input_ids, completion_mask, attention_mask)
        loss, metrics = dpo_loss(logps[:half], logps[half:], ref_logps[:half], ref_logps[half:], self.beta)
        return {"loss": loss, "tokens": completion_mask.sum(), **metrics}
