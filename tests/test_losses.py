"""Relation losses against values computed by hand (modeling/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from glidre_core import GLiDRE, GLiDREConfig, parse_document
from glidre_core.modeling.losses import adaptive_threshold_loss, focal_loss, relation_loss

from conftest import tiny_config


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal(x: float, y: int, alpha: float, gamma: float) -> float:
    p = _sig(x)
    if y == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


LOGITS = [[2.0, -1.0, 0.0], [0.5, 3.0, -2.5]]
TARGETS = [[1, 0, 1], [0, 1, 0]]


def test_focal_loss_literal_values():
    x = torch.tensor([0.0, 0.0, math.log(3.0)])
    y = torch.tensor([1.0, 0.0, 1.0])
    got = focal_loss(x, y, alpha=0.25, gamma=2.0)
    # p = 0.5: 0.25 * 0.5^2 * ln 2 ; 0.75 * 0.5^2 * ln 2 ; p = 0.75: 0.25 * 0.25^2 * -ln 0.75
    expected = [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2), 0.25 * 0.0625 * -math.log(0.75)]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == pytest.approx(0.0433216988, rel=1e-8)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.8, 2.0), (0.8, 0.0), (0.5, 1.0)])
def test_focal_loss_elementwise(alpha, gamma):
    got = focal_loss(torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float), alpha, gamma)
    for i, row in enumerate(LOGITS):
        for j, x in enumerate(row):
            assert float(got[i, j]) == pytest.approx(_focal(x, TARGETS[i][j], alpha, gamma), rel=1e-5)


def test_relation_loss_focal_sums_labels_and_averages_pairs():
    alpha, gamma = 0.25, 2.0
    got = relation_loss("focal", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=alpha, gamma=gamma)
    per_pair = [sum(_focal(x, y, alpha, gamma) for x, y in zip(r, t)) for r, t in zip(LOGITS, TARGETS)]
    assert float(got) == pytest.approx(sum(per_pair) / len(per_pair), rel=1e-5)


def test_relation_loss_gamma_is_gamma_not_alpha():
    """The reference code silently set gamma = alpha; here they must act independently."""
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    a = relation_loss("focal", logits, targets, alpha=0.8, gamma=2.0)
    b = relation_loss("focal", logits, targets, alpha=0.8, gamma=0.8)
    assert float(a) != pytest.approx(float(b), rel=1e-3)


def test_focal_with_gamma_zero_is_weighted_bce():
    alpha = 0.8
    got = relation_loss("focal", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=alpha, gamma=0.0)
    per_pair = []
    for row, tgt in zip(LOGITS, TARGETS):
        s = 0.0
        for x, y in zip(row, tgt):
            p = _sig(x)
            s += -alpha * math.log(p) if y else -(1 - alpha) * math.log(1 - p)
        per_pair.append(s)
    assert float(got) == pytest.approx(sum(per_pair) / 2, rel=1e-5)


def test_bce_loss():
    got = relation_loss("bce", torch.tensor(LOGITS), torch.tensor(TARGETS))
    per_pair = [
        sum(-math.log(_sig(x)) if y else -math.log(1 - _sig(x)) for x, y in zip(r, t))
        for r, t in zip(LOGITS, TARGETS)
    ]
    assert float(got) == pytest.approx(sum(per_pair) / 2, rel=1e-5)
    # alpha/gamma do not change BCE
    again = relation_loss("bce", torch.tensor(LOGITS), torch.tensor(TARGETS), alpha=0.1, gamma=5.0)
    assert float(again) == pytest.approx(float(got), rel=1e-7)


def test_adaptive_threshold_hand_computed():
    logits = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    th = torch.tensor([0.0, 1.0])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # pair 0: positives {label0} vs TH -> -log(e^1 / (e^0 + e^1)); TH vs negatives {label1}
    #         -> -log(e^0 / (e^0 + e^-1))
    pair0 = (math.log(1 + math.e) - 1) + math.log(1 + math.exp(-1))
    # pair 1: no positives -> part 1 is 0; TH (1.0) vs negatives (0.5, 2.0)
    pair1 = math.log(math.exp(1.0) + math.exp(0.5) + math.exp(2.0)) - 1.0
    per = adaptive_threshold_loss(logits, th, targets)
    assert per.tolist() == pytest.approx([pair0, pair1], rel=1e-5)
    got = relation_loss("adaptive_threshold", logits, targets, threshold_logits=th)
    assert float(got) == pytest.approx((pair0 + pair1) / 2, rel=1e-5)


def test_adaptive_threshold_needs_threshold_logits():
    with pytest.raises(ValueError, match="threshold"):
        relation_loss("adaptive_threshold", torch.tensor(LOGITS), torch.tensor(TARGETS))


def test_empty_logits_give_zero_loss():
    loss = relation_loss("focal", torch.zeros((0, 3)), torch.zeros((0, 3)))
    assert float(loss) == 0.0


def test_unknown_loss_name_raises():
    with pytest.raises(ValueError, match="unknown loss 'foo'"):
        relation_loss("foo", torch.tensor(LOGITS), torch.tensor(TARGETS))


def test_unknown_loss_name_in_config_raises():
    with pytest.raises(ValidationError, match="foo"):
        GLiDREConfig(loss="foo")
    cfg = GLiDREConfig(loss="bce")
    with pytest.raises(ValidationError):
        cfg.loss = "focall"  # validate_assignment: no silent fallback later either


def test_model_loss_uses_configured_alpha_and_gamma():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(focal_alpha=0.25, focal_gamma=2.0))
    model.eval()
    text = "Ada Lovelace was born in London and worked with Charles Babbage ."
    names = ["Ada Lovelace", "London", "Charles Babbage"]
    ents = [{"id": str(i), "mentions": [{"start": text.index(n), "end": text.index(n) + len(n)}]}
            for i, n in enumerate(names)]
    doc = parse_document({"doc_id": "d", "text": text, "entities": ents,
                          "relations": [{"head": "0", "label": "Place_of birth", "tail": "1"}]})
    prep = model.prepare(doc)
    labels = model.encode_labels(["place of birth", "collaborator"])
    with torch.no_grad():
        scores = model.score_documents([prep], labels)[0]
        targets = model.targets(prep, scores, labels)
        loss = model.loss([prep], labels)
    # the label is normalised ("Place_of birth" -> "place of birth") and lands on pair (0, 1)
    assert float(targets.sum()) == 1.0
    pair = [(int(h), int(t)) for h, t in zip(scores.heads, scores.tails)].index((0, 1))
    assert float(targets[pair, 0]) == 1.0
    expected = 0.0
    for p in range(scores.logits.shape[0]):
        for r in range(2):
            expected += _focal(float(scores.logits[p, r]), int(targets[p, r]), 0.25, 2.0)
    expected /= scores.logits.shape[0]
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_adaptive_threshold_gradients_are_finite():
    logits = torch.tensor([[1.0, -1.0, 0.3], [0.5, 2.0, -0.2]], requires_grad=True)
    th = torch.tensor([0.0, 1.0], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss = relation_loss("adaptive_threshold", logits, targets, threshold_logits=th)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(th.grad).all()
    # raising a positive's logit lowers the loss, raising a negative's raises it
    assert float(logits.grad[0, 0]) < 0 < float(logits.grad[1, 1])


def test_model_with_adaptive_threshold_trains_finite():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(loss="adaptive_threshold"))
    model.train()
    text = "Ada Lovelace was born in London ."
    ents = [{"id": str(i), "mentions": [{"start": text.index(n), "end": text.index(n) + len(n)}]}
            for i, n in enumerate(["Ada Lovelace", "London"])]
    doc = parse_document({"doc_id": "d", "text": text, "entities": ents,
                          "relations": [{"head": "0", "label": "place of birth", "tail": "1"}]})
    labels = model.encode_labels(["place of birth", "residence"])
    loss = model.loss([model.prepare(doc)], labels)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert model.threshold_embedding.grad is not None
    assert torch.isfinite(model.threshold_embedding.grad).all()
