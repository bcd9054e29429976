"""The paper's objective on toy features: the authorized loss goes down, the adversary's goes up."""

import torch

from hf_encoderlock.lock.objectives import LockHeads, PaperObjective


def test_paper_objective_decreases_on_a_toy_problem():
    torch.manual_seed(0)
    features = torch.nn.Parameter(torch.randn(32, 8))
    labels = torch.arange(32) % 4
    heads = LockHeads(authorized=torch.nn.Linear(8, 4), adversary=torch.nn.Linear(8, 4))
    heads.authorized.requires_grad_(False)
    heads.adversary.requires_grad_(False)
    objective = PaperObjective(alpha=1e3)
    optimizer = torch.optim.Adam([features], lr=0.05)
    start = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
    for _ in range(30):
        terms = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    final = objective.terms(features[:16], labels[:16], features[16:], labels[16:], heads)
    assert float(final.total) < float(start.total) - 1.0
    assert float(final.authorized) < float(start.authorized)  # the authorized task's loss goes down
    assert float(final.prohibited) > float(start.prohibited)  # the adversary's loss is pushed up
