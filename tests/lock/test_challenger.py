"""The challenger without a trainer: fresh heads installed, the strongest adversary kept, the best encoder tracked;
the simulated fine-tuning attacker."""

import torch

from hf_encoderlock.lock.challenger import Challenger, simulated_attacker_weights
from hf_encoderlock.lock.rounds import candidate_weights
from hf_encoderlock.lock.state import LockState
from tests.helpers import tiny_lock_data


def _challenger(args, toy_domains):
    encoder, data = tiny_lock_data(args, toy_domains.authorized, toy_domains.prohibited)
    return encoder, data, Challenger(args, encoder, data)


def test_a_challenge_installs_fresh_heads_and_keeps_only_a_locked_encoder(tiny_lock_config, toy_domains):
    args = tiny_lock_config()
    encoder, data, challenger = _challenger(args, toy_domains)
    candidates = candidate_weights(encoder, args)
    state = LockState()
    figures = challenger.challenge(state, 0, candidates)
    assert state.heads is not None and not any(p.requires_grad for p in state.heads.adversary.parameters())
    assert state.last_challenge_round == 0 and state.phase_time["challenge"] > 0
    assert state.best_state is None and state.best_round is None  # the unlocked encoder is never the kept one
    assert (
        figures["challenge_gap"]
        == figures["challenge_authorized_val_accuracy"] - figures["challenge_prohibited_val_accuracy"]
    )
    first_adversary = state.heads.adversary
    with torch.no_grad():
        next(iter(candidates.values())).add_(0.01)  # a "locked" encoder
    figures = challenger.challenge(state, 1, candidates)
    assert state.best_round == 1 and state.best_gap == figures["challenge_gap"]
    assert state.best_stale_heads.adversary is first_adversary  # the heads its updates trained against
    assert set(state.best_state) == set(candidates)
    assert all(torch.equal(state.best_state[n], p.detach()) for n, p in candidates.items())
    # the installed adversary is the stronger of the fresh one and the one in use, on validation
    assert state.adversary_val_accuracy >= figures["challenge_prohibited_val_accuracy"]
    features = challenger.encode(data.val_authorized, batch_size=5)
    assert features.shape[0] == len(data.val_authorized) and features.device.type == "cpu"


def test_the_simulated_attacker_steps_every_weight_and_keeps_the_candidates_differentiable(
    tiny_lock_config, toy_domains
):
    args = tiny_lock_config()
    encoder, data, challenger = _challenger(args, toy_domains)
    candidates = candidate_weights(encoder, args)
    for name, param in encoder.named_parameters():
        param.requires_grad_(name in candidates)
    state = LockState()
    challenger.challenge(state, 0, candidates)
    batch = data.lock_prohibited.take(torch.arange(12))
    unmoved = simulated_attacker_weights(encoder, state.heads.adversary, batch.pixel_values, batch.labels, 0, 0.05)
    assert all(torch.equal(unmoved[n].detach(), p.detach()) for n, p in encoder.named_parameters())
    weights = simulated_attacker_weights(encoder, state.heads.adversary, batch.pixel_values, batch.labels, 1, 0.05)
    name = next(iter(candidates))
    assert weights[name].grad_fn is not None  # a first-order path back to the lock's weights
    step = (weights[name] - candidates[name]).detach().abs()
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 0.05))  # a sign step of the attacker's rate
    frozen = next(n for n, p in encoder.named_parameters() if not p.requires_grad and ".pooler." not in n)
    sum(value.sum() for value in weights.values()).backward()
    assert candidates[name].grad is not None
    assert dict(encoder.named_parameters())[frozen].grad is None  # weights outside the candidates are constants
